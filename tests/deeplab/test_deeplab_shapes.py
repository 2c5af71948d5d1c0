"""DeepLabV3-ResNet student: output shapes (OS 8/16, odd sizes), dilation layout, parity count."""
import dataclasses

import numpy as np
import pytest

from lbt_tf.config import StudentConfig
from lbt_tf.models.deeplab import build_student, count_trainable_params
from lbt_tf.models.deeplab.deeplabv3 import aspp_rates

TINY = StudentConfig(blocks_per_stage=(1, 1, 1, 1), base_width=8, aspp_channels=16)


def _tiny(**changes):
    return dataclasses.replace(TINY, **changes)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("height,width", [(32, 64), (33, 65), (47, 21)])
def test_output_shapes_any_size(output_stride, height, width):
    model = build_student(_tiny(output_stride=output_stride), 5, (height, width, 3))
    images = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype("float32")
    outputs = model(images, training=False)
    assert set(outputs) == {"logits", "aux_logits"}
    for key in outputs:
        assert tuple(outputs[key].shape) == (2, height, width, 5)
        assert np.all(np.isfinite(outputs[key]))
    # Stage-5 resolution is ceil-ish(H / OS): stem conv, pool and stride-2 1x1 convs all round up.
    stage5 = model.get_layer("conv5_block1_out").output.shape
    expected_h = height
    for _ in range(2 + {8: 1, 16: 2}[output_stride]):
        expected_h = (expected_h + 1) // 2
    assert stage5[1] == expected_h


def test_no_aux_head_and_class_count():
    model = build_student(_tiny(aux_head=False), 7, (32, 64, 3))
    outputs = model(np.zeros((1, 32, 64, 3), "float32"))
    assert set(outputs) == {"logits"} and outputs["logits"].shape[-1] == 7


@pytest.mark.parametrize("output_stride,stage4_dilations,stage5_dilations",
                         [(8, (1, 2, 2), (2, 4, 4)), (16, (1, 1, 1), (1, 2, 2))])
def test_dilation_layout_as_torchvision(output_stride, stage4_dilations, stage5_dilations):
    """replace_stride_with_dilation: first block keeps the previous dilation, the rest double."""
    config = StudentConfig(blocks_per_stage=(1, 1, 3, 3), base_width=8, aspp_channels=16,
                           output_stride=output_stride)
    model = build_student(config, 3, (32, 32, 3))
    for stage, dilations in ((4, stage4_dilations), (5, stage5_dilations)):
        got = tuple(model.get_layer(f"conv{stage}_block{b}_2_conv").dilation_rate[0]
                    for b in (1, 2, 3))
        assert got == dilations
    rates = tuple(model.get_layer(f"aspp_b{i}_conv").dilation_rate[0] for i in (1, 2, 3))
    assert rates == aspp_rates(output_stride) == {8: (12, 24, 36), 16: (6, 12, 18)}[output_stride]


def test_batch_of_one_trains_without_error():
    """torchvision's ASPPPooling BN fails at batch 1 in training; ours gives finite outputs."""
    model = build_student(TINY, 3, (32, 64, 3))
    outputs = model(np.ones((1, 32, 64, 3), "float32"), training=True)
    assert np.all(np.isfinite(outputs["logits"]))


def test_tiny_parameter_count_by_hand():
    """Count of the tiny variant computed by hand from the architecture (no conv biases)."""
    w, c, k = 8, 16, 3
    bn = lambda n: 2 * n  # noqa: E731  gamma + beta

    def block(cin, width):
        return (cin * width + bn(width) + 9 * width * width + bn(width) + width * 4 * width
                + bn(4 * width) + cin * 4 * width + bn(4 * width))

    backbone = 49 * 3 * w + bn(w)
    cin = w
    for stage in range(4):
        backbone += block(cin, w * 2 ** stage)
        cin = 4 * w * 2 ** stage
    aspp = (cin * c + bn(c)) + 3 * (9 * cin * c + bn(c)) + (cin * c + bn(c)) + 5 * c * c + bn(c)
    head = 9 * c * c + bn(c) + c * k + k
    stage4 = 16 * w
    aux = 9 * stage4 * (stage4 // 4) + bn(stage4 // 4) + (stage4 // 4) * k + k
    model = build_student(TINY, k, (32, 64, 3))
    assert count_trainable_params(model) == backbone + aspp + head + aux


def test_full_model_matches_torchvision_parameter_count():
    """torchvision deeplabv3_resnet50(num_classes=21, aux_loss=True): 42,004,074 trainable."""
    model = build_student(StudentConfig(), 21, (64, 64, 3))
    assert count_trainable_params(model) == 42_004_074
    aux = sum(layer.count_params() for layer in model.layers if layer.name.startswith("aux_"))
    # FCNHead(1024, 21): 3x3 conv 1024->256, BN 256 (gamma, beta; moving stats non-trainable:
    # count_params counts them too), 1x1 conv 256->21 with bias.
    assert aux == 9 * 1024 * 256 + 4 * 256 + 256 * 21 + 21
