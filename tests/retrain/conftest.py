"""Fixtures of the retrain tests: a tiny config and a tiny derived architecture."""
from __future__ import annotations

import json

import pytest

from lbt_tf import config as config_lib
from lbt_tf.models.fasterseg import genotype


def tiny_arch() -> dict:
    """Three cells, branches at output strides 32 and 8 (the JSON form of genotype.py)."""
    return genotype.validate_architecture({
        "format": genotype.FORMAT, "layers": 3, "base_width": 4, "width_mult_list": [1.0],
        "stem_head_width": [1.0, 1.0], "ignore_skip": True, "branch_output_strides": [32, 8],
        "candidates": {
            "32": {"ops": ["conv", "conv", "conv"], "path": [0, 1, 2], "widths": [1.0, 1.0]},
            "8": {"ops": ["conv", "conv_2x", "conv"], "path": [0, 0, 0], "widths": [1.0, 1.0]}}})


def make_tiny_config(directory):
    """32x64 synthetic scenes (19 Cityscapes classes), a 3-cell derived network of width 4."""
    arch_path = directory / "arch.json"
    arch_path.write_text(json.dumps(tiny_arch()))
    return config_lib.replace(
        config_lib.Config(), run_dir=str(directory / "run"), seed=0,
        **{"data.image_height": 32, "data.image_width": 64,
           "data.crop_height": 32, "data.crop_width": 64, "data.batch_size": 2,
           "data.eval_batch_size": 2, "data.synthetic_train_size": 8,
           "data.synthetic_val_size": 4, "data.synthetic_test_size": 4,
           "data.deterministic": True, "teacher.layers": 3, "teacher.base_width": 4,
           "train.arch": str(arch_path), "train.epochs": 1, "train.steps_per_epoch": 2,
           "train.lr": 0.01, "eval.latency_runs": 2, "eval.latency_warmup": 1,
           "eval.grid_images": 2, "student.blocks_per_stage": (1, 1, 1, 1),
           "student.base_width": 4, "student.aspp_channels": 8,
           "export.calibration_images": 2, "export.tflite_eval_images": 2})


@pytest.fixture
def tiny_config(tmp_path):
    return make_tiny_config(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, run_train result) of one short training, shared by a test module: tracing the
    training step of the derived network is the slow part, so it is done once."""
    from lbt_tf.retrain import trainer
    config = make_tiny_config(tmp_path_factory.mktemp("trained"))
    return config, trainer.run_train(config)
