"""What each pipeline component does, as plain functions of (config JSON, artifact paths).

The KFP components in `components/` only call these, so every step is testable without kfp.
A step rebuilds the `Config` from the pipeline's JSON parameter, points `run_dir` at its own
output artifact, and calls the same lbt_tf function its `--mode` runs. The long steps (search,
trainer) run in a stable directory of the user's run root instead, `<run_dir>/pipeline_stages/
<stage>` (`stage_dir`), and copy their results into their artifacts: a rerun of the pipeline
(KFP makes a new folder per run) resumes an unfinished stage from its checkpoints and refuses
another config there (lbt_tf.run_record), as `--mode=search` / `--mode=train` do. Artifact paths are
treated as directories (datasets, models) or single JSON files (architecture, blessing, push
record, metrics); `tf.io.gfile` is used where a path may be remote (gs://) on Kubeflow.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Dict, Tuple

import tensorflow as tf

from lbt_tf import config as config_lib
from lbt_tf import run_record
from lbt_tf.config import Config, ConfigError
from lbt_tf.errors import LbtError

SAVED_MODEL_DIR = "saved_model"
STAGES_DIR = "pipeline_stages"
STAGES = ("search", "train")  # the steps that run in a stable stage directory


def stage_dir(run_root: str, stage: str) -> str:
    """`<run_root>/pipeline_stages/<stage>`: where a pipeline's search or training runs, the
    same for every run of the pipeline on that root (so that a rerun resumes it)."""
    return os.path.join(run_root, STAGES_DIR, stage)


def check_stages(config: Config) -> None:
    """Refuses, before any pipeline task runs, a run root whose stage directories hold a run of
    another config (ConfigError naming the directory and the differing flags; --overwrite
    replaces them when the stage runs). The trained architecture is a search output, so the
    train stage is compared without --arch here (the trainer compares it)."""
    from lbt_tf.retrain.trainer import OUTPUTS as TRAIN_OUTPUTS
    from lbt_tf.search.runner import OUTPUTS as SEARCH_OUTPUTS
    run_record.check(config, "search", stage_dir(config.run_dir, "search"), SEARCH_OUTPUTS)
    from lbt_tf.retrain import network as network_lib
    train_config = config_lib.replace(config, run_dir=stage_dir(config.run_dir, "train"))
    run_record.check(train_config, "train", network_lib.train_dir(train_config), TRAIN_OUTPUTS,
                     ignore=("train.arch",))


def step_config(config_json: str, run_dir: str, mode: str) -> Config:
    """The pipeline's config with `run_dir` at this step's artifact and `mode` set."""
    config = user_config(config_json)
    return config_lib.validate(config_lib.replace(config, run_dir=run_dir, mode=mode))


def user_config(config_json: str) -> Config:
    """The config of the pipeline's JSON parameter, as the user gave it (run_dir: the root)."""
    try:
        values = json.loads(config_json)
    except json.JSONDecodeError as err:
        raise ConfigError(f"pipeline parameter config_json is not valid JSON: {err}") from None
    return Config.from_dict(values)


def record_metrics(metrics_artifact, metrics: Dict) -> None:
    """Logs the scalar metrics on a `dsl.Metrics` artifact and writes them all as JSON at its
    path (so the file exists and keeps non-scalar values, e.g. per-class IoU)."""
    for name, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics_artifact.log_metric(name, float(value))
    _write_json(metrics_artifact.path, metrics)


def example_gen_step(config_json: str, examples_dir: str) -> Dict:
    from lbt_tf.data import tfrecords
    config = step_config(config_json, examples_dir, "splits")
    statistics = tfrecords.write_splits(config, examples_dir)
    metrics = {f"{name}_examples": split["num_examples"]
               for name, split in statistics["splits"].items()}
    metrics["fingerprint"] = statistics["fingerprint"]
    return metrics


def search_step(config_json: str, examples_dir: str, search_dir: str,
                architecture_path: str) -> Dict:
    """Runs (or resumes) `lbt_tf.search.runner.run_search` in the search stage directory, then
    copies that run directory to `search_dir` (the teacher checkpoint artifact) and the derived
    architecture JSON to its artifact."""
    from lbt_tf.data import tfrecords
    from lbt_tf.search.runner import run_search
    work_dir = stage_dir(user_config(config_json).run_dir, "search")
    config = step_config(config_json, work_dir, "search")
    tfrecords.check_same_splits(config, examples_dir)
    result = run_search(config)
    _copy_tree(work_dir, search_dir)
    _copy_file(result.arch_path, architecture_path)
    return search_summary(result, config.search.mode)


def search_summary(result, mode: str) -> Dict:
    """The scalar outcome of a search (for metrics, the comparison table and the study)."""
    optional = lambda value: None if value is None else float(value)
    return {"search_mode": mode,
            "final_mode": result.mode,  # lpt after lbt fell back on non-finite steps
            "teacher_val_miou": float(result.teacher_miou),
            "student_val_miou": optional(result.student_miou),
            "estimated_latency_ms": optional(result.expected_latency_ms),
            "skipped_steps": int(result.skipped_steps)}


