"""The LBT student: DeepLabV3 with a (dilated) ResNet-50 backbone, as torchvision's."""
from __future__ import annotations

from typing import Optional, Sequence

from lbt_tf.models.deeplab.deeplabv3 import (build_deeplabv3, build_student,
                                             count_trainable_params)
from lbt_tf.models.deeplab.weights import load_pretrained


def build_student_from_config(config, input_shape: Optional[Sequence[int]] = None):
    """Student for a full `Config`: class count and normalisation from `config.data`, pretrained
    weights from `config.student.pretrained_weights` when set. input_shape defaults to the
    training crop (crop_height, crop_width, 3)."""
    if input_shape is None:
        input_shape = (config.data.crop_height, config.data.crop_width, 3)
    model = build_student(config.student, config.data.num_classes, input_shape)
    if config.student.pretrained_weights:
        load_pretrained(model, config.student.pretrained_weights,
                        input_mean=config.data.mean, input_std=config.data.std)
    return model


__all__ = ["build_deeplabv3", "build_student", "build_student_from_config",
           "count_trainable_params", "load_pretrained"]
