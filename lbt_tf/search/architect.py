"""The architecture gradient of one LBT step, unrolled one step, as pure functions of tensors.

Notation (shared/seed/lbt-fasterseg-paper.txt §4): teacher weights T, architecture A (the
supernet's alpha/beta/gamma), student weights S, learning rates xi_t / xi_s (the optimizers'
current ones), lambda_pl = search.pseudo_label_weight, w_sv = search.student_val_weight,
lambda_lat = latency weight. P(T, A; x_u) = the teacher's probabilities on unlabeled images
(softmax of the mean of its output list, bilinearly up-sampled; second-order safe).

    (1) T' = T - xi_t grad_T L_seg(T, A; D_t^tr)
    (2) S' = S - xi_s grad_S [ L(S; D_s^tr) + lambda_pl L_soft(S; P(T', A; D_u)) ]
    (3) F(A) = L_seg(T', A; D_t^val) + lambda_lat Lat(A) + w_sv L(S'; D_s^val)
        A <- A - eta grad_A F

Every forward pass here is `stateless_call` on weight *values*; the real variables are never
assigned, and the BatchNorm statistics that the virtual passes return are discarded.

Modes (`gradient_for_mode`):
- fasterseg: grad_A [L_seg(T, A; D_t^val) + lambda_lat Lat(A)] at the current T (first order,
  FasterSeg's own search; no student).
- lpt: the same first-order gradient (xi -> 0, DARTS' "first order"): T' = T and S' = S. In this
  limit the student's val loss does not depend on A, so the student only learns from the
  pseudo-labels (real weight step) and its val loss is logged but contributes no gradient.
- lbt / exact: grad_A F through (1)-(3) by nested GradientTapes (all second-order terms).
- lbt / finite_difference: DARTS' Hessian-vector approximations (central differences), with
  u = w_sv grad_{S'} L(S'; D_s^val), eps_s = c / ||u||, c = search.finite_difference_scale:
    g_soft(theta)  = [grad_theta L_soft(S + eps_s u; P(theta)) - grad_theta L_soft(S - eps_s u; P(theta))]
                     / (2 eps_s),      theta = (T', A)        (~ d^2 L_soft / d theta dS . u)
    v              = grad_{T'} L_seg(T', A; D_t^val) - xi_s lambda_pl g_soft(T')
    eps_t          = c / ||v||
    h_A            = [grad_A L_seg(T + eps_t v, A; D_t^tr) - grad_A L_seg(T - eps_t v, A; D_t^tr)]
                     / (2 eps_t)                                (~ d^2 L_seg / dA dT . v)
    grad_A F      ~= grad_A L_seg(T', A; D_t^val) + lambda_lat grad_A Lat(A)
                     - xi_s lambda_pl g_soft(A) - xi_t h_A
  A zero ||u|| or ||v|| means that second-order term is exactly zero: it is skipped (no 0/0).
A gradient that comes back None (a broken path) raises `HypergradientError` naming the variable;
it is never replaced by zeros.

Reuse (`StepGradients`, lbt modes): the unrolled step already computes, at the step's starting
point (T, A, S) and on the real steps' batches, grad_T L_seg(T, A; D_t^tr) with its BatchNorm
statistics, grad_S L(S; D_s^tr) with its statistics, and grad_S L_soft(S; P(T', A; D_u)); the
real weight steps can take them instead of recomputing them (see lbt_model).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import tensorflow as tf

from lbt_tf.errors import LbtError
from lbt_tf.ops import losses
from lbt_tf.ops.resize import resize_bilinear

MODES = ("fasterseg", "lpt", "lbt")
HYPERGRADS = ("exact", "finite_difference")


class HypergradientError(LbtError, RuntimeError):
    """A gradient on the LBT path is None: some op broke the (second-order) path."""


def checked_gradients(grads, variables_names: Sequence[str], what: str):
    """Raises naming the first variable whose gradient is None."""
    for grad, name in zip(grads, variables_names):
        if grad is None:
            raise HypergradientError(
                f"{what}: gradient w.r.t. {name} is None (an op on the path has no "
                "(second-order) gradient; see shared/notes/second-order-tf.md)")
    return list(grads)


class Learner:
    """A Keras model seen as a pure function of (weight values, arch values, x).

    `arch_variables` (the supernet's alpha/beta/gamma) are split out of
    `model.trainable_variables` by identity so that A and T can be differentiated separately.
    """

    def __init__(self, model, arch_variables: Sequence = ()):
        self.model = model
        arch_ids = {id(v) for v in arch_variables}
        trainable = list(model.trainable_variables)
        self.arch_positions = [i for i, v in enumerate(trainable) if id(v) in arch_ids]
        self.weight_positions = [i for i, v in enumerate(trainable) if id(v) not in arch_ids]
        if len(self.arch_positions) != len(arch_ids):
            raise HypergradientError("some arch variables are not trainable variables of "
                                     f"{model.name}")
        self.arch_variables = [trainable[i] for i in self.arch_positions]
        self.weight_variables = [trainable[i] for i in self.weight_positions]
        self.non_trainable_variables = list(model.non_trainable_variables)
        self.arch_names = [v.path for v in self.arch_variables]
        self.weight_names = [v.path for v in self.weight_variables]

    def weight_values(self):
        return [tf.convert_to_tensor(v.value) for v in self.weight_variables]

    def arch_values(self):
        return [tf.convert_to_tensor(v.value) for v in self.arch_variables]

    def non_trainable_values(self):
        return [tf.convert_to_tensor(v.value) for v in self.non_trainable_variables]

    def forward(self, weights, arch, x, training=True, non_trainable=None):
        """(outputs, new non-trainable values) of the model at the given values."""
        values = [None] * (len(self.weight_positions) + len(self.arch_positions))
        for pos, value in zip(self.weight_positions, weights):
            values[pos] = value
        for pos, value in zip(self.arch_positions, arch):
            values[pos] = value
        if non_trainable is None:
            non_trainable = self.non_trainable_values()
        return self.model.stateless_call(values, non_trainable, x, training=training)


def teacher_seg_loss(outputs, labels, ignore_label):
    """FasterSeg's search loss: sum of 1/8-resolution CEs over the supernet's output list."""
    return tf.add_n([losses.segmentation_ce(logits, labels, ignore_label) for logits in outputs])


def teacher_probabilities(outputs, size):
    """Soft pseudo-labels: softmax of the mean logits, up-sampled (twice differentiable)."""
    mean_logits = tf.add_n(list(outputs)) / float(len(outputs))
    return resize_bilinear(tf.nn.softmax(mean_logits, axis=-1), size)


def student_logits(outputs):
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def student_seg_loss(outputs, labels, ignore_label, aux_weight=0.0):
    """CE of the student's logits, plus aux_weight x the auxiliary head's CE when it has one
    (its weights would otherwise get a None gradient)."""
    loss = losses.segmentation_ce(student_logits(outputs), labels, ignore_label)
    aux = outputs.get("aux_logits") if isinstance(outputs, dict) else None
    if aux is not None and aux_weight:
        loss = loss + aux_weight * losses.segmentation_ce(aux, labels, ignore_label)
    return loss


def _axpy(alpha, xs, ys):
    return [y + alpha * x for x, y in zip(xs, ys)]


def global_norm(tensors):
    return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors]))


@dataclasses.dataclass
class Batches:
    """One element of the zipped search input (see lbt_model.zip_search_datasets)."""
    teacher_train: tuple
    teacher_val: tuple
    student_train: Optional[tuple] = None
    student_val: Optional[tuple] = None
    unlabeled: Optional[tf.Tensor] = None

    @staticmethod
    def from_dict(data: Dict) -> "Batches":
        return Batches(**{k: data.get(k) for k in
                          ("teacher_train", "teacher_val", "student_train", "student_val",
                           "unlabeled")})


@dataclasses.dataclass
class StepGradients:
    """First-order pieces of the unrolled step, at (T, A, S), for the real weight steps."""
    teacher_loss: Optional[tf.Tensor] = None         # L_seg(T, A; D_t^tr)
    teacher_grads: Optional[List[tf.Tensor]] = None  # its gradient w.r.t. T
    teacher_stats: Optional[List[tf.Tensor]] = None  # the teacher's BatchNorm statistics
    student_loss: Optional[tf.Tensor] = None        # L(S; D_s^tr)
    student_grads: Optional[List] = None            # its gradient w.r.t. S
    student_stats: Optional[List[tf.Tensor]] = None  # the student's statistics of that pass
    pseudo_probs: Optional[tf.Tensor] = None        # P(T', A; D_u)
    pseudo_loss: Optional[tf.Tensor] = None         # L_soft(S; P(T', A; D_u))
    pseudo_grads: Optional[List] = None             # its gradient w.r.t. S (None: no path)


def add_scaled(grads, scale, others):
    """grads + scale * others, where an entry of `others` may be None (no path to that weight:
    the student's aux head has none to the pseudo-label loss)."""
    return [g if o is None else g + scale * o for g, o in zip(grads, others)]


@dataclasses.dataclass
class SearchProblem:
    """The learners and the weights of the LBT objective (1)-(3)."""
    teacher: Learner
    student: Optional[Learner]
    ignore_label: int
    latency_fn: Optional[Callable] = None   # arch values -> expected latency (ms), differentiable
    pseudo_label_weight: float = 1.0
    student_val_weight: float = 1.0
    finite_difference_scale: float = 0.01
    student_aux_weight: float = 0.0         # aux-head CE in the student's loss L(S; D)

    # ---- losses as pure functions of values -------------------------------------------------
    def teacher_loss(self, weights, arch, batch):
        images, labels = batch
        outputs, _ = self.teacher.forward(weights, arch, images)
        return teacher_seg_loss(outputs, labels, self.ignore_label)

    def teacher_probs(self, weights, arch, images):
        outputs, _ = self.teacher.forward(weights, arch, images)
        return teacher_probabilities(outputs, images.shape[1:3])

    def student_loss(self, weights, batch):
        """L(S; D): CE of the logits + student_aux_weight x CE of the aux head (if any), the same
        on train and val data (so every student weight is on the path of every term)."""
        images, labels = batch
        outputs, _ = self.student.forward(weights, [], images)
        return student_seg_loss(outputs, labels, self.ignore_label, self.student_aux_weight)

    def student_pseudo_loss(self, weights, images, probs):
        outputs, _ = self.student.forward(weights, [], images)
        return losses.soft_ce(student_logits(outputs), probs)

    def latency_term(self, arch, latency_weight):
        if self.latency_fn is None:
            return tf.zeros((), arch[0].dtype)
        return tf.cast(latency_weight, arch[0].dtype) * self.latency_fn(arch)

    # ---- first-order pieces (also reused by the real weight steps) ---------------------------
    def teacher_train_gradient(self, weights, arch, batch, what="teacher step"):
        """(L_seg(T, A; batch), grad_T, new BatchNorm statistics): one forward, one backward."""
        images, labels = batch
        with tf.GradientTape() as tape:
            tape.watch(weights)
            outputs, stats = self.teacher.forward(weights, arch, images)
            loss = teacher_seg_loss(outputs, labels, self.ignore_label)
        grads = checked_gradients(tape.gradient(loss, weights), self.teacher.weight_names, what)
        return loss, grads, stats

    def student_train_gradient(self, weights, batch):
        """(L(S; batch), grad_S, new BatchNorm statistics); grads may hold None (checked once
        summed with the pseudo-label term, as a single tape over the sum would)."""
        images, labels = batch
        with tf.GradientTape() as tape:
            tape.watch(weights)
            outputs, stats = self.student.forward(weights, [], images)
            loss = student_seg_loss(outputs, labels, self.ignore_label, self.student_aux_weight)
        return loss, tape.gradient(loss, weights), stats

    def pseudo_label_gradient(self, weights, images, probs):
        """(L_soft(S; probs), grad_S), None where a weight has no path (the aux head)."""
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = self.student_pseudo_loss(weights, images, probs)
        return loss, tape.gradient(loss, weights)

    # ---- (1), (2), (3) -------------------------------------------------------------------------
    def virtual_teacher_step(self, weights, arch, xi_t, batch):
        """(1): T' (differentiable w.r.t. A when an outer tape watches A)."""
        loss, grads, _ = self.teacher_train_gradient(weights, arch, batch, "virtual teacher step")
        return _axpy(-tf.cast(xi_t, loss.dtype), grads, weights), loss

    def virtual_student_step(self, student_weights, probs, xi_s, batch, unlabeled,
                             train_gradient=None):
        """(2): S' given the teacher's soft pseudo-labels `probs` on D_u. `train_gradient`: the
        (loss, grads, stats) of L(S; D_s^tr) when already computed (it does not depend on A).
        Returns (S', loss, pseudo-label (loss, grads))."""
        if train_gradient is None:
            train_gradient = self.student_train_gradient(student_weights, batch)
        train_loss, train_grads, _ = train_gradient
        pl_loss, pl_grads = self.pseudo_label_gradient(student_weights, unlabeled, probs)
        grads = checked_gradients(add_scaled(train_grads, self.pseudo_label_weight, pl_grads),
                                  self.student.weight_names, "virtual student step")
        loss = train_loss + self.pseudo_label_weight * pl_loss
        return _axpy(-tf.cast(xi_s, loss.dtype), grads, student_weights), loss, (pl_loss, pl_grads)

    def _unrolled(self, teacher_weights, arch, student_weights, xi_t, xi_s, latency_weight,
                  batches: Batches):
        """(F, parts, StepGradients) of (1)-(3), every pass done once."""
        t_loss, t_grads, t_stats = self.teacher_train_gradient(
            teacher_weights, arch, batches.teacher_train, "virtual teacher step")
        new_teacher = _axpy(-tf.cast(xi_t, t_loss.dtype), t_grads, teacher_weights)
        reuse = StepGradients(t_loss, t_grads, t_stats)
        teacher_val = self.teacher_loss(new_teacher, arch, batches.teacher_val)
        latency = self.latency_term(arch, latency_weight)
        total = teacher_val + latency
        parts = {"arch_teacher_val_loss": teacher_val, "arch_latency_loss": latency}
        if self.student is not None:
            probs = self.teacher_probs(new_teacher, arch, batches.unlabeled)
            s_train = self.student_train_gradient(student_weights, batches.student_train)
            new_student, _, (pl_loss, pl_grads) = self.virtual_student_step(
                student_weights, probs, xi_s, batches.student_train, batches.unlabeled, s_train)
            student_val = self.student_loss(new_student, batches.student_val)
            total = total + self.student_val_weight * student_val
            parts["arch_student_val_loss"] = student_val
            reuse.student_loss, reuse.student_grads, reuse.student_stats = s_train
            reuse.pseudo_probs, reuse.pseudo_loss, reuse.pseudo_grads = probs, pl_loss, pl_grads
        return total, parts, reuse

    def unrolled_objective(self, teacher_weights, arch, student_weights, xi_t, xi_s,
                           latency_weight, batches: Batches):
        """F(A) of (3) with the virtual steps (1) and (2) redone; returns (F, parts)."""
        total, parts, _ = self._unrolled(teacher_weights, arch, student_weights, xi_t, xi_s,
                                         latency_weight, batches)
        return total, parts

    # ---- gradients of A ------------------------------------------------------------------------
    def first_order_gradient(self, teacher_weights, arch, student_weights, latency_weight,
                             batches: Batches):
        """fasterseg / lpt: grad_A [L_seg(T, A; D_t^val) + lambda_lat Lat(A)] at the current T."""
        with tf.GradientTape() as tape:
            tape.watch(arch)
            teacher_val = self.teacher_loss(teacher_weights, arch, batches.teacher_val)
            latency = self.latency_term(arch, latency_weight)
            total = teacher_val + latency
        grads = checked_gradients(tape.gradient(total, arch), self.teacher.arch_names,
                                  "first-order arch gradient")
        parts = {"arch_teacher_val_loss": teacher_val, "arch_latency_loss": latency}
        if self.student is not None and student_weights is not None:
            # Logged only: at S' = S the student's val loss does not depend on A.
            parts["arch_student_val_loss"] = self.student_loss(student_weights,
                                                               batches.student_val)
        return grads, total, parts

    def exact_hypergradient(self, teacher_weights, arch, student_weights, xi_t, xi_s,
                            latency_weight, batches: Batches, return_step_gradients=False):
        """lbt/exact: grad_A F through both virtual steps (nested tapes); with
        `return_step_gradients`, also the `StepGradients` of the pass."""
        with tf.GradientTape() as outer:
            outer.watch(arch)
            total, parts, reuse = self._unrolled(teacher_weights, arch, student_weights,
                                                 xi_t, xi_s, latency_weight, batches)
        grads = checked_gradients(outer.gradient(total, arch), self.teacher.arch_names,
                                  "exact LBT hypergradient")
        return (grads, total, parts, reuse) if return_step_gradients else (grads, total, parts)

    def finite_difference_hypergradient(self, teacher_weights, arch, student_weights, xi_t,
                                        xi_s, latency_weight, batches: Batches,
                                        return_step_gradients=False):
        """lbt/finite_difference: the formulas of the module docstring. Passes: the virtual
        steps, one backward of L_t^val and one of P (to (T', A) each), two forwards of the
        student at S +- eps u, and the two teacher passes at T +- eps v."""
        t_loss, t_grads, t_stats = self.teacher_train_gradient(
            teacher_weights, arch, batches.teacher_train, "virtual teacher step")
        dtype = t_loss.dtype
        new_teacher = _axpy(-tf.cast(xi_t, dtype), t_grads, teacher_weights)
        reuse = StepGradients(t_loss, t_grads, t_stats)
        num_t = len(new_teacher)
        teacher_and_arch = new_teacher + list(arch)
        names = self.teacher.weight_names + self.teacher.arch_names
        with tf.GradientTape() as val_tape:
            val_tape.watch(teacher_and_arch)
            teacher_val = self.teacher_loss(new_teacher, arch, batches.teacher_val)
            latency = self.latency_term(arch, latency_weight)
            direct = teacher_val + latency
        # One backward gives v's first term (w.r.t. T') and grad_A of the direct terms.
        val_grads = checked_gradients(val_tape.gradient(direct, teacher_and_arch), names,
                                      "FD: grad_(T', A) L_t^val")
        v_teacher, grads_a = val_grads[:num_t], val_grads[num_t:]
        scale = tf.cast(self.finite_difference_scale, dtype)
        total = direct
        parts = {"arch_teacher_val_loss": teacher_val, "arch_latency_loss": latency}

        if self.student is not None:
            with tf.GradientTape() as probs_tape:
                probs_tape.watch(teacher_and_arch)
                probs = self.teacher_probs(new_teacher, arch, batches.unlabeled)
            s_train = self.student_train_gradient(student_weights, batches.student_train)
            new_student, _, (pl_loss, pl_grads) = self.virtual_student_step(
                student_weights, tf.stop_gradient(probs), xi_s, batches.student_train,
                batches.unlabeled, s_train)
            reuse.student_loss, reuse.student_grads, reuse.student_stats = s_train
            reuse.pseudo_probs, reuse.pseudo_loss, reuse.pseudo_grads = probs, pl_loss, pl_grads
            with tf.GradientTape() as student_tape:
                student_tape.watch(new_student)
                student_val = self.student_loss(new_student, batches.student_val)
            u = checked_gradients(student_tape.gradient(student_val, new_student),
                                  self.student.weight_names, "FD: grad_S' L_s^val")
            u = [self.student_val_weight * g for g in u]
            total = total + self.student_val_weight * student_val
            parts["arch_student_val_loss"] = student_val
            u_norm = global_norm(u)
            eps_s = scale / tf.maximum(u_norm, tf.constant(1e-30, dtype))
            # d/dP of [L_soft(S + eps u; P) - L_soft(S - eps u; P)] / (2 eps): two student
            # forwards; the tape records only the loss ops after the logits.
            with tf.GradientTape() as soft_tape:
                soft_tape.watch(probs)
                soft_diff = (self.student_pseudo_loss(_axpy(eps_s, u, student_weights),
                                                      batches.unlabeled, probs)
                             - self.student_pseudo_loss(_axpy(-eps_s, u, student_weights),
                                                        batches.unlabeled, probs)) / (2 * eps_s)
            probs_cotangent = soft_tape.gradient(soft_diff, probs)
            # ... pulled back through the teacher's probabilities: g_soft(T'), g_soft(A).
            g_soft = checked_gradients(
                probs_tape.gradient(probs, teacher_and_arch, output_gradients=probs_cotangent),
                names, "FD: d P / d(T', A)")
            coeff = tf.where(u_norm > 0, -tf.cast(xi_s, dtype) * self.pseudo_label_weight,
                             tf.zeros((), dtype))
            v_teacher = _axpy(coeff, g_soft[:num_t], v_teacher)
            grads_a = _axpy(coeff, g_soft[num_t:], grads_a)

        v_norm = global_norm(v_teacher)
        eps_t = scale / tf.maximum(v_norm, tf.constant(1e-30, dtype))

        def arch_grad_at(weights):
            with tf.GradientTape() as t:
                t.watch(arch)
                loss = self.teacher_loss(weights, arch, batches.teacher_train)
            return checked_gradients(t.gradient(loss, arch), self.teacher.arch_names,
                                     "FD: grad_A L_t^tr(T +- eps v)")

        plus = arch_grad_at(_axpy(eps_t, v_teacher, teacher_weights))
        minus = arch_grad_at(_axpy(-eps_t, v_teacher, teacher_weights))
        coeff_t = tf.where(v_norm > 0, -tf.cast(xi_t, dtype) / (2 * eps_t), tf.zeros((), dtype))
        grads_a = [g + coeff_t * (p - m) for g, p, m in zip(grads_a, plus, minus)]
        return ((grads_a, total, parts, reuse) if return_step_gradients
                else (grads_a, total, parts))

    def arch_gradient(self, mode, hypergrad, teacher_weights, arch, student_weights, xi_t, xi_s,
                      latency_weight, batches: Batches, return_step_gradients=False):
        """Dispatch on the (static, Python) search mode; returns (grads_A, F, parts), and with
        `return_step_gradients` a fourth item: the `StepGradients` (None in fasterseg/lpt,
        whose first-order gradient computes none of them)."""
        if mode in ("fasterseg", "lpt"):
            result = self.first_order_gradient(teacher_weights, arch,
                                               student_weights if mode == "lpt" else None,
                                               latency_weight, batches)
            return result + (None,) if return_step_gradients else result
        if mode != "lbt":
            raise ValueError(f"unknown search mode {mode!r}; expected one of {MODES}")
        args = (teacher_weights, arch, student_weights, xi_t, xi_s, latency_weight, batches)
        if hypergrad == "exact":
            return self.exact_hypergradient(*args, return_step_gradients=return_step_gradients)
        if hypergrad == "finite_difference":
            return self.finite_difference_hypergradient(
                *args, return_step_gradients=return_step_gradients)
        raise ValueError(f"unknown hypergrad {hypergrad!r}; expected one of {HYPERGRADS}")
