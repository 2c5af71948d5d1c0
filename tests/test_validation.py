"""Validation before work (issue 15, item 3): every numeric flag is range-checked with one error
naming the flag and its range; input paths are checked before any model is built (a missing
--data_dir fails in seconds, without importing TensorFlow)."""
import os
import subprocess
import sys
import time

import pytest

from lbt_tf import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("key,value,flag,allowed", [
    ("search.teacher_lr", -0.1, "teacher_lr", "(0, 1]"),
    ("search.student_lr", 0.0, "student_lr", "(0, 1]"),
    ("search.arch_lr", -0.01, "arch_lr", "(0, 0.1]"),
    ("search.arch_lr", 1e6, "arch_lr", "(0, 0.1]"),
    ("search.teacher_lr", 1e6, "teacher_lr", "(0, 1]"),
    ("search.arch_lr", float("nan"), "arch_lr", "(0, 0.1]"),
    ("train.lr", -1.0, "train_lr", "(0, 1]"),
    ("search.momentum", 1.0, "momentum", "[0, 1)"),
    ("search.weight_decay", -5e-4, "weight_decay", "[0, 0.1]"),
    ("search.lr_decay", 0.0, "lr_decay", "(0, 1]"),
    ("search.pseudo_label_weight", -1.0, "pseudo_label_weight", "[0, 100]"),
    ("search.student_val_weight", 1e4, "student_val_weight", "[0, 100]"),
    ("search.latency_weight", -0.01, "latency_weight", "[0, 100]"),
    ("data.pseudo_label_ratio", -0.5, "pseudo_label_ratio", "[0, 100]"),
    ("search.epochs", -1, "search_epochs", "[0, 100000]"),
    ("train.epochs", 0, "train_epochs", "[1, 100000]"),
    ("search.steps_per_epoch", 0, "search_steps_per_epoch", "[1, 10000000]"),
    ("search.arch_beta_2", 1.0, "arch_beta_2", "[0, 1)"),
    ("search.finite_difference_scale", 0.0, "finite_difference_scale", "(0, 1]"),
    ("search.selection_batches", 0, "selection_batches", "[1, 1024]"),
    ("teacher.gumbel_temperature", 0.0, "gumbel_temperature", "(0, inf)"),
    ("teacher.width_mult_list", (0.5, 2.0), "width_mult_list", "(0, 1]"),
])
def test_out_of_range_values_name_the_flag_and_range(key, value, flag, allowed):
    config = config_lib.replace(config_lib.Config(), **{key: value})
    with pytest.raises(config_lib.ConfigError) as raised:
        config_lib.validate(config)
    message = str(raised.value)
    assert message.startswith(f"--{flag}=") and allowed in message, message


def test_prediction_format_names_the_flag():
    config = config_lib.replace(config_lib.Config(), **{"export.prediction_format": "tiff"})
    with pytest.raises(config_lib.ConfigError, match="--prediction_format='tiff': expected one "
                                                     "of color, cityscapes"):
        config_lib.validate(config)


def test_defaults_and_latency_band():
    config_lib.validate(config_lib.Config())
    band = config_lib.replace(config_lib.Config(), **{"search.latency_target_min_ms": 5.0,
                                                      "search.latency_target_max_ms": 2.0})
    with pytest.raises(config_lib.ConfigError, match="--latency_target_max_ms=2.0"):
        config_lib.validate(band)


@pytest.mark.parametrize("changes,flag", [
    ({"mode": "search", "data.source": "cityscapes", "data.data_dir": "/no/such/root"},
     "--data_dir=/no/such/root: no such directory"),
    ({"mode": "search", "data.source": "tfds_cityscapes", "data.tfds_manual_dir": "/no/zips"},
     "--tfds_manual_dir=/no/zips"),
    ({"mode": "search", "data.unlabeled_source": "folder", "data.unlabeled_dir": "/no/d_u"},
     "--unlabeled_dir=/no/d_u"),
    ({"mode": "search", "student.pretrained_weights": "/no/r50.h5"}, "--student_weights"),
    ({"mode": "search", "teacher.reference_latency_table": "/no/t.json"},
     "--reference_latency_table"),
    ({"mode": "train"}, "--mode=train needs --arch"),
    ({"mode": "train", "train.arch": "/no/arch.json"}, "--arch=/no/arch.json: no such file"),
    ({"mode": "train", "train.arch": __file__, "train.distill_weight": 1.0},
     "--distill_weight > 0 needs --distill_from"),
    ({"mode": "predict"}, "--mode=predict needs --input"),
    ({"mode": "predict", "export.input": "/no/images"}, "--input=/no/images"),
])
def test_check_inputs_names_the_flag(changes, flag):
    config = config_lib.replace(config_lib.Config(), **changes)
    with pytest.raises(config_lib.ConfigError, match=flag.replace("(", r"\(")):
        config_lib.check_inputs(config)


def test_main_missing_data_dir_fails_fast_and_leaves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "lbt_tf.main", "--mode=search", "--data_source=cityscapes",
         f"--data_dir={tmp_path / 'missing'}", f"--run_dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    elapsed = time.time() - start
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --data_dir={tmp_path / 'missing'}: no such directory")
    assert "Traceback" not in result.stderr
    assert elapsed < 5.0, elapsed
    assert not run_dir.exists()  # no partial output


def test_main_bad_learning_rate_names_flag_and_range(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lbt_tf.main", "--mode=search", "--arch_lr=1e6",
         f"--run_dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --arch_lr=1000000.0: outside the allowed range (0, 0.1]")
    assert not (tmp_path / "run").exists()
