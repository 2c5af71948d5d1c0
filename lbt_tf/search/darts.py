"""lbt: grad_A F of unrolled.py's (3) in DARTS' form, with its two mixed second-derivative products
supplied by a `MixedProducts` method (finite_difference.py: central differences; hvp.py:
forward-over-reverse, exact). The chain rule through (1) and (2) gives, with
u = w_sv grad_{S'} L(S'; D_s^val) and P = P(T', A; D_u):
    g_soft(theta) = d/dtheta [grad_S L_soft(S; P(theta)) . u],  theta = (T', A)   soft_product
                  = (dP/dtheta)^T  d2 L_soft/dP dS . u
    v             = grad_{T'} L(T', A; D_t^val) - xi_s lambda g_soft(T')
    h_A(v)        = d2 L(T, A; D_t^tr)/dA dT . v                                  arch_product
    grad_A F      = grad_A L(T', A; D_t^val) - xi_s lambda g_soft(A) - xi_t h_A(v)
                    + lambda_lat grad_A Lat(A)
With exact products this is exact: one unrolled step has no other second-order term.
Where `diagnose` is true the teacher term alone, grad_A L(T', A; D_t^val) - xi_t h_A(v_teacher),
costs one more arch_product.
"""
from __future__ import annotations

from typing import Protocol

import tensorflow as tf

from lbt_tf.search import learner as lrn
from lbt_tf.search.learner import ArchGradient, Batches, checked_gradients


class MixedProducts(Protocol):
    """The two products of the DARTS form (`what` names the method in error messages)."""
    what: str

    def arch_product(self, problem, teacher_weights, arch, v, batch) -> list:
        """h_A(v) = d2 L(T, A; batch)/dA dT . v, one tensor per arch tensor."""

    def soft_product(self, problem, student_weights, u, probs, images) -> tf.Tensor:
        """d2 L_soft(S; P)/dP dS . u, shaped like P (to be pulled back through P)."""


def soft_loss(problem, student_weights, images, probs):
    """L_soft(S; P): the student's soft CE against the teacher's probabilities on D_u."""
    outputs, _ = problem.student.forward(student_weights, [], images)
    return lrn.pseudo_label_loss(lrn.student_logits(outputs), probs, False, problem.ignore_label)


def darts_hypergradient(products: MixedProducts, problem, teacher_weights, arch,
                        student_weights, xi_t, xi_s, latency_weight, batches: Batches,
                        diagnose=None) -> ArchGradient:
    """Passes: the virtual steps, one backward of L_t^val and one of P (to (T', A) each), the
    student val backward, soft_product, arch_product."""
    what = products.what
    new_teacher, reuse = problem.virtual_teacher_step(teacher_weights, arch, xi_t,
                                                      batches.teacher_train)
    dtype = reuse.teacher_loss.dtype
    num_t = len(new_teacher)
    teacher_and_arch = new_teacher + list(arch)
    names = problem.teacher.weight_names + problem.teacher.arch_names
    with tf.GradientTape() as val_tape:
        val_tape.watch(teacher_and_arch)
        teacher_val = problem.teacher_loss(new_teacher, arch, batches.teacher_val)
    # One backward gives v's first term (w.r.t. T') and the direct grad_A.
    val_grads = checked_gradients(val_tape.gradient(teacher_val, teacher_and_arch), names,
                                  f"{what}: grad_(T', A) L_t^val")
    v_teacher, direct = val_grads[:num_t], val_grads[num_t:]
    v, grads = v_teacher, direct
    student_val = None
    if problem.student is not None:
        # Each stage starts once the previous one's result exists (lrn.after), so that its
        # weight copies and activations are not alive beside the previous stage's.
        with tf.GradientTape() as probs_tape, lrn.after(val_grads):
            probs_tape.watch(teacher_and_arch)
            probs = problem.teacher_probs(new_teacher, arch, batches.unlabeled)
        with lrn.after(probs):
            new_student = problem.virtual_student_step(student_weights, tf.stop_gradient(probs),
                                                       xi_s, batches, reuse)
        with tf.GradientTape() as student_tape:
            student_tape.watch(new_student)
            student_val = problem.student_loss(new_student, batches.student_val)
        u = checked_gradients(student_tape.gradient(student_val, new_student),
                              problem.student.weight_names, f"{what}: grad_S' L_s^val")
        u = [problem.student_val_weight * g for g in u]
        # d2 L_soft/dP dS . u, pulled back through the teacher's probabilities: g_soft(T', A).
        g_soft = checked_gradients(
            probs_tape.gradient(probs, teacher_and_arch, output_gradients=products.soft_product(
                problem, student_weights, u, probs, batches.unlabeled)),
            names, f"{what}: d P / d(T', A)")
        coeff = -tf.cast(xi_s, dtype) * problem.pseudo_label_weight
        v = lrn.axpy(coeff, g_soft[:num_t], v_teacher)
        grads = lrn.axpy(coeff, g_soft[num_t:], direct)

    xi_t = tf.cast(xi_t, dtype)
    teacher_grads = None
    if diagnose is not None:
        # Before the main product (after v: v_teacher is then the only extra copy alive), so
        # that v_teacher is released on the steps that skip it.
        with lrn.after(v, grads):
            teacher_grads = tf.cond(
                diagnose,
                lambda: lrn.axpy(-xi_t, products.arch_product(
                    problem, teacher_weights, arch, v_teacher, batches.teacher_train), direct),
                lambda: [tf.zeros_like(a) for a in arch])
    with lrn.after(v, grads, teacher_grads):
        grads = lrn.axpy(-xi_t, products.arch_product(problem, teacher_weights, arch, v,
                                                      batches.teacher_train), grads)
    latency, lat_grads = problem.latency_gradient(arch, latency_weight)
    return problem.result(grads, teacher_grads, teacher_val, student_val, latency, lat_grads,
                          reuse)
