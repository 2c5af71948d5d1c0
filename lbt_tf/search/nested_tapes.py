"""lbt / exact: darts.py's two mixed products by reverse-over-reverse autodiff, each its own pair
of nested tapes (an inner tape's gradient, differentiated by an outer tape seeded with the
direction):
    arch_product: grad_A [grad_T L(T, A; D_t^tr) . v]     = d2 L/dA dT . v
    soft_product: grad_P [grad_S L_soft(S; P) . u]        = d2 L_soft/dP dS . u
The seeds go in as `output_gradients` (no dot product, no extra weight-sized tensor). Exact: the
same values as `SearchProblem.unrolled_hypergradient`, the nested tapes around all of (1)-(3)
(tests/search/test_hypergradient.py checks both against central differences of F). That one tape
keeps every pass of the step for one backward (13.4 GB of tensors at the paper's setting); here
only one product's second-order graph is alive at a time, the rest of the step first-order
(README, "The exact hypergradient at the paper's setting").
"""
from __future__ import annotations

import tensorflow as tf

from lbt_tf.search import darts
from lbt_tf.search.learner import HypergradientError, checked_gradients


class ReverseOverReverse:
    what = "exact"

    def arch_product(self, problem, teacher_weights, arch, v, batch):
        with tf.GradientTape() as outer:
            outer.watch(arch)
            with tf.GradientTape() as inner:
                inner.watch(teacher_weights)
                loss = problem.teacher_loss(teacher_weights, arch, batch)
            grads = checked_gradients(inner.gradient(loss, teacher_weights),
                                      problem.teacher.weight_names, "exact: grad_T L_t^tr")
        return checked_gradients(outer.gradient(grads, arch, output_gradients=list(v)),
                                 problem.teacher.arch_names, "exact: d/dA grad_T L_t^tr . v")

    def soft_product(self, problem, student_weights, u, probs, images):
        with tf.GradientTape() as outer:
            outer.watch(probs)
            with tf.GradientTape() as inner:
                inner.watch(student_weights)
                loss = darts.soft_loss(problem, student_weights, images, probs)
            grads = inner.gradient(loss, student_weights)
        # A weight without a path to L_soft (the student's aux head) adds nothing to the
        # product: its second derivative is zero by structure, not by a broken path.
        pairs = [(g, d) for g, d in zip(grads, u) if g is not None]
        if not pairs:
            raise HypergradientError("exact: grad_S L_soft is None for every student weight")
        grad = outer.gradient([g for g, _ in pairs], probs,
                              output_gradients=[d for _, d in pairs])
        return checked_gradients([grad], ["P"], "exact: d/dP grad_S L_soft . u")[0]


def exact_hypergradient(problem, *args, **kwargs):
    """darts.darts_hypergradient with reverse-over-reverse products (arguments as there)."""
    return darts.darts_hypergradient(ReverseOverReverse(), problem, *args, **kwargs)
