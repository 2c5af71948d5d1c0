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

import functools
from typing import NamedTuple

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
        out, new_mean, new_variance = batch_norm(
            inputs, self.gamma, self.beta, self.moving_mean, self.moving_variance, True,
            self.momentum, self.epsilon)
        self.moving_mean.assign(new_mean)
        self.moving_variance.assign(new_variance)
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


class ConvSpec(NamedTuple):
    name: str
    kernel_size: int
    in_channels: int
    out_channels: int
    strides: int


class MaskedOp:
    """One operator of the supernet at max width, as a function of its parameters; the MixedOp
    holds every operator's parameters in one flat variable (`MixedOp.parameters`). `call(x,
    channel_mask(width_weights), ...)` masks its channels.

    Width switching = USConv2d's kernel slicing, done as masking: the input's channels beyond
    its width are already zero, so a full conv equals the sliced conv; the output is multiplied
    after every ReLU by mask = width_weights @ prefix_masks (BN before the mask would undo a
    soft mask). With one-hot width weights the forward equals the sliced operator exactly.
    Layers as Keras' Conv2D (padding "same", no bias, he_normal) and `BatchNorm` (training: the
    batch moments through `normalize`; inference: the moving statistics).
    """

    def __init__(self, op_index, out_channels, strides, width_mult_list, name=None):
        self.op_index, self.strides, self.name = op_index, strides, name
        self.out_channels = out_channels
        self.masks = prefix_masks(out_channels, width_mult_list,
                                  halves=op_index == 0 and strides == 2)

    def convs(self, in_channels):
        """The ConvSpecs in forward order; each conv is followed by its BN except the factorized
        reduce's two, which share one BN over their concatenation."""
        C, s = self.out_channels, self.strides
        if self.op_index == 0 and s == 2:
            return [ConvSpec("reduce_a", 1, in_channels, C // 2, 2),
                    ConvSpec("reduce_b", 1, in_channels, C - C // 2, 2)]
        if self.op_index == 0:
            return [ConvSpec("conv1", 1, in_channels, C, 1)]
        convs = [ConvSpec("conv1", 3, in_channels, C, s if self.op_index in (1, 3) else 1)]
        if self.op_index in (3, 4):
            convs.append(ConvSpec("conv2", 3, C, C, 1))
        return convs

    def batch_norms(self):
        return ["bn"] if self.op_index == 0 and self.strides == 2 else (
            ["bn1", "bn2"] if self.op_index in (3, 4) else ["bn1"])

    def parameter_shapes(self, in_channels):
        """[(name, shape, initializer)] in the order of the flat parameter vector."""
        shapes = [(f"{self.name}/{c.name}/kernel",
                   (c.kernel_size, c.kernel_size, c.in_channels, c.out_channels), "he_normal")
                  for c in self.convs(in_channels)]
        for bn in self.batch_norms():
            shapes += [(f"{self.name}/{bn}/gamma", (self.out_channels,), "ones"),
                       (f"{self.name}/{bn}/beta", (self.out_channels,), "zeros")]
        return shapes

    def statistic_shapes(self):
        shapes = []
        for bn in self.batch_norms():
            shapes += [(f"{self.name}/{bn}/moving_mean", (self.out_channels,), "zeros"),
                       (f"{self.name}/{bn}/moving_variance", (self.out_channels,), "ones")]
        return shapes

    def channel_mask(self, width_weights, dtype):
        """[channels] mask = width_weights @ prefix masks (MixedOp shares it between operators
        with the same masks: one op in the graph instead of five)."""
        return tf.tensordot(tf.cast(width_weights, dtype), tf.constant(self.masks, dtype), 1)

    def call(self, x, mask, params, statistics, training):
        """(output, new statistics): params / statistics are this operator's tensors in the
        order of parameter_shapes / statistic_shapes."""
        height, width = int(x.shape[1]), int(x.shape[2])
        convs = self.convs(int(x.shape[-1]))
        kernels, norms = params[:len(convs)], params[len(convs):]
        new_statistics = []

        def conv(inputs, k):
            return tf.nn.conv2d(inputs, tf.cast(kernels[k], inputs.dtype), convs[k].strides,
                                "SAME")

        def bn(inputs, b):
            out, mean, variance = batch_norm(inputs, norms[2 * b], norms[2 * b + 1],
                                             statistics[2 * b], statistics[2 * b + 1], training)
            new_statistics.extend([mean, variance])
            return out

        if self.op_index == 0 and self.strides == 2:
            out = tf.concat([conv(x, 0), conv(x[:, 1:, 1:, :], 1)], axis=-1)
            return tf.nn.relu(bn(out, 0)) * mask, new_statistics
        downup = self.op_index in (2, 4)
        if downup:
            x = resize_bilinear(x, half_size(height, width), align_corners=True)
        out = bn(conv(x, 0), 0)
        if self.op_index in (3, 4):
            out = tf.nn.relu(out) * mask
            out = bn(conv(out, 1), 1)
        if downup and self.strides == 1:
            out = resize_bilinear(out, (height, width), align_corners=True)
        return tf.nn.relu(out) * mask, new_statistics


def batch_norm(x, gamma, beta, moving_mean, moving_variance, training, momentum=BN_MOMENTUM,
               epsilon=BN_EPSILON):
    """`BatchNorm`'s forward from given tensors (its call in training mode, and the supernet's
    MaskedOps): (output, new moving mean, new moving variance); training uses the batch moments
    (`normalize`), inference the moving statistics."""
    dtype = x.dtype
    x = tf.cast(x, keras.backend.result_type(x.dtype, "float32"))
    moving_mean = tf.cast(moving_mean, x.dtype)
    moving_variance = tf.cast(moving_variance, x.dtype)
    gamma, beta = tf.cast(gamma, x.dtype), tf.cast(beta, x.dtype)
    if not training:
        out = keras.ops.batch_normalization(x, moving_mean, moving_variance, -1, beta, gamma,
                                            epsilon)
        return tf.cast(out, dtype), moving_mean, moving_variance
    axes = tf.constant(list(range(len(x.shape) - 1)))
    mean = tf.reduce_mean(x, axes)
    variance = tf.reduce_mean(tf.square(x - mean), axes)
    new_mean = moving_mean * momentum + mean * (1.0 - momentum)
    new_variance = moving_variance * momentum + variance * (1.0 - momentum)
    out = normalize(x, mean, variance, gamma, beta, epsilon)
    return tf.cast(out, dtype), new_mean, new_variance


class FlatInitializer(keras.initializers.Initializer):
    """The concatenation of each piece's own initializer (Keras' Conv2D / BatchNormalization
    defaults), in the order given."""

    def __init__(self, pieces):
        self.pieces = [(tuple(shape), kind) for _, shape, kind in pieces]

    def __call__(self, shape, dtype=None):
        values = []
        for piece_shape, kind in self.pieces:
            init = {"he_normal": keras.initializers.HeNormal, "ones": keras.initializers.Ones,
                    "zeros": keras.initializers.Zeros}[kind]()
            values.append(tf.reshape(init(piece_shape, dtype=dtype), [-1]))
        return tf.concat(values, 0)


def split_pieces(flat, shapes):
    """The pieces of a flat vector, reshaped. One Split: views of `flat`, no copy, when every
    piece is a multiple of 64 bytes (TF shares the buffer then; the supernet's pieces are at even
    base widths), else a copy."""
    sizes = [int(np.prod(shape)) for _, shape, _ in shapes]
    parts = tf.split(flat, sizes) if len(sizes) > 1 else [flat]
    return [tf.reshape(p, shape) for p, (_, shape, _) in zip(parts, shapes)]


class CellFunctions:
    """The `tf.function`s MixedOps share, by configuration (a plain object: Keras would copy a
    dict attribute into each layer's own tracked dict)."""

    def __init__(self):
        self.functions = {}


class MixedOp(keras.layers.Layer):
    """sum_o alpha_o * op_o(x) over FasterSeg's five operators (one width mask for all).

    Its variables are two flat vectors: `parameters` (every operator's kernels, BN gammas and
    betas, in `parameter_shapes` order) and `statistics` (the BN moving statistics). The unrolled
    step handles the supernet's weights as lists (T', T +- eps v, norms, clipping, the fused
    update: a few ops per tensor), so ~75 flat vectors instead of ~1650 tensors make that graph
    (and its tracing, runtime instantiation and per-op run time) several times smaller; the
    values are the same functions of the same numbers. Split into views (no copy) when aligned.

    `cell_functions` (a CellFunctions shared by the supernet's MixedOps, or None): inside a
    traced step, the MixedOp runs as one `tf.function` of (x, alpha, width weights, its
    parameters, its statistics), shared by every MixedOp of the same configuration. A supernet
    has ~100 MixedOps per forward but only a handful of distinct ones (per scale, stride and
    width list), and the unrolled step runs the forward 3-7 times with first and second
    derivatives: traced per MixedOp, the step's graph is ~100k ops, each ~1 ms of Python
    tracing. Shared, each distinct cell and its derivatives are traced once (TensorFlow caches
    a function's gradient functions).
    """

    def __init__(self, out_channels, strides, width_mult_list, cell_functions=None, **kwargs):
        super().__init__(**kwargs)
        self.built = True   # variables are made on the first call, from the input's channels
        self.out_channels, self.strides = out_channels, strides
        self.cell_functions = cell_functions
        self.ops = [MaskedOp(k, out_channels, strides, width_mult_list, name=name)
                    for k, name in enumerate(OP_NAMES)]
        self.in_channels = None
        self.parameters = self.statistics = None

    @property
    def config_key(self):
        return (self.in_channels, self.out_channels, self.strides,
                tuple(op.masks.tobytes() for op in self.ops))

    def parameter_shapes(self):
        return [s for op in self.ops for s in op.parameter_shapes(self.in_channels)]

    def statistic_shapes(self):
        return [s for op in self.ops for s in op.statistic_shapes()]

    def make_variables(self, in_channels):
        self.in_channels = int(in_channels)
        for attribute, shapes, trainable in (("parameters", self.parameter_shapes(), True),
                                             ("statistics", self.statistic_shapes(), False)):
            size = sum(int(np.prod(shape)) for _, shape, _ in shapes)
            setattr(self, attribute, self.add_weight(
                name=attribute, shape=(size,), initializer=FlatInitializer(shapes),
                trainable=trainable))

    def call(self, x, op_weights, width_weights, training=None):
        if self.parameters is None:
            self.make_variables(x.shape[-1])
        values = (x, op_weights, width_weights, self.parameters.value, self.statistics.value)
        if self.cell_functions is None or tf.executing_eagerly():
            out, new_statistics = self.mixed_forward(*values, training=bool(training))
        else:
            key = self.config_key + (bool(training),)
            functions = self.cell_functions.functions
            if key not in functions:
                # Not inlined: inlined, the runtime's graph is as large as per-cell tracing's
                # (lpt at the demo config with 16 layers: 3.7 vs 2.8 GB peak), and the exact
                # mode's nested gradient functions grew past 15 GB there
                # (docs/paper_scale_log.md).
                functions[key] = tf.function(
                    functools.partial(self.mixed_forward, training=bool(training)),
                    autograph=False, reduce_retracing=False,
                    experimental_attributes={"_noinline": True})
            out, new_statistics = functions[key](*values)
        if training:
            self.statistics.assign(new_statistics)
        return out

    def mixed_forward(self, x, op_weights, width_weights, parameters, statistics,
                      training=None):
        """(sum_o alpha_o op_o(x), new flat statistics) from flat parameter and statistic
        values: a function of its arguments only, valid for every MixedOp with this
        `config_key`."""
        params = split_pieces(parameters, self.parameter_shapes())
        stats = split_pieces(statistics, self.statistic_shapes())
        # One mask per distinct prefix-mask table, and the five weights by one unstack: the
        # supernet has ~100 MixedOps per forward, and every op here is traced per pass.
        masks = {}
        for op in self.ops:
            key = op.masks.tobytes()
            if key not in masks:
                masks[key] = op.channel_mask(width_weights, x.dtype)
        weights = tf.unstack(op_weights, num=len(self.ops))
        outputs, new_stats = [], []
        p = s = 0
        for w, op in zip(weights, self.ops):
            n_params = len(op.parameter_shapes(self.in_channels))
            n_stats = len(op.statistic_shapes())
            out, op_stats = op.call(x, masks[op.masks.tobytes()], params[p:p + n_params],
                                    stats[s:s + n_stats], training)
            outputs.append(w * out)
            new_stats += op_stats
            p, s = p + n_params, s + n_stats
        new_statistics = (tf.concat([tf.reshape(t, [-1]) for t in new_stats], 0) if training
                          else statistics)
        return tf.add_n(outputs), new_statistics
