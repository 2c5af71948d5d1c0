"""Tiny stand-ins for the supernet and the student, for tests that need a model this small (a
full search under `fit` in seconds, injecting a non-finite loss). `TinySupernet` implements
`learner.SearchableSupernet` as the real FasterSegSupernet does; the gradient tests run on both.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from lbt_tf.ops.resize import resize_bilinear


class TinySupernet(keras.Model):
    """Mixed op of two candidate convs weighted by softmax(alpha); output list at 1/8."""

    def __init__(self, num_classes=3, channels=4, **kwargs):
        super().__init__(**kwargs)
        self.stem = keras.layers.Conv2D(channels, 3, strides=2, padding="same")
        self.stem_bn = keras.layers.BatchNormalization()
        self.down = keras.layers.AveragePooling2D(4)
        self.op_a = keras.layers.Conv2D(channels, 3, padding="same")
        self.op_b = keras.layers.Conv2D(channels, 1, padding="same")
        self.head_a = keras.layers.Conv2D(num_classes, 1)
        self.head_b = keras.layers.Conv2D(num_classes, 1)
        self.alpha = self.add_weight(shape=(2,), initializer="random_normal", name="alpha")
        self.beta = self.add_weight(shape=(2,), initializer="random_normal", name="beta")
        self.sample_widths = False
        # ms per candidate: alpha's two ops, beta's two heads
        self.latency_table = {"alpha": (2.0, 1.0), "beta": (1.0, 3.0)}

    def set_latency_table(self, table):
        self.latency_table = table

    @property
    def arch_variables(self):
        return [self.alpha, self.beta]

    @property
    def weight_variables(self):
        ids = {id(v) for v in self.arch_variables}
        return [v for v in self.trainable_variables if id(v) not in ids]

    def arch_inputs(self, width_mode=None):
        del width_mode
        return {"alpha": tf.nn.softmax(tf.convert_to_tensor(self.alpha.value)),
                "beta": tf.nn.softmax(tf.convert_to_tensor(self.beta.value))}

    def stages(self):
        return [self._stem_stage, self._mixed_stage, self._head_stage]

    def call(self, x, training=False):
        arch_inputs = self.arch_inputs()
        for stage in self.stages():
            x = stage(x, arch_inputs, training)
        return x

    def _stem_stage(self, x, arch_inputs, training):
        return self.down(tf.nn.relu(self.stem_bn(self.stem(x), training=training)))

    def _mixed_stage(self, h, arch_inputs, training):
        w = arch_inputs["alpha"]
        return w[0] * tf.nn.relu(self.op_a(h)) + w[1] * tf.nn.tanh(self.op_b(h))

    def _head_stage(self, mixed, arch_inputs, training):
        b = arch_inputs["beta"]
        return [b[0] * self.head_a(mixed) + 1.0, b[1] * self.head_b(mixed * mixed)]

    def expected_latency(self, arch_values=None):
        alpha, beta = arch_values if arch_values is not None else self.arch_variables
        table = self.latency_table
        return (tf.reduce_sum(tf.nn.softmax(alpha) * tf.constant(table["alpha"], alpha.dtype))
                + tf.reduce_sum(tf.nn.softmax(beta) * tf.constant(table["beta"], beta.dtype)))


class TinyStudent(keras.Model):
    def __init__(self, num_classes=3, channels=4, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(channels, 3, strides=2, padding="same")
        self.bn = keras.layers.BatchNormalization()
        self.head = keras.layers.Conv2D(num_classes, 1)

    def call(self, x, training=False):
        h = tf.nn.relu(self.bn(self.conv(x), training=training))
        logits = resize_bilinear(self.head(h), x.shape[1:3])
        return {"logits": logits, "aux_logits": None}


def build_tiny(num_classes=3, height=32, width=64, seed=0):
    keras.utils.set_random_seed(seed)
    supernet = TinySupernet(num_classes)
    student = TinyStudent(num_classes)
    dummy = tf.zeros((1, height, width, 3), keras.config.floatx())
    supernet(dummy)
    student(dummy)
    return supernet, student
