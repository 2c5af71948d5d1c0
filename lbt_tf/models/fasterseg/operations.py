"""FasterSeg's operators as Keras layers: fixed-width (derived network) and width-masked (supernet).

Operator order is FasterSeg's (search/operations.py, genotypes.PRIMITIVES):
  0 skip            stride 2: factorized reduce (two 1x1 stride-2 convs, concat, BN, ReLU);
                    stride 1: identity in the derived net, 1x1 conv-BN-ReLU in the supernet
                    (the supernet's input and output widths may differ, as in FasterSeg).
  1 conv            3x3 conv-BN-ReLU
  2 conv_downup     bilinear 1/2 down, 3x3 conv-BN, bilinear up (stride 1 only), ReLU
  3 conv_2x         two 3x3 conv-BN-ReLU
  4 conv_2x_downup  down, conv-BN-ReLU, conv-BN, up (stride 1 only), ReLU
Every resize is bilinear with FasterSeg's align_corners=True: the supernet's through
`resize_bilinear` (twice differentiable, for the unrolled hypergradient), the derived network's
(`CellOp`, derived.py) through `deployed_resize` (TF's kernel: trained first-order, deployed).
Half of a feature map is max(1, size // 2), so a 1x2 map at 1/32 of a 32x64
input still works (FasterSeg would fail there).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from lbt_tf.models.fasterseg.space import OP_NAMES
from lbt_tf.ops.resize import resize_bilinear

BN_MOMENTUM = 0.9   # PyTorch momentum 0.1
BN_EPSILON = 1e-5


def num_filters(base_width: int, scale: int, width: float = 1.0) -> int:
    """FasterSeg's `num_filters`: round(scale * F * width) channels."""
    return int(np.round(scale * base_width * width))


def half_size(height: int, width: int):
    return max(1, height // 2), max(1, width // 2)


def deployed_resize(x, size):
    """The derived network's bilinear resize (align_corners=True) with TF's own kernel: that
    network is trained first-order and deployed, and the second-order-safe einsum form costs
    far more (561 ms vs a few ms for the final x8 upsampling at 512x1024)."""
    return resize_bilinear(x, size, align_corners=True, twice_differentiable=False)


def _conv(filters, kernel_size, strides=1, use_bias=False, name=None):
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                               use_bias=use_bias, kernel_initializer="he_normal", name=name)


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


def _bn(name=None):
    return BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


class ConvNorm(keras.layers.Layer):
    """conv (no bias) -> BN -> ReLU (FasterSeg ConvNorm / ConvBnRelu)."""

    def __init__(self, filters, kernel_size=3, strides=1, relu=True, **kwargs):
        super().__init__(**kwargs)
        self.built = True   # sublayers build on the first call (no symbolic trace)
        self.filters, self.kernel_size, self.strides, self.relu = filters, kernel_size, strides, relu
        self.conv = _conv(filters, kernel_size, strides, name="conv")
        self.bn = _bn("bn")

    def call(self, x, training=None):
        x = self.bn(self.conv(x), training=training)
        return tf.nn.relu(x) if self.relu else x


