"""run_search end to end on a tiny synthetic search: outputs, and resume after a crash."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from lbt_tf import config as config_lib
from lbt_tf.errors import DataError
from lbt_tf.search import callbacks as search_callbacks
from lbt_tf.search import runner
from tests.search import models_under_test
from tests.search.stand_ins import TinySupernet


def tiny_search_config(run_dir, mode="lbt", **changes):
    base = models_under_test.tiny_config()
    values = {"run_dir": str(run_dir), "mode": "search", "data.num_classes": 19,
              "data.image_height": 64, "data.image_width": 128,
              "data.synthetic_train_size": 16, "data.synthetic_val_size": 4,
              "data.synthetic_test_size": 8, "data.deterministic": True,
              "search.mode": mode, "search.warmup_epochs": 1, "search.epochs": 2,
              "search.steps_per_epoch": 2}
    values.update(changes)
    return config_lib.replace(base, **values)


def build_stand_in_supernet(config):
    d = config.data
    model = TinySupernet(d.num_classes)
    model(tf.zeros((1, d.crop_height, d.crop_width, 3)))
    return model


def derive_stand_in(supernet, teacher_config):
    return {v.path: int(np.argmax(v.numpy())) for v in supernet.arch_variables}


def stand_in_derived_latency(arch, table, num_classes, height, width):
    """The stand-in architecture's latency: its table entries at the argmax choices."""
    return {"total": sum(float(table[name.split("/")[-1]][index])
                         for name, index in arch.items())}


def save_stand_in(arch, path):
    with open(path, "w") as f:
        json.dump(arch, f)


@pytest.fixture
def builders(monkeypatch):
    """The stand-in supernet (tracing the real one's second-order step takes minutes on 2 CPU
    cores; its gradients are checked in test_hypergradient, the demo runs it end to end)."""
    monkeypatch.setattr(runner, "build_supernet", build_stand_in_supernet)
    monkeypatch.setattr(runner, "derive_architecture", derive_stand_in)
    monkeypatch.setattr(runner, "save_architecture", save_stand_in)
    monkeypatch.setattr(runner, "derived_latency", stand_in_derived_latency)
    # the stand-in's architecture is {variable: argmax}, not a FasterSeg one to tabulate
    from lbt_tf.models.fasterseg import describe
    monkeypatch.setattr(describe, "describe_lines",
                        lambda architecture, config, table: [json.dumps(architecture)])


def test_arch_grad_batches_grow_only_the_arch_steps_val_batches(tmp_path):
    config = tiny_search_config(tmp_path, "lbt", **{"search.arch_grad_batches": 2})
    train, _, _ = runner.make_search_input(config, "lbt", 0)
    batch = next(iter(train))
    sizes = {name: int(tf.nest.flatten(value)[0].shape[0]) for name, value in batch.items()}
    assert sizes == {"teacher_train": 2, "teacher_val": 4, "student_train": 2,
                     "student_val": 4, "unlabeled": 2}
    # D_t^val of this config holds 4 images: 3 x 2 do not fit, and the error names the flag
    with pytest.raises(DataError, match="--arch_grad_batches=3: teacher_val has 4"):
        runner.make_search_input(config_lib.replace(config, **{"search.arch_grad_batches": 3}),
                                 "lbt", 0)


def test_run_search_writes_every_output(tmp_path, builders):
    config = tiny_search_config(tmp_path, "lbt")
    result = runner.run_search(config)
    assert os.path.exists(result.arch_path)
    assert len(glob.glob(str(tmp_path / "arch" / "arch_epoch_*.json"))) == 3
    assert os.path.exists(tmp_path / "arch_evolution.png")
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    for tag in ("train/epoch_teacher_loss", "train/epoch_student_loss",
                "train/epoch_pseudo_loss", "train/epoch_expected_latency_ms",
                "train/epoch_skipped_steps", "train/epoch_arch_grad_norm",
                "validation/epoch_teacher_miou", "validation/epoch_student_miou"):
        assert tag in scalars, (tag, sorted(scalars))
        assert [step for step, _ in scalars[tag]] == [0, 1, 2], tag  # one per epoch
        assert all(np.isfinite(value) for _, value in scalars[tag]), tag
    assert all(value == 0 for _, value in scalars["train/epoch_skipped_steps"])
    changed = scalars["train/epoch_arch_argmax_changed_alpha"]   # vs the previous epoch
    assert len(changed) == 3 and all(0.0 <= value <= 1.0 for _, value in changed)
    state = json.load(open(tmp_path / runner.STATE_FILE))
    for key in ("teacher_loss", "student_loss", "val_teacher_miou", "val_student_miou",
                "expected_latency_ms", "skipped_steps", "arch_grad_norm",
                "arch_argmax_changed_alpha", "arch_argmax_changed_beta",
                "derived_latency_ms"):
        assert key in state["history"][-1], key
    # the band steers the returned network's predicted latency: the table at its argmax choices
    derived = stand_in_derived_latency(json.load(open(result.arch_path)),
                                       {"alpha": (2.0, 1.0), "beta": (1.0, 3.0)}, 0, 0, 0)
    assert state["history"][-1]["derived_latency_ms"] == pytest.approx(derived["total"])
    # ckpt-N: after N steps (3 epochs of 2)
    assert tf.train.latest_checkpoint(result.checkpoint_dir).endswith("-6")
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert 0.0 <= result.teacher_miou <= 1.0 and 0.0 <= result.student_miou <= 1.0
    assert all("val_teacher_miou" in h and "val_student_miou" in h for h in result.history)
    assert result.skipped_steps == 0 and result.mode == "lbt"
    # the same numbers in TensorBoard as in the history
    for key, tag in (("teacher_loss", "train/epoch_teacher_loss"),
                     ("val_student_miou", "validation/epoch_student_miou")):
        np.testing.assert_allclose([h[key] for h in result.history],
                                   [value for _, value in scalars[tag]], rtol=1e-5)


