"""LBTSearch under fit: phases, modes, the skip rule for non-finite steps, the fallback."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.config import SearchConfig
from lbt_tf.search import callbacks as search_callbacks
from lbt_tf.search.lbt_model import LBTSearch
from tests.search.stand_ins import build_tiny

H, W, C = 32, 64, 3


def _dataset(steps, batch=2, poison_from=None):
    rng = np.random.default_rng(0)

    def labeled():
        return (rng.normal(size=(steps * batch, H, W, 3)).astype(np.float32),
                rng.integers(0, C, size=(steps * batch, H, W)).astype(np.int32))

    data = {"teacher_train": labeled(), "teacher_val": labeled(), "student_train": labeled(),
            "student_val": labeled(),
            "unlabeled": rng.normal(size=(steps * batch, H, W, 3)).astype(np.float32)}
    if poison_from is not None:
        data["teacher_train"][0][poison_from * batch:] = np.nan
        data["teacher_val"][0][poison_from * batch:] = np.inf
    return tf.data.Dataset.from_tensor_slices(data).batch(batch, drop_remainder=True)


def _model(mode="lbt", hypergrad="exact", **overrides):
    supernet, student = build_tiny(C, H, W)
    cfg = dataclasses.replace(SearchConfig(), mode=mode, hypergrad=hypergrad, **overrides)
    model = LBTSearch(supernet, student if mode != "fasterseg" else None, cfg, ignore_label=255,
                      num_classes=C, latency_fn=supernet.expected_latency, latency_weight=0.01)
    model.compile()
    return model


def _values(variables):
    return [v.numpy().copy() for v in variables]


@pytest.mark.parametrize("mode,hypergrad", [("fasterseg", "exact"), ("lpt", "exact"),
                                            ("lbt", "exact"), ("lbt", "finite_difference")])
def test_search_epoch_updates_arch_and_weights(mode, hypergrad):
    model = _model(mode, hypergrad, warmup_epochs=1)
    arch_before = _values(model.teacher_learner.arch_variables)
    schedule = search_callbacks.EpochSchedule(model.search_config)
    model.fit(_dataset(3), epochs=1, callbacks=[schedule], verbose=0)   # warm-up: A frozen
    for before, var in zip(arch_before, model.teacher_learner.arch_variables):
        np.testing.assert_array_equal(before, var.numpy())
    weights_before = _values(model.teacher_learner.weight_variables)
    history = model.fit(_dataset(3), epochs=2, initial_epoch=1, callbacks=[schedule], verbose=0)
    assert any(np.abs(b - v.numpy()).max() > 0
               for b, v in zip(arch_before, model.teacher_learner.arch_variables))
    assert any(np.abs(b - v.numpy()).max() > 0
               for b, v in zip(weights_before, model.teacher_learner.weight_variables))
    assert np.isfinite(history.history["arch_objective"][-1])
    assert int(model.skipped_steps.numpy()) == 0
    # one trace per phase: the step is not retraced every batch
    assert model.trace_count <= 2
    # lr decays per epoch: epoch 1 -> lr0 * decay
    np.testing.assert_allclose(float(model.teacher_optimizer.learning_rate.numpy()),
                               0.01 * 0.97, rtol=1e-6)


def test_non_finite_step_is_skipped_and_lbt_falls_back_to_lpt():
    model = _model("lbt", "exact", warmup_epochs=0, max_skipped_steps=2)
    # warm the step on clean data, then poison every teacher_train batch from step 1 on
    schedule = search_callbacks.EpochSchedule(model.search_config)
    model.fit(_dataset(1), epochs=1, callbacks=[schedule], verbose=0)
    all_vars = (model.teacher_learner.arch_variables + model.teacher_learner.weight_variables
                + model.teacher_learner.non_trainable_variables
                + model.student_learner.weight_variables
                + model.student_learner.non_trainable_variables)
    before = _values(all_vars)
    messages = []
    fallback = search_callbacks.NonFiniteFallback(2, log_fn=messages.append)
    model.fit(_dataset(3, poison_from=0), epochs=2, initial_epoch=1,
              callbacks=[schedule, fallback], verbose=0)
    after = _values(all_vars)
    for b, a in zip(before, after):
        assert np.all(np.isfinite(a)), "a NaN reached a variable"
        np.testing.assert_array_equal(b, a)   # nothing applied
    assert int(model.skipped_steps.numpy()) == 3
    assert fallback.fell_back and model.mode == "lpt"
    assert messages and "falling back from lbt to lpt" in messages[0]


def test_consecutive_counter_resets_after_a_finite_step():
    model = _model("lpt", warmup_epochs=0)
    model.fit(_dataset(2, poison_from=1), epochs=1, verbose=0)
    assert int(model.skipped_steps.numpy()) == 1
    assert int(model.consecutive_skips.numpy()) == 1
    model.fit(_dataset(1), epochs=1, verbose=0)
    assert int(model.consecutive_skips.numpy()) == 0
    assert int(model.skipped_steps.numpy()) == 1
