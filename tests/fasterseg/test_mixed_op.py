"""The supernet's MixedOp, whose parameters are one flat vector: each operator at full width and
a one-hot alpha equals the derived network's Keras layers (CellOp / ConvNorm) given the same
numbers, in training (batch moments, statistics updated) and inference; the flat vector's
pieces are views of it where aligned."""
import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.models.fasterseg.operations import CellOp, ConvNorm, MixedOp, split_pieces
from lbt_tf.models.fasterseg.space import OP_NAMES

WIDTHS = (0.5, 1.0)


def _keras_layer(op_index, channels, strides):
    """The Keras layer that computes operator `op_index` at full width: the derived network's
    CellOp, except the supernet's stride-1 skip, a 1x1 conv-BN-ReLU (the derived net's is the
    identity)."""
    if op_index == 0 and strides == 1:
        return ConvNorm(channels, 1, 1)
    return CellOp(op_index, channels, strides)


def _keras_values(layer):
    """name -> variable of the layer, named as MaskedOp.parameter_shapes names them
    ("<conv>/kernel", "<bn>/gamma", ...)."""
    values = {}
    for v in layer.variables:
        parts = v.path.split("/")
        sub = {"conv": "conv1", "bn": "bn1"}.get(parts[-2], parts[-2]) if isinstance(
            layer, ConvNorm) else parts[-2]
        values[f"{sub}/{parts[-1]}"] = v
    return values


@pytest.mark.parametrize("strides", [1, 2])   # the keep and the down cells
@pytest.mark.parametrize("op_index", range(len(OP_NAMES)))
def test_each_operator_equals_the_keras_layers(op_index, strides):
    rng = np.random.default_rng(op_index + 10 * strides)
    channels, in_channels = 16, 8
    x = tf.constant(rng.normal(size=(2, 8, 12, in_channels)), tf.float32)
    mixed = MixedOp(channels, strides, WIDTHS)
    layer = _keras_layer(op_index, channels, strides)
    alpha = tf.one_hot(op_index, len(OP_NAMES))
    full_width = tf.constant([0.0, 1.0])
    mixed(x, alpha, full_width, training=False)   # makes the variables
    layer(x, training=False)
    # Random values in every piece of this operator (BN gamma, beta and statistics too), the
    # same numbers assigned to the Keras layer's variables.
    op = mixed.ops[op_index]
    keras_values = _keras_values(layer)
    for attribute, shapes_of in (("parameters", lambda o: o.parameter_shapes(in_channels)),
                                 ("statistics", lambda o: o.statistic_shapes())):
        flat = getattr(mixed, attribute)
        values = flat.numpy()
        offset = sum(int(np.prod(s)) for o in mixed.ops[:op_index] for _, s, _ in shapes_of(o))
        for name, shape, _ in shapes_of(op):
            size = int(np.prod(shape))
            piece = rng.uniform(0.5, 1.5, size=size).astype(np.float32)
            if not name.endswith(("gamma", "variance")):
                piece *= rng.choice([-1.0, 1.0], size).astype(np.float32)
            values[offset:offset + size] = piece
            keras_values[name.split("/", 1)[1]].assign(piece.reshape(shape))
            offset += size
        flat.assign(values)
    for training in (False, True):
        expected = layer(x, training=training)
        got = mixed(x, alpha, full_width, training=training)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)
    # The training pass updated this operator's statistics as Keras' BN updated the layer's.
    stats = split_pieces(mixed.statistics.value, mixed.statistic_shapes())
    names = [name for name, _, _ in mixed.statistic_shapes()]
    for name, value in zip(names, stats):
        if name.startswith(OP_NAMES[op_index] + "/"):
            np.testing.assert_allclose(value.numpy(), keras_values[name.split("/", 1)[1]].numpy(),
                                       rtol=1e-5, atol=1e-6)


def test_flat_parameters_split_into_views_when_aligned():
    """TF's Split shares the buffer when every piece is a multiple of 64 bytes: the pieces of
    an aligned 64 MB vector take no new memory (a copy would take 64 MB)."""
    shapes = [("a", (1024, 4096), ""), ("b", (16,), ""), ("c", (3, 3, 64, 1024), ""),
              ("d", (144, 16), "")]
    size = sum(int(np.prod(s)) for _, s, _ in shapes)
    flat = tf.Variable(tf.zeros([size]))
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    pieces = split_pieces(flat.value(), shapes)
    grown = tf.config.experimental.get_memory_info("CPU:0")["current"] - before
    assert [tuple(p.shape) for p in pieces] == [s for _, s, _ in shapes]
    assert grown < 2**20, f"{grown} bytes allocated: the pieces were copied"
    # Unaligned, the same call copies (so the check above can fail).
    odd = tf.Variable(tf.zeros([size + 3]))
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    copies = split_pieces(odd.value(), shapes + [("e", (3,), "")])
    copied = tf.config.experimental.get_memory_info("CPU:0")["current"] - before
    assert copied >= 2 * size, f"{copied} bytes: expected most of the {4 * size} to be copied"
    del pieces, copies