def _tensorboard_scalars(log_dir):
    """{"train/epoch_x": [(step, value), ...]} from the event files (Keras writes tensors)."""
    from tensorboard.backend.event_processing import event_accumulator

    scalars = {}
    for writer in ("train", "validation"):
        accumulator = event_accumulator.EventAccumulator(str(log_dir / writer))
        accumulator.Reload()
        for tag in accumulator.Tags()["tensors"]:
            scalars[f"{writer}/{tag}"] = [(event.step, float(tf.make_ndarray(event.tensor_proto)))
                                          for event in accumulator.Tensors(tag)]
    return scalars


class _Crash(Exception):
    pass


def _search_crashing_after_epoch(config, monkeypatch, crash_epoch):
    """Runs the search until its checkpoint at the end of epoch `crash_epoch` (0-based), then
    raises _Crash there (a crash right after a checkpoint)."""
    original = search_callbacks.PeriodicCheckpoint.on_epoch_end

    def crash_after(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == crash_epoch:
            raise _Crash()

    monkeypatch.setattr(search_callbacks.PeriodicCheckpoint, "on_epoch_end", crash_after)
    with pytest.raises(_Crash):
        runner.run_search(config)
    monkeypatch.setattr(search_callbacks.PeriodicCheckpoint, "on_epoch_end", original)


def test_resume_after_a_crash_loses_at_most_one_epoch(tmp_path, builders, monkeypatch):
    config = tiny_search_config(tmp_path, "lpt")
    _search_crashing_after_epoch(config, monkeypatch, crash_epoch=1)
    saved_arch = json.load(open(tmp_path / "arch" / "arch_history.json"))[-1]["arch_values"]
    resumed = runner.run_search(config_lib.replace(config, resume=True))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert tf.train.latest_checkpoint(resumed.checkpoint_dir).endswith("-6")
    # the resumed run started from the saved architecture, not a fresh one
    history = json.load(open(tmp_path / "arch" / "arch_history.json"))
    assert history[1]["arch_values"] == saved_arch


def test_resume_from_a_checkpoint_of_other_shapes_is_one_clear_error(tmp_path, builders,
                                                                     monkeypatch):
    """A checkpoint whose variables have other shapes (an older lbt_tf's supernet, whose
    variables were per layer) is refused naming it, not restored halfway."""
    config = tiny_search_config(tmp_path, "lpt")
    _search_crashing_after_epoch(config, monkeypatch, crash_epoch=0)

    def wider_supernet(config):
        model = TinySupernet(config.data.num_classes, channels=6)
        model(tf.zeros((1, config.data.crop_height, config.data.crop_width, 3)))
        return model

    monkeypatch.setattr(runner, "build_supernet", wider_supernet)
    with pytest.raises(DataError, match=r"ckpt-\d+ does not fit this search's models"):
        runner.run_search(config_lib.replace(config, resume=True))


def test_resume_mid_epoch_continues_from_the_checkpointed_step(tmp_path, builders, monkeypatch,
                                                                capsys):
    """--checkpoint_every_steps=1: a crash after step 1 of epoch 2 (of 3) loses nothing; the
    rerun starts at that step (not the epoch's start), finishes the epoch, runs epoch 3 (a
    second `fit`, on a new dataset at the same element) and ends as the uninterrupted run."""
    changes = {"search.steps_per_epoch": 3, "search.checkpoint_every_steps": 1,
               "data.synthetic_train_size": 8}  # D_t^tr: 1 batch, reshuffled every step
    reference = runner.run_search(tiny_search_config(tmp_path / "reference", "lpt", **changes))
    config = tiny_search_config(tmp_path / "run", "lpt", **changes)
    original = search_callbacks.PeriodicCheckpoint.on_train_batch_end

    def crash_in_epoch_two(self, batch, logs=None):
        original(self, batch, logs)
        if self.epoch == 1 and batch == 0:
            raise _Crash()

    monkeypatch.setattr(search_callbacks.PeriodicCheckpoint, "on_train_batch_end",
                        crash_in_epoch_two)
    with pytest.raises(_Crash):
        runner.run_search(config)
    monkeypatch.setattr(search_callbacks.PeriodicCheckpoint, "on_train_batch_end", original)
    checkpoint_dir = str(tmp_path / "run" / "checkpoints")
    assert tf.train.latest_checkpoint(checkpoint_dir).endswith("ckpt-4")  # 3 + 1 steps
    capsys.readouterr()
    steps_run = []
    counter = search_callbacks.PeriodicCheckpoint.on_train_batch_end
    monkeypatch.setattr(search_callbacks.PeriodicCheckpoint, "on_train_batch_end",
                        lambda self, batch, logs=None: (steps_run.append(self.epoch),
                                                        counter(self, batch, logs)))
    resumed = runner.run_search(config)
    out = capsys.readouterr().out
    assert "at epoch 1 step 1" in out and "finishing epoch 2 from step 2 of 3" in out, out
    assert steps_run == [1, 1, 2, 2, 2]  # the 2 steps left of epoch 2, then epoch 3
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    arch_values = [json.load(open(tmp_path / run / "arch" / "arch_history.json"))[-1]
                   for run in ("run", "reference")]
    assert arch_values[0] == arch_values[1]  # the architecture parameters, bit for bit
    for ours, theirs in zip(resumed.history, reference.history):
        assert ours == theirs  # every logged mean of every epoch, bit for bit
