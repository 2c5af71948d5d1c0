"""`--mode=compare`: FasterSeg vs LPT vs LBT search with the same budget, seed and data.

For every method of `--compare_modes`: search (`<run_dir>/compare/<method>/search`), retrain the
found architecture with the same retraining budget (`.../retrain`), evaluate it, and write the
method's `result.json`. Then `<run_dir>/compare/compare.md` (the table) and
`compare_val_miou.png` (val mIoU per search epoch of each method).

Resumable: a method whose `result.json` exists is not rerun; a method whose search finished
(`search_result.json`) is only retrained; an interrupted search or retraining continues from
its checkpoint (`resume` is turned on for a stage whose directory already exists).
"""
from __future__ import annotations

import os
from typing import Dict, List

from lbt_tf import config as config_lib
from lbt_tf import names
from lbt_tf.config import ConfigError
from lbt_tf.experiments import results as results_lib

COLUMNS = (("method_label", "method", "{}"),
           ("teacher_val_miou", "teacher val mIoU (search)", "{:.4f}"),
           ("retrained_miou", "retrained mIoU", "{:.4f}"),
           ("estimated_latency_ms", "est. latency (ms)", "{:.2f}"),
           ("measured_latency_ms", "measured latency (ms)", "{:.2f}"),
           ("params", "params", "{:,}"),
           ("skipped_steps", "skipped steps", "{}"))


def run_compare(config) -> List[Dict]:
    modes = tuple(config.pipeline.compare_modes)
    unknown = [m for m in modes if m not in names.SEARCH_MODES]
    if unknown or not modes:
        raise ConfigError(f"--compare_modes={','.join(modes)}: expected a subset of "
                          f"{','.join(names.SEARCH_MODES)}")
    out_dir = os.path.join(config.run_dir, "compare")
    rows = [compare_method(config, mode, os.path.join(out_dir, mode)) for mode in modes]
    table = results_lib.markdown_table(rows, COLUMNS)
    table_path = os.path.join(out_dir, "compare.md")
    with open(table_path, "w") as f:
        f.write(f"# Search methods compared (seed {config.seed}, {config.search.warmup_epochs} "
                f"warm-up + {config.search.epochs} search epochs, {config.train.epochs} "
                f"retraining epochs, data {config.data.source} "
                f"{config.data.image_height}x{config.data.image_width})\n\n{table}\n")
    plot_path = os.path.join(out_dir, "compare_val_miou.png")
    results_lib.plot_lines(plot_path, {row["method"]: row["val_miou_per_epoch"] for row in rows},
                           xlabel="search epoch", ylabel="teacher val mIoU",
                           title="val mIoU per epoch")
    print(table)
    print(f"compare_table={table_path}\ncompare_plot={plot_path}", flush=True)
    return rows


def compare_method(config, mode: str, method_dir: str, lock=None, retrain_config=None) -> Dict:
    """Search with `mode`, retrain and evaluate the found architecture; cached as result.json.
    `lock`: see `retrain_and_evaluate`. `retrain_config`: the config of the retraining and its
    evaluation (default `config`), e.g. with a larger val set than the search's."""
    from lbt_tf.pipeline_steps import search_summary
    from lbt_tf.search.runner import run_search

    result_path = os.path.join(method_dir, "result.json")
    if os.path.isfile(result_path):
        print(f"[compare] {mode}: done before, reading {result_path}", flush=True)
        return results_lib.read_json(result_path)

    search_path = os.path.join(method_dir, "search_result.json")
    search_dir = os.path.join(method_dir, "search")
    if os.path.isfile(search_path):
        search = results_lib.read_json(search_path)
    else:
        print(f"[compare] {mode}: search", flush=True)
        result = run_search(config_lib.replace(
            config, mode="search", run_dir=search_dir, resume=_resume(config, search_dir),
            **{"search.mode": mode}))
        search = dict(search_summary(result, mode), arch_path=result.arch_path,
                      val_miou_per_epoch=results_lib.val_miou_per_epoch(result))
        s = config.search
        if s.adaptive_latency and s.latency_target_max_ms > 0:  # the band this search had
            search["latency_target_band_ms"] = [s.latency_target_min_ms, s.latency_target_max_ms]
        results_lib.write_json(search_path, search)

    print(f"[compare] {mode}: retrain {search['arch_path']}", flush=True)
    retrained = retrain_and_evaluate(retrain_config or config, search["arch_path"],
                                     os.path.join(method_dir, "retrain"), lock)
    final_mode = search.get("final_mode", mode)
    label = mode if final_mode == mode else f"{mode} (fell back to {final_mode})"
    row = dict(search, **retrained, method=mode, method_label=label)
    results_lib.write_json(result_path, row)
    return row


def retrain_and_evaluate(config, arch_path: str, retrain_dir: str, lock=None) -> Dict:
    """Retrains `arch_path` with the config's retraining budget and evaluates it on the val
    split: {"retrained_miou", "measured_latency_ms", "params"}. `lock`: a context manager held
    while evaluating (the latency measurement), e.g. a file lock shared with other heavy jobs."""
    import contextlib
    from lbt_tf.retrain.evaluate import run_evaluate
    from lbt_tf.retrain.trainer import run_train
    retrain_config = config_lib.replace(
        config, mode="train", run_dir=retrain_dir, resume=_resume(config, retrain_dir),
        **{"train.arch": arch_path})
    run_train(retrain_config)
    with lock if lock is not None else contextlib.nullcontext():
        evaluation = run_evaluate(config_lib.replace(retrain_config, mode="evaluate"))
    return {"retrained_miou": float(evaluation["miou"]),
            "measured_latency_ms": float(evaluation["speed"]["latency_ms"]),
            "params": results_lib.count_params(retrain_config)}


def _resume(config, stage_dir: str) -> bool:
    """Continue a stage that an interrupted comparison left behind."""
    return config.resume or os.path.isdir(stage_dir)


__all__ = ["run_compare", "compare_method", "retrain_and_evaluate"]
