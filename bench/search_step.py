"""Step time and peak memory of one search step per mode, at the size of the given flags.

    python bench/search_step.py --flagfile=configs/demo.flags [--bench_steps=5]

Prints one line per mode:
    mode=<name> step_s=<x> ratio_to_lpt=<y> peak_mem_mb=<z> first_step_s=<t>
for fasterseg, lpt, lbt-exact and lbt-finite_difference (targets: lbt-exact <= 3x lpt,
lbt-finite_difference <= 2x lpt). Each mode runs in its own child process so its peak memory
(GPU: TensorFlow's peak allocation; CPU: the process's peak RSS) is its own; step time is the
median over `--bench_steps` steps after two warm-up steps; first_step_s is the first call,
which traces the step function (graph building dominates it).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from lbt_tf import config as config_lib  # noqa: E402
from lbt_tf import flags as lbt_flags  # noqa: E402

flags.DEFINE_integer("bench_steps", 5, "Timed steps per mode.")
flags.DEFINE_string("bench_single", None, "Internal: run one mode (name) and print JSON.")

MODES = {"fasterseg": ("fasterseg", "exact"), "lpt": ("lpt", "exact"),
         "lbt-exact": ("lbt", "exact"), "lbt-finite_difference": ("lbt", "finite_difference")}


def measure(config, steps):
    """(median step seconds, peak memory MB, first-call seconds) of the search step."""
    import numpy as np
    import tensorflow as tf

    from lbt_tf.search import runner

    with runner.fast_graph_compilation():
        model = runner.build_search_model(config)
        model.set_phase("search")
        train, _, _ = runner.make_search_input(config, config.search.mode, config.seed)
        step = tf.function(model.train_step, reduce_retracing=True)
        batches = iter(train)
        start = time.perf_counter()
        float(step(next(batches))["teacher_loss"])  # traces the step
        first_s = time.perf_counter() - start
        step(next(batches))
        times = []
        for _ in range(steps):
            batch = next(batches)
            start = time.perf_counter()
            logs = step(batch)
            float(logs["teacher_loss"])  # wait for the step
            times.append(time.perf_counter() - start)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    return float(np.median(times)), float(peak), first_s


def main(argv):
    del argv
    config = lbt_flags.build_config()
    if flags.FLAGS.bench_single:
        mode, hypergrad = MODES[flags.FLAGS.bench_single]
        config = config_lib.replace(config, **{"search.mode": mode, "search.hypergrad": hypergrad,
                                               "run_dir": os.path.join(config.run_dir, "bench")})
        step_s, peak, first_s = measure(config, flags.FLAGS.bench_steps)
        print("BENCH " + json.dumps({"step_s": step_s, "peak_mem_mb": peak,
                                     "first_step_s": first_s}), flush=True)
        return
    results = {}
    for name in MODES:
        args = [sys.executable, os.path.abspath(__file__), f"--bench_single={name}",
                f"--bench_steps={flags.FLAGS.bench_steps}"] + [
                    a for a in sys.argv[1:] if not a.startswith("--bench_")]
        proc = subprocess.run(args, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("BENCH ")]
        if proc.returncode != 0 or not lines:
            print(f"mode={name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(lines[-1][len("BENCH "):])
    lpt = results.get("lpt", {}).get("step_s")
    for name, r in results.items():
        ratio = r["step_s"] / lpt if lpt else float("nan")
        print(f"mode={name} step_s={r['step_s']:.4f} ratio_to_lpt={ratio:.2f} "
              f"peak_mem_mb={r['peak_mem_mb']:.1f} first_step_s={r['first_step_s']:.1f}")


if __name__ == "__main__":
    app.run(main)
