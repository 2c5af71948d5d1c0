"""Streaming mean IoU over a confusion matrix (Cityscapes convention: ignore pixels skipped,
the mean taken over classes that occur in labels or predictions)."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class StreamingMeanIoU(keras.metrics.Metric):
    """Accumulates a [num_classes, num_classes] confusion matrix (rows: label, cols: prediction).

    `update_state(labels [B,H,W], predictions)` takes logits/probabilities [B,H,W,C] (argmax;
    bilinearly resized to the label size if smaller) or a label map [B,H,W]. Pixels whose label is
    `ignore_label` (or any value outside 0..num_classes-1) are skipped.
    """

    def __init__(self, num_classes: int, ignore_label: int = 255, name: str = "mean_iou",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.total_confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="float64",
            name="total_confusion")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = tf.cast(y_true, tf.int32)
        predictions = tf.convert_to_tensor(y_pred)
        if predictions.shape.rank == labels.shape.rank + 1:
            if predictions.shape[1:3] != labels.shape[1:3]:
                predictions = tf.image.resize(predictions, tf.shape(labels)[1:3], "bilinear")
            predictions = tf.argmax(predictions, axis=-1, output_type=tf.int32)
        predictions = tf.cast(predictions, tf.int32)
        labels = tf.reshape(labels, [-1])
        predictions = tf.reshape(predictions, [-1])
        valid = (labels != self.ignore_label) & (labels >= 0) & (labels < self.num_classes)
        weights = None if sample_weight is None else tf.boolean_mask(
            tf.reshape(tf.cast(sample_weight, tf.float64), [-1]), valid)
        confusion = tf.math.confusion_matrix(
            tf.boolean_mask(labels, valid),
            tf.clip_by_value(tf.boolean_mask(predictions, valid), 0, self.num_classes - 1),
            num_classes=self.num_classes, weights=weights, dtype=tf.float64)
        self.total_confusion.assign_add(confusion)

    def _iou(self):
        confusion = tf.convert_to_tensor(self.total_confusion)
        true_positive = tf.linalg.diag_part(confusion)
        union = tf.reduce_sum(confusion, 0) + tf.reduce_sum(confusion, 1) - true_positive
        return true_positive, union

    def result(self):
        """mIoU over classes with union > 0 (0.0 before any pixel was seen)."""
        true_positive, union = self._iou()
        present = union > 0
        iou = tf.math.divide_no_nan(true_positive, union)
        count = tf.reduce_sum(tf.cast(present, tf.float64))
        return tf.cast(tf.math.divide_no_nan(tf.reduce_sum(tf.where(present, iou, 0.0)), count),
                       tf.float32)

    def per_class_iou(self) -> np.ndarray:
        """IoU of every class; NaN where the class never occurred (union 0)."""
        true_positive, union = (t.numpy() for t in self._iou())
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, true_positive / np.maximum(union, 1e-300), np.nan)

    def pixel_accuracy(self) -> float:
        confusion = self.confusion_matrix()
        total = confusion.sum()
        return float(np.trace(confusion) / total) if total else 0.0

    def confusion_matrix(self) -> np.ndarray:
        return np.asarray(self.total_confusion.numpy())

    def reset_state(self):
        self.total_confusion.assign(tf.zeros_like(self.total_confusion))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "ignore_label": self.ignore_label}
