"""`LBTSearch`: teacher supernet + student in one Keras model whose `train_step` is one LBT step.

`fit` drives it, so callbacks, the progress bar and TensorBoard work as usual. One step:
  1. (search phase only) the architecture gradient of `architect.SearchProblem` for the mode
     (fasterseg | lpt | lbt-exact | lbt-finite_difference), averaged over replicas, clipped by
     global norm, applied with Adam *only if* the objective and the gradient are finite;
  2. the real weight steps: T with SGD on D_t^tr; S with SGD on D_s^tr plus pseudo-labels of
     D_u (soft: teacher probabilities with `soft_ce`; hard: their argmax), again applied (with
     the new BatchNorm statistics) only if losses and gradients are finite.
In lbt mode the weight steps reuse what the unrolled step computed on the same batches
(`architect.StepGradients`): always grad_S L(S; D_s^tr) and its BatchNorm statistics (S and the
batch are the same, so this changes nothing); with `search.reuse_step_gradients` also the
teacher's gradient and statistics on D_t^tr at (T, A) and the soft pseudo-label gradient with
P(T', A; D_u), i.e. T and S then step from the same point (A_t) as A does, instead of after it.
A skipped update is counted (`skipped_steps`, `consecutive_skips`); nothing non-finite is ever
written to a variable. The phase (warm-up / search) and the mode are Python attributes: changing
them (`set_phase`, `set_mode`, e.g. the lbt -> lpt fallback of `callbacks.NonFiniteFallback`)
rebuilds the step function once (`make_train_function(force=True)`); `trace_count` counts traces.
The learning rates are optimizer variables set per epoch by `callbacks.EpochSchedule`, so the
xi of the virtual steps is always the optimizer's current learning rate.
"""
from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from lbt_tf.search import architect


def _all_finite(tensors):
    checks = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors if _is_float(t)]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def _is_float(tensor):
    return tensor.dtype.is_floating


