"""`LBTSearch`: teacher supernet + student in one Keras model whose `train_step` is one LBT step.

`fit` drives it, so callbacks, the progress bar and TensorBoard work as usual. This module only
schedules the phases and applies updates; the update itself is in unrolled.py. One step:
  1. (search phase only) `unrolled.update_architecture` with the architecture gradient for the
     mode (fasterseg | lpt | lbt-exact | lbt-hvp | lbt-finite_difference);
  2. the real weight steps: T with SGD on D_t^tr; S with SGD on D_s^tr plus pseudo-labels of
     D_u (soft: teacher probabilities with `soft_ce`; hard: their argmax), again applied (with
     the new BatchNorm statistics) only if losses and gradients are finite.
In lbt mode the weight steps reuse what the unrolled step computed on the same batches
(`learner.StepGradients`): always grad_S L(S; D_s^tr) and its BatchNorm statistics (S and the
batch are the same, so this changes nothing); with `search.reuse_step_gradients` also the
teacher's gradient and statistics on D_t^tr at (T, A) and the soft pseudo-label gradient with
P(T', A; D_u), i.e. T and S then step from the same point (A_t) as A does, instead of after it;
with `search.keep_step_gradients` off the teacher's is recomputed there at (T, A_t) instead of
kept alive through the hypergradient (same values, one more teacher pass, 1 GB less at the
paper's size).
A skipped update is counted (`skipped_steps`, `consecutive_skips`); nothing non-finite is ever
written to a variable. The phase (warm-up / search) and the mode are Python attributes: changing
them (`set_phase`, `set_mode`, e.g. the lbt -> lpt fallback of `callbacks.NonFiniteFallback`)
rebuilds the step function once (`make_train_function(force=True)`); `trace_count` counts traces.
The learning rates are optimizer variables set per epoch by `callbacks.EpochSchedule`, so the
xi of the virtual steps is always the optimizer's current learning rate.
"""
from __future__ import annotations

import time
from typing import Optional

import keras
import tensorflow as tf
from absl import logging

from lbt_tf import names
from lbt_tf.metrics import StreamingMeanIoU
from lbt_tf.search import call_shapes
from lbt_tf.search import learner as lrn
from lbt_tf.search import unrolled
from lbt_tf.search.updates import all_finite, apply_if_finite, norm_finite, replica_mean

# What the progress line shows per phase (every metric still reaches TensorBoard and the
# run's history).
WARMUP_PROGRESS = ("teacher_loss", "student_loss", "pseudo_loss")
SEARCH_PROGRESS = WARMUP_PROGRESS + ("arch_objective", "expected_latency_ms", "arch_entropy")
# Per arch step: ||grad_A F|| split into its terms, and the cosine of successive grad_A F.
ARCH_SIGNALS = ("arch_grad_norm_teacher_val", "arch_grad_norm_student_val",
                "arch_grad_norm_latency", "arch_grad_cosine")


