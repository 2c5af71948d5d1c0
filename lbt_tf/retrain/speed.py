"""Inference latency at batch 1: warm-up runs, then the median of N timed runs."""
from __future__ import annotations

import time
from typing import Tuple

import numpy as np
import tensorflow as tf

from lbt_tf.config import ConfigError


def measure_latency(model, input_hw: Tuple[int, int], runs: int = 10, warmup: int = 3) -> dict:
    """{"latency_ms": median ms per image, "fps": 1000 / median, "input": "HxW"}.

    The call is a `tf.function` (graph, as deployed); `.numpy()` waits for the result so
    asynchronous GPU work is inside the timing.
    """
    if runs <= 0:
        raise ConfigError(f"--latency_runs must be positive, got {runs}")
    height, width = input_hw
    images = tf.random.stateless_uniform((1, height, width, 3), seed=(0, 1))

    @tf.function
    def infer(x):
        outputs = model(x, training=False)
        return outputs["logits"] if isinstance(outputs, dict) else outputs

    for _ in range(max(warmup, 1)):  # at least one: the first call traces the graph
        infer(images).numpy()
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        infer(images).numpy()
        timings.append((time.perf_counter() - start) * 1000.0)
    median = float(np.median(timings))
    return {"latency_ms": median, "fps": 1000.0 / median if median > 0 else float("inf"),
            "input": f"{height}x{width}", "runs": runs}
