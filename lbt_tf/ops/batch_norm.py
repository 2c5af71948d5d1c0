"""`BatchNorm`: Keras' BatchNormalization with twice-differentiable training-mode moments and
an analytic gradient (`normalize`); the supernet's and the student's BN (both are on the unrolled
step's second-order path, and run in every pass of it)."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="lbt_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """Keras BatchNormalization whose training-mode batch moments are twice differentiable, with
    a small graph.

    Keras (TF backend) takes the moments with tf.nn.moments, which centres the variance on
    stop_gradient(mean). That leaves first derivatives exact but drops the -1/N term of the
    variance's Hessian, so an unrolled (second-order) hypergradient through the supernet, which
    differentiates the weight gradient w.r.t. the BN inputs, came out wrong (10% off in
    tests/fasterseg's finite-difference test). Here the variance is centred on the true mean.

    Training mode (the search's every pass) uses `normalize`: the same forward as Keras, with
    the analytic BN gradient, so the supernet's ~500 BNs per pass trace ~40% fewer ops (the
    first step at the paper's setting is op count x ~1 ms of tracing).
    """

    def _moments(self, inputs, mask):
        if mask is not None or self.synchronized:
            return super()._moments(inputs, mask)
        axes = self._reduction_axes
        mean = tf.reduce_mean(inputs, axes, keepdims=True)
        variance = tf.reduce_mean(tf.square(inputs - mean), axes)
        return tf.squeeze(mean, axes), variance

    def call(self, inputs, training=None, mask=None):
        rank = len(inputs.shape)
        if (not (training and self.trainable) or mask is not None or self.renorm
                or self.synchronized or not (self.center and self.scale)
                or self.axis not in (-1, rank - 1)):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        axes = tf.constant(list(range(rank - 1)))
        mean = tf.reduce_mean(x, axes)
        variance = tf.reduce_mean(tf.square(x - mean), axes)
        moving_mean = tf.cast(self.moving_mean, x.dtype)
        moving_variance = tf.cast(self.moving_variance, x.dtype)
        self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            moving_variance * self.momentum + variance * (1.0 - self.momentum))
        out = normalize(x, mean, variance, tf.cast(self.gamma, x.dtype),
                        tf.cast(self.beta, x.dtype), self.epsilon)
        return tf.cast(out, self.compute_dtype)


def normalize(x, mean, variance, gamma, beta, epsilon):
    """Training-mode BN over all axes but the last, given x's batch `mean` and `variance`: tf.nn.batch_normalization's forward, and the analytic gradient w.r.t. x
    (through the batch moments), gamma and beta. The gradient recomputes the moments from x, so
    an outer tape sees how it depends on x: second order exact (checked against finite
    differences in tests/search/test_hypergradient.py and tests/fasterseg)."""
    axes = tf.constant(list(range(len(x.shape) - 1)))
    count = float(np.prod(x.shape[:-1]))
    # No stop_gradient on the moments: a ForwardAccumulator (the HVP hypergradient) takes the
    # forward-mode derivative through these ops, which must then be the true one.
    inv = tf.math.rsqrt(variance + epsilon)

    @tf.custom_gradient
    def batch_norm(x, gamma, beta):  # only these three: each argument costs ops in the backward
        scale = inv * gamma

        def grad(dy):
            centred = x - tf.reduce_mean(x, axes)
            rstd = tf.math.rsqrt(tf.reduce_mean(tf.square(centred), axes) + epsilon)
            normed = centred * rstd
            d_beta = tf.reduce_sum(dy, axes)
            d_gamma = tf.reduce_sum(dy * normed, axes)
            d_x = (gamma * rstd) * (dy - (d_beta + normed * d_gamma) / count)
            return d_x, d_gamma, d_beta

        return x * scale + (beta - mean * scale), grad

    return batch_norm(x, gamma, beta)
