"""Does the search find anything? Found architectures vs random ones at equal latency.

For every method x seed: search, derive, retrain with one fixed budget, evaluate val mIoU and
measured latency (`compare.compare_method`, under `<out>/<method>/seed_<s>/`). Then random
architectures of the same space (`models/fasterseg/sampling.py`), kept only if their predicted
latency is within +-tolerance of the median predicted latency of the found ones, retrained with
the same budget (`<out>/random/rNN/`). Optionally one more LBT search whose latency target is
the random archs' median predicted latency (`<out>/target/`). All predictions use one latency
table measured once (`<out>/latency_table_HxW.json`), all measurements the same runtime.

One retraining is one draw (its init and data order follow the seed), and a small val set is
another: `retrain_seeds` > 1 retrains every network that many times (seeds s, s + 1000, ...) and
scores it by the mean; `eval_val_size` evaluates the retrained networks on that many synthetic val
images while the searches keep the config's (small, cheap per epoch) val set.

Outputs: search_quality.md (mean +- std per method and for random, every run, argmax
stability), search_quality.json, search_quality.png (measured latency vs mIoU). Resumable:
every search / retraining writes its result file and is skipped on a rerun.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import fcntl
import os
import platform
import statistics
import time
from typing import Dict, List, Optional, Sequence

from lbt_tf import config as config_lib
from lbt_tf import names
from lbt_tf.config import ConfigError
from lbt_tf.experiments import compare, stability
from lbt_tf.experiments import results as results_lib

RANDOM = "random"
RETRAIN_SEED_STRIDE = 1000   # retraining k of a network with seed s runs with s + 1000 k
TARGET = "lbt (latency target)"
KINDS = ("alpha", "beta", "gamma")
RUN_COLUMNS = (("method", "method", "{}"), ("seed", "seed", "{}"),
               ("retrained_miou", "retrained val mIoU", "{:.4f}"),
               ("measured_latency_ms", "measured latency (ms)", "{:.2f}"),
               ("predicted_latency_ms", "predicted latency (ms)", "{:.2f}"),
               ("retrained_mious", "per retrain seed", "{}"),
               ("teacher_val_miou", "supernet val mIoU (search)", "{:.4f}"),
               ("params", "params", "{:,}"), ("final_mode", "final mode", "{}"))


@dataclasses.dataclass(frozen=True)
class QualityOptions:
    methods: Sequence[str] = names.SEARCH_MODES
    seeds: Sequence[int] = (0, 1, 2)
    random_archs: int = 8            # K random architectures retrained
    random_pool: int = 1000          # sampled before the latency filter (cheap)
    tolerance: float = 0.15          # relative latency band around the found archs' median
    target_row: bool = True          # one lbt search with the random archs' median as target
    lock_path: str = ""              # a file lock held while measuring latency ("": none)
    reference_ms: float = 0.0        # latency the random archs must match (0: found median)
    report_only: bool = False        # run nothing: report the runs whose result files exist
    stage_processes: bool = True     # each search / retraining in a fresh child process
    interleaved_rounds: int = 30     # re-time all networks together, round-robin (0: keep the
                                     # per-run evaluate timings)
    retrain_seeds: int = 1           # retrainings per network; its mIoU is their mean
    eval_val_size: int = 0           # synthetic val images of the retrained networks' evaluation
                                     # (0: the config's, as the searches)


class FileLock:
    """flock(2) on `path` (the machine's shared heavy-job lock), held inside `with`."""

    def __init__(self, path: str):
        self.path = path
        self.handle = None

    def __enter__(self):
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        self.handle = None


def run_stage(options: QualityOptions, fn, *args):
    """fn(*args), in a fresh (spawned) child process when `options.stage_processes`: one
    process running 28 searches and retrainings grew to 11.5 GB after 4 of them (graphs and
    models TF keeps per process); a child gives all of it back when the stage ends."""
    if not options.stage_processes:
        return fn(*args)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


# ------------------------------------------------------------------------------- statistics
def mean_std(values: Sequence[float]) -> Dict[str, Optional[float]]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"n": 0, "mean": None, "std": None}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"n": len(values), "mean": statistics.fmean(values), "std": std}


def summarize(runs: List[Dict], random_rows: List[Dict]) -> List[Dict]:
    """One row per method (and random): mean/std of mIoU and latencies over its runs."""
    groups: Dict[str, List[Dict]] = {}
    for row in runs + random_rows:
        groups.setdefault(row["method"], []).append(row)
    summary = []
    for method, rows in groups.items():
        entry = {"method": method, "runs": len(rows)}
        for key in ("retrained_miou", "measured_latency_ms", "predicted_latency_ms"):
            stats = mean_std([r.get(key) for r in rows])
            entry[key] = stats["mean"]
            entry[key + "_std"] = stats["std"]
        summary.append(entry)
    return summary


