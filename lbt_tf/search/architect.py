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

    # ---- (1), (2), (3) -------------------------------------------------------------------------
    def virtual_teacher_step(self, weights, arch, xi_t, batch):
        """(1): T' (differentiable w.r.t. A when an outer tape watches A)."""
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = self.teacher_loss(weights, arch, batch)
        grads = checked_gradients(tape.gradient(loss, weights), self.teacher.weight_names,
                                  "virtual teacher step")
        return _axpy(-tf.cast(xi_t, loss.dtype), grads, weights), loss

    def virtual_student_step(self, student_weights, probs, xi_s, batch, unlabeled):
        """(2): S' given the teacher's soft pseudo-labels `probs` on D_u."""
        with tf.GradientTape() as tape:
            tape.watch(student_weights)
            loss = (self.student_loss(student_weights, batch)
                    + self.pseudo_label_weight * self.student_pseudo_loss(
                        student_weights, unlabeled, probs))
        grads = checked_gradients(tape.gradient(loss, student_weights),
                                  self.student.weight_names, "virtual student step")
        return _axpy(-tf.cast(xi_s, loss.dtype), grads, student_weights), loss

    def unrolled_objective(self, teacher_weights, arch, student_weights, xi_t, xi_s,
                           latency_weight, batches: Batches):
        """F(A) of (3) with the virtual steps (1) and (2) redone; returns (F, parts)."""
        new_teacher, _ = self.virtual_teacher_step(teacher_weights, arch, xi_t,
                                                   batches.teacher_train)
        teacher_val = self.teacher_loss(new_teacher, arch, batches.teacher_val)
        latency = self.latency_term(arch, latency_weight)
        total = teacher_val + latency
        parts = {"arch_teacher_val_loss": teacher_val, "arch_latency_loss": latency}
        if self.student is not None:
            probs = self.teacher_probs(new_teacher, arch, batches.unlabeled)
            new_student, _ = self.virtual_student_step(student_weights, probs, xi_s,
                                                       batches.student_train, batches.unlabeled)
            student_val = self.student_loss(new_student, batches.student_val)
            total = total + self.student_val_weight * student_val
            parts["arch_student_val_loss"] = student_val
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
                            latency_weight, batches: Batches):
        """lbt/exact: grad_A F through both virtual steps (nested tapes)."""
        with tf.GradientTape() as outer:
            outer.watch(arch)
            total, parts = self.unrolled_objective(teacher_weights, arch, student_weights,
                                                   xi_t, xi_s, latency_weight, batches)
        grads = checked_gradients(outer.gradient(total, arch), self.teacher.arch_names,
                                  "exact LBT hypergradient")
        return grads, total, parts

    def finite_difference_hypergradient(self, teacher_weights, arch, student_weights, xi_t,
                                        xi_s, latency_weight, batches: Batches):
        """lbt/finite_difference: the formulas of the module docstring."""
        new_teacher, _ = self.virtual_teacher_step(teacher_weights, arch, xi_t,
                                                   batches.teacher_train)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(new_teacher)
            tape.watch(arch)
            teacher_val = self.teacher_loss(new_teacher, arch, batches.teacher_val)
            latency = self.latency_term(arch, latency_weight)
            direct = teacher_val + latency
            probs = (self.teacher_probs(new_teacher, arch, batches.unlabeled)
                     if self.student is not None else None)
        v_teacher = checked_gradients(tape.gradient(teacher_val, new_teacher),
                                      self.teacher.weight_names, "FD: grad_T' L_t^val")
        grads_a = checked_gradients(tape.gradient(direct, arch), self.teacher.arch_names,
                                    "FD: grad_A L_t^val")
        dtype = teacher_val.dtype
        scale = tf.cast(self.finite_difference_scale, dtype)
        total = direct
        parts = {"arch_teacher_val_loss": teacher_val, "arch_latency_loss": latency}

        if self.student is not None:
            new_student, _ = self.virtual_student_step(
                student_weights, tf.stop_gradient(probs), xi_s, batches.student_train,
                batches.unlabeled)
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
            # d/dP of [L_soft(S + eps u; P) - L_soft(S - eps u; P)] / (2 eps) ...
            with tf.GradientTape() as probs_tape:
                probs_tape.watch(probs)
                soft_diff = (self.student_pseudo_loss(_axpy(eps_s, u, student_weights),
                                                      batches.unlabeled, probs)
                             - self.student_pseudo_loss(_axpy(-eps_s, u, student_weights),
                                                        batches.unlabeled, probs)) / (2 * eps_s)
            probs_cotangent = probs_tape.gradient(soft_diff, probs)
            # ... pulled back through the teacher's probabilities: g_soft(T'), g_soft(A).
            g_soft = tape.gradient(probs, new_teacher + list(arch),
                                   output_gradients=probs_cotangent)
            g_soft = checked_gradients(g_soft, self.teacher.weight_names + self.teacher.arch_names,
                                       "FD: d P / d(T', A)")
            coeff = tf.where(u_norm > 0, -tf.cast(xi_s, dtype) * self.pseudo_label_weight,
                             tf.zeros((), dtype))
            g_soft_t, g_soft_a = g_soft[:len(new_teacher)], g_soft[len(new_teacher):]
            v_teacher = _axpy(coeff, g_soft_t, v_teacher)
            grads_a = _axpy(coeff, g_soft_a, grads_a)
        del tape

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
        return grads_a, total, parts

    def arch_gradient(self, mode, hypergrad, teacher_weights, arch, student_weights, xi_t, xi_s,
                      latency_weight, batches: Batches):
        """Dispatch on the (static, Python) search mode; returns (grads_A, F, parts)."""
        if mode in ("fasterseg", "lpt"):
            return self.first_order_gradient(teacher_weights, arch,
                                             student_weights if mode == "lpt" else None,
                                             latency_weight, batches)
        if mode != "lbt":
            raise ValueError(f"unknown search mode {mode!r}; expected one of {MODES}")
        if hypergrad == "exact":
            return self.exact_hypergradient(teacher_weights, arch, student_weights, xi_t, xi_s,
                                            latency_weight, batches)
        if hypergrad == "finite_difference":
            return self.finite_difference_hypergradient(teacher_weights, arch, student_weights,
                                                        xi_t, xi_s, latency_weight, batches)
        raise ValueError(f"unknown hypergrad {hypergrad!r}; expected one of {HYPERGRADS}")
