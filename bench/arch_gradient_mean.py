"""Is the supernet's arch gradient signal or noise, and where does its mean point?

    python bench/arch_gradient_mean.py --flagfile=configs/demo.flags \
        --grad_checkpoint=RUN/checkpoints/ckpt-N --grad_batches=64 [--seed=S]

Restores a (warmed-up) supernet from a search checkpoint, then computes the fasterseg arch
gradient grad_A L(T, A; D_t^val) (what every first-order arch step uses; latency term off) on
--grad_batches successive val batches of the search input, at fixed T and A (nothing is
updated). Prints: the mean cosine between single-batch gradients and between successive ones
(what the search logs), the cosine between the means of the two halves (is the mean stable?),
the mean gradient's signal-to-noise per entry, and for every alpha row the op the mean gradient
favours (most negative mean: gradient descent raises its logit) with the z-score of that
preference. The rows that decide the good/bad feature of docs/results/search_quality_features.md
(alpha_0 rows 0-1: the first cells at 1/8 scale) are summarised as the mean gradient of the
down-up ops minus that of the full-resolution convs (> 0: the gradient prefers the
full-resolution convs, which retrain well). Finally the architecture the mean gradient alone
names (logits -mean/SE) and whether it has the good feature. --grad_onehot: also the supernet's
val loss with alpha_0 row 0 one-hot on each op (how the supernet ranks that choice op by op).
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

flags.DEFINE_string("grad_checkpoint", None, "Search checkpoint prefix (RUN/checkpoints/ckpt-N)"
                    " of the supernet to evaluate the arch gradient at.")
flags.DEFINE_integer("grad_batches", 64, "Val batches the arch gradient is computed on.")
flags.DEFINE_string("grad_out", "", "Write the per-batch gradient summary (JSON) here.")
flags.DEFINE_bool("grad_onehot", False, "Also: the supernet's val loss on the same batches with "
                  "alpha_0 row 0 (the first cell at 1/8) made one-hot on each op in turn (logit "
                  "+20), the rest of A as it is: how the supernet ranks the decisive choice.")

DOWNUP = (2, 4)      # conv_downup, conv_2x_downup (space.OP_NAMES order)
FULL_RES = (1, 3)    # conv, conv_2x


def cosine(a, b):
    n = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / n) if n else 0.0


def main(argv):
    del argv
    import tensorflow as tf

    from lbt_tf.models.fasterseg import derived, genotype
    from lbt_tf.models.fasterseg.space import OP_NAMES
    from lbt_tf.search import learner as lrn
    from lbt_tf.search import runner, selection

    f = flags.FLAGS
    if not f.grad_checkpoint or not tf.io.gfile.exists(f.grad_checkpoint + ".index"):
        raise app.UsageError(f"--grad_checkpoint={f.grad_checkpoint}: no such checkpoint "
                             "(expected RUN/checkpoints/ckpt-N, with its .index file)")
    if f.grad_batches < 4:
        raise app.UsageError(f"--grad_batches={f.grad_batches}: at least 4 (two halves)")
    config = config_lib.replace(lbt_flags.build_config(), **{"search.mode": "fasterseg"})
    with runner.fast_graph_compilation():
        model = runner.build_search_model(config, "fasterseg")
        tf.train.Checkpoint(supernet=runner.model_variables(model.supernet)).restore(
            f.grad_checkpoint).expect_partial().assert_existing_objects_matched()
        teacher, problem = model.teacher_learner, model.problem
        names = teacher.arch_names
        shapes = [tuple(v.shape) for v in teacher.arch_variables]

        @tf.function
        def gradient(batch):
            result = problem.first_order_gradient(
                teacher.weight_values(), teacher.arch_values(), None, tf.constant(0.0),
                lrn.Batches.from_dict(batch))
            return tf.concat([tf.reshape(g, [-1]) for g in result.grads], 0), \
                result.parts["arch_teacher_val_loss"]

        @tf.function
        def val_loss(batch, arch):
            return problem.teacher_loss(teacher.weight_values(), arch,
                                        lrn.Batches.from_dict(batch).teacher_val)

        train, _, _ = runner.make_search_input(config, "fasterseg", config.seed)
        grads, losses = [], []
        onehot_losses = {op: [] for op in OP_NAMES} if f.grad_onehot else {}
        arch_now = teacher.arch_values()
        alpha0 = [i for i, name in enumerate(names) if name.split("/")[-1] == "alpha_0"][0]
        start = time.time()
        for batch in train.take(f.grad_batches):
            g, loss = gradient(batch)
            grads.append(g.numpy())
            losses.append(float(loss))
            for index, op in enumerate(OP_NAMES if f.grad_onehot else ()):
                arch = list(arch_now)
                row = tf.one_hot(index, len(OP_NAMES), selection.ONE_HOT_LOGIT, 0.0)
                arch[alpha0] = tf.tensor_scatter_nd_update(arch[alpha0], [[0]], row[None])
                onehot_losses[op].append(float(val_loss(batch, arch)))
        seconds = time.time() - start
    G = np.stack(grads)                       # [N, entries]
    n = len(G)
    mean, std = G.mean(0), G.std(0, ddof=1)
    half = n // 2
    pair = [cosine(G[i], G[j]) for i in range(n) for j in range(i + 1, n)]
    successive = [cosine(G[i], G[i + 1]) for i in range(n - 1)]
    snr = np.abs(mean) / (std / np.sqrt(n))   # |mean| / standard error, per entry
    print(f"checkpoint {f.grad_checkpoint}; {n} batches of {config.data.batch_size} "
          f"({seconds:.0f} s); val loss {np.mean(losses):.3f}")
    print(f"cosine between single-batch gradients: mean {np.mean(pair):+.3f} (successive "
          f"{np.mean(successive):+.3f})")
    print(f"cosine between the means of the two halves ({half} batches each): "
          f"{cosine(G[:half].mean(0), G[half:2 * half].mean(0)):+.3f}")
    print(f"|mean| / standard error per entry: median {np.median(snr):.2f}, "
          f"fraction > 2: {np.mean(snr > 2):.2f}; ||mean|| / rms single-batch norm "
          f"{np.linalg.norm(mean) / np.sqrt(np.mean(np.sum(G ** 2, 1))):.3f}")

    if onehot_losses:
        base = np.array(losses)
        print("supernet val loss with alpha_0 row 0 one-hot (mean over the batches; minus the "
              "loss at A as it is, with its SE):")
        for op, values in onehot_losses.items():
            d = np.array(values) - base
            print(f"  {op:15s} {np.mean(values):.4f}  ({np.mean(d):+.4f} ± "
                  f"{np.std(d, ddof=1) / np.sqrt(n):.4f})")
    # Per alpha row: the op the mean gradient favours, and the down-up vs full-res preference.
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    per_var = {name.split("/")[-1]: (G[:, a:b].reshape((n,) + s))
               for name, s, a, b in zip(names, shapes, offsets[:-1], offsets[1:])}
    rows = []
    print("\nalpha rows: op the mean gradient favours (z of its lead over the runner-up); "
          "downup - full-res mean gradient (z)")
    for scale in range(3):
        key = f"alpha_{scale}"
        if key not in per_var:
            continue
        for row in range(per_var[key].shape[1]):
            g = per_var[key][:, row, :]                       # [N, ops]
            m = g.mean(0)
            order = np.argsort(m)
            lead = g[:, order[1]] - g[:, order[0]]
            diff = g[:, DOWNUP].mean(1) - g[:, FULL_RES].mean(1)
            z = lambda x: float(x.mean() / (x.std(ddof=1) / np.sqrt(n)))  # noqa: E731
            z_half = [float(diff[:half].mean()), float(diff[half:2 * half].mean())]
            entry = {"var": key, "row": row, "layer": row + scale, "scale": scale,
                     "favoured": OP_NAMES[order[0]], "lead_z": z(lead),
                     "downup_minus_fullres": float(diff.mean()), "z": z(diff),
                     "halves": z_half}
            entry["per_op_mean"] = [float(x) for x in m]
            entry["per_op_se"] = [float(x) for x in g.std(0, ddof=1) / np.sqrt(n)]
            rows.append(entry)
            print(f"  {key}[{row}] (layer {row + scale}, 1/{8 * 2 ** scale}): favours "
                  f"{entry['favoured']:15s} lead z {entry['lead_z']:+.1f}; downup - fullres "
                  f"{entry['downup_minus_fullres']:+.4f} (z {entry['z']:+.1f}; halves "
                  f"{z_half[0]:+.4f} / {z_half[1]:+.4f})")
            if key == "alpha_0" and row < 2:   # the rows of the good/bad feature, per op
                print("      per op mean (SE): " + ", ".join(
                    f"{o} {a:+.4f} ({b:.4f})" for o, a, b in zip(
                        OP_NAMES, m, g.std(0, ddof=1) / np.sqrt(n))))

    # The architecture the mean gradient alone names (a search with unlimited val batches and
    # A's init negligible): every logit = -mean / standard error of its gradient.
    zscores = {name: -per_var[name].mean(0) / (per_var[name].std(0, ddof=1) / np.sqrt(n) + 1e-12)
               for name in per_var}
    found = {}
    for strides in ([32, 16], [32, 8]):
        arch = genotype.derive_architecture(zscores, config.teacher, branch_selection=(
            "strides_16_32" if strides[1] == 16 else "strides_8_32"))
        plan = derived.network_plan(arch)
        first = [OP_NAMES[b.cells[0].op] for b in plan.branches]
        found[str(strides)] = {"first_ops": first,
                               "all_first_downup": all("downup" in o for o in first),
                               "first_cell_shared": any(b.shared_prefix > 0
                                                        for b in plan.branches),
                               "candidates": arch["candidates"]}
        print(f"derived from -mean/SE, branches {strides}: first ops {first}; all first "
              f"downup {found[str(strides)]['all_first_downup']}, first cell shared "
              f"{found[str(strides)]['first_cell_shared']}")
    if f.grad_out:
        with open(f.grad_out, "w") as fh:
            json.dump({"checkpoint": f.grad_checkpoint, "batches": n, "seconds": seconds,
                       "pair_cosine": float(np.mean(pair)),
                       "successive_cosine": float(np.mean(successive)),
                       "half_cosine": cosine(G[:half].mean(0), G[half:2 * half].mean(0)),
                       "snr_median": float(np.median(snr)), "alpha_rows": rows,
                       "derived": found,
                       "onehot_row0_val_loss": {k: float(np.mean(v))
                                                for k, v in onehot_losses.items()},
                       "val_loss": float(np.mean(losses))}, fh, indent=1)


if __name__ == "__main__":
    app.run(main)
