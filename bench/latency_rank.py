"""Does the latency table rank real networks? Predicted vs measured latency of derived networks.

  flock /tmp/heavy.lock python bench/latency_rank.py --flagfile=configs/demo.flags \
      --latency_clock=cpu [--bench_networks=24] [--bench_sizes=64x128,256x512] \
      [--bench_runtimes=tf,tflite] [--latency_calibration_networks=8]

Samples --bench_networks derived networks across the configured search space (random arch
parameters with a per-network bias on operators and widths, so that cheap and expensive ones
both appear; both branch pairs 8+32 and 16+32, so all three branches) plus FasterSeg's
arch_0/arch_1 shapes at the configured base width. For every runtime and size it times this
device's table for them (`LatencyTable.ensure`: compiled in that runtime, round-robin), times
the whole networks in the same runtime and clock, together and round-robin with the table's
calibration networks (`latency.calibration_architectures`: another generator, so held out),
fits the calibration on those, then prints for the ranked networks Spearman's rho, Kendall's
tau and the median / max |predicted / measured - 1| of the prediction (`derived_latency`:
calibrated table sum) and the median error of the plain table sum, and draws all pairs in
--bench_plot. On a shared machine use --latency_clock=cpu (see timing.py).
"""
import os
import time

from absl import app, flags, logging
import numpy as np
from scipy import stats
import tensorflow as tf

from lbt_tf import config as config_lib, flags as lbt_flags
from lbt_tf.models.fasterseg import (build_derived_network, derive_architecture, import_fasterseg,
                                     latency, latency_table, timing)
from lbt_tf.models.fasterseg.space import arch_variable_shapes, searched_widths

flags.DEFINE_integer("bench_networks", 24, "Random derived networks (plus arch_0/arch_1).")
flags.DEFINE_list("bench_sizes", None, "HxW input sizes (default: the config's and 256x512).")
flags.DEFINE_list("bench_runtimes", ["tf", "tflite"], "Runtimes (tf, xla, tflite).")
flags.DEFINE_integer("bench_runs", 20, "Rounds of timed runs per network (median).")
flags.DEFINE_integer("bench_tf_threads", 1,
                     "TF intra-op threads for runtimes tf/xla (0: every core). One, like the "
                     "TFLite interpreter: on a shared CPU a multi-threaded op stalls at its "
                     "barrier whenever a worker is preempted.")
flags.DEFINE_string("bench_plot", "latency_rank.png", "Scatter plot of predicted vs measured.")
flags.DEFINE_string("bench_fasterseg_dir",
                    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                                 "fasterseg"),
                    "Folder with FasterSeg's arch_0.json / arch_1.json (../shared/fasterseg "
                    "beside the checkout; the networks are left out when absent).")


def sample_architectures(teacher, count, seed):
    """[(name, arch, base_width)] spread over the space: ops, widths and branches."""
    rng = np.random.default_rng(seed)
    shapes = arch_variable_shapes(teacher.layers, len(searched_widths(teacher)))
    networks = []
    for n in range(count):
        op_bias = rng.normal(scale=2.0, size=5)
        width_bias = rng.uniform(-3.0, 3.0) * np.linspace(-1.0, 1.0, len(searched_widths(teacher)))
        arrays = {}
        for name, shape in shapes.items():
            arrays[name] = rng.normal(size=shape)
            if name.startswith("alpha"):
                arrays[name] += op_bias
            elif name.startswith("gamma"):
                arrays[name] += width_bias
        arch = derive_architecture(arrays, teacher,
                                   branch_selection=("strides_8_32", "strides_16_32")[n % 2])
        networks.append((f"random_{n}", arch, teacher.base_width))
    for index in (0, 1):
        path = os.path.join(flags.FLAGS.bench_fasterseg_dir, f"arch_{index}.json")
        if os.path.exists(path):
            networks.append((f"arch_{index}", import_fasterseg(path, teacher.base_width),
                             teacher.base_width))
        else:
            print(f"{path} not found: arch_{index} left out")
    return networks


