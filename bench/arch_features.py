"""What makes a derived network retrain well? Architectural features vs retrained val mIoU.

Reads the search-quality benches' run folders (`result.json` of every found / random network,
its arch JSON, and where present a val-512 re-evaluation), groups retrainings of the same
architecture, and prints per network its features and mean score, each feature's correlation
with the score, and the best one- and two-level threshold splits (a depth-2 tree by exhaustive
search; no training, seconds). Usage:

  python bench/arch_features.py \
      --bench=/work/main/runs/search_quality:/work/wt/qruns/noise/bench512 \
      --bench=/work/wt/qruns/search_quality_v2 [--extra=ARCH_JSON:METRICS_JSON ...]

`--bench=DIR[:EVAL512_DIR]`: EVAL512_DIR holds `<method>_seed_<s>/evaluate/metrics.json` /
`random_rNN/...` re-evaluations of DIR's checkpoints on 512 val images (used instead of
result.json's score when present).
"""
from __future__ import annotations

import collections
import glob
import itertools
import json
import os
import statistics

from absl import app, flags

from lbt_tf.models.fasterseg import derived, genotype
from lbt_tf.models.fasterseg.space import OP_NAMES

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("bench", [], "DIR[:EVAL512_DIR] of a search-quality run")
flags.DEFINE_multi_string("extra", [], "ARCH_JSON:METRICS_JSON of a further retraining")
flags.DEFINE_float("good", 0.53, "score threshold between the two modes")
flags.DEFINE_string("json_out", "", "write the per-network rows here")
flags.DEFINE_string("latency_table", "", "predict every network's latency with this table "
                    "(64x128, 19 classes; '': the result files' own, where present)")


def features(arch) -> dict:
    """Per-network features of the derived network (the cells of its kept branches)."""
    plan = derived.network_plan(arch)
    cells = []   # distinct cells (a shared prefix counted once)
    for branch in plan.branches:
        cells += branch.cells[branch.shared_prefix:]
    f = {"branches": "+".join(str(b.output_stride) for b in plan.branches),
         "has_os8": int(any(b.output_stride == 8 for b in plan.branches)),
         "first_op": OP_NAMES[plan.branches[0].cells[0].op],
         "first_op_downup": int("downup" in OP_NAMES[plan.branches[0].cells[0].op]),
         "cells": len(cells),
         # every kept branch halves the 1/8 map inside its first cell (no full-res 1/8 cell
         # before the first down)
         "all_first_downup": int(all("downup" in OP_NAMES[b.cells[0].op]
                                     for b in plan.branches)),
         "first_cell_shared": int(any(b.shared_prefix > 0 for b in plan.branches))}
    for op in OP_NAMES:
        f[f"n_{op}"] = sum(OP_NAMES[c.op] == op for c in cells)
    f["n_downup"] = f["n_conv_downup"] + f["n_conv_2x_downup"]
    f["n_2x"] = f["n_conv_2x"] + f["n_conv_2x_downup"]
    for scale, stride in enumerate((8, 16, 32)):
        f[f"cells_os{stride}"] = sum(c.scale == scale for c in cells)
        f[f"downup_os{stride}"] = sum(c.scale == scale and "downup" in OP_NAMES[c.op]
                                      for c in cells)
    # Layers spent at 1/8 before the first down (the branch with the longest stay).
    f["depth_os8"] = max(sum(c.scale == 0 for c in b.cells) for b in plan.branches)
    f["first_down_layer"] = min(next((l for l, c in enumerate(b.cells) if c.stride == 2),
                                     len(b.cells)) for b in plan.branches)
    widths = [w for s in arch["branch_output_strides"]
              for w in arch["candidates"][str(s)]["widths"]]
    f["mean_width"] = statistics.fmean(widths) if widths else 1.0
    f["sum_cout"] = sum(c.cout for c in cells)
    return f


def _key(arch) -> str:
    used = {str(s): arch["candidates"][str(s)] for s in arch["branch_output_strides"]}
    return json.dumps([arch["branch_output_strides"], used], sort_keys=True)


def collect(benches, extras):
    """{arch key: {"arch", "scores": [(source, score)], "params", "pred_ms"}}."""
    nets = collections.OrderedDict()

    def add(arch_path, score, source, result):
        arch = genotype.load_architecture(arch_path)
        entry = nets.setdefault(_key(arch), {"arch": arch, "scores": [], "sources": [],
                                             "params": result.get("params"),
                                             "pred_ms": result.get("predicted_latency_ms"),
                                             "method": result.get("method", "?")})
        entry["scores"].append(score)
        entry["sources"].append(source)

    for spec in benches:
        root, _, eval_dir = spec.partition(":")
        for path in sorted(glob.glob(os.path.join(root, "*", "*", "result.json")) +
                           glob.glob(os.path.join(root, "target", "result.json"))):
            result = json.load(open(path))
            rel = os.path.relpath(os.path.dirname(path), root)
            arch_path = result["arch_path"]
            if not os.path.isabs(arch_path):   # written relative to the bench's cwd
                arch_path = os.path.join(root, arch_path.split("search_quality/", 1)[1])
            score = result["retrained_miou"]
            name = rel.replace("/", "_")
            metrics = os.path.join(eval_dir, name, "evaluate", "metrics.json") if eval_dir else ""
            if metrics and os.path.isfile(metrics):
                score = json.load(open(metrics))["miou"]
            elif eval_dir:
                continue   # no val-512 score for this one: do not mix val sets
            if rel.startswith("lpt"):
                result["method"] = "lpt"
            add(arch_path, score, f"{root}/{rel}", result)
    for spec in extras:
        arch_path, _, metrics = spec.partition(":")
        add(arch_path, json.load(open(metrics))["miou"], metrics, {"method": "extra"})
    return nets


