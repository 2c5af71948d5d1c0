"""LBTSearch under fit: phases, modes, the skip rule for non-finite steps, the fallback."""
from __future__ import annotations

import numpy as np
import pytest

from lbt_tf.config import SearchConfig
from lbt_tf.search import callbacks as search_callbacks
from lbt_tf.search.lbt_model import ARCH_SIGNALS, LBTSearch
from lbt_tf.search.learner import SearchableSupernet
from tests.search.models_under_test import (MODELS, build, search_dataset,
                                            stand_in_search_model, values)


@pytest.mark.parametrize("mode,hypergrad", [("fasterseg", "exact"), ("lpt", "exact"),
                                            ("lbt", "exact"), ("lbt", "hvp"),
                                            ("lbt", "finite_difference")])
def test_search_epoch_updates_arch_and_weights(mode, hypergrad):
    model = stand_in_search_model(mode, hypergrad, warmup_epochs=1)
    arch_before = values(model.teacher_learner.arch_variables)
    schedule = search_callbacks.EpochSchedule(model.search_config)
    model.fit(search_dataset(3), epochs=1, callbacks=[schedule], verbose=0, shuffle=False)  # warm-up: A frozen
    for before, var in zip(arch_before, model.teacher_learner.arch_variables):
        np.testing.assert_array_equal(before, var.numpy())
    weights_before = values(model.teacher_learner.weight_variables)
    history = model.fit(search_dataset(3), epochs=2, initial_epoch=1, callbacks=[schedule],
                        verbose=0, shuffle=False)
    assert any(np.abs(b - v.numpy()).max() > 0
               for b, v in zip(arch_before, model.teacher_learner.arch_variables))
    assert any(np.abs(b - v.numpy()).max() > 0
               for b, v in zip(weights_before, model.teacher_learner.weight_variables))
    assert np.isfinite(history.history["arch_objective"][-1])
    assert int(model.skipped_steps.numpy()) == 0
    # one trace per phase: the step is not retraced every batch
    assert model.trace_count <= 2
    assert model.trace_seconds > 0  # timed where it was traced (logged, bench/search_step.py)
    # lr decays per epoch: epoch 1 -> lr0 * decay
    np.testing.assert_allclose(float(model.teacher_optimizer.learning_rate.numpy()),
                               0.01 * 0.97, rtol=1e-6)


def test_non_finite_step_is_skipped_and_lbt_falls_back_to_lpt():
    model = stand_in_search_model("lbt", "exact", warmup_epochs=0, max_skipped_steps=2)
    # warm the step on clean data, then poison every teacher_train batch from step 1 on
    schedule = search_callbacks.EpochSchedule(model.search_config)
    model.fit(search_dataset(1), epochs=1, callbacks=[schedule], verbose=0, shuffle=False)
    all_vars = (model.teacher_learner.arch_variables + model.teacher_learner.weight_variables
                + model.teacher_learner.non_trainable_variables
                + model.student_learner.weight_variables
                + model.student_learner.non_trainable_variables)
    before = values(all_vars)
    messages = []
    fallback = search_callbacks.NonFiniteFallback(2, log_fn=messages.append)
    model.fit(search_dataset(3, poison_from=0), epochs=2, initial_epoch=1,
              callbacks=[schedule, fallback], verbose=0, shuffle=False)
    after = values(all_vars)
    for b, a in zip(before, after):
        assert np.all(np.isfinite(a)), "a NaN reached a variable"
        np.testing.assert_array_equal(b, a)   # nothing applied
    assert int(model.skipped_steps.numpy()) == 3
    assert fallback.fell_back and model.mode == "lpt"
    assert messages and "falling back from lbt to lpt" in messages[0]


def test_consecutive_counter_resets_after_a_finite_step():
    model = stand_in_search_model("lpt", warmup_epochs=0)
    model.fit(search_dataset(2, poison_from=1), epochs=1, verbose=0, shuffle=False)
    assert int(model.skipped_steps.numpy()) == 1
    assert int(model.consecutive_skips.numpy()) == 1
    model.fit(search_dataset(1), epochs=1, verbose=0, shuffle=False)
    assert int(model.consecutive_skips.numpy()) == 0
    assert int(model.skipped_steps.numpy()) == 1


