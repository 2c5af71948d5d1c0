"""Segmentation losses that are safe on the unrolled (second-order) LBT path.

The fused soft-label cross-entropy (`tf.nn.softmax_cross_entropy_with_logits`, Keras'
CategoricalCrossentropy) gives a silently zero gradient through its labels at second order, so
the soft (pseudo-label) loss is written out as -sum(p * log_softmax(z)).
Under a mixed-precision policy the logits arrive in bfloat16/float16: every loss is computed in
float32 (`at_least_float32`), so the losses and the gradients that start from them are float32.
"""
from __future__ import annotations

import tensorflow as tf

from lbt_tf.ops.resize import downsample_labels_nearest, resize_bilinear


def at_least_float32(x):
    """x in float32 when it is a 16-bit float; float32/float64 unchanged."""
    return tf.cast(x, tf.float32) if x.dtype in (tf.bfloat16, tf.float16) else x


def segmentation_ce(logits, labels, ignore_label: int):
    """Mean pixel cross-entropy over non-ignored pixels.

    logits [B, h, w, C] at any resolution; labels [B, H, W] ints. When the logits are smaller
    than the labels, labels are down-sampled with nearest neighbour (FasterSeg computes the search
    loss at 1/8 resolution this way); when they are larger, an error.
    """
    logits = at_least_float32(logits)
    labels = tf.cast(labels, tf.int32)
    if labels.shape[1] != logits.shape[1] or labels.shape[2] != logits.shape[2]:
        labels = downsample_labels_nearest(labels, logits.shape[1:3])
    valid = tf.not_equal(labels, ignore_label)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    pixel_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
    weights = tf.cast(valid, logits.dtype)
    # max(count, 1): a batch with every pixel ignored gives loss 0, not NaN.
    return tf.reduce_sum(pixel_loss * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def soft_ce(logits, target_probs):
    """Cross-entropy against soft targets, written out (second-order safe).

    target_probs are resized bilinearly (twice differentiable) to the logits' size when needed.
    """
    logits, target_probs = at_least_float32(logits), at_least_float32(target_probs)
    if target_probs.shape[1:3] != logits.shape[1:3]:
        target_probs = resize_bilinear(target_probs, logits.shape[1:3])
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    return -tf.reduce_mean(tf.reduce_sum(target_probs * log_probs, axis=-1))


def distillation_kl(student_logits, teacher_logits, temperature: float = 1.0):
    """KL(teacher || student) on temperature-softened logits, scaled by T^2 (Hinton et al.)."""
    if teacher_logits.shape[1:3] != student_logits.shape[1:3]:
        teacher_logits = resize_bilinear(teacher_logits, student_logits.shape[1:3])
    t = tf.cast(temperature, student_logits.dtype)
    teacher_log_probs = tf.nn.log_softmax(teacher_logits / t, axis=-1)
    student_log_probs = tf.nn.log_softmax(student_logits / t, axis=-1)
    kl = tf.reduce_sum(tf.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), -1)
    return tf.reduce_mean(kl) * t * t
