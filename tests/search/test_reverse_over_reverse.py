"""The exact teacher product's graph: symbolic gradients, not TF's higher-order tape path.

Under two GradientTapes, every call of a supernet cell function (a `tf.function`) takes TF's
higher-order tape path, whose backward function takes a gradient for each side output of the
forward (the intermediates it keeps) and is fed zeros where none arrives: at the paper's setting
4.9k zero tensors, 2.8 GB, and a 3x larger graph (docs/paper_scale_log.md, "Eleventh session"). The
product's values are checked against central differences in test_hypergradient.py; this checks the
graph.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from lbt_tf.search import learner, unrolled
from lbt_tf.search.reverse_over_reverse import ReverseOverReverse, nested_tapes_product
from tests.search import models_under_test


def _zero_fill_elements(graph):
    """Elements of the activation-shaped (rank-4) zero tensors the graph makes from nothing."""
    return sum(op.outputs[0].shape.num_elements() for op in graph.get_operations()
               if op.type in ("Fill", "ZerosLike") and op.outputs[0].shape.rank == 4)


def test_arch_product_makes_no_zero_cotangent_per_side_output():
    supernet, _, num_classes = models_under_test.build("real", cell_tracing="shared")
    problem = unrolled.SearchProblem(
        teacher=learner.Learner(supernet, supernet.arch_variables), student=None,
        ignore_label=255)
    rng = np.random.default_rng(0)
    h, w = models_under_test.HEIGHT, models_under_test.WIDTH
    batch = (tf.constant(rng.normal(size=(2, h, w, 3)), tf.float32),
             tf.constant(rng.integers(0, num_classes, size=(2, h, w)), tf.int32))
    weights, arch = problem.teacher.weight_values(), problem.teacher.arch_values()
    v = [tf.ones_like(t) for t in weights]

    def shipped(weights, arch, v):
        return ReverseOverReverse().arch_product(problem, weights, arch, v, batch)

    def nested_tapes(weights, arch, v):  # what the product must not be traced as
        return nested_tapes_product(problem, weights, arch, v, batch)

    graphs = {name: tf.function(fn, autograph=False).get_concrete_function(
        weights, arch, v).graph for name, fn in (("shipped", shipped),
                                                  ("nested_tapes", nested_tapes))}
    assert supernet.cell_functions.functions, "the cells must run as shared functions here"
    shipped_zeros = _zero_fill_elements(graphs["shipped"])
    nested_zeros = _zero_fill_elements(graphs["nested_tapes"])
    # Paper setting: 0.38 vs 2.77 GB of such zeros, 10.5k vs 31.9k ops; this 4-layer supernet
    # (2026-11-27): 0.52M vs 2.65M elements, 4.9k vs 8.5k ops.
    assert nested_zeros > 0
    assert shipped_zeros < 0.35 * nested_zeros, (shipped_zeros, nested_zeros)
    shipped_ops = len(graphs["shipped"].get_operations())
    nested_ops = len(graphs["nested_tapes"].get_operations())
    assert shipped_ops < 0.75 * nested_ops, (shipped_ops, nested_ops)
