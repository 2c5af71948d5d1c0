"""lbt / exact: darts.py's two mixed products, exact, each on its own (one second-order graph
alive at a time, the rest of the step first-order):
    arch_product: grad_A [grad_T L(T, A; D_t^tr) . v] = d2 L/dA dT . v
        reverse-over-reverse: the gradient w.r.t. T, differentiated w.r.t. A seeded with v
        (no dot product, no weight-sized temporary); `tf.gradients` in a graph, nested tapes
        eagerly;
        with trace_once one traced function, called by the main term and the diagnostic one
        (the graph and its trace once: the second-order supernet graph is the step's largest);
    soft_product: grad_P [grad_S L_soft(S; P) . u]    = d2 L_soft/dP dS . u
        hvp.py's forward-over-reverse: u pushed forward through the student keeps none of its
        activations (paper setting: 0.5 GB above S and u, reverse-over-reverse 1.6 GB;
        docs/paper_scale_log.md).
The same values as `SearchProblem.unrolled_hypergradient`, the nested tapes around all of
(1)-(3) (tests/search/test_hypergradient.py checks both against central differences of F), whose
one outer tape keeps every pass of the step for one backward (13.4 GB of tensors at the paper's
setting; docs/paper_scale_log.md, "Tenth session: the exact hypergradient in DARTS' form").
"""
from __future__ import annotations

import tensorflow as tf

from lbt_tf.search import darts, hvp, layerwise
from lbt_tf.search.learner import checked_gradients


GRAD_T = "exact: grad_T L_t^tr"


def nested_tapes_product(problem, weights, arch, v, batch):
    """h_A(v) by nested tapes, the form used eagerly (traced, it makes the graph that
    `symbolic_product` avoids)."""
    with tf.GradientTape() as outer:
        outer.watch(arch)
        with tf.GradientTape() as inner:
            inner.watch(weights)
            loss = problem.teacher_loss(weights, arch, batch, inline=True)
        grads = checked_gradients(inner.gradient(loss, weights), problem.teacher.weight_names,
                                  GRAD_T)
    return outer.gradient(grads, arch, output_gradients=v)


def symbolic_product(problem, weights, arch, v, batch):
    """h_A(v) by `tf.gradients` (graph only). Not nested tapes there: under two tapes every
    supernet cell call (a tf.function) takes TF's higher-order tape path, whose backward takes a
    gradient for each of the forward's side outputs, zeros where there is none: at the paper's
    setting ~4.9k zero tensors (2.8 GB) and a 3x larger graph. tf.gradients rewrites each call
    with only the side outputs it uses (same values; 224x448: RSS -2.9 GB, first call
    73 -> 50 s; docs/paper_scale_log.md, "Eleventh session")."""
    loss = problem.teacher_loss(weights, arch, batch, inline=True)
    grads = checked_gradients(tf.gradients(loss, weights), problem.teacher.weight_names, GRAD_T)
    return tf.gradients(grads, arch, grad_ys=v)


class ReverseOverReverse:
    what = "exact"

    def arch_product(self, problem, teacher_weights, arch, v, batch):
        def product(weights, arch, v, images, labels):
            if tf.executing_eagerly():
                form = nested_tapes_product
            elif problem.arch_product == "layerwise":
                form = layerwise.layerwise_product
            else:
                form = symbolic_product
            return form(problem, weights, arch, v, (images, labels))

        product = problem.teacher.traced("arch_product", product)
        return checked_gradients(product(list(teacher_weights), list(arch), list(v), *batch),
                                 problem.teacher.arch_names, "exact: d/dA grad_T L_t^tr . v")

    soft_product = hvp.ForwardOverReverse.soft_product


def exact_hypergradient(problem, *args, **kwargs):
    """darts.darts_hypergradient with ReverseOverReverse's products (arguments as there)."""
    return darts.darts_hypergradient(ReverseOverReverse(), problem, *args, **kwargs)
