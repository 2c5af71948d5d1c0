"""The whole pipeline under kfp's local SubprocessRunner on tiny settings: every artifact is
written, and the pusher refuses the model the evaluator did not bless. Reruns on the same
--run_dir: the same config reuses the finished tasks (kfp's cache) or, with the cache off, runs
them again but resumes the finished search and retraining instead of redoing them; another
config is refused before any task runs, naming the stage directory and the flag."""
import json
import os

import pytest
import tensorflow as tf

from lbt_tf import config as config_lib
from lbt_tf import pipeline_steps
from lbt_tf.config import ConfigError
from pipelines import lbt_pipeline

TINY = {"data.image_height": 32, "data.image_width": 64, "data.crop_height": 32,
        "data.crop_width": 64, "data.batch_size": 2, "data.eval_batch_size": 2,
        "data.synthetic_train_size": 16, "data.synthetic_val_size": 4,
        "data.synthetic_test_size": 8, "data.deterministic": True,
        "teacher.layers": 4, "teacher.base_width": 2,
        "student.blocks_per_stage": (1, 1, 1, 1), "student.base_width": 4,
        "student.aspp_channels": 4, "student.aux_head": False,
        "search.warmup_epochs": 0, "search.epochs": 1, "search.steps_per_epoch": 2,
        "train.epochs": 1, "train.steps_per_epoch": 2,
        "eval.latency_runs": 2, "eval.latency_warmup": 1, "eval.grid_images": 0,
        "eval.compare_student": False, "export.tflite": False}


@pytest.mark.timeout(1200)
def test_pipeline_runs_end_to_end_and_refuses_unblessed_model(tmp_path, capfd,
                                                              directory_contents):
    # no model can be this fast: the evaluator must not bless it
    config = config_lib.replace(config_lib.Config(), run_dir=str(tmp_path / "run"), **TINY,
                                **{"pipeline.bless_max_latency_ms": 1e-6})
    artifacts = lbt_pipeline.run_pipeline(config)
    out = capfd.readouterr().out
    root = lbt_pipeline.pipeline_root(config)
    assert root == str(tmp_path / "run" / "pipeline_root")
    assert sorted(artifacts) == sorted(lbt_pipeline.ARTIFACTS)
    for name, path in artifacts.items():
        assert path.startswith(root) and os.path.exists(path), name
        assert f"{name}={path}" in out

    examples = artifacts["examples"]
    statistics = json.load(open(os.path.join(examples, "statistics.json")))
    assert statistics["splits"]["teacher_train"]["num_examples"] == 4
    for split in ("teacher_train", "teacher_val", "student_train", "student_val", "unlabeled",
                  "val"):
        assert os.path.getsize(os.path.join(examples, f"{split}.tfrecord")) > 0
    assert "format" in json.load(open(artifacts["architecture"]))
    assert tf.train.latest_checkpoint(
        os.path.join(artifacts["teacher_checkpoint"], "checkpoints")) is not None
    search_metrics = json.load(open(artifacts["search_metrics"]))
    assert 0.0 <= search_metrics["teacher_val_miou"] <= 1.0
    model = artifacts["model"]
    assert os.path.isfile(os.path.join(model, "train", "model.weights.h5"))
    saved_model = os.path.join(model, pipeline_steps.SAVED_MODEL_DIR)
    assert os.path.isfile(os.path.join(saved_model, "saved_model.pb"))
    assert os.path.isfile(os.path.join(artifacts["evaluation"], "evaluate", "metrics.json"))
    evaluation = json.load(open(artifacts["evaluation_metrics"]))
    assert 0.0 <= evaluation["miou"] <= 1.0 and evaluation["latency_ms"] > 0

    blessing = json.load(open(artifacts["blessing"]))
    assert blessing["blessed"] is False
    assert "--bless_max_latency_ms" in blessing["reasons"][1]
    record = json.load(open(artifacts["pushed_model"]))
    assert record["pushed"] is False and record["destination"] is None
    serving = lbt_pipeline.serving_dir(config)
    assert not os.path.exists(serving) or os.listdir(serving) == []

    # The same trained model, once blessed, is pushed as a SavedModel that serves.
    blessed_path = tmp_path / "blessed"
    blessed_path.write_text(json.dumps({"blessed": True, "reasons": []}))
    pushed = pipeline_steps.pusher_step(lbt_pipeline.config_parameter(config), model,
                                        str(blessed_path), str(tmp_path / "record"))
    assert pushed["pushed"] and os.listdir(serving) == [os.path.basename(pushed["destination"])]
    served = tf.saved_model.load(pushed["destination"]).signatures["serving_default"]
    labels = served(images=tf.zeros([1, 40, 50, 3], tf.uint8))["labels"]
    assert labels.shape == (1, 40, 50) and labels.dtype == tf.int32

    # The same command again: every task reused from kfp's cache, nothing pushed again.
    capfd.readouterr()
    pushed_versions = os.listdir(serving)
    assert lbt_pipeline.run_pipeline(config) == artifacts
    assert ("pipeline: reused the finished tasks evaluator, example-gen, pusher, search, "
            "trainer of an earlier run of the same config") in capfd.readouterr().out
    assert os.listdir(serving) == pushed_versions

    # Without the cache every task runs again (a new KFP run folder), but the search and the
    # retraining resume their finished runs in the stage directories instead of redoing them.
    rerun = lbt_pipeline.run_pipeline(
        config_lib.replace(config, **{"pipeline.pipeline_cache": False}))
    out = capfd.readouterr().out
    run_root = str(tmp_path / "run")
    search_stage = pipeline_steps.stage_dir(run_root, "search")
    train_stage = os.path.join(pipeline_steps.stage_dir(run_root, "train"), "train")
    assert not any(path == artifacts[name] for name, path in rerun.items())
    assert f"search: {search_stage} holds a run of the same config; resuming it" in out, out
    assert "at epoch 1 step 0" in out  # the finished epoch, not redone
    assert f"train: {train_stage} holds a run of the same config; resuming it" in out, out
    assert open(rerun["architecture"]).read() == open(artifacts["architecture"]).read()

    # Another learning rate on the same --run_dir: refused before any task, nothing changed.
    before = directory_contents(tmp_path / "run")
    with pytest.raises(ConfigError) as raised:
        lbt_pipeline.run_pipeline(config_lib.replace(config, **{"search.teacher_lr": 0.02}))
    message = str(raised.value)
    assert message.startswith(f"--run_dir: {search_stage} holds a search run of another "
                              "config"), message
    assert "--teacher_lr: 0.01 (recorded) vs 0.02 (now)" in message and "--overwrite" in message
    assert directory_contents(tmp_path / "run") == before
