"""bench/search_step.py's memory readings: the peak RSS restarts at `reset_peaks`, and a large
array shows in the RSS of big anonymous mappings (the kind the tensor allocator's regions are)."""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import search_step  # noqa: E402


def test_peak_rss_restarts_at_reset():
    array = np.ones(300 << 17)  # 300 MiB, touched
    del array
    high = search_step.peak_memory_mb()
    search_step.reset_peaks()
    low = search_step.peak_memory_mb()
    assert high - low > 250
    array = np.ones(100 << 17)  # 100 MiB: the new peak counts it
    assert search_step.peak_memory_mb() - low > 80
    del array


def test_peak_tensors_restart_at_reset():
    import tensorflow as tf
    x = tf.ones((64, 1024, 1024))  # 256 MiB through TensorFlow's allocator
    y = x * 2.0
    del x, y
    assert search_step.peak_tensor_mb() >= 512
    search_step.reset_peaks()
    assert search_step.peak_tensor_mb() < 64


def test_rss_by_mapping_counts_a_large_array_as_big_anonymous():
    before = search_step.rss_by_mapping_mb()
    array = np.ones(256 << 17)  # 256 MiB, one anonymous mapping
    after = search_step.rss_by_mapping_mb()
    assert set(after) == {"heap", "big_anonymous", "anonymous", "files"}
    assert 240 < after["big_anonymous"] - before["big_anonymous"] < 272
    assert abs(after["anonymous"] - before["anonymous"]) < 32
    assert after["files"] > 0
    del array


RESULTS = {"lpt": {"step_s": 20.0, "peak_mem_mb": 7000.0, "compile_s": 30.0},
           "lbt-finite_difference": {"step_s": 45.0, "peak_mem_mb": 9100.0, "compile_s": 80.0},
           "lbt-exact": {"step_s": 56.0, "peak_mem_mb": 10500.0, "compile_s": 160.0}}


def test_ratio_to_lpt():
    def ratios(name):
        return tuple(search_step.ratio_to_lpt(RESULTS, name, key)
                     for key in ("step_s", "peak_mem_mb"))
    assert ratios("lpt") == (1.0, 1.0)
    assert np.allclose(ratios("lbt-finite_difference"), (2.25, 1.3))
    assert np.allclose(ratios("lbt-exact"), (2.8, 1.5))
    without_lpt = {"lbt-exact": RESULTS["lbt-exact"]}
    assert np.isnan(search_step.ratio_to_lpt(without_lpt, "lbt-exact", "step_s"))


def test_plot_writes_the_three_panels(tmp_path):
    import matplotlib.image
    path = tmp_path / "bench.png"
    search_step.plot(RESULTS, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(path).shape[:2]
    assert (height, width) == (396, 1320)  # 12 x 3.6 inches at 110 dpi: three panels