def best_split(rows, keys, good):
    """(accuracy, key, threshold) of the best `feature <= t -> bad / good` (or reversed) rule."""
    best = (0.0, None, None, None)
    for k in keys:
        values = sorted({r[k] for r in rows})
        for lo, hi in zip(values, values[1:]):
            t = (lo + hi) / 2
            for sign in (1, -1):
                correct = sum((sign * (r[k] - t) > 0) == (r["score"] >= good) for r in rows)
                acc = correct / len(rows)
                if acc > best[0]:
                    best = (acc, k, t, sign)
    return best


def corr(x, y):
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sx = sum((a - mx) ** 2 for a in x) ** 0.5
    sy = sum((b - my) ** 2 for b in y) ** 0.5
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / (sx * sy) if sx and sy else 0.0


def main(argv):
    del argv
    nets = collect(FLAGS.bench, FLAGS.extra)
    table = None
    if FLAGS.latency_table:
        from lbt_tf.models.fasterseg import latency
        from lbt_tf.models.fasterseg.latency_table import LatencyTable
        table = LatencyTable.load(FLAGS.latency_table)
    rows = []
    for entry in nets.values():
        f = features(entry["arch"])
        f.update(score=statistics.fmean(entry["scores"]), n_retrain=len(entry["scores"]),
                 params=entry["params"] or 0, pred_ms=entry["pred_ms"] or 0.0,
                 method=entry["method"], sources=entry["sources"])
        f["first_ops"] = "/".join(c["ops"][0] for c in (
            entry["arch"]["candidates"][str(s)] for s in entry["arch"]["branch_output_strides"]))
        if table is not None:
            f["pred_ms"] = latency.derived_latency(entry["arch"], table, 19, 64, 128)["total"]
        rows.append(f)
    rows.sort(key=lambda r: -r["score"])
    numeric = [k for k, v in rows[0].items() if isinstance(v, (int, float))
               and k not in ("score", "n_retrain")]
    numeric = [k for k in numeric if len({r[k] for r in rows}) > 1]
    print(f"{len(rows)} distinct networks, {sum(r['n_retrain'] for r in rows)} retrainings; "
          f"good = score >= {FLAGS.good}: {sum(r['score'] >= FLAGS.good for r in rows)}")
    cols = ["score", "n_retrain", "method", "branches", "first_ops", "all_first_downup", "cells",
            "n_downup", "n_2x", "n_skip", "cells_os8", "cells_os16", "cells_os32", "depth_os8",
            "mean_width",
            "params", "pred_ms"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else f"{r[c]:,}"
                                if isinstance(r[c], int) and c == "params" else str(r[c])
                                for c in cols) + " |")
    y = [r["score"] for r in rows]
    print("\ncorrelation with score (Pearson, over distinct networks):")
    for k in sorted(numeric, key=lambda k: -abs(corr([r[k] for r in rows], y))):
        print(f"  {k:18s} {corr([r[k] for r in rows], y):+.2f}")
    good = FLAGS.good
    for k in ("all_first_downup", "first_op", "branches"):
        print(f"\nby {k}:")
        groups = collections.defaultdict(list)
        for r in rows:
            groups[r[k]].append(r["score"])
        for v, s in sorted(groups.items()):
            n_good = sum(x >= good for x in s)
            print(f"  {str(v):16s} n={len(s):2d} mean {statistics.fmean(s):.3f} good "
                  f"{n_good}/{len(s)}")
    acc, k, t, sign = best_split(rows, numeric, good)
    print(f"\nbest single split: {k} {'>' if sign > 0 else '<='} {t:.3f} -> good; "
          f"accuracy {acc:.2f} ({len(rows)} networks)")
    # depth 2: the best split of each side of the best first split
    for side_name, side in (("yes", [r for r in rows if sign * (r[k] - t) > 0]),
                            ("no", [r for r in rows if not sign * (r[k] - t) > 0])):
        n_good = sum(r["score"] >= good for r in side)
        line = f"  {k} side {side_name}: n={len(side)} good {n_good}"
        if 0 < n_good < len(side):
            a2, k2, t2, s2 = best_split(side, numeric, good)
            line += (f"; then {k2} {'>' if s2 > 0 else '<='} {t2:.3f} -> good, "
                     f"accuracy {a2:.2f}")
        print(line)
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    app.run(main)
