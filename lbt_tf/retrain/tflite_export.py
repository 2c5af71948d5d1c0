"""TFLite versions of the retrained network at its fixed input size (TFLite wants static shapes):
float32, and int8 post-training quantisation calibrated on training images; both evaluated with
the TFLite interpreter so the mIoU cost of int8 is visible.

The TFLite models take the normalised float image [1, H, W, 3] and return logits [1, H, W, C]
(float in/out; the int8 model quantises inside).
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterable, Tuple

import keras
import numpy as np
import tensorflow as tf

from lbt_tf.models.fasterseg.timing import tflite_interpreter
from lbt_tf.retrain.network import logits_of


def _fixed_size_saved_model(model, input_hw: Tuple[int, int], directory: str) -> str:
    """A SavedModel of logits at the fixed input size: the converter freezes its variables
    (converting a concrete function of a Keras 3 model keeps them as READ_VARIABLE ops, which
    the int8 calibrator cannot run)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda images: {"logits": logits_of(model(images, training=False))},
        input_signature=[tf.TensorSpec([1, *input_hw, 3], tf.float32, name="images")])
    archive.write_out(directory, verbose=False)
    return directory


def _converter(model, input_hw: Tuple[int, int], scratch_dir: str):
    saved = _fixed_size_saved_model(model, input_hw, os.path.join(scratch_dir, "fixed_size"))
    return tf.lite.TFLiteConverter.from_saved_model(saved)


def convert_float(model, input_hw: Tuple[int, int]) -> bytes:
    with tempfile.TemporaryDirectory() as scratch:
        return _converter(model, input_hw, scratch).convert()


def convert_int8(model, input_hw: Tuple[int, int], calibration_images: Iterable[np.ndarray]):
    """(int8 model bytes, "int8" | "int8+float fallback"): full-integer builtins when every op
    has an int8 kernel, else int8 where possible with float kernels for the rest."""
    calibration = [np.asarray(image, np.float32)[None] for image in calibration_images]
    if not calibration:
        raise ValueError("int8 quantisation needs at least one calibration image")

    def representative_dataset():
        for image in calibration:
            yield [image]

    with tempfile.TemporaryDirectory() as scratch:
        def convert(ops):
            converter = _converter(model, input_hw, scratch)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = ops
            return converter.convert()

        try:
            return convert([tf.lite.OpsSet.TFLITE_BUILTINS_INT8]), "int8"
        except Exception as err:  # an op without an int8 kernel (ConverterError and others)
            print(f"int8: full-integer conversion failed ({type(err).__name__}: "
                  f"{str(err).splitlines()[0][:200]}); keeping float kernels where int8 ones "
                  "are missing")
            return convert([tf.lite.OpsSet.TFLITE_BUILTINS]), "int8+float fallback"


class TfliteRunner:
    """Runs a TFLite segmentation model on one normalised image at a time."""

    def __init__(self, model_content: bytes):
        self.interpreter = tflite_interpreter(model_content)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def logits(self, image: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], np.asarray(image, np.float32)[None])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])[0]

    def labels(self, image: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(image), axis=-1).astype(np.int32)