def _replica_mean(values):
    """All-reduce mean of the floating tensors across replicas (identity without a strategy;
    integer state such as seed-generator counters is identical on every replica)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    flat = tf.nest.flatten(values)
    floats = [t for t in flat if _is_float(t)]
    reduced = iter(ctx.all_reduce(tf.distribute.ReduceOp.MEAN, floats))
    return tf.nest.pack_sequence_as(values, [next(reduced) if _is_float(t) else t for t in flat])


def apply_if_finite(finite, updates):
    """Runs every `(optimizer, grads, variables)` / `(None, values, variables)` update iff `finite`.

    The condition is taken in cross-replica context (as Keras' LossScaleOptimizer does):
    distribution strategies allow no `tf.cond` around a `merge_call` in replica context. With
    an optimizer, its `apply`; without, the values are assigned (BatchNorm statistics).
    """
    def run_updates(grads_and_values):
        for (optimizer, _, variables), values in zip(updates, grads_and_values):
            if optimizer is not None:
                optimizer.apply(values, variables)
            else:
                for variable, value in zip(variables, values):
                    variable.assign(value)

    payload = [values for _, values, _ in updates]

    def cross_replica(distribution, finite_value, payload_value):
        first = distribution.experimental_local_results(finite_value)[0]

        def do_apply():
            distribution.extended.call_for_each_replica(run_updates, args=(payload_value,))
            return tf.constant(True)

        return tf.cond(first, do_apply, lambda: tf.constant(False))

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, payload))


class LBTSearch(keras.Model):
    """Holds the supernet (teacher), the student (None in fasterseg mode) and three optimizers."""

    def __init__(self, supernet, student, search_config, ignore_label: int, num_classes: int,
                 latency_fn=None, latency_weight: float = 0.0, mode: Optional[str] = None,
                 **kwargs):
        super().__init__(**kwargs)
        cfg = search_config
        self.search_config = cfg
        self.supernet = supernet
        self.student = student
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.mode = mode or cfg.mode
        self.hypergrad = cfg.hypergrad
        self.phase = "warmup"
        self.trace_count = 0
        arch_vars = list(getattr(supernet, "arch_variables", []))
        self.teacher_learner = architect.Learner(supernet, arch_vars)
        self.student_learner = architect.Learner(student) if student is not None else None
        self.problem = architect.SearchProblem(
            teacher=self.teacher_learner, student=self.student_learner,
            ignore_label=ignore_label, latency_fn=latency_fn,
            pseudo_label_weight=cfg.pseudo_label_weight,
            student_val_weight=cfg.student_val_weight,
            finite_difference_scale=cfg.finite_difference_scale,
            student_aux_weight=cfg.student_aux_weight)
        self.teacher_optimizer = keras.optimizers.SGD(
            cfg.teacher_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay or None,
            name="teacher_sgd")
        self.student_optimizer = keras.optimizers.SGD(
            cfg.student_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay or None,
            name="student_sgd")
        self.arch_optimizer = keras.optimizers.Adam(
            cfg.arch_lr, beta_1=cfg.arch_beta_1, beta_2=cfg.arch_beta_2,
            weight_decay=cfg.arch_weight_decay or None, name="arch_adam")
        self.teacher_optimizer.build(self.teacher_learner.weight_variables)
        self.arch_optimizer.build(self.teacher_learner.arch_variables)
        if student is not None:
            self.student_optimizer.build(self.student_learner.weight_variables)
        # State that must survive a resume; assigned outside the step or under the skip rule.
        self.latency_weight = keras.Variable(latency_weight, trainable=False, name="latency_weight",
                                             aggregation="only_first_replica")
        self.skipped_steps = keras.Variable(0, dtype="int64", trainable=False,
                                            name="skipped_steps",
                                            aggregation="only_first_replica")
        self.consecutive_skips = keras.Variable(0, dtype="int64", trainable=False,
                                                name="consecutive_skips",
                                                aggregation="only_first_replica")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in (
            "teacher_loss", "student_loss", "pseudo_loss", "arch_objective",
            "arch_teacher_val_loss", "arch_student_val_loss", "arch_latency_loss",
            "arch_grad_norm", "expected_latency_ms")}
        self.teacher_miou = _miou_metric(num_classes, ignore_label, "teacher_miou")
        self.student_miou = (_miou_metric(num_classes, ignore_label, "student_miou")
                             if student is not None else None)
        self.built = True  # the learners are built; `fit` must not call `call` on the dict input

    # ---- phase / mode switches (rebuild the step once) ------------------------------------------
    def set_phase(self, phase: str):
        if phase not in ("warmup", "search"):
            raise ValueError(f"phase must be warmup or search, got {phase!r}")
        if phase != self.phase:
            self.phase = phase
            if self.train_function is not None:
                self.make_train_function(force=True)

    def set_mode(self, mode: str):
        if mode not in architect.MODES:
            raise ValueError(f"mode must be one of {architect.MODES}, got {mode!r}")
        if mode != self.mode:
            self.mode = mode
            if self.train_function is not None:
                self.make_train_function(force=True)

    @property
    def metrics(self):
        metrics = list(self.trackers.values()) + [self.teacher_miou]
        if self.student_miou is not None:
            metrics.append(self.student_miou)
        return metrics

    def call(self, images, training=False):
        """Teacher probabilities at image size (for predict/inspection)."""
        outputs = self.supernet(images, training=training)
        return architect.teacher_probabilities(outputs, images.shape[1:3])

    # ---- the step ------------------------------------------------------------------------------
    def _learning_rate(self, optimizer):
        return tf.convert_to_tensor(optimizer.learning_rate)

    def _arch_update(self, batches, skipped):
        """The arch step; returns (skipped, the `StepGradients` to reuse or None)."""
        teacher, student = self.teacher_learner, self.student_learner
        cfg = self.search_config
        arch = teacher.arch_values()
        grads, objective, parts, reuse = self.problem.arch_gradient(
            self.mode, self.hypergrad, teacher.weight_values(), arch,
            student.weight_values() if student is not None else None,
            self._learning_rate(self.teacher_optimizer),
            self._learning_rate(self.student_optimizer),
            tf.convert_to_tensor(self.latency_weight.value), batches,
            return_step_gradients=True)
        grads, objective = _replica_mean((grads, objective))
        finite = tf.logical_and(_all_finite(grads), tf.math.is_finite(objective))
        clipped, norm = tf.clip_by_global_norm(grads, cfg.arch_grad_clip)
        apply_if_finite(finite, [(self.arch_optimizer, clipped, teacher.arch_variables)])
        self.trackers["arch_objective"].update_state(objective)
        self.trackers["arch_grad_norm"].update_state(norm)
        for name, value in parts.items():
            self.trackers[name].update_state(value)
        if self.problem.latency_fn is not None:
            self.trackers["expected_latency_ms"].update_state(
                self.problem.latency_fn(teacher.arch_values()))
        if reuse is not None and not cfg.reuse_step_gradients:
            # Only what does not depend on A: the student's own data term.
            reuse = architect.StepGradients(student_loss=reuse.student_loss,
                                            student_grads=reuse.student_grads,
                                            student_stats=reuse.student_stats)
        return tf.logical_or(skipped, tf.logical_not(finite)), reuse

    def _weight_update(self, batches, skipped, reuse=None):
        """The real weight steps; `reuse` (`architect.StepGradients`) supplies the pieces the
        arch step already computed, None fields are computed here."""
        teacher, student = self.teacher_learner, self.student_learner
        problem, cfg = self.problem, self.search_config
        reuse = reuse or architect.StepGradients()
        t_loss, t_grads, t_stats = reuse.teacher_loss, reuse.teacher_grads, reuse.teacher_stats
        if t_grads is None:
            t_loss, t_grads, t_stats = problem.teacher_train_gradient(
                teacher.weight_values(), teacher.arch_values(), batches.teacher_train,
                "teacher weight step")
        losses_seen, grads_seen = [t_loss], list(t_grads)
        updates_grads = [t_grads]
        stats = [t_stats]
        if student is not None:
            s_weights = student.weight_values()
            unlabeled = batches.unlabeled
            s_loss, s_grads, s_stats = reuse.student_loss, reuse.student_grads, reuse.student_stats
            if s_grads is None:
                s_loss, s_grads, s_stats = problem.student_train_gradient(
                    s_weights, batches.student_train)
            probs, pl_loss, pl_grads = reuse.pseudo_probs, reuse.pseudo_loss, reuse.pseudo_grads
            if probs is None:  # P(T, A) on D_u; BN statistics discarded
                probs = problem.teacher_probs(teacher.weight_values(), teacher.arch_values(),
                                              unlabeled)
            probs = tf.stop_gradient(probs)
            if pl_grads is None or cfg.pseudo_labels != "soft":
                with tf.GradientTape() as tape:
                    tape.watch(s_weights)
                    pl_out, _ = student.forward(s_weights, [], unlabeled)
                    pl_logits = architect.student_logits(pl_out)
                    if cfg.pseudo_labels == "soft":
                        pl_loss = architect.losses.soft_ce(pl_logits, probs)
                    else:
                        hard = tf.argmax(probs, axis=-1, output_type=tf.int32)
                        pl_loss = architect.losses.segmentation_ce(pl_logits, hard,
                                                                   self.ignore_label)
                pl_grads = tape.gradient(pl_loss, s_weights)
            s_grads = architect.checked_gradients(
                architect.add_scaled(s_grads, cfg.pseudo_label_weight, pl_grads),
                student.weight_names, "student weight step")
            losses_seen += [s_loss, pl_loss]
            grads_seen += list(s_grads)
            updates_grads.append(s_grads)
            stats.append(s_stats)
            self.trackers["student_loss"].update_state(s_loss)
            self.trackers["pseudo_loss"].update_state(pl_loss)
        self.trackers["teacher_loss"].update_state(t_loss)
        updates_grads, stats = _replica_mean((updates_grads, stats))
        finite = tf.logical_and(_all_finite(losses_seen),
                                _all_finite(grads_seen + [s for group in stats for s in group]))
        updates = []
        learners = [(self.teacher_optimizer, teacher)]
        if student is not None:
            learners.append((self.student_optimizer, student))
        for (optimizer, learner), grads, new_stats in zip(learners, updates_grads, stats):
            grads, _ = tf.clip_by_global_norm(grads, cfg.weight_grad_clip)
            updates.append((optimizer, grads, learner.weight_variables))
            if learner.non_trainable_variables:
                updates.append((None, new_stats, learner.non_trainable_variables))
        apply_if_finite(finite, updates)
        return tf.logical_or(skipped, tf.logical_not(finite))

    def train_step(self, data):
        self.trace_count += 1  # Python side effect: runs once per trace
        batches = architect.Batches.from_dict(data)
        skipped, reuse = tf.constant(False), None
        if self.phase == "search":
            skipped, reuse = self._arch_update(batches, skipped)
        skipped = self._weight_update(batches, skipped, reuse)
        self._count_skip(skipped)
        logs = {m.name: m.result() for m in self.metrics if m is not self.teacher_miou
                and m is not self.student_miou}
        logs["skipped_steps"] = tf.convert_to_tensor(self.skipped_steps.value)
        logs["latency_weight"] = tf.convert_to_tensor(self.latency_weight.value)
        # The learners' own rates (Keras' TensorBoard `learning_rate` tag is compile()'s unused
        # default optimizer, not one of these).
        logs["teacher_lr"] = self._learning_rate(self.teacher_optimizer)
        logs["arch_lr"] = self._learning_rate(self.arch_optimizer)
        if self.student_learner is not None:
            logs["student_lr"] = self._learning_rate(self.student_optimizer)
        return logs

    def _count_skip(self, skipped):
        # `skipped` is identical on every replica (its inputs were all-reduced); the counters
        # use aggregation "only_first_replica".
        skip = tf.cast(skipped, tf.int64)
        self.skipped_steps.assign_add(skip)
        self.consecutive_skips.assign((self.consecutive_skips.value + skip) * skip)

    def test_step(self, data):
        images, labels = data
        outputs = self.supernet(images, training=False)
        probs = architect.teacher_probabilities(outputs, images.shape[1:3])
        self.teacher_miou.update_state(labels, probs)
        logs = {"teacher_miou": self.teacher_miou.result()}
        if self.student is not None:
            logits = architect.student_logits(self.student(images, training=False))
            self.student_miou.update_state(labels, logits)
            logs["student_miou"] = self.student_miou.result()
        return logs


def _miou_metric(num_classes, ignore_label, name):
    """The project's StreamingMeanIoU when present, else Keras' MeanIoU on probabilities."""
    try:
        from lbt_tf.metrics import StreamingMeanIoU
        return StreamingMeanIoU(num_classes, ignore_label, name=name)
    except ImportError:
        return keras.metrics.MeanIoU(num_classes, name=name, ignore_class=ignore_label,
                                     sparse_y_pred=False)
