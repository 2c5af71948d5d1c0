"""The soft product d2 L_soft/dP dS . u pushes u through the student op by op, not through the
student's traced forward function: under a ForwardAccumulator TF takes a function call's jvp as
the transpose of its whole backward (a full backward, then its backward), which at the paper's
setting held +4.7 GB of tensors for this product instead of +0.9 GB
(docs/paper_scale_log.md, "Thirteenth session"). The values are the same either way."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from lbt_tf.search import darts, learner, unrolled
from lbt_tf.search.hvp import ForwardOverReverse
from tests.search import models_under_test


def test_soft_product_runs_the_student_inline_with_the_traced_forward_values():
    _, student, num_classes = models_under_test.build("stand_in")
    problem = unrolled.SearchProblem(teacher=None, student=learner.Learner(student, trace_once=True),
                                     ignore_label=255)
    rng = np.random.default_rng(0)
    h, w = models_under_test.HEIGHT, models_under_test.WIDTH
    images = tf.constant(rng.normal(size=(2, h, w, 3)), tf.float32)
    probs = tf.nn.softmax(tf.constant(rng.normal(size=(2, h, w, num_classes)), tf.float32))
    weights = problem.student.weight_values()
    u = [tf.constant(rng.normal(size=t.shape), tf.float32) for t in weights]

    def through_traced_forward(weights, u):   # what the product must not do
        with tf.autodiff.ForwardAccumulator(weights, u) as acc:
            with tf.GradientTape() as tape:
                tape.watch(probs)
                loss = darts.soft_loss(problem, weights, images, probs)
            grad = tape.gradient(loss, probs)
        return acc.jvp(grad)

    shipped = tf.function(lambda weights, u: ForwardOverReverse().soft_product(
        problem, weights, u, probs, images), autograph=False)
    graph = shipped.get_concrete_function(weights, u).graph
    convs = [op for op in graph.get_operations() if op.type == "Conv2D"]
    assert convs, "the student's convolutions must be in the product's own graph (inline)"
    reference = tf.function(through_traced_forward, autograph=False)
    reference_graph = reference.get_concrete_function(weights, u).graph
    assert not [op for op in reference_graph.get_operations() if op.type == "Conv2D"], \
        "the reference must go through the traced forward (a call op)"
    got, expected = shipped(weights, u).numpy(), reference(weights, u).numpy()
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