class CellOp(keras.layers.Layer):
    """One FasterSeg operator at fixed channels (the derived network's cell)."""

    def __init__(self, op_index: int, filters: int, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.built = True   # sublayers build on the first call (no symbolic trace)
        if op_index not in range(len(OP_NAMES)):
            raise ValueError(f"operator index {op_index} not in 0..{len(OP_NAMES) - 1}")
        self.op_index, self.filters, self.strides = op_index, filters, strides
        self.identity = op_index == 0 and strides == 1
        if op_index == 0 and strides == 2:
            self.reduce_a = _conv(filters // 2, 1, 2, name="reduce_a")
            self.reduce_b = _conv(filters - filters // 2, 1, 2, name="reduce_b")
            self.bn = _bn("bn")
        elif op_index in (1, 2):
            self.conv1 = _conv(filters, 3, strides if op_index == 1 else 1, name="conv1")
            self.bn1 = _bn("bn1")
        elif op_index in (3, 4):
            self.conv1 = _conv(filters, 3, strides if op_index == 3 else 1, name="conv1")
            self.bn1 = _bn("bn1")
            self.conv2 = _conv(filters, 3, 1, name="conv2")
            self.bn2 = _bn("bn2")

    def call(self, x, training=None):
        if self.identity:
            return x
        height, width = int(x.shape[1]), int(x.shape[2])
        if self.op_index == 0:
            out = tf.concat([self.reduce_a(x), self.reduce_b(x[:, 1:, 1:, :])], axis=-1)
            return tf.nn.relu(self.bn(out, training=training))
        downup = self.op_index in (2, 4)
        if downup:
            x = deployed_resize(x, half_size(height, width))
        out = self.bn1(self.conv1(x), training=training)
        if self.op_index in (3, 4):
            out = self.bn2(self.conv2(tf.nn.relu(out)), training=training)
        if downup and self.strides == 1:
            out = deployed_resize(out, (height, width))
        return tf.nn.relu(out)


class Head(keras.layers.Layer):
    """3x3 conv-BN-ReLU to `mid` channels, then a 1x1 conv with bias to the classes."""

    def __init__(self, in_channels: int, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.built = True   # sublayers build on the first call (no symbolic trace)
        # FasterSeg's Head: mid = in for <= 256 input channels, else in // 2.
        mid = in_channels if in_channels <= 256 else in_channels // 2
        self.conv_bn_relu = ConvNorm(mid, 3, name="conv_3x3")
        self.classifier = keras.layers.Conv2D(num_classes, 1, name="conv_1x1")

    def call(self, x, training=None):
        return self.classifier(self.conv_bn_relu(x, training=training))


class FeatureFusion(keras.layers.Layer):
    """1x1 conv-BN-ReLU followed by channel attention (BiSeNet's fusion module).

    FasterSeg's FeatureFusion declares the attention's two bias-free 1x1 convs but its forward
    skips them; here they are applied (fm + fm * sigmoid(att(pool(fm)))) so no weight is dead
    (a dead weight has a None gradient) and the trainable parameters equal FasterSeg's.
    """

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.built = True   # sublayers build on the first call (no symbolic trace)
        self.conv_1x1 = ConvNorm(channels, 1, name="conv_1x1")
        self.attention_1 = keras.layers.Conv2D(channels, 1, use_bias=False, name="attention_1")
        self.attention_2 = keras.layers.Conv2D(channels, 1, use_bias=False, name="attention_2")

    def call(self, x, training=None):
        fm = self.conv_1x1(x, training=training)
        pooled = tf.reduce_mean(fm, axis=[1, 2], keepdims=True)
        attention = tf.sigmoid(self.attention_2(tf.nn.relu(self.attention_1(pooled))))
        return fm + fm * attention


# ----------------------------------------------------------------------------------------------
# Supernet: one kernel per operator at the largest width; a channel mask selects the width.
# ----------------------------------------------------------------------------------------------

def prefix_masks(channels: int, width_mult_list, halves: bool = False) -> np.ndarray:
    """[n_widths, channels] 0/1 masks keeping round(channels * ratio) leading channels.

    halves=True (factorized reduce): each of the two concatenated halves keeps its own leading
    round(channels * ratio) // 2 channels, like FasterSeg's two sliced USConv2d.
    """
    masks = np.zeros((len(width_mult_list), channels), np.float32)
    for k, ratio in enumerate(width_mult_list):
        kept = max(1, int(np.round(channels * ratio)))
        if halves:
            half = channels // 2
            masks[k, :max(1, kept // 2)] = 1.0
            masks[k, half:half + max(1, kept // 2)] = 1.0
        else:
            masks[k, :kept] = 1.0
    return masks


class MaskedOp(keras.layers.Layer):
    """One operator of the supernet at max width; `call(x, channel_mask(width_weights))` masks its
    channels.

    Width switching = USConv2d's kernel slicing, done as masking: the input's channels beyond
    its width are already zero, so a full conv equals the sliced conv; the output is multiplied
    after every ReLU by mask = width_weights @ prefix_masks (BN before the mask would undo a
    soft mask). With one-hot width weights the forward equals the sliced operator exactly.
    """

    def __init__(self, op_index, out_channels, strides, width_mult_list, **kwargs):
        super().__init__(**kwargs)
        self.built = True   # sublayers build on the first call (no symbolic trace)
        self.op_index, self.strides = op_index, strides
        self.masks = prefix_masks(out_channels, width_mult_list, halves=op_index == 0 and strides == 2)
        if op_index == 0 and strides == 2:
            self.reduce_a = _conv(out_channels // 2, 1, 2, name="reduce_a")
            self.reduce_b = _conv(out_channels - out_channels // 2, 1, 2, name="reduce_b")
            self.bn = _bn("bn")
        elif op_index == 0:
            self.conv1 = _conv(out_channels, 1, 1, name="conv1")
            self.bn1 = _bn("bn1")
        else:
            self.conv1 = _conv(out_channels, 3, strides if op_index in (1, 3) else 1, name="conv1")
            self.bn1 = _bn("bn1")
            if op_index in (3, 4):
                self.conv2 = _conv(out_channels, 3, 1, name="conv2")
                self.bn2 = _bn("bn2")

    def channel_mask(self, width_weights, dtype):
        """[channels] mask = width_weights @ prefix masks (MixedOp shares it between operators
        with the same masks: one op in the graph instead of five)."""
        return tf.tensordot(tf.cast(width_weights, dtype), tf.constant(self.masks, dtype), 1)

    def call(self, x, mask, training=None):
        height, width = int(x.shape[1]), int(x.shape[2])
        if self.op_index == 0 and self.strides == 2:
            out = tf.concat([self.reduce_a(x), self.reduce_b(x[:, 1:, 1:, :])], axis=-1)
            return tf.nn.relu(self.bn(out, training=training)) * mask
        downup = self.op_index in (2, 4)
        if downup:
            x = resize_bilinear(x, half_size(height, width), align_corners=True)
        out = self.bn1(self.conv1(x), training=training)
        if self.op_index in (3, 4):
            out = tf.nn.relu(out) * mask
            out = self.bn2(self.conv2(out), training=training)
        if downup and self.strides == 1:
            out = resize_bilinear(out, (height, width), align_corners=True)
        return tf.nn.relu(out) * mask


class CellFunctions:
    """The `tf.function`s MixedOps share, by configuration (a plain object: Keras would copy a
    dict attribute into each layer's own tracked dict)."""

    def __init__(self):
        self.functions = {}


class MixedOp(keras.layers.Layer):
    """sum_o alpha_o * op_o(x) over FasterSeg's five operators (one width mask for all).

    `cell_functions` (a CellFunctions shared by the supernet's MixedOps, or None): inside a
    traced step, the MixedOp runs as one `tf.function` of (x, alpha, width weights, its weight
    values), shared by every MixedOp of the same configuration. A supernet has ~100 MixedOps per forward but only
    a handful of distinct ones (per scale, stride and width list), and the unrolled step runs
    the forward 3-7 times with first and second derivatives: traced per MixedOp, the step's
    graph is ~100k ops, each ~1 ms of Python tracing. Shared, each distinct cell and its
    derivatives are traced once (TensorFlow caches a function's gradient functions).
    """

    def __init__(self, out_channels, strides, width_mult_list, cell_functions=None, **kwargs):
        super().__init__(**kwargs)
        self.built = True   # sublayers build on the first call (no symbolic trace)
        self.config_key = (out_channels, strides, tuple(float(w) for w in width_mult_list))
        self.cell_functions = cell_functions
        self.ops = [MaskedOp(k, out_channels, strides, width_mult_list, name=name)
                    for k, name in enumerate(OP_NAMES)]

    def call(self, x, op_weights, width_weights, training=None):
        if (self.cell_functions is None or tf.executing_eagerly()
                or not self.ops[-1].conv2.built):   # variables are made eagerly, on the first call
            return self.mixed_forward(x, op_weights, width_weights, training)
        key = self.config_key + (bool(training),)
        functions = self.cell_functions.functions
        if key not in functions:
            functions[key] = self.traced_forward(bool(training))
        weights, statistics = self.trainable_variables, self.non_trainable_variables
        out, new_statistics = functions[key](
            x, op_weights, width_weights, [v.value for v in weights],
            [v.value for v in statistics])
        for variable, value in zip(statistics, new_statistics):
            variable.assign(value)
        return out

    def traced_forward(self, training):
        """This MixedOp's forward as a function of its variables' values (and the new moving
        statistics), valid for every MixedOp with the same `config_key`."""
        weights, statistics = self.trainable_variables, self.non_trainable_variables

        def forward(x, op_weights, width_weights, weight_values, statistic_values):
            mapping = list(zip(weights, weight_values)) + list(zip(statistics, statistic_values))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                out = self.mixed_forward(x, op_weights, width_weights, training)
            return out, [scope.get_current_value(v) for v in statistics]

        # Not inlined: inlined, the runtime's graph is as large as per-cell tracing's (lpt at
        # the demo config with 16 layers: 3.7 vs 2.8 GB peak), and the exact mode's nested
        # gradient functions grew past 15 GB there (README, issue 13).
        return tf.function(forward, autograph=False, reduce_retracing=False,
                           experimental_attributes={"_noinline": True})

    def mixed_forward(self, x, op_weights, width_weights, training=None):
        # One mask per distinct prefix-mask table, and the five weights by one unstack: the
        # supernet has ~100 MixedOps per forward, and every op here is traced per pass.
        masks = {}
        for op in self.ops:
            key = op.masks.tobytes()
            if key not in masks:
                masks[key] = op.channel_mask(width_weights, x.dtype)
        weights = tf.unstack(op_weights, num=len(self.ops))
        return tf.add_n([w * op(x, masks[op.masks.tobytes()], training=training)
                         for w, op in zip(weights, self.ops)])
