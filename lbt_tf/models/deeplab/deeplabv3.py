"""DeepLabV3 (ResNet backbone, ASPP, optional auxiliary FCN head), as torchvision's
`deeplabv3_resnet50`, built as a Keras functional model.

Every resize is `lbt_tf.ops.resize.resize_bilinear` (twice differentiable), because the LBT
hypergradient differentiates through a student weight step; the model's spatial shapes are
therefore static (built for one `input_shape`, any size). The model returns
`{"logits": [B, H, W, C]}` plus `"aux_logits"` when the auxiliary head is on.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import keras
from keras import layers, ops

from lbt_tf.models.deeplab.atrous import AtrousConv2D
from lbt_tf.models.deeplab.resnet import BN_MOMENTUM, kaiming_fan_out, resnet_backbone
from lbt_tf.ops.resize import resize_bilinear

HEAD_BN_EPSILON = 1e-5  # torch's BatchNorm2d default
ASPP_DROPOUT = 0.5      # torchvision ASPP projection
AUX_DROPOUT = 0.1       # torchvision FCNHead


def aspp_rates(output_stride: int) -> Tuple[int, int, int]:
    """Atrous rates of the three 3x3 ASPP branches (torchvision: 12/24/36 at OS 8)."""
    return {8: (12, 24, 36), 16: (6, 12, 18)}[output_stride]


@keras.saving.register_keras_serializable(package="lbt_tf")
class BilinearResize(layers.Layer):
    """Bilinear resize of the first input to a fixed size, or to the second input's size.

    Uses the einsum form of `resize_bilinear` (half-pixel centres, = torchvision's
    align_corners=False), which has a gradient of its gradient.
    """

    def __init__(self, size: Optional[Sequence[int]] = None, **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(size) if size is not None else None

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            x, like = inputs
            size = like.shape[1:3]
        else:
            x, size = inputs, self.size
        return resize_bilinear(x, size)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            x_shape, like_shape = input_shape
            return (x_shape[0], like_shape[1], like_shape[2], x_shape[3])
        return (input_shape[0], self.size[0], self.size[1], input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package="lbt_tf")
class BroadcastSpatial(layers.Layer):
    """Broadcasts a pooled [B, 1, 1, C] map to the spatial size of a reference map.

    Bilinear upsampling of a 1x1 map (torchvision's ASPPPooling) is exactly this broadcast.
    """

    def call(self, inputs):
        pooled, like = inputs
        return ops.tile(pooled, (1, like.shape[1], like.shape[2], 1))

    def compute_output_shape(self, input_shape):
        pooled_shape, like_shape = input_shape
        return (pooled_shape[0], like_shape[1], like_shape[2], pooled_shape[3])


def _head_conv_bn_relu(x, filters, kernel_size, name, dilation=1):
    x = AtrousConv2D(filters, kernel_size, padding="same", dilation_rate=dilation,
                      use_bias=False, kernel_initializer=kaiming_fan_out(),
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=HEAD_BN_EPSILON, momentum=BN_MOMENTUM,
                                  name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def aspp(features, channels: int, rates: Sequence[int], name: str = "aspp"):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3, image pooling; 1x1 projection."""
    branches = [_head_conv_bn_relu(features, channels, 1, f"{name}_b0")]
    for index, rate in enumerate(rates, start=1):
        branches.append(_head_conv_bn_relu(features, channels, 3, f"{name}_b{index}",
                                           dilation=rate))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(features)
    # At batch 1 this BN normalises a single value per channel (variance 0): output = beta, no
    # error (torchvision's ASPPPooling raises there in training mode).
    pooled = _head_conv_bn_relu(pooled, channels, 1, f"{name}_pool")
    branches.append(BroadcastSpatial(name=f"{name}_pool_broadcast")([pooled, features]))
    x = layers.Concatenate(name=f"{name}_concat")(branches)
    x = _head_conv_bn_relu(x, channels, 1, f"{name}_project")
    return layers.Dropout(ASPP_DROPOUT, name=f"{name}_dropout")(x)


def deeplab_head(features, num_classes: int, channels: int, rates: Sequence[int]):
    """torchvision's DeepLabHead: ASPP, 3x3 conv-BN-ReLU, 1x1 classifier (with bias)."""
    x = aspp(features, channels, rates)
    x = _head_conv_bn_relu(x, channels, 3, "head")
    return layers.Conv2D(num_classes, 1, name="head_classifier")(x)


def fcn_head(features, num_classes: int):
    """torchvision's FCNHead (auxiliary): 3x3 conv-BN-ReLU to in/4 channels, dropout, 1x1."""
    x = _head_conv_bn_relu(features, int(features.shape[-1]) // 4, 3, "aux")
    x = layers.Dropout(AUX_DROPOUT, name="aux_dropout")(x)
    return layers.Conv2D(num_classes, 1, name="aux_classifier")(x)


def build_deeplabv3(num_classes: int, input_shape: Sequence[int],
                    blocks_per_stage: Sequence[int] = (3, 4, 6, 3), base_width: int = 64,
                    aspp_channels: int = 256, output_stride: int = 8, aux_head: bool = True,
                    name: str = "deeplabv3_resnet") -> keras.Model:
    """DeepLabV3-ResNet for a static `input_shape` = (H, W, channels); any H, W, class count."""
    height, width = int(input_shape[0]), int(input_shape[1])
    inputs = keras.Input(shape=(height, width, int(input_shape[2])), name="images")
    _, _, stage4, stage5 = resnet_backbone(inputs, blocks_per_stage, base_width, output_stride)
    logits = deeplab_head(stage5, num_classes, aspp_channels, aspp_rates(output_stride))
    outputs = {"logits": BilinearResize((height, width), name="logits")(logits)}
    if aux_head:
        aux_logits = fcn_head(stage4, num_classes)
        outputs["aux_logits"] = BilinearResize((height, width), name="aux_logits")(aux_logits)
    return keras.Model(inputs, outputs, name=name)


def build_student(student_config, num_classes: int, input_shape: Sequence[int]) -> keras.Model:
    """The LBT student from `config.student` (a `StudentConfig`), built for `input_shape`.

    Pretrained weights are not loaded here (they need the data normalisation): use
    `build_student_from_config` or `weights.load_pretrained`.
    """
    return build_deeplabv3(num_classes, input_shape,
                           blocks_per_stage=tuple(student_config.blocks_per_stage),
                           base_width=student_config.base_width,
                           aspp_channels=student_config.aspp_channels,
                           output_stride=student_config.output_stride,
                           aux_head=student_config.aux_head)


def count_trainable_params(model: keras.Model) -> int:
    return int(sum(int(ops.size(v)) for v in model.trainable_variables))
