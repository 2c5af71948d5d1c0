"""The LBT architecture update, unrolled one step (shared/seed/lbt-fasterseg-paper.txt §4):
    (1) T' = T - xi_t grad_T L(T, A; D_t^tr)                                 virtual_teacher_step
    (2) S' = S - xi_s grad_S [L(S; D_s^tr) + lambda L_soft(S; P(T', A; D_u))] virtual_student_step
    (3) F(A) = L(T', A; D_t^val) + w_sv L(S'; D_s^val) + lambda_lat Lat(A)     unrolled_objective
        A <- A - eta grad_A F                         unrolled_hypergradient, update_architecture

xi: the weight optimizers' current learning rates; lambda = pseudo_label_weight; w_sv =
student_val_weight; P: the teacher's soft pseudo-labels. fasterseg/lpt: first order (T' = T,
S' = S: the student term vanishes, its val loss is only logged); lbt: DARTS' form (darts.py), its
two second-order products by reverse-over-reverse (reverse_over_reverse.py: exact),
forward-over-reverse (hvp.py: exact) or central differences (finite_difference.py);
`unrolled_hypergradient`, nested tapes around all of (1)-(3), is the definition they are tested
against. A None gradient raises HypergradientError, never becomes zero. `terms` splits grad_A F
into teacher val / student val / latency (own tape); the val split costs one more backward, so
it is done only where `diagnose` is true."""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import tensorflow as tf

from lbt_tf import names
from lbt_tf.config import SearchConfig
from lbt_tf.search import learner as lrn
from lbt_tf.search import stagewise
from lbt_tf.search.finite_difference import finite_difference_hypergradient
from lbt_tf.search.hvp import hvp_hypergradient
from lbt_tf.search.learner import ArchGradient, Batches, Learner, StepGradients, checked_gradients
from lbt_tf.search.reverse_over_reverse import exact_hypergradient
from lbt_tf.search.updates import all_finite, apply_if_finite, replica_mean


