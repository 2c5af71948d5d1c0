"""Divergence is an error (issue 15, item 4): an exploding loss, mostly non-finite steps or an
architecture softmax saturated in its first steps stop the run with one DivergenceError naming
the flag to lower; the last good checkpoint stays, no architecture is written."""
from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.errors import LbtError
from lbt_tf.search import runner
from lbt_tf.search.callbacks import DivergenceError, DivergenceGuard
from tests.search.test_runner import builders, tiny_search_config  # noqa: F401 (fixture)


def _regression(lr):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    return model, x, x.sum(-1, keepdims=True)


def test_exploding_loss_names_the_learning_rate():
    model, x, y = _regression(lr=5.0)  # SGD on a quadratic: |1 - lr * curvature| > 1
    with pytest.raises(DivergenceError, match=r"loss .* its first value .*--train_lr=5"):
        model.fit(x, y, batch_size=8, epochs=20, verbose=0,
                  callbacks=[DivergenceGuard({"loss": ("train_lr", 5.0)})])


def test_a_sane_run_passes_and_nan_without_skipping_is_an_error():
    model, x, y = _regression(lr=0.01)
    model.fit(x, y, batch_size=8, epochs=3, verbose=0,
              callbacks=[DivergenceGuard({"loss": ("train_lr", 0.01)})])
    guard = DivergenceGuard({"loss": ("train_lr", 0.01)})
    with pytest.raises(DivergenceError, match="loss is nan.*--train_lr"):
        guard.on_train_batch_end(0, {"loss": float("nan")})


def test_mostly_skipped_steps_are_an_error():
    skipped = [0]  # the run's count of skipped steps
    guard = DivergenceGuard({"teacher_loss": ("teacher_lr", 0.5)},
                            skips_fn=lambda: skipped[0], min_steps_for_fraction=4)
    guard.on_epoch_begin(0)
    for step in range(6):  # every other step skipped: tolerated (limit 50%)
        skipped[0] += step % 2
        guard.on_train_batch_end(step, {"teacher_loss": float("nan") if step % 2 else 2.0})
    guard.on_epoch_end(0, {"teacher_loss": float("nan")})
    guard.on_epoch_begin(1)
    for step in range(3):  # every step skipped, but fewer than 4 steps seen
        skipped[0] += 1
        guard.on_train_batch_end(step, {"teacher_loss": float("nan")})
    skipped[0] += 1
    with pytest.raises(DivergenceError, match="epoch 2: 4 of 4 steps were non-finite.*"
                                              "--teacher_lr"):
        guard.on_train_batch_end(3, {"teacher_loss": float("nan")})


def test_saturating_arch_softmax_stops_the_search(tmp_path, builders):  # noqa: F811
    """--arch_lr=1e3 (past validation, as from an old config): Adam moves every logit by ~1e3
    in the first search step; the warm-up epoch's checkpoint stays, no arch.json."""
    config = tiny_search_config(tmp_path, "lpt", **{"search.arch_lr": 1e3})
    with pytest.raises(DivergenceError) as raised:
        runner.run_search(config)
    assert isinstance(raised.value, LbtError)  # main: one line, exit 2
    message = str(raised.value)
    assert "softmax of" in message and "--arch_lr=1000" in message, message
    assert "epoch 2 step 1" in message
    assert message.endswith(f"Last good checkpoint: {tmp_path / 'checkpoints' / 'ckpt-2'}; "
                            f"no architecture was written ({tmp_path / 'arch.json'})")
    # ckpt-N: after N steps (the warm-up epoch: 2)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")
    assert not os.path.exists(tmp_path / "arch.json")
    assert sorted(os.listdir(tmp_path / "arch")) == ["arch_epoch_001.json", "arch_history.json"]
