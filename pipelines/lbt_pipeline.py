"""The lbt_tf pipeline: example_gen -> search -> trainer -> evaluator -> pusher.

`--mode=pipeline` runs it here with kfp's local `SubprocessRunner` (components run as
subprocesses of this Python environment; artifacts land under the pipeline root);
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

from kfp import compiler, dsl, local

from components import build_components
from lbt_tf import config as config_lib

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
    def lbt_pipeline(config_json: str = default_config_json):
        gen = ops.example_gen(config_json=config_json)
        found = ops.search(config_json=config_json, examples=gen.outputs["examples"])
        trained = ops.trainer(config_json=config_json, examples=gen.outputs["examples"],
                              architecture=found.outputs["architecture"])
        evaluated = ops.evaluator(config_json=config_json, model=trained.outputs["model"])
        # The pusher reads the blessing itself and refuses an unblessed model (TFX's Pusher).
        ops.pusher(config_json=config_json, model=trained.outputs["model"],
                   blessing=evaluated.outputs["blessing"])

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
    """Runs the pipeline locally (one subprocess per component, in this Python environment).

    Returns {artifact name: path} of this run and prints them, with the push verdict.
    """
    root = pipeline_root(config)
    os.makedirs(root, exist_ok=True)
    before = set(_run_dirs(root))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root,
               raise_on_error=True)
    with warnings.catch_warnings():
        # The component image is for Kubeflow; locally the subprocess runner does not use it.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        build_pipeline(config)(config_json=config_parameter(config))
    new_runs = sorted(set(_run_dirs(root)) - before, key=os.path.getmtime)
    run_dir = new_runs[-1] if new_runs else max(_run_dirs(root), key=os.path.getmtime)
    artifacts = {name: os.path.join(run_dir, task, output)
                 for name, (task, output) in ARTIFACTS.items()}
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