def rank_statistics(predicted, measured):
    predicted, measured = np.asarray(predicted), np.asarray(measured)
    error = np.abs(predicted / measured - 1.0)
    return {"rho": stats.spearmanr(predicted, measured)[0],
            "tau": stats.kendalltau(predicted, measured)[0],
            "median_error": float(np.median(error)), "max_error": float(np.max(error))}


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4.0), squeeze=False)
    for ax, ((runtime, size), row) in zip(axes[0], results.items()):
        pred, meas = np.array(row["predicted"]), np.array(row["measured"])
        ax.scatter(meas, pred, s=14)
        lo, hi = 0.0, max(pred.max(), meas.max()) * 1.1
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        s = row["stats"]
        ax.set_title(f"{runtime} {size}: rho {s['rho']:.2f}, med err {100 * s['median_error']:.0f}%",
                     fontsize=9)
        ax.set_xlabel("measured (ms)")
        ax.set_ylabel("predicted (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv):
    logging.set_verbosity(logging.WARNING)   # the TFLite converter logs every conversion
    tf.config.threading.set_intra_op_parallelism_threads(flags.FLAGS.bench_tf_threads)
    config = lbt_flags.build_config()
    d, tc = config.data, config.teacher
    sizes = flags.FLAGS.bench_sizes or [f"{d.image_height}x{d.image_width}", "256x512"]
    networks = sample_architectures(tc, flags.FLAGS.bench_networks, config.seed)
    print(f"{len(networks)} networks, layers={tc.layers} F={tc.base_width}, "
          f"--latency_clock={tc.latency_clock}, TF intra-op threads "
          f"{flags.FLAGS.bench_tf_threads}, TFLite threads {timing.num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at start")
    results = {}
    for runtime in flags.FLAGS.bench_runtimes:
        for size in sizes:
            height, width = (int(v) for v in size.split("x"))
            sized = config_lib.replace(config, **{"data.image_height": height,
                                                  "data.image_width": width,
                                                  "teacher.latency_runtime": runtime})
            table, path = latency.table_for_config(sized, measure=False)
            start = time.perf_counter()
            calibration = (latency.calibration_architectures(tc, tc.latency_calibration_networks,
                                                             config.seed)
                           if tc.latency_calibration_networks else [])
            archs = [(a, b) for _, a, b in networks] + [(a, None) for a in calibration]
            table.ensure([spec for arch, base_width in archs
                          for group in latency.derived_specs(arch, d.num_classes, height, width,
                                                             base_width, table.has_glue).values()
                          for spec in group])
            runners = []
            for arch, base_width in archs:
                network = build_derived_network(arch, d.num_classes, (height, width, 3),
                                                base_width, aux_heads=False)
                runners.append(latency.network_runner(network, height, width, runtime))
            # the calibration networks (sampling.py's generator, not this bench's: held out) are
            # timed in the same rounds as the networks ranked, so a busy phase of the shared
            # machine between calibration and test does not enter the comparison
            timed = timing.interleaved_medians(runners, flags.FLAGS.bench_runs,
                                               clock=table.meta["clock"])
            measured = timed[:len(networks)]
            table.meta.pop("calibration", None)
            if calibration:
                latency_table.fit_calibration(table, [latency.derived_latency(
                    a, table, d.num_classes, height, width)["table_sum"] for a in calibration],
                    timed[len(networks):], config.seed)
            fit = table.meta.get("calibration")
            predicted, sums = [], []
            for name, arch, base_width in networks:
                estimate = latency.derived_latency(arch, table, d.num_classes, height, width,
                                                   base_width)
                predicted.append(estimate["total"])
                sums.append(estimate["table_sum"])
            table.save()
            for (name, _, _), p, q, m in zip(networks, predicted, sums, measured):
                print(f"  {runtime} {size} {name}: predicted {p:.3f} ms (table sum {q:.3f}), "
                      f"measured {m:.3f} ms")
            row = {"predicted": predicted, "measured": measured,
                   "stats": rank_statistics(predicted, measured),
                   "sum_stats": rank_statistics(sums, measured)}
            results[(runtime, size)] = row
            s, raw = row["stats"], row["sum_stats"]
            if fit:
                print(f"{runtime} {size}: calibration on {fit['networks']} other networks: "
                      f"{fit['offset_ms']:.3f} ms + {fit['scale']:.3f} x table sum; the sum "
                      f"alone: median error {100 * raw['median_error']:.1f}%")
            print(f"{runtime} {size}: Spearman rho {s['rho']:.3f}, Kendall tau {s['tau']:.3f}, "
                  f"|pred/meas - 1| median {100 * s['median_error']:.1f}% max "
                  f"{100 * s['max_error']:.1f}%, measured {min(measured):.2f}-{max(measured):.2f} ms "
                  f"({time.perf_counter() - start:.0f} s; table {path})", flush=True)
    plot(results, flags.FLAGS.bench_plot)
    print("\nruntime size       rho    tau    median|err|  max|err|  (table sum alone: median|err|)")
    for (runtime, size), row in results.items():
        s = row["stats"]
        print(f"{runtime:<7} {size:<10} {s['rho']:.3f}  {s['tau']:.3f}  {100 * s['median_error']:9.1f}%  "
              f"{100 * s['max_error']:7.1f}%  ({100 * row['sum_stats']['median_error']:.1f}%)")
    print(f"plot: {flags.FLAGS.bench_plot}; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    app.run(main)
