"""Retraining resumes exactly (issue 15, items 1-2): interrupted after its first epoch and rerun
with the same config, it ends with the weights of the uninterrupted run, bit for bit."""
from __future__ import annotations

import os

import numpy as np
import pytest

from lbt_tf import config as config_lib
from lbt_tf.retrain import trainer


class _Crash(Exception):
    pass


def _weights(result):
    return [np.asarray(v) for v in result["model"].network.get_weights()]


def test_interrupted_retraining_resumes_to_the_same_weights(tiny_config, tmp_path,
                                                            monkeypatch, capsys):
    config = config_lib.replace(tiny_config, **{"train.epochs": 2})
    reference = trainer.run_train(config_lib.replace(config, run_dir=str(tmp_path / "ref")))

    interrupted = config_lib.replace(config, run_dir=str(tmp_path / "run"))
    original = trainer.SaveNetworkWeights.on_epoch_end

    def crash_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        raise _Crash()  # after BackupAndRestore saved epoch 1

    monkeypatch.setattr(trainer.SaveNetworkWeights, "on_epoch_end", crash_after_first_epoch)
    with pytest.raises(_Crash):
        trainer.run_train(interrupted)
    monkeypatch.setattr(trainer.SaveNetworkWeights, "on_epoch_end", original)
    backup = os.path.join(interrupted.run_dir, "train", trainer.BACKUP_NAME)
    assert trainer.backed_up_epochs(backup) == 1
    resumed = trainer.run_train(interrupted)  # the same command again
    assert "holds a run of the same config; resuming it" in capsys.readouterr().out
    assert len(resumed["history"]["loss"]) == 1  # only epoch 2 ran
    for got, want in zip(_weights(resumed), _weights(reference)):
        np.testing.assert_array_equal(got, want)