@pytest.mark.parametrize("hypergrad", ["exact", "finite_difference"])
def test_progress_line_shows_the_phase_and_history_gets_the_arch_signals(capsys, hypergrad):
    # the split on the second of the two search steps
    model = stand_in_search_model("lbt", hypergrad, warmup_epochs=1, arch_signal_every=2)
    schedule = search_callbacks.EpochSchedule(model.search_config)
    history = model.fit(search_dataset(2), epochs=2, verbose=1, shuffle=False,
                        callbacks=[schedule, search_callbacks.PhaseProgbar()]).history
    warmup, search = capsys.readouterr().out.split("Epoch 2/2")
    assert "teacher_loss" in warmup and "student_loss" in warmup and "arch_" not in warmup
    for key in ("arch_objective", "expected_latency_ms", "arch_entropy"):
        assert key in search, search
    assert "arch_grad_norm" not in search and "skipped_steps" not in search
    for key in ARCH_SIGNALS + ("arch_grad_norm", "skipped_steps", "arch_entropy"):
        assert key in history and np.all(np.isfinite(history[key])), key
    norms = {key: history[key][-1] for key in ARCH_SIGNALS[:3]}
    assert all(value > 0 for value in norms.values()), norms
    assert -1.0 <= history["arch_grad_cosine"][-1] <= 1.0
    assert history["arch_grad_cosine"][-1] != 0.0   # the second step had a previous gradient


def test_the_split_runs_on_the_last_of_every_n_arch_steps_not_the_first():
    """Arch step 0 (the one that traces and instantiates the step) does not split grad_A F;
    steps N-1, 2N-1, ... do."""
    model = stand_in_search_model("lbt", "finite_difference", warmup_epochs=0,
                                  arch_signal_every=3)
    schedule = search_callbacks.EpochSchedule(model.search_config)
    assert model.next_diagnostic_arch_step() == 2
    split = []
    for epoch in range(2):  # arch steps 0-1, then 2-3
        history = model.fit(search_dataset(2), epochs=epoch + 1, initial_epoch=epoch,
                            callbacks=[schedule], verbose=0, shuffle=False).history
        split.append(history["arch_grad_norm_teacher_val"][-1])
    assert split[0] == 0.0 and split[1] > 0, split   # a mean over no step reads 0
    assert model.next_diagnostic_arch_step() == 5
    assert stand_in_search_model("lpt").next_diagnostic_arch_step() is None  # no split there


@pytest.mark.parametrize("which", MODELS)
def test_supernets_implement_the_search_interface(which):
    supernet, _, _ = build(which)
    assert isinstance(supernet, SearchableSupernet)
    with pytest.raises(TypeError, match="SearchableSupernet"):
        LBTSearch(supernet.layers[0], None, SearchConfig(), ignore_label=255, num_classes=3)


@pytest.mark.parametrize("hypergrad", ["exact", "finite_difference"])
def test_recomputed_step_gradients_equal_the_kept_ones(hypergrad):
    """--nokeep_step_gradients: the real teacher step recomputes grad_T L(T, A_t; D_t^tr)
    instead of keeping the virtual step's (1 GB less alive through the hypergradient at the
    paper's size): the same values. --noreuse_step_gradients (at A_t+1) differs, so the
    comparison can tell A_t from A_t+1. The diagnostic teacher term runs on every step
    (arch_signal_every=1), which without a kept gradient recomputes T'."""
    import keras
    final = {}
    for name, keep, reuse in (("kept", True, True), ("recomputed", False, True),
                              ("at A_t+1", True, False)):
        keras.utils.set_random_seed(0)
        model = stand_in_search_model("lbt", hypergrad, warmup_epochs=0, arch_lr=0.3,
                                      arch_signal_every=1, keep_step_gradients=keep,
                                      reuse_step_gradients=reuse)
        schedule = search_callbacks.EpochSchedule(model.search_config)
        model.fit(search_dataset(3), epochs=1, callbacks=[schedule], verbose=0, shuffle=False)
        final[name] = values(model.teacher_learner.weight_variables
                             + model.teacher_learner.non_trainable_variables
                             + model.teacher_learner.arch_variables)
    for kept, recomputed in zip(final["kept"], final["recomputed"]):
        np.testing.assert_allclose(recomputed, kept, rtol=1e-5, atol=1e-6)
    gap = max(float(np.abs(k - o).max()) for k, o in zip(final["kept"], final["at A_t+1"]))
    assert gap > 1e-4, gap
