"""The main job (`--mode=demo`, `make demo`): every stage of lbt_tf once, on the configured data.

sample grid of the data -> LBT architecture search (warm-up, then the unrolled LBT updates) ->
retrain the found network -> evaluate it (mIoU table, confusion matrix, prediction grid,
latency) -> export a SavedModel (+ TFLite) and predict with it.
Each stage is the same function its own `--mode` runs; this module only chains them.
"""
from __future__ import annotations

import os

from lbt_tf import config as config_lib


def demo(config):
    from lbt_tf.data.splits import run_print_splits
    from lbt_tf.data.visualize import run_sample_grid
    from lbt_tf.retrain.evaluate import run_evaluate
    from lbt_tf.retrain.export import run_export
    from lbt_tf.retrain.trainer import run_train
    from lbt_tf.search.runner import run_search

    _stage("1/5 data: the LBT splits and a sample grid")
    run_print_splits(config)
    run_sample_grid(config)
    _stage(f"2/5 search: mode={config.search.mode} hypergrad={config.search.hypergrad}")
    search_result = run_search(config_lib.replace(config, mode="search"))
    arch_path = search_result.arch_path
    retrain_config = config_lib.replace(config, mode="train", **{"train.arch": arch_path})
    _stage(f"3/5 retrain the found architecture ({arch_path})")
    run_train(retrain_config)
    _stage("4/5 evaluate")
    run_evaluate(config_lib.replace(retrain_config, mode="evaluate"))
    _stage("5/5 export")
    run_export(config_lib.replace(retrain_config, mode="export"))
    print(f"demo finished; everything is under {os.path.abspath(config.run_dir)}")


def _stage(title):
    print(f"\n=== {title} ===", flush=True)
