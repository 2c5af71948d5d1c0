"""Atrous (dilated) 3x3 convolutions run by the convolution kernel itself.

Keras' Conv2D goes through `tf.nn.convolution`, which for a dilation > 1 pads the input to a
multiple of the rate and moves it into the batch (SpaceToBatchND, then BatchToSpaceND), on every
device. At DeepLabV3's ASPP rates (12/24/36 at output stride 8) on the paper setting's 28x56
feature map the padded input is 3-10x the input and the branch's forward and backward take
2.5-7x the time of TensorFlow's own Conv2D with its `dilations` attribute, which cuDNN and oneDNN
(TensorFlow's default CPU kernels on x86) run directly (bench/atrous_conv.py). TensorFlow's
non-oneDNN CPU kernels (float64, `TF_ENABLE_ONEDNN_OPTS=0`) have no dilated Conv2D gradient:
there the layer keeps Keras' path. Both compute the same sum (results equal to rounding).
"""
from __future__ import annotations

import functools

import keras
import tensorflow as tf
from keras import layers


@functools.lru_cache(maxsize=None)
def native_dilation(dtype: str) -> bool:
    """Whether Conv2D with a dilation, its input and filter gradients run on the default device
    for `dtype` (one tiny eager try, cached per dtype)."""
    with tf.init_scope():  # eager even while a step function is traced (it records no tape)
        x = tf.zeros([1, 5, 5, 1], dtype)
        kernel = tf.zeros([3, 3, 1, 1], dtype)
        dilated = dict(strides=[1, 1, 1, 1], padding="SAME", dilations=[1, 2, 2, 1])
        try:
            y = tf.raw_ops.Conv2D(input=x, filter=kernel, **dilated)
            tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=kernel,
                                           out_backprop=y, **dilated)
            tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(kernel),
                                            out_backprop=y, **dilated)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                tf.errors.NotFoundError):
            return False
    return True


@keras.saving.register_keras_serializable(package="lbt_tf")
class AtrousConv2D(layers.Conv2D):
    """keras.layers.Conv2D (same arguments, variables and names, so weights load as into
    Conv2D) whose dilation > 1 goes to TensorFlow's Conv2D `dilations` where the device supports
    it (`native_dilation`), instead of Keras' space-to-batch."""

    def convolution_op(self, inputs, kernel):
        if max(self.dilation_rate) == 1 or not native_dilation(tf.as_dtype(inputs.dtype).name):
            return super().convolution_op(inputs, kernel)
        channels_last = self.data_format == "channels_last"
        return tf.nn.conv2d(inputs, kernel, strides=list(self.strides),
                            padding=self.padding.upper(),
                            data_format="NHWC" if channels_last else "NCHW",
                            dilations=list(self.dilation_rate))
