"""AtrousConv2D: the same values and gradients as keras.layers.Conv2D, without space-to-batch."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.config import StudentConfig
from lbt_tf.models.deeplab import build_student
from lbt_tf.models.deeplab.atrous import AtrousConv2D, native_dilation


def _pair(rate, dtype):
    """(AtrousConv2D, Conv2D) with the same kernel, built on a 9x13 map (rates past its size
    included: ASPP's 36 on a 28-row map)."""
    kwargs = dict(filters=4, kernel_size=3, padding="same", dilation_rate=rate, use_bias=False,
                  dtype=dtype)
    atrous, plain = AtrousConv2D(**kwargs), keras.layers.Conv2D(**kwargs)
    for layer in (atrous, plain):
        layer.build((2, 9, 13, 3))
    plain.kernel.assign(atrous.kernel)
    return atrous, plain


def _value_and_gradients(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.cos(y))
    return [y] + tape.gradient(loss, [x, layer.kernel])


def _ops_in(fn, *args):
    graph = tf.function(fn).get_concrete_function(*args).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("rate", [2, 4, 12])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_values_and_gradients_as_conv2d(rate, dtype):
    atrous, plain = _pair(rate, dtype)
    x = tf.constant(np.random.default_rng(rate).normal(size=(2, 9, 13, 3)), dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for got, want in zip(_value_and_gradients(atrous, x), _value_and_gradients(plain, x)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=tol, atol=tol)


def test_dilation_runs_in_the_conv_op_where_the_device_has_it():
    atrous, plain = _pair(4, "float32")
    x = tf.zeros((2, 9, 13, 3))
    assert "SpaceToBatchND" in _ops_in(plain, x)  # what Keras' path does
    if not native_dilation("float32"):
        pytest.skip("this device's float32 Conv2D has no dilated gradient (no oneDNN / cuDNN)")
    ops = _ops_in(lambda x: _value_and_gradients(atrous, x), x)
    assert "SpaceToBatchND" not in ops and "BatchToSpaceND" not in ops
    assert "Conv2DBackpropInput" in ops and "Conv2DBackpropFilter" in ops


def test_float64_keeps_kerass_path_where_the_kernels_lack_it():
    # TensorFlow's CPU Conv2D gradients have no dilation (oneDNN does not take float64): the
    # layer must not build an op that fails when run.
    if native_dilation("float64"):
        pytest.skip("this device runs float64 dilated convolutions natively")
    atrous, _ = _pair(2, "float64")
    assert "SpaceToBatchND" in _ops_in(atrous, tf.zeros((2, 9, 13, 3), "float64"))


def test_student_has_no_space_to_batch_where_the_device_has_it():
    if not native_dilation("float32"):
        pytest.skip("this device's float32 Conv2D has no dilated gradient (no oneDNN / cuDNN)")
    config = StudentConfig(blocks_per_stage=(1, 2, 1, 2), base_width=8, aspp_channels=16,
                           output_stride=8)
    model = build_student(config, 5, (32, 64, 3))
    dilated = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)
               and max(l.dilation_rate) > 1]
    assert dilated and all(isinstance(l, AtrousConv2D) for l in dilated)
    assert "SpaceToBatchND" not in _ops_in(lambda x: model(x, training=True),
                                           tf.zeros((1, 32, 64, 3)))
