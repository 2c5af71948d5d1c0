"""call_shapes.skipped(): the call ops TF makes inside carry `_disable_call_shape_inference`
(those outside do not), with the same static shapes, values and gradients."""
import contextlib

import numpy as np
import tensorflow as tf

from lbt_tf.search import call_shapes


def call_ops(graph):
    return [op for op in graph.get_operations()
            if op.type in ("PartitionedCall", "StatefulPartitionedCall")]


def skips(op):
    try:
        return op.get_attr(call_shapes.ATTRIBUTE)
    except ValueError:
        return False


def make_step(skip):
    @tf.function(autograph=False, experimental_attributes={"_noinline": True})
    def cell(x, w):
        return tf.nn.relu(tf.matmul(x, w)) * tf.reduce_sum(w)

    @tf.function(autograph=False)
    def step(x, w):
        with call_shapes.skipped() if skip else contextlib.nullcontext():
            y = cell(cell(x, w), w)
            grad = tf.gradients(tf.reduce_sum(y * y), w)[0]
        return y, grad

    return step


def test_call_ops_skip_inside_only_with_same_shapes_values_and_gradients():
    x = tf.constant(np.random.default_rng(0).normal(size=(3, 4)), tf.float32)
    w = tf.constant(np.random.default_rng(1).normal(size=(4, 4)), tf.float32)
    results, graphs = {}, {}
    for skip in (False, True):
        step = make_step(skip)
        graphs[skip] = step.get_concrete_function(x, w).graph
        results[skip] = step(x, w)
    # With skipped(): every call op (the forward calls and the gradient's) carries the attribute.
    assert call_ops(graphs[True]) and all(skips(op) for op in call_ops(graphs[True]))
    assert not any(skips(op) for op in call_ops(graphs[False]))
    assert len(call_ops(graphs[True])) == len(call_ops(graphs[False]))
    for op in call_ops(graphs[True]):  # Python's shapes come from the callee's signature
        assert all(t.shape.is_fully_defined() for t in op.outputs)
    for a, b in zip(results[True], results[False]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_skipped_nests_and_restores():
    specs = (tf.TensorSpec((3, 4)), tf.TensorSpec((4, 4)))
    with call_shapes.skipped():
        with call_shapes.skipped():
            pass
        inside = make_step(False).get_concrete_function(*specs).graph  # still in the outer one
    after = make_step(False).get_concrete_function(*specs).graph
    assert all(skips(op) for op in call_ops(inside))
    assert call_ops(after) and not any(skips(op) for op in call_ops(after))


def test_a_callee_with_unknown_output_shapes_keeps_the_inference():
    @tf.function(autograph=False, experimental_attributes={"_noinline": True},
                 input_signature=[tf.TensorSpec((None, 4))])
    def rows(x):
        return x * 2.0

    @tf.function(autograph=False)
    def step(x):
        with call_shapes.skipped():
            return rows(x)

    graph = step.get_concrete_function(tf.TensorSpec((3, 4))).graph
    (op,) = call_ops(graph)
    assert not skips(op)
    assert op.outputs[0].shape.as_list() == [3, 4]  # the inference's, finer than (None, 4)
