"""Dilated 3x3 convolutions of the DeepLabV3-ResNet50 student: Keras' Conv2D (space-to-batch)
against lbt_tf's AtrousConv2D (the Conv2D op's own dilation), forward + backward.

    python bench/atrous_conv.py [--feature_height=28 --feature_width=56 --batch=2]

Default: the paper setting's output-stride-8 map (224x448 crops, batch 2): the backbone's dilated
3x3 convs (stage 4: 256 channels, rate 2; stage 5: 512, rate 4) and ASPP's three branches
(2048 -> 256, rates 12/24/36). Prints per conv the median time of each path, their ratio, and
the padded input's size relative to the input (what space-to-batch materialises).
"""
from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from lbt_tf.models.deeplab.atrous import AtrousConv2D, native_dilation  # noqa: E402

flags.DEFINE_integer("feature_height", 28, "Feature map height (crop height / 8).")
flags.DEFINE_integer("feature_width", 56, "Feature map width (crop width / 8).")
flags.DEFINE_integer("batch", 2, "Batch size.")
flags.DEFINE_integer("repeats", 5, "Timed runs per path (median).")

# (name, input channels, output channels, rate): ResNet-50 at output stride 8, DeepLabV3's ASPP.
CONVS = [("stage4 3x3", 256, 256, 2), ("stage5 3x3", 512, 512, 4),
         ("aspp rate 12", 2048, 256, 12), ("aspp rate 24", 2048, 256, 24),
         ("aspp rate 36", 2048, 256, 36)]


def padded_ratio(height, width, rate):
    """Space-to-batch's padded input over the input (SAME padding, 3x3 kernel)."""
    def padded(n):
        return math.ceil((n + 2 * rate) / rate) * rate
    return padded(height) * padded(width) / (height * width)


def time_fwd_bwd(layer, x, repeats):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        return loss, tape.gradient(loss, [x, layer.kernel])

    step(x)  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(step(x)[0])
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv):
    del argv
    f = flags.FLAGS
    print(f"device: {'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}; native dilated "
          f"Conv2D (float32): {native_dilation('float32')}")
    print("| conv | padded input / input | Keras Conv2D (ms) | AtrousConv2D (ms) | ratio |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    totals = [0.0, 0.0]
    for name, cin, cout, rate in CONVS:
        x = tf.constant(rng.normal(size=(f.batch, f.feature_height, f.feature_width, cin)),
                        tf.float32)
        kwargs = dict(filters=cout, kernel_size=3, padding="same", dilation_rate=rate,
                      use_bias=False)
        plain, atrous = keras.layers.Conv2D(**kwargs), AtrousConv2D(**kwargs)
        for layer in (plain, atrous):
            layer.build(x.shape)
        atrous.kernel.assign(plain.kernel)
        times = [time_fwd_bwd(layer, x, f.repeats) for layer in (plain, atrous)]
        totals = [t + s for t, s in zip(totals, times)]
        print(f"| {name} ({cin}->{cout}, rate {rate}) | "
              f"{padded_ratio(f.feature_height, f.feature_width, rate):.1f} | "
              f"{1e3 * times[0]:.0f} | {1e3 * times[1]:.0f} | {times[0] / times[1]:.2f}x |",
              flush=True)
    print(f"| one of each | | {1e3 * totals[0]:.0f} | {1e3 * totals[1]:.0f} | "
          f"{totals[0] / totals[1]:.2f}x |")


if __name__ == "__main__":
    app.run(main)