@dataclasses.dataclass
class SearchProblem:
    """The learners and the weights of the LBT objective (1)-(3)."""
    teacher: Learner
    student: Optional[Learner]
    ignore_label: int
    latency_fn: Optional[Callable] = None   # arch values -> expected latency (ms), differentiable
    pseudo_label_weight: float = 1.0
    student_val_weight: float = 1.0
    finite_difference_scale: float = SearchConfig.finite_difference_scale
    student_aux_weight: float = 0.0         # aux-head CE in the student's loss L(S; D)
    # Whether the virtual teacher step's gradient is handed on (StepGradients) for the real step
    # to reuse; without, it dies once T' exists and the real step recomputes it.
    keep_step_gradients: bool = True
    # darts.py's val passes at T' keep no activations: each one's backward redoes its forward.
    recompute_activations: bool = False
    arch_product: str = "whole"             # names.ARCH_PRODUCTS (exact's and FD's teacher product)

    def teacher_loss(self, weights, arch, batch, inline=False):
        outputs, _ = self.teacher.forward(weights, arch, batch[0], inline=inline)
        return lrn.teacher_seg_loss(outputs, batch[1], self.ignore_label)

    def teacher_probs(self, weights, arch, images):
        outputs, _ = self.teacher.forward(weights, arch, images)
        return lrn.teacher_probabilities(outputs, images.shape[1:3])

    def teacher_val_and_probs(self, weights, arch, batch, images):
        """(L(T', A; batch), P(T', A; images)) as darts.py differentiates them together (without
        recompute_activations). With trace_once one traced function: its backward is then one
        call that sums the two paths' gradients w.r.t. T' inside (two calls' backwards return a
        whole gradient list each, 1 GB at the paper's size, both alive before their sum)."""
        def val_and_probs(weights, arch, val_images, val_labels, images):
            outputs, _ = self.teacher.forward(weights, arch, val_images, inline=True)
            loss = lrn.teacher_seg_loss(outputs, val_labels, self.ignore_label)
            with lrn.after(loss):  # one pass's activations made at a time
                outputs, _ = self.teacher.forward(weights, arch, images, inline=True)
            return loss, lrn.teacher_probabilities(outputs, images.shape[1:3])

        return self.teacher.traced("val_and_probs", val_and_probs)(list(weights), list(arch),
                                                                    *batch, images)

    def student_loss(self, weights, batch):
        outputs, _ = self.student.forward(weights, [], batch[0])
        return lrn.student_seg_loss(outputs, batch[1], self.ignore_label, self.student_aux_weight)

    def teacher_gradient(self, weights, arch, batch, what="teacher step"):
        """(L(T, A; batch), grad_T, new BatchNorm statistics): one forward, one backward."""
        with tf.GradientTape() as tape:
            tape.watch(weights)
            outputs, stats = self.teacher.forward(weights, arch, batch[0])
            loss = lrn.teacher_seg_loss(outputs, batch[1], self.ignore_label)
        grads = tape.gradient(loss, weights)
        return loss, checked_gradients(grads, self.teacher.weight_names, what), stats

    def teacher_loss_gradient(self, weights, arch, batch, what, weights_too=False):
        """(L(T, A; batch), grad_A, or grad_(T, A) with `weights_too`): forward and backward as
        one pass; with trace_once one traced function per kind whose forward is inline, so that
        its backward computes no gradient it does not return (the traced forward's backward
        computes every input's: 1 GB and the filter-gradient convolutions at the paper's size,
        then dropped) and frees each activation once used. Used by FD's 2-4 perturbed passes
        (grad_A) and darts.py's recomputed val pass without a student (grad_(T', A)); not by
        lpt's single val
        pass, where the extra function's graph cost more memory than it saved (demo config at
        F=12, trace_once: lpt peak 3.9 GB with it, 3.5 GB without)."""
        def loss_and_gradient(weights, arch, images, labels):
            watched = (list(weights) if weights_too else []) + list(arch)
            with tf.GradientTape() as tape:
                tape.watch(watched)
                outputs, _ = self.teacher.forward(weights, arch, images, inline=True)
                loss = lrn.teacher_seg_loss(outputs, labels, self.ignore_label)
            return loss, tape.gradient(loss, watched)

        loss, grads = self.teacher.traced(("loss_gradient", weights_too), loss_and_gradient)(
            list(weights), list(arch), *batch)
        names = (self.teacher.weight_names if weights_too else []) + self.teacher.arch_names
        return loss, checked_gradients(grads, names, what)

    def teacher_probs_checkpointed(self, weights, arch, images):
        """(P(T, A; images), the supernet's stage inputs of that forward): P's values for the
        student stages and what `recomputed_val_gradient` redoes its backward from
        (stagewise.py); with trace_once one traced function."""
        def probs_checkpointed(weights, arch, images):
            outputs, checkpoints = stagewise.forward(self.teacher, weights, arch, images)
            return lrn.teacher_probabilities(outputs, images.shape[1:3]), checkpoints

        return self.teacher.traced("probs_checkpointed", probs_checkpointed)(
            list(weights), list(arch), images)

    def stagewise_loss_gradient(self, weights, arch, batch, what, weights_too=False,
                                direction=None, step=None):
        """(L(W, A; batch), grad_A L or with `weights_too` grad_(T, A) L) at W = T, or
        W = T + step direction, one supernet stage at a time (stagewise.py): a forward keeping
        the stage inputs, then a backward redoing each stage (W made inside each stage: no
        whole perturbed copy of T). One stage's activations alive instead of a pass's, for one
        more forward. Used by finite differences' perturbed passes and the diagnostic val pass
        with --arch_product=layerwise. With trace_once one traced function per kind."""
        def loss_gradient(weights, arch, images, labels, *perturbation):
            stage_weights = None
            if perturbation:
                direction, step = perturbation
                stage_weights = lambda i, value: value + step * direction[i]
            outputs, checkpoints = stagewise.forward(self.teacher, weights, arch, images,
                                                     stage_weights=stage_weights)
            head = lambda outputs: lrn.teacher_seg_loss(outputs, labels, self.ignore_label)
            weight_grads, arch_grads = stagewise.backward(
                self.teacher, weights, arch, images, checkpoints, head, None, what,
                stage_weights=stage_weights, weights_too=weights_too)
            return head(outputs), (weight_grads if weights_too else []) + arch_grads

        perturbation = () if direction is None else (list(direction), step)
        loss, grads = self.teacher.traced(
            ("stagewise_loss_gradient", weights_too, direction is None), loss_gradient)(
            list(weights), list(arch), *batch, *perturbation)
        names = (self.teacher.weight_names if weights_too else []) + self.teacher.arch_names
        return loss, checked_gradients(grads, names, what)

    def recomputed_val_gradient(self, weights, arch, val_batch, images, checkpoints, probs_seed,
                                what):
        """(L(T', A; val_batch), d/d(T', A) [that + probs_seed . P(T', A; images)]) (darts.py
        with recompute_activations), in one function (traced with trace_once): L_t^val's pass
        (forward and backward) first, then P's backward one supernet stage at a time from the
        stage inputs its earlier forward kept (`teacher_probs_checkpointed`, stagewise.py), each
        stage's gradient added to L_t^val's as it is made. So T', one gradient list and at most
        one pass's activations are alive, and P's pass costs no more arithmetic than redoing it
        whole. In the other order P's gradient list waited beside L_t^val's whole activations:
        the exact step's peak at the paper's setting (docs/paper_scale_log.md). `tf.recompute_grad`
        around both passes started the recomputation as soon as its *first* output's gradient
        existed; L_t^val's is a constant, so the recomputed activations (and a copy of T') waited
        through the student stages for P's gradient (2.6 GB of an 8.9 GB peak;
        docs/paper_scale_log.md)."""
        def val_gradient(weights, arch, val_images, val_labels, images, checkpoints,
                         probs_seed):
            watched = list(weights) + list(arch)
            with tf.name_scope("val_pass"):
                with tf.GradientTape() as tape:
                    tape.watch(watched)
                    outputs, _ = self.teacher.forward(weights, arch, val_images, inline=True)
                    loss = lrn.teacher_seg_loss(outputs, val_labels, self.ignore_label)
                val_grads = tape.gradient(loss, watched)
            with tf.name_scope("probs_pass"), lrn.after(val_grads):
                weight_grads, arch_grads = stagewise.backward(
                    self.teacher, weights, arch, images, checkpoints,
                    lambda outputs: lrn.teacher_probabilities(outputs, images.shape[1:3]),
                    probs_seed, what)
            return loss, [stagewise.sum_gradients(g, p)
                          for g, p in zip(val_grads, weight_grads + arch_grads)]

        loss, grads = self.teacher.traced("val_gradient", val_gradient)(
            list(weights), list(arch), *val_batch, images, checkpoints, probs_seed)
        return loss, checked_gradients(grads, self.teacher.weight_names + self.teacher.arch_names,
                                       what)

    def student_gradient(self, weights, batch):
        """(L(S; batch), grad_S, new statistics); grads may hold None (checked once summed with
        the pseudo-label term)."""
        with tf.GradientTape() as tape:
            tape.watch(weights)
            outputs, stats = self.student.forward(weights, [], batch[0])
            loss = lrn.student_seg_loss(outputs, batch[1], self.ignore_label,
                                        self.student_aux_weight)
        return loss, tape.gradient(loss, weights), stats

    def pseudo_label_gradient(self, weights, images, probs, hard=False):
        """(L_pl(S; probs), grad_S) of the virtual and the real student step; None where a
        weight has no path (the aux head). `hard`: CE of the argmax (real step only)."""
        with tf.GradientTape() as tape:
            tape.watch(weights)
            outputs, _ = self.student.forward(weights, [], images)
            loss = lrn.pseudo_label_loss(lrn.student_logits(outputs), probs, hard,
                                         self.ignore_label)
        return loss, tape.gradient(loss, weights)

    def latency_gradient(self, arch, latency_weight):
        """(lambda_lat Lat(A), its gradient): a tape of its own, cheap."""
        if self.latency_fn is None:
            return tf.zeros((), arch[0].dtype), [tf.zeros_like(a) for a in arch]
        with tf.GradientTape() as tape:
            tape.watch(arch)
            latency = tf.cast(latency_weight, arch[0].dtype) * self.latency_fn(arch)
        return latency, checked_gradients(tape.gradient(latency, arch), self.teacher.arch_names,
                                          "latency gradient")

    # ---- (1), (2), (3) -------------------------------------------------------------------------
    def virtual_teacher_step(self, weights, arch, xi_t, batch):
        """(1): T' (differentiable w.r.t. A when an outer tape watches A), and the pieces (the
        gradient and statistics only with keep_step_gradients)."""
        loss, grads, stats = self.teacher_gradient(weights, arch, batch, "virtual teacher step")
        new_teacher = lrn.axpy(-tf.cast(xi_t, loss.dtype), grads, weights)
        if not self.keep_step_gradients:
            return new_teacher, StepGradients(teacher_loss=loss)
        return new_teacher, StepGradients(loss, grads, stats)

    def virtual_student_step(self, weights, probs, xi_s, batches: Batches, reuse: StepGradients):
        """(2): S' given the teacher's soft pseudo-labels `probs` on D_u; fills `reuse`."""
        loss, grads, stats = self.student_gradient(weights, batches.student_train)
        with lrn.after(grads):  # one student pass's activations alive at a time
            pl_loss, pl_grads = self.pseudo_label_gradient(weights, batches.unlabeled, probs)
        total = checked_gradients(lrn.add_scaled(grads, self.pseudo_label_weight, pl_grads),
                                  self.student.weight_names, "virtual student step")
        reuse.student_loss, reuse.student_grads, reuse.student_stats = loss, grads, stats
        reuse.pseudo_probs, reuse.pseudo_loss, reuse.pseudo_grads = probs, pl_loss, pl_grads
        return lrn.axpy(-tf.cast(xi_s, loss.dtype), total, weights)

    def val_terms(self, teacher_weights, arch, student_weights, xi_t, xi_s, batches: Batches):
        """(3)'s data terms (L(T', A; D_t^val), L(S'; D_s^val) or None, StepGradients)."""
        new_teacher, reuse = self.virtual_teacher_step(teacher_weights, arch, xi_t,
                                                       batches.teacher_train)
        teacher_val = self.teacher_loss(new_teacher, arch, batches.teacher_val)
        if self.student is None:
            return teacher_val, None, reuse
        probs = self.teacher_probs(new_teacher, arch, batches.unlabeled)
        teacher_val, probs = lrn.backward_together(teacher_val, probs)
        new_student = self.virtual_student_step(student_weights, probs, xi_s, batches, reuse)
        return teacher_val, self.student_loss(new_student, batches.student_val), reuse

    def unrolled_objective(self, teacher_weights, arch, student_weights, xi_t, xi_s,
                           latency_weight, batches: Batches):
        """(3): (F(A), its parts) with the virtual steps (1) and (2) redone."""
        teacher_val, student_val, _ = self.val_terms(teacher_weights, arch, student_weights,
                                                     xi_t, xi_s, batches)
        latency, _ = self.latency_gradient(arch, latency_weight)
        result = self.result([], None, teacher_val, student_val, latency, [])
        return result.objective, result.parts

    def unrolled_hypergradient(self, teacher_weights, arch, student_weights, xi_t, xi_s,
                               latency_weight, batches: Batches, diagnose=None):
        """grad_A F through both virtual steps by the definition: nested tapes around all of
        (1)-(3), every second-order term. The reference the search's methods are tested against
        (all are darts.py's form); not used by the search itself: its one outer tape keeps
        every pass of the step for one backward (13.4 GB of tensors at the paper's setting)."""
        with tf.GradientTape() as outer:
            outer.watch(arch)
            teacher_val, student_val, reuse = self.val_terms(teacher_weights, arch,
                                                             student_weights, xi_t, xi_s, batches)
            val = teacher_val if student_val is None else (
                teacher_val + self.student_val_weight * student_val)
        grads = checked_gradients(outer.gradient(val, arch), self.teacher.arch_names,
                                  "exact LBT hypergradient")
        teacher_grads = None
        if diagnose is not None:
            with lrn.after(grads):  # not beside the main backward's tensors (as in darts.py)
                teacher_grads = tf.cond(
                    diagnose,
                    lambda: self.teacher_val_hypergradient(teacher_weights, arch, xi_t, batches),
                    lambda: [tf.zeros_like(a) for a in arch])
        latency, lat_grads = self.latency_gradient(arch, latency_weight)
        return self.result(grads, teacher_grads, teacher_val, student_val, latency, lat_grads,
                           reuse)

    def teacher_val_hypergradient(self, teacher_weights, arch, xi_t, batches: Batches):
        """grad_A L(T'(A), A; D_t^val) alone (the teacher term of `terms`), recomputed: taken
        from the main tape (persistent), the tf.cond holding it made every pass's activations,
        the student's too, live until the step's end (its inputs), diagnosed or not."""
        with tf.GradientTape() as outer:
            outer.watch(arch)
            new_teacher, _ = self.virtual_teacher_step(teacher_weights, arch, xi_t,
                                                       batches.teacher_train)
            teacher_val = self.teacher_loss(new_teacher, arch, batches.teacher_val)
        return checked_gradients(outer.gradient(teacher_val, arch), self.teacher.arch_names,
                                 "exact hypergradient's teacher term")

    def first_order_gradient(self, teacher_weights, arch, student_weights, latency_weight,
                             batches: Batches):
        """fasterseg / lpt: grad_A [L(T, A; D_t^val) + lambda_lat Lat(A)] at the current T; the
        student's val loss (lpt) does not depend on A at S' = S and is only logged."""
        with tf.GradientTape() as tape:
            tape.watch(arch)
            teacher_val = self.teacher_loss(teacher_weights, arch, batches.teacher_val)
        grads = checked_gradients(tape.gradient(teacher_val, arch), self.teacher.arch_names,
                                  "first-order arch gradient")
        latency, lat_grads = self.latency_gradient(arch, latency_weight)
        result = self.result(grads, grads, teacher_val, None, latency, lat_grads)
        if student_weights is not None:
            result.parts["arch_student_val_loss"] = self.student_loss(student_weights,
                                                                      batches.student_val)
        return result

    def result(self, val_grads, teacher_grads, teacher_val, student_val, latency, lat_grads,
               reuse=None) -> ArchGradient:
        """grad_A F = val terms' gradient + latency gradient, with F, its parts and terms."""
        parts = {"arch_teacher_val_loss": teacher_val, "arch_latency_loss": latency}
        objective = teacher_val + latency
        if student_val is not None:
            parts["arch_student_val_loss"] = student_val
            objective = objective + self.student_val_weight * student_val
        terms = {"latency": lat_grads}
        if teacher_grads is not None:
            terms["teacher_val"] = teacher_grads
            terms["student_val"] = [g - t for g, t in zip(val_grads, teacher_grads)]
        grads = [g + l for g, l in zip(val_grads, lat_grads)]
        return ArchGradient(grads, objective, parts, terms, reuse)

    def arch_gradient(self, mode, hypergrad, teacher_weights, arch, student_weights, xi_t, xi_s,
                      latency_weight, batches: Batches, diagnose=None) -> ArchGradient:
        """grad_A F for the (static, Python) search mode and hypergradient method."""
        if mode in names.FIRST_ORDER_MODES:
            return self.first_order_gradient(teacher_weights, arch,
                                             student_weights if mode == "lpt" else None,
                                             latency_weight, batches)
        if mode not in names.SEARCH_MODES or hypergrad not in names.HYPERGRADS:
            raise ValueError(f"unknown search mode {mode!r} or hypergrad {hypergrad!r}")
        method = {"exact": functools.partial(exact_hypergradient, self),
                  "hvp": functools.partial(hvp_hypergradient, self),
                  "finite_difference": functools.partial(finite_difference_hypergradient, self)}
        return method[hypergrad](teacher_weights, arch, student_weights, xi_t, xi_s,
                                 latency_weight, batches, diagnose)


def update_architecture(optimizer, variables, result: ArchGradient, clip_norm):
    """A <- A - eta grad_A F: replica mean, global-norm clip, `optimizer.apply` only if F and the
    gradient are finite. Returns (finite, mean gradient, mean F, norm before clipping, terms)."""
    grads, objective, terms = replica_mean((result.grads, result.objective, result.terms))
    finite = tf.logical_and(all_finite(grads), tf.math.is_finite(objective))
    clipped, norm = tf.clip_by_global_norm(grads, clip_norm)
    apply_if_finite(finite, [(optimizer, clipped, variables)])
    return finite, grads, objective, norm, terms
