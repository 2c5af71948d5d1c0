"""lbt: grad_A F of unrolled.py's (3) in DARTS' form, with its two mixed second-derivative products
supplied by a `MixedProducts` method (reverse_over_reverse.py: exact, the default; hvp.py:
forward-over-reverse, exact; finite_difference.py: central differences). The chain rule through
(1) and (2) gives, with u = w_sv grad_{S'} L(S'; D_s^val) and P = P(T', A; D_u):
    g_soft(theta) = d/dtheta [grad_S L_soft(S; P(theta)) . u],  theta = (T', A)   soft_product
                  = (dP/dtheta)^T  d2 L_soft/dP dS . u
    v             = grad_{T'} L(T', A; D_t^val) - xi_s lambda g_soft(T')
    h_A(v)        = d2 L(T, A; D_t^tr)/dA dT . v                                  arch_product
    grad_A F      = grad_A L(T', A; D_t^val) - xi_s lambda g_soft(A) - xi_t h_A(v)
                    + lambda_lat grad_A Lat(A)
With exact products this is exact: one unrolled step has no other second-order term.
Where `diagnose` is true the teacher term alone, grad_A L(T', A; D_t^val) - xi_t h_A(v_teacher)
with v_teacher = grad_{T'} L(T', A; D_t^val), costs one more val backward and arch_product
(with recompute_activations the val backward is the main one's function, P's seed zero).
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


def soft_loss(problem, student_weights, images, probs, inline=False):
    """L_soft(S; P): the student's soft CE against the teacher's probabilities on D_u
    (`inline`: not through the student's traced forward, as Learner.forward)."""
    outputs, _ = problem.student.forward(student_weights, [], images, inline=inline)
    return lrn.pseudo_label_loss(lrn.student_logits(outputs), probs, False, problem.ignore_label)


def darts_hypergradient(products: MixedProducts, problem, teacher_weights, arch,
                        student_weights, xi_t, xi_s, latency_weight, batches: Batches,
                        diagnose=None) -> ArchGradient:
    """Passes: the virtual steps, the student val backward, soft_product, the backward of
    L_t^val and P to (T', A) (v and grad_A's first terms: both passes together with kept
    activations; with recompute_activations L_t^val's pass redone, then P's backward one
    stage at a time from its first forward's stage inputs), arch_product. The stages run one
    after another (lrn.after)."""
    what = products.what
    new_teacher, reuse = problem.virtual_teacher_step(teacher_weights, arch, xi_t,
                                                      batches.teacher_train)
    dtype = reuse.teacher_loss.dtype
    num_t = len(new_teacher)
    teacher_and_arch = new_teacher + list(arch)
    names = problem.teacher.weight_names + problem.teacher.arch_names

    tape = teacher_val = probs = checkpoints = None
    if problem.recompute_activations:
        # Values only (no tape; only the supernet's stage inputs kept): P for the student
        # stages; L_t^val comes with its recomputed pass below.
        if problem.student is not None:
            probs, checkpoints = problem.teacher_probs_checkpointed(new_teacher, arch,
                                                                    batches.unlabeled)
    else:
        with tf.GradientTape() as tape:
            tape.watch(teacher_and_arch)
            if problem.student is None:
                teacher_val = problem.teacher_loss(new_teacher, arch, batches.teacher_val)
            else:
                teacher_val, probs = problem.teacher_val_and_probs(
                    new_teacher, arch, batches.teacher_val, batches.unlabeled)
    # d/d(T', A) of [L_t^val + coeff . P] with coeff = -xi_s lambda d2 L_soft/dP dS . u gives
    # (v, grad_A L_t^val - xi_s lambda g_soft(A)).
    probs_seed = student_val = None
    if problem.student is not None:
        # Each stage starts once the previous one's result exists (lrn.after), so that its
        # weight copies and activations are not alive beside the previous stage's.
        with lrn.after(probs):
            new_student = problem.virtual_student_step(student_weights, tf.stop_gradient(probs),
                                                       xi_s, batches, reuse)
        with tf.GradientTape() as student_tape:
            student_tape.watch(new_student)
            student_val = problem.student_loss(new_student, batches.student_val)
        u = checked_gradients(student_tape.gradient(student_val, new_student),
                              problem.student.weight_names, f"{what}: grad_S' L_s^val")
        u = [problem.student_val_weight * g for g in u]
        coeff = -tf.cast(xi_s, dtype) * problem.pseudo_label_weight
        with lrn.after(u):  # its student pass would otherwise start as soon as P exists
            probs_seed = coeff * products.soft_product(problem, student_weights, u, probs,
                                                       batches.unlabeled)
    what_val = f"{what}: d [L_t^val + coeff . P] / d(T', A)"
    if tape is None and probs_seed is None:
        teacher_val, val_grads = problem.teacher_loss_gradient(
            new_teacher, arch, batches.teacher_val, what_val, weights_too=True)
    elif tape is None:
        with lrn.after(probs_seed):  # L_t^val's pass needs no seed: it would start at once
            teacher_val, val_grads = problem.recomputed_val_gradient(
                new_teacher, arch, batches.teacher_val, batches.unlabeled, checkpoints,
                probs_seed, what_val)
    else:
        targets, seeds = [teacher_val], [tf.ones_like(teacher_val)]
        if probs_seed is not None:
            targets.append(probs)
            seeds.append(probs_seed)
        val_grads = checked_gradients(
            tape.gradient(targets, teacher_and_arch, output_gradients=seeds), names, what_val)
    v, grads = val_grads[:num_t], val_grads[num_t:]

    xi_t = tf.cast(xi_t, dtype)
    with lrn.after(v, grads):
        grads = lrn.axpy(-xi_t, products.arch_product(problem, teacher_weights, arch, v,
                                                      batches.teacher_train), grads)
    teacher_grads = None
    if diagnose is not None:
        def teacher_term():
            # T' again (the same op on the same values; without a kept gradient, the same pass
            # again) and its val backward: v_teacher and grad_A L_t^val are then alive only
            # here, not beside v on every step.
            if reuse.teacher_grads is None:
                t_prime, _ = problem.virtual_teacher_step(teacher_weights, arch, xi_t,
                                                          batches.teacher_train)
            else:
                t_prime = lrn.axpy(-xi_t, reuse.teacher_grads, teacher_weights)
            what_val_teacher = f"{what}: grad_(T', A) L_t^val"
            if checkpoints is not None:
                # The main val pass's function with a zero seed for P (its term adds exact
                # zeros): no val function of the split's own in the step's graph, whose trace
                # and instantiation cost the first step more than P's extra backward costs a
                # diagnostic step (docs/paper_scale_log.md, "Seventeenth session").
                val = problem.recomputed_val_gradient(
                    t_prime, arch, batches.teacher_val, batches.unlabeled, checkpoints,
                    tf.zeros_like(probs_seed), what_val_teacher)[1]
            elif problem.arch_product == "layerwise":  # one stage's activations beside T', v
                val = problem.stagewise_loss_gradient(t_prime, arch, batches.teacher_val,
                                                      what_val_teacher, weights_too=True)[1]
            else:
                with tf.GradientTape() as val_tape:
                    val_tape.watch(t_prime + list(arch))
                    loss = problem.teacher_loss(t_prime, arch, batches.teacher_val)
                val = checked_gradients(val_tape.gradient(loss, t_prime + list(arch)), names,
                                        what_val_teacher)
            with lrn.after(val):
                return lrn.axpy(-xi_t, products.arch_product(
                    problem, teacher_weights, arch, val[:num_t], batches.teacher_train),
                    val[num_t:])

        with lrn.after(grads):  # after the main product: one perturbed copy of T at a time
            teacher_grads = tf.cond(diagnose, teacher_term,
                                    lambda: [tf.zeros_like(a) for a in arch])
    latency, lat_grads = problem.latency_gradient(arch, latency_weight)
    return problem.result(grads, teacher_grads, teacher_val, student_val, latency, lat_grads,
                          reuse)
