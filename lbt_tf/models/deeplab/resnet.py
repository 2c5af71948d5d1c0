"""Bias-free ResNet (bottleneck, v1) backbone with optional dilation, for DeepLabV3.

Layer names and the stride layout follow `keras.applications.ResNet50` (stride 2 on the first 1x1
conv of a stage, `conv2_block1_1_conv`, `..._bn`, ...), so Keras' ImageNet weights load by name
(see `weights.py`). Unlike Keras, the convs have no bias: every conv is followed by a BatchNorm,
which absorbs a bias exactly (torchvision's layout; it is what gives torchvision's parameter
count). Dilation follows torchvision's `replace_stride_with_dilation`: a dilated stage drops its
stride, its first block keeps the previous dilation and the following blocks use the new one.
"""
from __future__ import annotations

from typing import Sequence

import keras
from keras import layers

from lbt_tf.models.deeplab.atrous import AtrousConv2D

# keras.applications.ResNet50's BatchNorm epsilon; kept so its weights give identical features.
BACKBONE_BN_EPSILON = 1.001e-5
BN_MOMENTUM = 0.9  # torchvision's momentum=0.1 in Keras' convention
EXPANSION = 4      # bottleneck output channels = 4 x bottleneck width


def kaiming_fan_out():
    """torchvision's ResNet conv init (kaiming_normal_, mode="fan_out", relu)."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out",
                                              distribution="untruncated_normal")


def conv_bn(x, filters, kernel_size, name, strides=1, dilation=1, relu=True,
            epsilon=BACKBONE_BN_EPSILON):
    """Conv (no bias) -> BatchNorm -> optional ReLU; names `<name>_conv`, `<name>_bn`."""
    x = AtrousConv2D(filters, kernel_size, strides=strides, dilation_rate=dilation,
                      padding="same" if kernel_size > 1 else "valid", use_bias=False,
                      kernel_initializer=kaiming_fan_out(), name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=epsilon, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    if relu:
        x = layers.Activation("relu", name=f"{name}_relu")(x)
    return x


def bottleneck_block(x, width, name, stride=1, dilation=1, projection=False):
    """ResNet v1 bottleneck; stride on the first 1x1 conv as in keras.applications."""
    shortcut = x
    if projection:
        shortcut = conv_bn(x, EXPANSION * width, 1, f"{name}_0", strides=stride, relu=False)
    x = conv_bn(x, width, 1, f"{name}_1", strides=stride)
    x = conv_bn(x, width, 3, f"{name}_2", dilation=dilation)
    x = conv_bn(x, EXPANSION * width, 1, f"{name}_3", relu=False)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def stage_dilations(output_stride: int):
    """Per stage 2..5: (stride, dilate) as torchvision's replace_stride_with_dilation.

    output_stride 32: no dilation (keras.applications.ResNet50); 16: stage 5 dilated; 8: stages
    4 and 5 dilated.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
    return (False,) + dilate[output_stride]


def resnet_backbone(inputs, blocks_per_stage: Sequence[int] = (3, 4, 6, 3), base_width: int = 64,
                    output_stride: int = 8):
    """Builds the backbone on `inputs`; returns the outputs of stages 2..5 (conv2..conv5).

    Stage s (2..5) has bottleneck width base_width * 2**(s-2) and output 4x that.
    """
    if len(blocks_per_stage) != 4 or min(blocks_per_stage) < 1:
        raise ValueError(f"blocks_per_stage needs 4 positive counts, got {blocks_per_stage}")
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(base_width, 7, strides=2, use_bias=False,
                      kernel_initializer=kaiming_fan_out(), name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=BACKBONE_BN_EPSILON, momentum=BN_MOMENTUM,
                                  name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    # Zero padding before max-pooling equals torch's -inf padding: the input is post-ReLU.
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    dilation = 1
    stage_outputs = []
    for stage_index, (num_blocks, dilate) in enumerate(
            zip(blocks_per_stage, stage_dilations(output_stride))):
        stage = stage_index + 2
        width = base_width * 2 ** stage_index
        stride = 1 if stage == 2 else 2
        first_dilation = dilation
        if dilate:
            dilation *= stride
            stride = 1
        for block in range(1, num_blocks + 1):
            x = bottleneck_block(x, width, f"conv{stage}_block{block}",
                                 stride=stride if block == 1 else 1,
                                 dilation=first_dilation if block == 1 else dilation,
                                 projection=block == 1)
        stage_outputs.append(x)
    return stage_outputs
