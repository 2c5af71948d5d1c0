"""The lbt_tf pipeline: example_gen -> search -> trainer -> evaluator -> pusher.

`--mode=pipeline` runs it here with kfp's local `SubprocessRunner` (components run as
subprocesses of this Python environment; artifacts land under the pipeline root, in a new folder
per run). Rerunning it on the same --run_dir never redoes or overwrites finished work: kfp's
local cache (`<pipeline root>/.kfp_cache`) reuses every task that finished with the same inputs,
the search and the retraining resume from their checkpoints in the stable stage directories
`<run_dir>/pipeline_stages/{search,train}` (lbt_tf.pipeline_steps), and a run root whose stages
hold another config is refused before any task runs, naming the directory and the differing
flags (--overwrite replaces those stages);
`--mode=compile_pipeline` writes the same pipeline as a KFP IR YAML that a Kubeflow Pipelines
or Vertex AI Pipelines user submits unchanged. The whole `Config` travels as one JSON string
parameter, `config_json`, whose default is the config this was compiled from: the YAML is
self-contained, and a user overrides any value by passing another JSON.
"""
# No `from __future__ import annotations`: kfp reads the annotations of the pipeline function.

import glob
import json
import os
import warnings
from typing import NamedTuple

from kfp import compiler, dsl, local

from components import build_components
from lbt_tf import config as config_lib
from lbt_tf import pipeline_steps

PIPELINE_NAME = "lbt-tf"
# Output artifacts of the tasks, as `<task>/<output>` under a run directory of the root.
ARTIFACTS = {
    "examples": ("example-gen", "examples"),
    "statistics": ("example-gen", "statistics"),
    "architecture": ("search", "architecture"),
    "teacher_checkpoint": ("search", "teacher_checkpoint"),
    "search_metrics": ("search", "search_metrics"),
    "model": ("trainer", "model"),
    "evaluation": ("evaluator", "evaluation"),
    "evaluation_metrics": ("evaluator", "evaluation_metrics"),
    "blessing": ("evaluator", "blessing"),
    "pushed_model": ("pusher", "pushed_model"),
}
# The pipeline's outputs (every artifact above): where a run's artifacts are, executed or
# reused from kfp's cache.
PipelineOutputs = NamedTuple("PipelineOutputs", [
    ("examples", dsl.Dataset), ("statistics", dsl.Metrics), ("architecture", dsl.Artifact),
    ("teacher_checkpoint", dsl.Model), ("search_metrics", dsl.Metrics), ("model", dsl.Model),
    ("evaluation", dsl.Artifact), ("evaluation_metrics", dsl.Metrics),
    ("blessing", dsl.Artifact), ("pushed_model", dsl.Artifact)])


def pipeline_root(config) -> str:
    return os.path.abspath(config.pipeline.pipeline_root
                           or os.path.join(config.run_dir, "pipeline_root"))


def serving_dir(config) -> str:
    return config.pipeline.serving_dir or os.path.join(os.path.abspath(config.run_dir),
                                                       "serving")


def pipeline_config(config):
    """The config the components receive: absolute run and serving directories, so that the
    subprocesses (or containers) agree on them wherever they start."""
    return config_lib.replace(config, run_dir=os.path.abspath(config.run_dir),
                              **{"pipeline.serving_dir": serving_dir(config)})


def config_parameter(config) -> str:
    """The pipeline parameter: the config as ONE line of JSON (the KFP compiler copies the
    default into the YAML's header comment, and a multi-line default breaks that YAML)."""
    return json.dumps(json.loads(pipeline_config(config).to_json()), sort_keys=True,
                      separators=(",", ":"))


def build_pipeline(config):
    """The `@dsl.pipeline` function; its `config_json` parameter defaults to `config`."""
    ops = build_components(config.pipeline.component_image)
    default_config_json = config_parameter(config)

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="LBT architecture search over the FasterSeg space, retraining, "
                              "evaluation with a blessing, and a push of blessed models.")
    def lbt_pipeline(config_json: str = default_config_json) -> PipelineOutputs:
        gen = ops.example_gen(config_json=config_json)
        found = ops.search(config_json=config_json, examples=gen.outputs["examples"])
        trained = ops.trainer(config_json=config_json, examples=gen.outputs["examples"],
                              architecture=found.outputs["architecture"])
        evaluated = ops.evaluator(config_json=config_json, model=trained.outputs["model"])
        # The pusher reads the blessing itself and refuses an unblessed model (TFX's Pusher).
        pushed = ops.pusher(config_json=config_json, model=trained.outputs["model"],
                            blessing=evaluated.outputs["blessing"])
        tasks = {"example-gen": gen, "search": found, "trainer": trained,
                 "evaluator": evaluated, "pusher": pushed}
        return PipelineOutputs(**{name: tasks[task].outputs[output]
                                  for name, (task, output) in ARTIFACTS.items()})

    return lbt_pipeline


def run_compile_pipeline(config) -> str:
    """Writes the KFP YAML (default `<run_dir>/lbt_pipeline.yaml`); prints `pipeline_yaml=`."""
    path = os.path.abspath(config.pipeline.pipeline_yaml
                           or os.path.join(config.run_dir, "lbt_pipeline.yaml"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    compiler.Compiler().compile(pipeline_func=build_pipeline(config), package_path=path)
    print(f"pipeline_yaml={path}", flush=True)
    return path


def run_pipeline(config) -> dict:
    """Runs the pipeline locally (one subprocess per component, in this Python environment),
    reusing the tasks an earlier run of the same config finished (kfp's local cache) and
    resuming an unfinished search or retraining; refuses a run root of another config first.

    Returns {artifact name: path} of this run and prints them, with the push verdict.
    """
    pipeline_steps.check_stages(pipeline_config(config))  # before any task runs
    root = pipeline_root(config)
    os.makedirs(root, exist_ok=True)
    before = set(_run_dirs(root))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root,
               raise_on_error=True,
               enable_caching=config.pipeline.pipeline_cache)
    with warnings.catch_warnings():
        # The component image is for Kubeflow; locally the subprocess runner does not use it.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        task = build_pipeline(config)(config_json=config_parameter(config))
    artifacts = {name: task.outputs[name].path for name in ARTIFACTS}
    new_runs = set(_run_dirs(root)) - before
    reused = sorted({ARTIFACTS[name][0] for name, path in artifacts.items()
                     if not any(path.startswith(run + os.sep) for run in new_runs)})
    if reused:
        print(f"pipeline: reused the finished tasks {', '.join(reused)} of an earlier run of "
              f"the same config (kfp cache in {root})")
    for name, path in artifacts.items():
        print(f"{name}={path}")
    with open(artifacts["pushed_model"]) as f:
        record = json.load(f)
    print(f"pushed={record['pushed']} destination={record['destination']} "
          f"reason={record['reason']}", flush=True)
    return artifacts


def _run_dirs(root):
    return [d for d in glob.glob(os.path.join(root, f"{PIPELINE_NAME}-*")) if os.path.isdir(d)]


__all__ = ["build_pipeline", "run_pipeline", "run_compile_pipeline", "ARTIFACTS"]