class LBTSearch(keras.Model):
    """Holds the supernet (teacher), the student (None in fasterseg mode) and three optimizers."""

    def __init__(self, supernet: lrn.SearchableSupernet, student, search_config,
                 ignore_label: int, num_classes: int, latency_fn=None,
                 latency_weight: float = 0.0, mode: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(supernet, lrn.SearchableSupernet):
            raise TypeError(f"{type(supernet).__name__} lacks the SearchableSupernet interface")
        cfg = search_config
        self.search_config = cfg
        self.supernet = supernet
        self.student = student
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.mode = mode or cfg.mode
        self.hypergrad = cfg.hypergrad
        self.phase = names.PHASES[0]
        self.trace_count = 0
        self.traces_since_build = 0  # of the current step function
        self.trace_seconds = None  # the last trace of the step (Python building its graph)
        trace_once = resolve_trace_once(cfg, self.mode)
        self.teacher_learner = lrn.Learner(supernet, supernet.arch_variables, trace_once)
        self.student_learner = (lrn.Learner(student, trace_once=trace_once)
                                if student is not None else None)
        self.problem = unrolled.SearchProblem(
            teacher=self.teacher_learner, student=self.student_learner,
            ignore_label=ignore_label, latency_fn=latency_fn,
            pseudo_label_weight=cfg.pseudo_label_weight,
            student_val_weight=cfg.student_val_weight,
            finite_difference_scale=cfg.finite_difference_scale,
            student_aux_weight=cfg.student_aux_weight,
            keep_step_gradients=cfg.reuse_step_gradients and cfg.keep_step_gradients,
            recompute_activations=resolve_recompute_activations(cfg, self.mode),
            arch_product=cfg.arch_product)
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
        # Diagnostics (checkpointed, so that a resumed run logs the same): arch steps taken,
        # the previous grad_A F.
        self.arch_steps = keras.Variable(0, dtype="int64", trainable=False, name="arch_steps",
                                         aggregation="only_first_replica")
        self.previous_arch_grads = [
            keras.Variable(tf.zeros_like(v.value), trainable=False, name="previous_arch_grad",
                           aggregation="only_first_replica")
            for v in self.teacher_learner.arch_variables]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in (
            "teacher_loss", "student_loss", "pseudo_loss", "arch_objective",
            "arch_teacher_val_loss", "arch_student_val_loss", "arch_latency_loss",
            "arch_grad_norm", "expected_latency_ms", "arch_entropy") + ARCH_SIGNALS}
        self.teacher_miou = StreamingMeanIoU(num_classes, ignore_label, name="teacher_miou")
        self.student_miou = (StreamingMeanIoU(num_classes, ignore_label, name="student_miou")
                             if student is not None else None)
        self.built = True  # the learners are built; `fit` must not call `call` on the dict input

    # ---- phase / mode switches (rebuild the step once) ------------------------------------------
    def set_phase(self, phase: str):
        if phase not in names.PHASES:
            raise ValueError(f"phase must be one of {names.PHASES}, got {phase!r}")
        if phase != self.phase:
            self.phase = phase
            if self.train_function is not None:
                self.traces_since_build = 0
                self.make_train_function(force=True)

    def set_mode(self, mode: str):
        if mode not in names.SEARCH_MODES:
            raise ValueError(f"mode must be one of {names.SEARCH_MODES}, got {mode!r}")
        if mode != self.mode:
            self.mode = mode
            if self.train_function is not None:
                self.traces_since_build = 0
                self.make_train_function(force=True)

    def progress_keys(self):
        """The logs the current phase updates (what the progress line shows)."""
        return SEARCH_PROGRESS if self.phase == "search" else WARMUP_PROGRESS

    @property
    def metrics(self):
        metrics = list(self.trackers.values()) + [self.teacher_miou]
        if self.student_miou is not None:
            metrics.append(self.student_miou)
        return metrics

    def call(self, images, training=False):
        """Teacher probabilities at image size (for predict/inspection)."""
        outputs = self.supernet(images, training=training)
        return lrn.teacher_probabilities(outputs, images.shape[1:3])

    # ---- the step ------------------------------------------------------------------------------
    def _learning_rate(self, optimizer):
        return tf.convert_to_tensor(optimizer.learning_rate)

    def _arch_step(self, batches):
        """The arch update; returns (finite, the `StepGradients` to reuse or None, and where
        the real teacher step is to be taken at A_t (lbt with --reuse_step_gradients): the arch
        values the update started from, else None)."""
        teacher, student = self.teacher_learner, self.student_learner
        cfg = self.search_config
        every = self.diagnostic_every
        diagnose = None if every is None else tf.equal(self.arch_steps.value % every, every - 1)
        arch_t = teacher.arch_values()  # values as read now: the update does not change them
        result = self.problem.arch_gradient(
            self.mode, self.hypergrad, teacher.weight_values(), arch_t,
            student.weight_values() if student is not None else None,
            self._learning_rate(self.teacher_optimizer),
            self._learning_rate(self.student_optimizer),
            tf.convert_to_tensor(self.latency_weight.value), batches, diagnose)
        finite, grads, objective, norm, terms = unrolled.update_architecture(
            self.arch_optimizer, teacher.arch_variables, result, cfg.arch_grad_clip)
        self.trackers["arch_objective"].update_state(objective)
        self.trackers["arch_grad_norm"].update_state(norm)
        for name, value in result.parts.items():
            self.trackers[name].update_state(value)
        arch = teacher.arch_values()
        if self.problem.latency_fn is not None:
            self.trackers["expected_latency_ms"].update_state(self.problem.latency_fn(arch))
        self.trackers["arch_entropy"].update_state(arch_entropy(arch))
        self._log_signals(grads, terms, finite, diagnose)
        # The weight steps wait for the diagnostic terms as well: their tf.cond runs after the
        # hypergradient, and the real teacher pass overlapped it (FD at the paper's setting:
        # its first, diagnostic step peaked at 7.45 GB of tensors, the others at 6.55 GB).
        with lrn.after(terms):
            finite = tf.identity(finite)
        reuse = result.reuse
        if reuse is not None and not cfg.reuse_step_gradients:
            # Only what does not depend on A: the student's own data term.
            reuse = lrn.StepGradients(student_loss=reuse.student_loss,
                                      student_grads=reuse.student_grads,
                                      student_stats=reuse.student_stats)
        return finite, reuse, (arch_t if reuse is not None and cfg.reuse_step_gradients
                               else None)

    @property
    def diagnostic_every(self):
        """N of --arch_signal_every where this mode splits grad_A F (lbt), else None. The split
        runs on the last arch step of every N (9, 19, ... for 10), not the first: step 0, the
        one that traces and instantiates the step, then does not also compute the split (one
        more val pass and teacher product). Its branch is still traced and instantiated with
        the step (paper setting: the first diagnostic step is 1-3 s slower than the next;
        bench/search_step.py times both)."""
        every = self.search_config.arch_signal_every
        return every if every > 0 and self.mode not in names.FIRST_ORDER_MODES else None

    def next_diagnostic_arch_step(self):
        """The first arch step from now (arch_steps) that splits grad_A F; None without."""
        every = self.diagnostic_every
        if every is None:
            return None
        step = int(self.arch_steps.numpy())
        return step + (every - 1 - step % every)

    def _log_signals(self, grads, terms, finite, diagnose):
        """ARCH_SIGNALS of this step; the val split only on diagnostic steps."""
        t = self.trackers
        t["arch_grad_norm_latency"].update_state(lrn.global_norm(terms["latency"]))
        if "teacher_val" in terms:
            weight = 1.0 if diagnose is None else tf.cast(diagnose, grads[0].dtype)
            for name in ("teacher_val", "student_val"):
                t[f"arch_grad_norm_{name}"].update_state(lrn.global_norm(terms[name]),
                                                         sample_weight=weight)
        previous = [tf.convert_to_tensor(p.value) for p in self.previous_arch_grads]
        norms = lrn.global_norm(grads) * lrn.global_norm(previous)
        dot = tf.add_n([tf.reduce_sum(g * p) for g, p in zip(grads, previous)])
        t["arch_grad_cosine"].update_state(tf.math.divide_no_nan(dot, norms),
                                           sample_weight=tf.cast(norms > 0, grads[0].dtype))
        for variable, grad, old in zip(self.previous_arch_grads, grads, previous):
            variable.assign(tf.where(finite, grad, old))
        self.arch_steps.assign_add(1)

    def _weight_step(self, batches, reuse=None, arch_t=None):
        """The real weight steps; `reuse` (`learner.StepGradients`) supplies the pieces the arch
        step already computed, None fields are computed here: the teacher's at `arch_t` where
        given (A_t), else at the current A. Returns whether all was finite."""
        teacher, student = self.teacher_learner, self.student_learner
        problem, cfg = self.problem, self.search_config
        reuse = reuse or lrn.StepGradients()
        student_part = None
        if student is not None:
            student_part = self._student_weight_gradient(batches, reuse)
        t_loss, t_grads, t_stats = reuse.teacher_loss, reuse.teacher_grads, reuse.teacher_stats
        if t_grads is None:
            arch = arch_t if arch_t is not None else teacher.arch_values()
            # After the student's passes: their activations (ResNet-50, ~3 GB at the paper's
            # size) and the teacher's gradient (1 GB) and activations are not alive together;
            # without an order the runtime overlapped them in some runs (lpt's peak tensors
            # 5.4-7.1 GB over two runs of the same step, docs/paper_scale_log.md).
            with lrn.after(student_part), tf.name_scope("teacher_weight_step"):
                t_loss, t_grads, t_stats = problem.teacher_gradient(
                    teacher.weight_values(), arch, batches.teacher_train, "teacher weight step")
        losses_seen = [t_loss]
        updates_grads = [t_grads]
        stats = [t_stats]
        if student is not None:
            s_loss, s_grads, s_stats, pl_loss = student_part
            losses_seen += [s_loss, pl_loss]
            updates_grads.append(s_grads)
            stats.append(s_stats)
            self.trackers["student_loss"].update_state(s_loss)
            self.trackers["pseudo_loss"].update_state(pl_loss)
        self.trackers["teacher_loss"].update_state(t_loss)
        updates_grads, stats = replica_mean((updates_grads, stats))
        # Finite iff the losses, the global norms of the (mean) gradients and of the new
        # statistics are: one op per tensor instead of a check each (the graph has ~4000 of
        # them at the paper's size); a norm that overflows also counts as not finite (clipping
        # would turn those gradients into NaN).
        finite = tf.logical_and(all_finite(losses_seen),
                                tf.reduce_all([norm_finite(group) for group in stats]))
        updates = []
        learners = [(self.teacher_optimizer, teacher)]
        if student is not None:
            learners.append((self.student_optimizer, student))
        for (optimizer, learner), grads, new_stats in zip(learners, updates_grads, stats):
            grads, norm = tf.clip_by_global_norm(grads, cfg.weight_grad_clip)
            finite = tf.logical_and(finite, tf.math.is_finite(norm))
            updates.append((optimizer, grads, learner.weight_variables))
            if learner.non_trainable_variables:
                updates.append((None, new_stats, learner.non_trainable_variables))
        apply_if_finite(finite, updates)
        return finite

    def _student_weight_gradient(self, batches, reuse):
        """The student's real step's (loss, gradient incl. the pseudo-label term, statistics,
        pseudo-label loss); `reuse` supplies what the arch step computed."""
        student, problem, cfg = self.student_learner, self.problem, self.search_config
        s_weights = student.weight_values()
        s_loss, s_grads, s_stats = reuse.student_loss, reuse.student_grads, reuse.student_stats
        if s_grads is None:
            with tf.name_scope("student_pass"):
                s_loss, s_grads, s_stats = problem.student_gradient(s_weights,
                                                                    batches.student_train)
        probs, pl_loss, pl_grads = reuse.pseudo_probs, reuse.pseudo_loss, reuse.pseudo_grads
        if probs is None:  # P(T, A) on D_u; BN statistics discarded
            teacher = self.teacher_learner
            probs = problem.teacher_probs(teacher.weight_values(), teacher.arch_values(),
                                          batches.unlabeled)
        hard = cfg.pseudo_labels == "hard"
        if pl_grads is None or hard:
            # One student pass's activations alive at a time.
            with lrn.after(s_grads), tf.name_scope("pseudo_label_pass"):
                pl_loss, pl_grads = problem.pseudo_label_gradient(
                    s_weights, batches.unlabeled, tf.stop_gradient(probs), hard)
        s_grads = lrn.checked_gradients(lrn.add_scaled(s_grads, cfg.pseudo_label_weight, pl_grads),
                                        student.weight_names, "student weight step")
        return s_loss, s_grads, s_stats, pl_loss

    def train_step(self, data):
        # Traced with call ops that skip shape inference into their callees (call_shapes.py:
        # the same graph, a faster trace).
        start = time.perf_counter()
        with call_shapes.skipped():
            logs = self._search_step(data)
        if not tf.executing_eagerly():  # runs once per trace: minutes at the paper's size
            self.trace_seconds = time.perf_counter() - start
            logging.info("search step traced in %.1f s; its first call instantiates it next",
                         self.trace_seconds)
        return logs

    def _search_step(self, data):
        self.trace_count += 1  # Python side effect: runs once per trace
        self.traces_since_build += 1
        if self.traces_since_build > tf.distribute.get_strategy().num_replicas_in_sync:
            # A retrace costs as much as the first step (minutes at the paper's size).
            logging.warning("the search step is traced again (trace %d of this step function): "
                            "an input shape or Python value changed between steps",
                            self.traces_since_build)
        batches = lrn.Batches.from_dict(data)
        finite, reuse, arch_t = tf.constant(True), None, None
        if self.phase == "search":
            finite, reuse, arch_t = self._arch_step(batches)
        # After the arch step: the weight steps' clipped copies of the reused gradients (1 GB
        # for the supernet at the paper's size) are not made while the hypergradient's are alive.
        with lrn.after(finite):
            finite = tf.logical_and(finite, self._weight_step(batches, reuse, arch_t))
        self._count_skip(tf.logical_not(finite))
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
        probs = lrn.teacher_probabilities(outputs, images.shape[1:3])
        self.teacher_miou.update_state(labels, probs)
        logs = {"teacher_miou": self.teacher_miou.result()}
        if self.student is not None:
            logits = lrn.student_logits(self.student(images, training=False))
            self.student_miou.update_state(labels, logits)
            logs["student_miou"] = self.student_miou.result()
        return logs


def resolve_trace_once(cfg, mode) -> bool:
    """`search.trace_once`, where None means: on for lbt with exact or finite-difference
    products (many first-order passes of each model: the graph shrinks by half; exact's
    second-order arch product traced once for its two calls), off for the others (hvp's
    forward mode builds extra variants of the traced function; lpt/fasterseg make few
    passes)."""
    if cfg.trace_once is not None:
        return cfg.trace_once
    return mode == "lbt" and cfg.hypergrad != "hvp"


def resolve_recompute_activations(cfg, mode) -> bool:
    """`search.recompute_activations`, where None means: on for lbt, the only mode it applies
    to (config.validate)."""
    if cfg.recompute_activations is not None:
        return cfg.recompute_activations
    return mode == "lbt"


def arch_entropy(arch):
    """Mean entropy (nats) of the softmax of every row of the arch tensors: log(choices) at
    uniform, 0 once every row is decided."""
    rows = [tf.reshape(a, [-1, a.shape[-1]]) for a in arch if a.shape.rank]
    entropies = [-tf.reduce_sum(tf.nn.softmax(r) * tf.nn.log_softmax(r), -1) for r in rows]
    return tf.reduce_mean(tf.concat(entropies, 0))