def method_stability(histories: Dict[str, List[Dict]], search_epochs: int) -> List[Dict]:
    """Per method: seed agreement and last-quarter stability of the argmax, per kind."""
    rows = []
    for method, per_seed in histories.items():
        per_seed = [h for h in per_seed if h]
        if not per_seed:
            continue
        row = {"method": method, "seeds": len(per_seed)}
        finals = [h[-1]["arch_values"] for h in per_seed]
        agreement = stability.seed_agreement(finals) if len(finals) > 1 else {}
        late = [stability.late_stability(h, search_epochs) for h in per_seed]
        for kind, chance in stability.chance_agreement(finals[0]).items():
            row[f"{kind}_seed_agreement"] = agreement.get(kind)
            row[f"{kind}_chance"] = chance
            row[f"{kind}_late_stability"] = mean_std([s[kind] for s in late])["mean"]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------- report
def _pm(row: Dict, key: str, fmt: str) -> str:
    mean, std = row.get(key), row.get(key + "_std")
    if mean is None:
        return "n/a"
    return f"{fmt.format(mean)} ± {fmt.format(std or 0.0)}"


def report_markdown(summary: List[Dict], runs: List[Dict], stability_rows: List[Dict],
                    meta: Dict) -> str:
    lines = [f"# Does the search find anything? ({meta.get('title', '')})", ""]
    for key, value in meta.items():
        if key != "title":
            lines.append(f"- {key}: {value}")
    lines += ["", "## Mean ± std per method", "",
              "| method | runs | retrained val mIoU | measured latency (ms) | "
              "predicted latency (ms) |", "|---|---|---|---|---|"]
    for row in summary:
        lines.append(f"| {row['method']} | {row['runs']} | "
                     f"{_pm(row, 'retrained_miou', '{:.4f}')} | "
                     f"{_pm(row, 'measured_latency_ms', '{:.2f}')} | "
                     f"{_pm(row, 'predicted_latency_ms', '{:.2f}')} |")
    lines += ["", "## Every run", "", results_lib.markdown_table(runs, RUN_COLUMNS), ""]
    if stability_rows:
        kinds = [k for k in KINDS if f"{k}_chance" in stability_rows[0]]
        lines += ["## Argmax stability", "",
                  "Seed agreement: fraction of (row, seed pair) with the same final argmax "
                  "(chance in brackets). Late stability: fraction of rows whose argmax did not "
                  "change over the last quarter of the search (mean over seeds).", "",
                  "| method | seeds | " + " | ".join(
                      f"{k} seed agreement | {k} late stability" for k in kinds) + " |",
                  "|---|---|" + "---|---|" * len(kinds)]
        for row in stability_rows:
            cells = []
            for k in kinds:
                agree = row.get(f"{k}_seed_agreement")
                agree = "n/a" if agree is None else f"{agree:.2f} ({row[f'{k}_chance']:.2f})"
                late = row.get(f"{k}_late_stability")
                cells += [agree, "n/a" if late is None else f"{late:.2f}"]
            lines.append(f"| {row['method']} | {row['seeds']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_latency_vs_miou(path: str, runs: List[Dict]) -> str:
    """Measured latency vs retrained mIoU; one marker per method, random as grey points."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    markers = dict(zip(list(names.SEARCH_MODES) + [TARGET], "o^s*"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in runs):
        points = [(r["measured_latency_ms"], r["retrained_miou"]) for r in runs
                  if r["method"] == method and r.get("retrained_miou") is not None]
        if not points:
            continue
        if method == RANDOM:
            ax.scatter(*zip(*points), color="0.6", marker=".", s=60, label=RANDOM, zorder=1)
        else:
            ax.scatter(*zip(*points), marker=markers.get(method, "D"), s=60, label=method,
                       zorder=2)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("retrained val mIoU")
    ax.set_title("found vs random architectures")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out_dir: str, runs: List[Dict], stability_rows: List[Dict],
                 meta: Dict) -> Dict[str, str]:
    """search_quality.md / .json / .png under `out_dir`; returns their paths."""
    random_rows = [r for r in runs if r["method"] == RANDOM]
    found = [r for r in runs if r["method"] != RANDOM]
    summary = summarize(found, random_rows)
    paths = {name: os.path.join(out_dir, f"search_quality.{name}") for name in ("md", "json",
                                                                             "png")}
    os.makedirs(out_dir, exist_ok=True)
    with open(paths["md"], "w") as f:
        f.write(report_markdown(summary, runs, stability_rows, meta))
    results_lib.write_json(paths["json"], {"meta": meta, "summary": summary, "runs": runs,
                                           "stability": stability_rows})
    plot_latency_vs_miou(paths["png"], runs)
    return paths


# -------------------------------------------------------------------------------------- run
def predicted_latency(arch: Dict, table, config) -> float:
    from lbt_tf.models.fasterseg import latency
    d = config.data
    return latency.derived_latency(arch, table, d.num_classes, d.image_height,
                                   d.image_width)["total"]


def _arch_history(search_dir: str) -> List[Dict]:
    path = os.path.join(search_dir, "search_state.json")
    return results_lib.read_json(path).get("arch_history", []) if os.path.isfile(path) else []


def retrain_config(config, options: QualityOptions):
    """The config of every retraining and its evaluation: `config` with the val set of
    `options.eval_val_size` synthetic images (the searches keep the config's)."""
    if not options.eval_val_size:
        return config
    if config.data.source != "synthetic":
        raise ConfigError(f"--quality_eval_val_size={options.eval_val_size}: only for "
                          f"--data_source=synthetic (is {config.data.source})")
    return config_lib.replace(config, **{"data.synthetic_val_size": options.eval_val_size})


def repeat_retraining(config, options: QualityOptions, row: Dict, stage_dir: str,
                      lock=None) -> Dict:
    """`row` (one retraining of row["arch_path"] with config.seed) scored by the mean val mIoU of
    `options.retrain_seeds` retrainings: the further ones run with seeds config.seed + 1000 k
    (`<stage_dir>/retrain_seed<S>/`, result cached in its result.json). `config`: the
    retraining config (`retrain_config`)."""
    if options.retrain_seeds <= 1:
        return row
    mious = [row["retrained_miou"]]
    for k in range(1, options.retrain_seeds):
        seed = int(config.seed) + RETRAIN_SEED_STRIDE * k
        retrain_dir = os.path.join(stage_dir, f"retrain_seed{seed}")
        result_path = os.path.join(retrain_dir, "result.json")
        if os.path.isfile(result_path):
            extra = results_lib.read_json(result_path)
        elif options.report_only:
            continue
        else:
            print(f"[search_quality] retrain {row['arch_path']} with seed {seed}", flush=True)
            extra = run_stage(options, compare.retrain_and_evaluate,
                              config_lib.replace(config, seed=seed), row["arch_path"],
                              retrain_dir, lock)
            results_lib.write_json(result_path, extra)
        mious.append(extra["retrained_miou"])
    stats = mean_std(mious)
    return dict(row, retrained_miou=stats["mean"], retrained_miou_seed_std=stats["std"],
                retrained_miou_first=mious[0],
                retrained_mious=" / ".join(f"{m:.3f}" for m in mious))


def run_random(config, options: QualityOptions, table, reference_ms: float, lock=None):
    """Retrains the first `options.random_archs` random archs (pool seeded by config.seed)
    whose predicted latency is within the band around `reference_ms`; returns (rows, pool
    size). Each one's result.json (`<run_dir>/random/rNN/`) is reused on a rerun."""
    from lbt_tf.models.fasterseg import genotype, sampling
    pool = sampling.sample_architectures(config.teacher, options.random_pool, config.seed)
    pool_latency = [predicted_latency(a, table, config) for a in pool]
    kept = sampling.within_latency(pool_latency, reference_ms, options.tolerance)
    rows = []
    for n, index in enumerate(kept[:options.random_archs]):
        seed = int(options.seeds[n % len(options.seeds)])
        seed_config = retrain_config(config_lib.replace(config, seed=seed), options)
        run_dir = os.path.join(config.run_dir, RANDOM, f"r{index:02d}")
        result_path = os.path.join(run_dir, "result.json")
        if os.path.isfile(result_path):
            rows.append(repeat_retraining(seed_config, options,
                                          results_lib.read_json(result_path), run_dir, lock))
            continue
        if options.report_only:
            continue
        arch_path = os.path.join(run_dir, "arch.json")
        genotype.save_architecture(pool[index], arch_path)
        print(f"[search_quality] random #{index} ({pool_latency[index]:.2f} ms predicted)",
              flush=True)
        row = dict(run_stage(options, compare.retrain_and_evaluate, seed_config, arch_path,
                             os.path.join(run_dir, "retrain"), lock),
                   method=RANDOM, seed=seed, pool_index=index, arch_path=arch_path,
                   predicted_latency_ms=pool_latency[index])
        results_lib.write_json(result_path, row)
        rows.append(repeat_retraining(seed_config, options, row, run_dir, lock))
    return rows, len(pool)


def measure_interleaved(runs: List[Dict], config, runtime: str, out_dir: str,
                        rounds: int) -> str:
    """Re-times every run's network (found, random, target) in the table's runtime, round-robin
    over `rounds` rounds (`timing.interleaved_medians`), and makes that its measured latency.

    The per-run `--mode=evaluate` timings are taken hours apart on a machine whose load changes;
    timed together, a busy spell slows every network alike, so they compare. The evaluate timing
    stays as `evaluate_latency_ms`. Cached in `<out_dir>/interleaved_latency.json` (re-timed when
    the set of networks or the runtime changes). Returns a line for the report."""
    from lbt_tf.models.fasterseg import build_derived_network, genotype, latency, timing
    d = config.data
    path = os.path.join(out_dir, "interleaved_latency.json")
    arch_paths = sorted({r["arch_path"] for r in runs})
    cached = results_lib.read_json(path) if os.path.isfile(path) else {}
    if (cached.get("runtime") != runtime or cached.get("rounds") != rounds
            or sorted(cached.get("latency_ms", {})) != arch_paths):
        print(f"[search_quality] timing {len(arch_paths)} networks together ({runtime}, "
              f"{rounds} rounds)", flush=True)
        runners = []
        for arch_path in arch_paths:
            network = build_derived_network(genotype.load_architecture(arch_path), d.num_classes,
                                            (d.image_height, d.image_width, 3), aux_heads=False)
            runners.append(latency.network_runner(network, d.image_height, d.image_width,
                                                  runtime))
        medians = timing.interleaved_medians(runners, runs=rounds, warmup=3)
        cached = {"runtime": runtime, "rounds": rounds,
                  "latency_ms": dict(zip(arch_paths, medians))}
        results_lib.write_json(path, cached)
    for row in runs:
        row.setdefault("evaluate_latency_ms", row["measured_latency_ms"])
        row["measured_latency_ms"] = cached["latency_ms"][row["arch_path"]]
    return (f"every network timed together at batch 1 in runtime {runtime}, median of {rounds} "
            f"round-robin rounds (`{path}`); the per-run --mode=evaluate timings are kept in the "
            f"JSON as evaluate_latency_ms")


def run_search_quality(config, options: QualityOptions) -> Dict[str, str]:
    from lbt_tf.models.fasterseg import genotype, latency
    unknown = [m for m in options.methods if m not in names.SEARCH_MODES]
    if unknown or not options.methods or not options.seeds:
        raise ConfigError(f"search quality: methods {list(options.methods)} must be a non-empty "
                          f"subset of {names.SEARCH_MODES}, seeds non-empty")
    started = time.time()
    out_dir = config.run_dir
    lock = FileLock(options.lock_path) if options.lock_path else contextlib.nullcontext()
    d = config.data
    # One table for every search and prediction of the bench (measured once, under the lock).
    table_path = latency.default_table_path(config)
    config = config_lib.replace(config, **{"teacher.latency_table": table_path})
    with lock:
        table, _ = latency.table_for_config(config)

    runs, histories = [], {}
    for method in options.methods:
        for seed in options.seeds:
            run_dir = os.path.join(out_dir, method, f"seed_{seed}")
            if options.report_only and not os.path.isfile(os.path.join(run_dir, "result.json")):
                continue
            result_path = os.path.join(run_dir, "result.json")
            seed_config = config_lib.replace(config, seed=int(seed))
            seed_retrain_config = retrain_config(seed_config, options)
            row = (results_lib.read_json(result_path) if os.path.isfile(result_path) else
                   run_stage(options, compare.compare_method, seed_config, method, run_dir,
                             lock, seed_retrain_config))
            row = repeat_retraining(seed_retrain_config, options, row, run_dir, lock)
            arch = genotype.load_architecture(row["arch_path"])
            runs.append(dict(row, method=method, seed=int(seed),
                             predicted_latency_ms=predicted_latency(arch, table, config)))
            histories.setdefault(method, []).append(_arch_history(os.path.join(run_dir,
                                                                               "search")))
    if not runs:
        raise ConfigError(f"search quality: no finished search under {out_dir}")
    reference = options.reference_ms or statistics.median(r["predicted_latency_ms"]
                                                          for r in runs)

    random_rows, pool_size = run_random(config, options, table, reference, lock)
    runs += random_rows
    # Derived networks use a few ops the supernet's table lacks (measured on first use):
    # saved, so that a rerun predicts the same latencies.
    table.save(table_path)
    random_latency = [r["predicted_latency_ms"] for r in runs if r["method"] == RANDOM]

    meta = {"title": f"{d.source} {d.image_height}x{d.image_width}, {config.teacher.layers} "
                     f"layers",
            "search": f"{config.search.warmup_epochs} warm-up + {config.search.epochs} search "
                      f"epochs x {config.search.steps_per_epoch} steps",
            "retraining": f"{config.train.epochs} epochs x {config.train.steps_per_epoch} "
                          f"steps, lr {config.train.lr}, batch {d.batch_size}; "
                          f"{options.retrain_seeds} seed(s) per network (mIoU: their mean; "
                          f"seeds s + {RETRAIN_SEED_STRIDE} k)",
            "val set": (f"{retrain_config(config, options).data.synthetic_val_size} synthetic "
                        f"images for the retrained networks, {d.synthetic_val_size} for the "
                        f"supernet's per-epoch mIoU during the search"
                        if d.source == "synthetic" else "the val split"),
            "seeds": list(options.seeds),
            "random": f"{len(random_latency)} kept of {pool_size} sampled (seed {config.seed}) "
                      f"within ±{options.tolerance:.0%} of "
                      f"{'a fixed' if options.reference_ms else 'the found archs median'} "
                      f"predicted latency {reference:.2f} ms",
            "latency_table": table_path,
            "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, {platform.system()}"}
    run_dir = os.path.join(out_dir, "target")
    if options.target_row and random_latency and not (
            options.report_only and not os.path.isfile(os.path.join(run_dir, "result.json"))):
        target = statistics.median(random_latency)
        result_path = os.path.join(run_dir, "result.json")
        row = (results_lib.read_json(result_path) if os.path.isfile(result_path) else
               run_stage(options, compare.compare_method, config_lib.replace(
                   config, **{"search.adaptive_latency": True,
                              "search.latency_target_min_ms": 0.95 * target,
                              "search.latency_target_max_ms": 1.05 * target}), "lbt", run_dir,
                   lock, retrain_config(config, options)))
        row = repeat_retraining(retrain_config(config, options), options, row, run_dir, lock)
        if "latency_target_band_ms" in row:  # the target the search ran with
            target = statistics.fmean(row["latency_target_band_ms"])
        arch = genotype.load_architecture(row["arch_path"])
        row = dict(row, method=TARGET, seed=int(config.seed), target_latency_ms=target,
                   predicted_latency_ms=predicted_latency(arch, table, config))
        runs.append(row)
    if options.interleaved_rounds and not options.report_only:
        with lock:
            meta["measured latency"] = measure_interleaved(
                runs, config, table.meta.get("runtime", config.teacher.latency_runtime), out_dir,
                options.interleaved_rounds)
    target_row = next((r for r in runs if r["method"] == TARGET), None)
    if target_row is not None:
        # The target is in the latency table's units; the table's sum of per-op times is not
        # exactly wall-clock time, so the measured check is against the random archs' measured
        # median (the same networks the target came from).
        row, target = target_row, target_row["target_latency_ms"]
        measured = statistics.median(r["measured_latency_ms"] for r in runs
                                     if r["method"] == RANDOM)
        row["predicted_error"] = row["predicted_latency_ms"] / target - 1.0
        row["measured_error"] = row["measured_latency_ms"] / measured - 1.0
        meta["latency target"] = (
            f"{target:.2f} ms predicted (random median); the network found with it: "
            f"{row['predicted_latency_ms']:.2f} ms predicted ({row['predicted_error']:+.0%}); "
            f"{row['measured_latency_ms']:.2f} ms measured vs the random archs' measured median "
            f"{measured:.2f} ms ({row['measured_error']:+.0%}); within ±15%: "
            f"{abs(row['measured_error']) <= 0.15}")
    stability_rows = method_stability(histories, config.search.epochs)
    meta["wall time of this invocation"] = f"{(time.time() - started) / 60:.1f} min " \
        "(a resumed run counts only what it ran)"
    paths = write_report(out_dir, runs, stability_rows, meta)
    with open(paths["md"]) as f:
        print(f.read())
    print("\n".join(f"search_quality_{k}={v}" for k, v in paths.items()), flush=True)
    return paths


__all__ = ["QualityOptions", "FileLock", "mean_std", "summarize", "method_stability",
           "retrain_config", "repeat_retraining",
           "report_markdown", "plot_latency_vs_miou", "write_report", "run_random",
           "measure_interleaved", "run_stage", "run_search_quality"]
