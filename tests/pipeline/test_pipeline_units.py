"""The pipeline without running it: the compiled KFP YAML, the blessing and the pusher."""
import json
import os

import pytest
import tensorflow as tf
import yaml

from lbt_tf import config as config_lib
from lbt_tf import pipeline_steps
from lbt_tf.config import Config, ConfigError
from pipelines import lbt_pipeline

COMPONENTS = ("example-gen", "search", "trainer", "evaluator", "pusher")


def test_compile_pipeline_is_self_contained(tmp_path, capsys):
    config = config_lib.replace(Config(), run_dir=str(tmp_path / "run"), seed=7, **{
        "pipeline.component_image": "registry.example/lbt-tf:1", "data.num_classes": 5,
        "pipeline.bless_min_miou": 0.3})
    path = lbt_pipeline.run_compile_pipeline(config)
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"pipeline_yaml={path}"
    assert path == str(tmp_path / "run" / "lbt_pipeline.yaml")
    spec = yaml.safe_load(open(path))
    assert spec["pipelineInfo"]["name"] == lbt_pipeline.PIPELINE_NAME
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(COMPONENTS)
    for name in COMPONENTS:
        container = spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]
        assert container["image"] == "registry.example/lbt-tf:1"
        assert "pip install" not in " ".join(container["command"])  # lbt_tf image has kfp
    # data flows example_gen -> search -> trainer -> evaluator -> pusher as typed artifacts
    assert tasks["search"]["inputs"]["artifacts"]["examples"]["taskOutputArtifact"] == {
        "outputArtifactKey": "examples", "producerTask": "example-gen"}
    assert tasks["pusher"]["inputs"]["artifacts"]["blessing"]["taskOutputArtifact"][
        "producerTask"] == "evaluator"
    outputs = spec["components"]["comp-search"]["outputDefinitions"]["artifacts"]
    assert outputs["architecture"]["artifactType"]["schemaTitle"] == "system.Artifact"
    assert outputs["teacher_checkpoint"]["artifactType"]["schemaTitle"] == "system.Model"
    assert outputs["search_metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    # the whole config is the default of the one parameter, with absolute run/serving dirs
    default = spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]
    rebuilt = Config.from_dict(json.loads(default))
    assert rebuilt == lbt_pipeline.pipeline_config(config)
    assert rebuilt.seed == 7 and rebuilt.data.num_classes == 5
    assert rebuilt.pipeline.serving_dir == str(tmp_path / "run" / "serving")


def test_bless_thresholds():
    p = Config().pipeline
    strict = config_lib.replace(Config(), **{"pipeline.bless_min_miou": 0.5,
                                             "pipeline.bless_max_latency_ms": 10.0}).pipeline
    assert pipeline_steps.bless({"miou": 0.0, "latency_ms": 5.0}, p)["blessed"]
    assert pipeline_steps.bless({"miou": 0.5, "latency_ms": 10.0}, strict)["blessed"]
    low = pipeline_steps.bless({"miou": 0.49, "latency_ms": 1.0}, strict)
    assert not low["blessed"] and "--bless_min_miou=0.5" in low["reasons"][0]
    slow = pipeline_steps.bless({"miou": 0.9, "latency_ms": 10.5}, strict)
    assert not slow["blessed"] and "--bless_max_latency_ms=10.0" in slow["reasons"][1]


def _tiny_saved_model(directory):
    module = tf.Module()
    module.scale = tf.Variable(3.0)
    module.f = tf.function(lambda x: x * module.scale,
                           input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, directory)


@pytest.mark.parametrize("blessed", [True, False])
def test_pusher_pushes_only_blessed_models(tmp_path, blessed):
    model_dir = tmp_path / "model"
    _tiny_saved_model(str(model_dir / pipeline_steps.SAVED_MODEL_DIR))
    blessing = tmp_path / "blessing"
    blessing.write_text(json.dumps({"blessed": blessed, "reasons": ["miou 0.1 < x"]}))
    serving = tmp_path / "serving"
    config_json = config_lib.replace(Config(), **{"pipeline.serving_dir": str(serving)}).to_json()
    record = pipeline_steps.pusher_step(config_json, str(model_dir), str(blessing),
                                        str(tmp_path / "pushed_model"))
    assert json.loads((tmp_path / "pushed_model").read_text()) == record
    if blessed:
        assert record["pushed"] and os.path.dirname(record["destination"]) == str(serving)
        assert os.listdir(serving) == [os.path.basename(record["destination"])]
        loaded = tf.saved_model.load(record["destination"])
        assert loaded.f(tf.constant([2.0])).numpy().tolist() == [6.0]
    else:
        assert not record["pushed"] and record["destination"] is None
        assert "not blessed: miou 0.1 < x" == record["reason"]
        assert not serving.exists()


def test_step_config_rejects_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="config_json"):
        pipeline_steps.step_config("{not json", str(tmp_path), "search")


def test_compile_pipeline_mode_from_the_command_line(tmp_path):
    import subprocess
    import sys
    yaml_path = tmp_path / "out" / "p.yaml"
    completed = subprocess.run(
        [sys.executable, "-m", "lbt_tf.main", "--flagfile=configs/demo.flags",
         "--mode=compile_pipeline", f"--run_dir={tmp_path}",
         f"--pipeline_yaml={yaml_path}"],
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip().splitlines()[-1] == f"pipeline_yaml={yaml_path}"
    default = yaml.safe_load(open(yaml_path))["root"]["inputDefinitions"]["parameters"][
        "config_json"]["defaultValue"]
    assert json.loads(default)["search"]["mode"] == "lbt"


def test_stage_check_refuses_another_config_before_any_task(tmp_path, directory_contents):
    """A pipeline rerun on a run root whose stage directories hold runs of another config is
    refused (naming the stage directory and the flag) before kfp starts; the trained
    architecture (a search output, named by its hash) is compared by the trainer, not here."""
    from lbt_tf import run_record
    from lbt_tf.retrain import network as network_lib
    config = config_lib.replace(Config(), run_dir=str(tmp_path))
    search_stage = pipeline_steps.stage_dir(str(tmp_path), "search")
    train_config = config_lib.replace(config, run_dir=pipeline_steps.stage_dir(str(tmp_path),
                                                                               "train"),
                                      **{"train.arch": str(tmp_path / "arch-1.json")})
    train_stage = network_lib.train_dir(train_config)
    for stage, directory, staged in (("search", search_stage, config),
                                     ("train", train_stage, train_config)):
        os.makedirs(directory)
        run_record.start_or_resume(staged, stage, directory, ())
    before = directory_contents(tmp_path)
    pipeline_steps.check_stages(config)  # the same config: resumed, not refused
    for changes, directory, flag in (
            ({"search.arch_lr": 1e-3}, search_stage, "--arch_lr: 0.0003 (recorded) vs 0.001"),
            ({"train.lr": 0.02}, train_stage, "--train_lr: 0.01 (recorded) vs 0.02 (now)")):
        with pytest.raises(ConfigError) as raised:
            pipeline_steps.check_stages(config_lib.replace(config, **changes))
        assert str(raised.value).startswith(f"--run_dir: {directory} holds a"), raised.value
        assert flag in str(raised.value)
    pipeline_steps.check_stages(config_lib.replace(config, overwrite=True,
                                                   **{"train.lr": 0.02}))
    assert directory_contents(tmp_path) == before  # checks write nothing
