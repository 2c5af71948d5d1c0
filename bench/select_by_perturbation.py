"""Pick each cell's op by the supernet's loss with that op alone, not by the largest alpha.

    python bench/select_by_perturbation.py --flagfile=configs/demo.flags --seed=S \
        --select_checkpoint=RUN/search/checkpoints/ckpt-N --arch_grad_batches=16 \
        --select_out=DIR [--select_retrain] [--synthetic_val_size=512 --latency_table=T]

The argmax of alpha is what the search's gradient steps made of a near-tied mixture; at this
scale it does not tell the op that works alone (docs/results/search_quality_features.md §2).
Here, with the searched supernet restored (T and A as the search left them), every alpha row is
made one-hot on each op in turn (lbt_tf/search/selection.py, what --arch_selection=perturbation
does at a search's end; the rest of A unchanged) and the supernet's val loss
on --select_batches batches of D_t^val (--arch_grad_batches x --batch_size images each, training
mode as in the search) decides the row: the convolution with the lowest loss (after Wang et
al. 2021, "Rethinking architecture selection in differentiable NAS": rank ops by what the
supernet loses without them). Paths (beta) and widths (gamma) stay the search's argmax. Writes
DIR/arch.json (and DIR/selection.json: every row's losses); --select_retrain then retrains and
evaluates it as the search-quality bench does (`compare.retrain_and_evaluate`, DIR/retrain,
DIR/result.json).
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from lbt_tf import config as config_lib  # noqa: E402
from lbt_tf import flags as lbt_flags  # noqa: E402

flags.DEFINE_string("select_checkpoint", None, "Search checkpoint prefix (RUN/checkpoints/ckpt-N)")
flags.DEFINE_integer("select_batches", 4, "D_t^val batches each one-hot loss is averaged over.")
flags.DEFINE_string("select_out", None, "Output folder (arch.json, selection.json, retrain/).")
flags.DEFINE_bool("select_retrain", False, "Retrain and evaluate the selected network.")
flags.DEFINE_bool("select_skip", False, "Let skip compete: one-hot skip passes the stem's features "
                  "through and loses least in every 1/8 row (measured), though no derived network "
                  "of the benches keeps a skip; off: the best of the four convolutions.")

def main(argv):
    del argv
    import tensorflow as tf

    from lbt_tf.experiments import compare
    from lbt_tf.models.fasterseg import derive_architecture, save_architecture
    from lbt_tf.search import learner as lrn
    from lbt_tf.search import runner, selection

    f = flags.FLAGS
    if not f.select_checkpoint or not tf.io.gfile.exists(f.select_checkpoint + ".index"):
        raise app.UsageError(f"--select_checkpoint={f.select_checkpoint}: no such checkpoint")
    if not f.select_out:
        raise app.UsageError("--select_out is required")
    config = config_lib.replace(lbt_flags.build_config(), **{"search.mode": "fasterseg"})
    os.makedirs(f.select_out, exist_ok=True)
    start = time.time()
    with runner.fast_graph_compilation():
        model = runner.build_search_model(config, "fasterseg")
        tf.train.Checkpoint(supernet=runner.model_variables(model.supernet)).restore(
            f.select_checkpoint).expect_partial().assert_existing_objects_matched()
        teacher, problem = model.teacher_learner, model.problem

        @tf.function
        def val_loss(batch, arch):
            return problem.teacher_loss(teacher.weight_values(), arch, batch)

        train, _, _ = runner.make_search_input(config, "fasterseg", config.seed)
        batches = [lrn.Batches.from_dict(b).teacher_val for b in train.take(f.select_batches)]
        arch_now = teacher.arch_values()
        names = [n.split("/")[-1] for n in teacher.arch_names]
        base = float(np.mean([val_loss(b, arch_now) for b in batches]))
        chosen, rows = selection.perturbation_selection(val_loss, arch_now, names, batches,
                                                        allow_skip=f.select_skip)
        report = {"checkpoint": f.select_checkpoint, "base_loss": base, "rows": rows}
        for row in rows:
            print(f"{row['arch']}[{row['row']}]: " + "  ".join(
                f"{o} {l:.3f}" for o, l in row["losses"].items()) +
                f"  -> {row['chosen']} (argmax of alpha: {row['argmax']})", flush=True)
    arch = derive_architecture(chosen, config.teacher)
    # the kept branches as the search derived them (its acc_lat scores are not recomputed)
    searched = os.path.join(os.path.dirname(os.path.dirname(f.select_checkpoint)), "arch.json")
    if os.path.isfile(searched):
        with open(searched) as fh:
            strides = json.load(fh)["branch_output_strides"]
        arch = dict(arch, branch_output_strides=strides)
    arch["source"] = f"perturbation selection from {f.select_checkpoint}"
    arch_path = os.path.join(f.select_out, "arch.json")
    save_architecture(arch, arch_path)
    report["seconds"] = time.time() - start
    with open(os.path.join(f.select_out, "selection.json"), "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"selected architecture: {arch_path} ({report['seconds']:.0f} s)", flush=True)
    if f.select_retrain:
        row = compare.retrain_and_evaluate(config, arch_path,
                                           os.path.join(f.select_out, "retrain"))
        row = dict(row, arch_path=arch_path, method="fasterseg (perturbation selection)",
                   seed=int(config.seed))
        with open(os.path.join(f.select_out, "result.json"), "w") as fh:
            json.dump(row, fh, indent=1)
        print(f"retrained val mIoU {row['retrained_miou']:.4f}", flush=True)


if __name__ == "__main__":
    app.run(main)
