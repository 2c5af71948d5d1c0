"""lbt / finite_difference: darts.py's two mixed products by DARTS' central differences (no
second-order graph), eps = c / ||direction||, c = search.finite_difference_scale:
    soft_product: d/dP [L_soft(S + eps_s u; P) - L_soft(S - eps_s u; P)] / (2 eps_s)
    arch_product: [grad_A L(T + eps_t v, A; D_t^tr) - grad_A L(T - eps_t v, A; D_t^tr)] / (2 eps_t)
A zero ||u|| or ||v|| means that product is exactly zero: it is returned as zero (no 0/0).
With --arch_product=layerwise the two perturbed passes run one supernet stage at a time
(SearchProblem.stagewise_loss_gradient: T +- eps v made per stage; same values).
c = 1e-3 (not DARTS' 0.01) is the most accurate in float32 at the demo config with a smooth
activation (bench/finite_difference_eps.py). With ReLU the quotients also count the kinks that
T +- eps v crosses, which the exact Hessian-vector product leaves out: the two agree only for
eps below every kink (float64, c = 1e-6), out of float32's reach, so in float32 with ReLU no eps
meets cosine >= 0.99 against the exact hypergradient. hvp.py computes the same products exactly
(at a larger graph and first step in TF 2.21: README, "The finite-difference hypergradient").
"""
from __future__ import annotations

import tensorflow as tf

from lbt_tf.search import darts
from lbt_tf.search import learner as lrn


def _step(scale, direction):
    """(eps = scale / ||direction||, ||direction||)."""
    norm = lrn.global_norm(direction)
    dtype = norm.dtype
    return tf.cast(scale, dtype) / tf.maximum(norm, tf.constant(1e-30, dtype)), norm


class CentralDifferences:
    what = "FD"

    def arch_product(self, problem, teacher_weights, arch, v, batch):
        eps, v_norm = _step(problem.finite_difference_scale, v)

        what = "FD: grad_A L_t^tr(T +- eps v)"

        def arch_grad_at(step):
            if problem.arch_product == "layerwise":  # T + step v made one stage at a time
                return problem.stagewise_loss_gradient(teacher_weights, arch, batch, what,
                                                       direction=v, step=step)[1]
            return problem.teacher_loss_gradient(lrn.axpy(step, v, teacher_weights), arch, batch,
                                                 what)[1]

        with tf.name_scope("fd_plus"):
            plus = arch_grad_at(eps)
        # T - eps v only once the plus pass is done: one perturbed copy of T at a time.
        with tf.name_scope("fd_minus"), lrn.after(plus):
            minus = arch_grad_at(-eps)
        coeff = tf.where(v_norm > 0, 1.0 / (2 * eps), tf.zeros((), eps.dtype))
        return [coeff * (p - m) for p, m in zip(plus, minus)]

    def soft_product(self, problem, student_weights, u, probs, images):
        eps, u_norm = _step(problem.finite_difference_scale, u)
        # Two student forwards; the tape records only the loss ops after the logits.
        with tf.GradientTape() as tape:
            tape.watch(probs)
            with tf.name_scope("fd_plus"):
                plus = darts.soft_loss(problem, lrn.axpy(eps, u, student_weights), images, probs)
            with tf.name_scope("fd_minus"), lrn.after(plus):
                minus = darts.soft_loss(problem, lrn.axpy(-eps, u, student_weights), images,
                                        probs)
            diff = plus - minus
        grad = tape.gradient(diff, probs)
        if grad is None:
            raise lrn.HypergradientError("FD: d L_soft / d P is None")
        return tf.where(u_norm > 0, grad / (2 * eps), tf.zeros_like(grad))


def finite_difference_hypergradient(problem, *args, **kwargs):
    """darts.darts_hypergradient with central differences (arguments as there)."""
    return darts.darts_hypergradient(CentralDifferences(), problem, *args, **kwargs)
