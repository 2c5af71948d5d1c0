"""The serving graph of the retrained network: uint8 RGB of any size in, int32 labels out.

The network itself has a fixed input size (its resizes are einsums of static matrices, and it
needs sizes divisible by 32), so the serving function resizes the image to that size and the
logits back to the image's size inside the graph. No second-order gradient is needed here, so
`tf.image.resize` is fine.
"""
from __future__ import annotations

from typing import Tuple

import keras
import tensorflow as tf

from lbt_tf.data.pipeline import normalize
from lbt_tf.retrain.network import logits_of

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"


def input_signature():
    return [tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)]


def make_serving_fn(model, input_hw: Tuple[int, int], data_config, probabilities: bool = True):
    """fn(images uint8 [B, H, W, 3]) -> {"labels": int32 [B, H, W], "probabilities"?}."""

    def serve(images):
        # The signature's TensorSpec alone does not check the rank or channels of what reaches
        # the graph (a rank-3 image would fail deep inside a resize); EnsureShape does, at run
        # time, with a message naming `images` and the expected shape.
        images = tf.ensure_shape(images, [None, None, None, 3],
                                 name="check_images_uint8_batch_height_width_3")
        image_hw = tf.shape(images)[1:3]
        x = tf.image.resize(normalize(images, data_config), input_hw, method="bilinear")
        logits = logits_of(model(x, training=False))
        logits = tf.image.resize(logits, image_hw, method="bilinear")
        outputs = {"labels": tf.argmax(logits, axis=-1, output_type=tf.int32)}
        if probabilities:
            outputs["probabilities"] = tf.nn.softmax(logits, axis=-1)
        return outputs

    return serve


def export_saved_model(model, export_dir: str, input_hw: Tuple[int, int], data_config,
                       probabilities: bool = True) -> str:
    """Writes a SavedModel with the `serving_default` signature (Keras 3 `ExportArchive`)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE_NAME,
                         fn=make_serving_fn(model, input_hw, data_config, probabilities),
                         input_signature=input_signature())
    archive.write_out(export_dir, verbose=False)
    return export_dir
