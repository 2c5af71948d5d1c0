"""The architecture log's per-epoch argmax-change fractions and its evolution plot."""
import os

import numpy as np
import pytest

from lbt_tf.search import callbacks


def test_argmax_changed_fraction_per_kind():
    before = {"alpha_0": [[1, 0, 0], [0, 1, 0]], "alpha_1": [[0, 0, 1]], "beta_1": [[1, 0]] * 4}
    after = {"alpha_0": [[0, 2, 0], [0, 1, 0]], "alpha_1": [[0, 0, 1]],
             "beta_1": [[1, 0], [0, 1], [0, 1], [1, 0]]}
    assert callbacks.argmax_changed(before, after) == {
        "arch_argmax_changed_alpha": pytest.approx(1 / 3),
        "arch_argmax_changed_beta": pytest.approx(2 / 4)}
    assert set(callbacks.argmax_changed(after, after).values()) == {0.0}


def test_evolution_plot_per_row(tmp_path):
    rng = np.random.default_rng(0)
    history = [{"epoch": e, "arch_values": {"alpha_0": rng.normal(size=(4, 5)).tolist(),
                                            "beta_1": rng.normal(size=(2, 2)).tolist()}}
               for e in (1, 2, 3)]
    path = str(tmp_path / "evolution.png")
    callbacks.plot_arch_history(history, path)
    assert os.path.getsize(path) > 1000