def trainer_step(config_json: str, examples_dir: str, architecture_path: str,
                 model_dir: str) -> Dict:
    """Retrains (or resumes retraining) the architecture in the train stage directory, copies
    its weights and architecture to `model_dir/train/` and exports it to
    `model_dir/saved_model/`. The architecture is read from a copy named by its content hash
    in the stage directory: the same architecture resumes, another one is refused (--arch)."""
    from lbt_tf.data import tfrecords
    from lbt_tf.retrain import network as network_lib
    from lbt_tf.retrain.export import run_export
    from lbt_tf.retrain.trainer import OUTPUTS, run_train
    work_dir = stage_dir(user_config(config_json).run_dir, "train")
    with tf.io.gfile.GFile(architecture_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    arch_path = os.path.join(work_dir, f"arch-{digest}.json")
    config = step_config(config_json, work_dir, "train")
    config = config_lib.replace(config, **{"train.arch": arch_path})
    tfrecords.check_same_splits(config, examples_dir)
    run_record.check(config, "train", network_lib.train_dir(config), OUTPUTS)  # before writing
    _copy_file(architecture_path, arch_path)
    trained = run_train(config)
    for name in (network_lib.WEIGHTS_NAME, network_lib.ARCH_NAME):
        _copy_file(os.path.join(network_lib.train_dir(config), name),
                   os.path.join(model_dir, "train", name))
    exported = run_export(config_lib.replace(
        config, mode="export", **{"export.export_dir": os.path.join(model_dir, SAVED_MODEL_DIR)}))
    return {"weights": trained["weights"], "saved_model": exported["saved_model"]}


def evaluator_step(config_json: str, model_dir: str, evaluation_dir: str,
                   blessing_path: str) -> Tuple[Dict, Dict]:
    """Evaluates the trained network (mIoU, latency) and writes the blessing JSON.

    `run_evaluate` reads `<run_dir>/train/`; the weights and architecture are copied into this
    step's own artifact (never write into an input artifact)."""
    from lbt_tf.retrain import network as network_lib
    from lbt_tf.retrain.evaluate import run_evaluate
    config = step_config(config_json, evaluation_dir, "evaluate")
    source = os.path.join(model_dir, "train")
    for name in (network_lib.WEIGHTS_NAME, network_lib.ARCH_NAME):
        _copy_file(os.path.join(source, name), os.path.join(evaluation_dir, "train", name))
    results = run_evaluate(config)
    metrics = {"miou": results["miou"], "pixel_accuracy": results["pixel_accuracy"],
               "latency_ms": results["speed"]["latency_ms"],
               "fps": results["speed"]["fps"]}
    verdict = bless(metrics, config.pipeline)
    _write_json(blessing_path, verdict)
    print(f"blessed={verdict['blessed']} " + "; ".join(verdict["reasons"]), flush=True)
    return metrics, verdict


def bless(metrics: Dict, pipeline_config) -> Dict:
    """Blessed iff mIoU >= bless_min_miou and latency <= bless_max_latency_ms."""
    miou, latency = metrics["miou"], metrics["latency_ms"]
    checks = [(miou >= pipeline_config.bless_min_miou,
               f"miou {miou:.4f} {'>=' if miou >= pipeline_config.bless_min_miou else '<'} "
               f"--bless_min_miou={pipeline_config.bless_min_miou}"),
              (latency <= pipeline_config.bless_max_latency_ms,
               f"latency {latency:.2f} ms "
               f"{'<=' if latency <= pipeline_config.bless_max_latency_ms else '>'} "
               f"--bless_max_latency_ms={pipeline_config.bless_max_latency_ms}")]
    return {"blessed": all(ok for ok, _ in checks), "reasons": [text for _, text in checks],
            "miou": miou, "latency_ms": latency}


def pusher_step(config_json: str, model_dir: str, blessing_path: str, record_path: str) -> Dict:
    """Copies `<model_dir>/saved_model` to `<serving_dir>/<unix time>/` only when blessed;
    writes and returns the push record."""
    config = step_config(config_json, os.path.dirname(record_path), "export")
    with tf.io.gfile.GFile(blessing_path) as f:
        verdict = json.load(f)
    if not verdict.get("blessed"):
        record = {"pushed": False, "destination": None,
                  "reason": "not blessed: " + "; ".join(verdict.get("reasons", []))}
    else:
        if not config.pipeline.serving_dir:
            raise ConfigError("the pusher needs --serving_dir")
        destination = push_saved_model(os.path.join(model_dir, SAVED_MODEL_DIR),
                                       config.pipeline.serving_dir)
        record = {"pushed": True, "destination": destination, "reason": "blessed"}
    _write_json(record_path, record)
    print(f"pushed={record['pushed']} destination={record['destination']}", flush=True)
    return record


def push_saved_model(saved_model_dir: str, serving_dir: str) -> str:
    """Copies a SavedModel to a new numbered version `<serving_dir>/<unix time>` (TF Serving's
    layout); the version appears only once complete (copied to a temporary name first)."""
    if not tf.io.gfile.exists(os.path.join(saved_model_dir, "saved_model.pb")):
        raise LbtError(f"{saved_model_dir}: no saved_model.pb to push")
    version = int(time.time())
    while tf.io.gfile.exists(os.path.join(serving_dir, str(version))):
        version += 1
    destination = os.path.join(serving_dir, str(version))
    # Locally, copy under a temporary name and rename (atomic); object stores have no rename.
    remote = "://" in serving_dir
    partial = destination if remote else destination + ".partial"
    _copy_tree(saved_model_dir, partial)
    if not remote:
        tf.io.gfile.rename(partial, destination)
    return destination


def _copy_tree(source: str, target: str) -> None:
    for directory, _, files in tf.io.gfile.walk(source):
        target_dir = os.path.join(target, os.path.relpath(directory, source))
        tf.io.gfile.makedirs(target_dir)
        for name in files:
            tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target_dir, name),
                             overwrite=True)


def _copy_file(source: str, target: str) -> None:
    parent = os.path.dirname(target)
    if parent:
        tf.io.gfile.makedirs(parent)
    if "://" in source or "://" in target:
        tf.io.gfile.copy(source, target, overwrite=True)
    else:
        shutil.copyfile(source, target)


def _write_json(path: str, value: Dict) -> None:
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
