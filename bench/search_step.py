"""Step time, first-step time and peak memory of the search step per mode, at the given flags.

    python bench/search_step.py --flagfile=configs/cityscapes_search.flags --data_source=synthetic
        [--modes=fasterseg,lpt,lbt-exact,lbt-hvp,lbt-finite_difference] [--bench_steps=3]

Each mode runs in its own child process (so its peak memory is its own), through the same
Keras train function `fit` uses (the config's strategy, `--jit_compile`, `--mixed_precision`).
Prints one line per mode and a table:
    mode=<m> step_s=<x> step_ratio=<x/lpt> peak_mem_mb=<z> mem_ratio=<z/lpt> first_step_s=<t>
step_s: median over `--bench_steps` (>= 3) steps after one untimed step; first_step_s: the first
call (tracing the step function, the runtime instantiating it, one step) on a batch fetched
before it; compile_s: first_step_s - step_s, the trace and compile time (issue 13's target);
trace_s: of it the trace of the step (Python building its graph: `LBTSearch.trace_seconds`;
the rest of compile_s is the runtime's first-call work, instantiating the graph's functions);
first_step_cpu_s: the first call's process CPU time (tracing is one thread: on a loaded machine
this is closer to the idle wall time); first_batch_s: the input pipeline's first batch (its
start); build_mem_mb: the peak after building the models; first_step_peak_*: the peaks up to the
end of the first step; steady_peak_*: the peaks over the later steps (no trace, no diagnostic
split: what a long search holds after its start); where the mode splits grad_A F
(--arch_signal_every, lbt), two more steps with the split: diagnostic_first_step_s (the split's
first run: the first step does not run it), diagnostic_step_s, diagnostic_first_extra_s (their
difference: what the split's first run costs beyond the first step's work) and
diagnostic_peak_* (over both); peak_*: the largest; rss_*_mb: the RSS after the last step by
kind of mapping (rss_by_mapping_mb).
Memory: on GPU, TensorFlow's peak allocation (`get_memory_info`); on CPU the process's peak RSS
and, as peak_tensor_mb, the peak of TensorFlow's own allocator (statistics kept with oneDNN,
TensorFlow's default on x86, or TF_CPU_ALLOCATOR_USE_BFC=true): the tensors alone, what a GPU
would hold. The rest of the RSS
is the traced graph (Python), the instantiated runtime graph and allocator slack, which stay in
host memory on a GPU machine.
Targets (issue 13, `TARGETS`): lbt-exact <= 3x lpt time and <= 1.6x its memory,
lbt-finite_difference and lbt-hvp <= 2x / <= 1.2x, every mode <= 16 GB, trace + compile <= 60 s.
`--bench_plot=PATH` also draws the ratios and trace + compile per mode against them (PNG).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from lbt_tf import config as config_lib  # noqa: E402
from lbt_tf import flags as lbt_flags  # noqa: E402
from lbt_tf import names  # noqa: E402

flags.DEFINE_integer("bench_steps", 3, "Timed steps per mode (median; at least 3).")
flags.DEFINE_list("modes", ["fasterseg", "lpt", "lbt-exact", "lbt-hvp", "lbt-finite_difference"],
                  "Modes to run: fasterseg, lpt, lbt-exact, lbt-hvp, lbt-finite_difference.")
flags.DEFINE_float("bench_max_rss_gb", 20.0,
                   "A child whose RSS passes this is killed (reported as over the limit), so "
                   "that a mode that does not fit cannot take the machine's memory.")
flags.DEFINE_string("bench_single", None, "Internal: run one mode (name) and print JSON.")
flags.DEFINE_string("bench_plot", None, "Also write the ratios to lpt and trace + compile per "
                    "mode, against issue 13's targets, to this PNG.")

MODES = {"fasterseg": ("fasterseg", "exact"), "lpt": ("lpt", "exact"),
         **{f"lbt-{hypergrad}": ("lbt", hypergrad) for hypergrad in names.HYPERGRADS}}
# Issue 13's targets at the paper's setting: per mode (step / lpt's, peak memory / lpt's), and
# for every mode the trace + compile time (and a peak RSS of 16 GB, which the table shows).
TARGETS = {"lbt-exact": (3.0, 1.6), "lbt-finite_difference": (2.0, 1.2), "lbt-hvp": (2.0, 1.2)}
MAX_COMPILE_S = 60.0


def peak_memory_mb():
    """Peak GPU allocation (TensorFlow's) when there is a GPU, else the peak RSS (since the
    last `reset_peaks`)."""
    import tensorflow as tf
    if tf.config.list_physical_devices("GPU"):
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    with open("/proc/self/status") as f:  # VmHWM (KiB): the peak RSS, which clear_refs resets
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0


def rss_by_mapping_mb(big_bytes=128 << 20):
    """The current RSS (CPU, Linux) split by kind of mapping: `heap` (malloc's main arena: the
    graphs, Python's large objects, smaller tensor regions), `big_anonymous` (other anonymous
    mappings of at least `big_bytes`: the tensor allocator's regions, which it keeps once
    made), `anonymous` (the rest: other malloc arenas, 64 MiB each, Python's object arenas),
    `files` (mapped libraries and files)."""
    totals = {"heap": 0.0, "big_anonymous": 0.0, "anonymous": 0.0, "files": 0.0}
    kind = None
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
                start, end = (int(x, 16) for x in fields[0].split("-"))
                path = fields[5] if len(fields) > 5 else ""
                if path == "[heap]":
                    kind = "heap"
                elif path and not path.startswith("["):
                    kind = "files"
                else:
                    kind = "big_anonymous" if end - start >= big_bytes else "anonymous"
            elif fields[0] == "Rss:":
                totals[kind] += int(fields[1]) / 1024.0
    return totals


def reset_peaks():
    """Starts the peaks of `peak_memory_mb` and `peak_tensor_mb` again from the current
    values (Linux's clear_refs for the peak RSS; TensorFlow's allocator statistics)."""
    import tensorflow as tf
    device = "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
    try:
        tf.config.experimental.reset_memory_stats(device)
    except ValueError:  # a CPU allocator without statistics
        pass
    if device == "CPU:0":
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_tensor_mb():
    """Peak bytes of tensors held by TensorFlow's allocator (GPU:0, else CPU:0): what a GPU's
    memory must hold. The RSS on CPU also holds the graph, its instantiated kernels and the
    Python objects of the trace, which stay in host memory on a GPU machine. On CPU the
    allocator keeps statistics with oneDNN (TensorFlow's default on x86) or with
    TF_CPU_ALLOCATOR_USE_BFC=true; otherwise NaN."""
    import tensorflow as tf
    device = "GPU:0" if tf.config.list_physical_devices("GPU") else "CPU:0"
    try:
        return tf.config.experimental.get_memory_info(device)["peak"] / 2**20
    except ValueError:  # a CPU allocator without statistics
        return float("nan")


def measure(config, steps):
    """Dict of step_s (median), first_step_s, peak_mem_mb, build_mem_mb, traces."""
    import numpy as np

    from lbt_tf.search import runner

    with runner.fast_graph_compilation(), runner.make_strategy(config.search).scope():
        model = runner.build_search_model(config)
        model.set_phase("search")
        build_mem = peak_memory_mb()
        train, _, _ = runner.make_search_input(config, config.search.mode, config.seed)
        batches = iter(train)
        model.make_train_function()
        step = model.train_function  # Keras' tf.function of train_step, as `fit` runs it

        def run(batch=None):
            logs = step([next(batches) if batch is None else batch])
            return float(logs["teacher_loss"])  # waits for the step

        # The input pipeline's start (its first batch: the shuffle buffer filled) is timed on
        # its own: it is not the step function's trace and compile.
        start = time.perf_counter()
        first_batch = next(batches)
        first_batch_s = time.perf_counter() - start
        start, start_cpu = time.perf_counter(), time.process_time()
        run(first_batch)
        first_s, first_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
        first_peaks = peak_memory_mb(), peak_tensor_mb()
        # The steady peaks: over the later steps only (not the trace or the runtime's
        # first-call work; none of them splits grad_A F unless --arch_signal_every=1).
        reset_peaks()
        run()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        steady_peaks = peak_memory_mb(), peak_tensor_mb()
        diagnostic = {}
        if model.next_diagnostic_arch_step() is not None:
            # The diagnostic split (--arch_signal_every) on two steps of its own: its first run
            # (the first step did not run it) and a steady one.
            reset_peaks()
            diagnostic_times = []
            for _ in range(2):
                model.arch_steps.assign(model.next_diagnostic_arch_step())
                start = time.perf_counter()
                run()
                diagnostic_times.append(time.perf_counter() - start)
            diagnostic = {"diagnostic_first_step_s": diagnostic_times[0],
                          "diagnostic_step_s": diagnostic_times[1],
                          "diagnostic_first_extra_s": diagnostic_times[0] - diagnostic_times[1],
                          "diagnostic_peak_mem_mb": peak_memory_mb(),
                          "diagnostic_peak_tensor_mb": peak_tensor_mb()}
        rss_parts = rss_by_mapping_mb()
    step_s = float(np.median(times))
    return {"step_s": step_s, "first_step_s": first_s, "compile_s": first_s - step_s,
            "trace_s": model.trace_seconds,
            "first_step_cpu_s": first_cpu_s, "first_batch_s": first_batch_s,
            "peak_mem_mb": max(first_peaks[0], steady_peaks[0],
                               diagnostic.get("diagnostic_peak_mem_mb", 0.0)),
            "peak_tensor_mb": max(first_peaks[1], steady_peaks[1],
                                  diagnostic.get("diagnostic_peak_tensor_mb", 0.0)),
            "first_step_peak_mem_mb": first_peaks[0], "first_step_peak_tensor_mb": first_peaks[1],
            "steady_peak_mem_mb": steady_peaks[0], "steady_peak_tensor_mb": steady_peaks[1],
            "build_mem_mb": build_mem,
            **diagnostic,
            **{f"rss_{kind}_mb": value for kind, value in rss_parts.items()},
            "traces": int(model.trace_count)}


def log_memory_every(seconds):
    """A daemon thread printing `memory rss_mb=.. tensors_mb=.. peak_tensors_mb=..` to stderr
    every `seconds`: where a mode is killed over --bench_max_rss_gb, its last line says how
    much of the RSS was tensors."""
    import tensorflow as tf

    def loop():
        while True:
            time.sleep(seconds)
            try:
                info = tf.config.experimental.get_memory_info("CPU:0")
            except ValueError:
                info = {"current": float("nan"), "peak": float("nan")}
            print(f"memory rss_mb={rss_mb(os.getpid()):.0f} "
                  f"tensors_mb={info['current'] / 2**20:.0f} "
                  f"peak_tensors_mb={info['peak'] / 2**20:.0f}", file=sys.stderr, flush=True)

    threading.Thread(target=loop, daemon=True).start()


def rss_mb(pid):
    """Current RSS of a process (Linux /proc), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run_child(name):
    """Runs one mode in a child process, killed if its RSS passes --bench_max_rss_gb; the parsed
    JSON result, or None (the reason printed)."""
    args = [sys.executable, os.path.abspath(__file__), f"--bench_single={name}"] + [
        a for a in sys.argv[1:] if not a.startswith(("--bench_single", "--modes"))]
    limit_mb = flags.FLAGS.bench_max_rss_gb * 1024
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, rss_mb(proc.pid))
            if peak > limit_mb:
                proc.kill()
                proc.wait()
                err.seek(0)
                last = [l for l in err.read().splitlines() if l.startswith("memory ")][-1:]
                print(f"mode={name} killed: RSS {peak / 1024:.1f} GB > --bench_max_rss_gb="
                      f"{flags.FLAGS.bench_max_rss_gb}; its last "
                      f"{last[0] if last else 'memory line: none'}", file=sys.stderr, flush=True)
                return None
            time.sleep(0.5)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [l for l in stdout.splitlines() if l.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        print(f"mode={name} failed (exit {proc.returncode}):\n{stderr[-3000:]}",
              file=sys.stderr, flush=True)
        return None
    return json.loads(lines[-1][len("BENCH "):])


def ratio_to_lpt(results, name, key):
    """results[name][key] / lpt's (NaN when lpt did not run)."""
    lpt = results.get("lpt")
    return results[name][key] / lpt[key] if lpt else float("nan")


def plot(results, path):
    """Three panels of bars per mode: step and peak memory as ratios to lpt's, trace + compile
    in seconds; each mode's target marked, its bar red where the target is missed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names_ = list(results)
    no_target = (None, None)
    panels = [  # title, values, each mode's target (None: none)
        ("step / lpt's", [ratio_to_lpt(results, n, "step_s") for n in names_],
         [TARGETS.get(n, no_target)[0] for n in names_]),
        ("peak memory / lpt's", [ratio_to_lpt(results, n, "peak_mem_mb") for n in names_],
         [TARGETS.get(n, no_target)[1] for n in names_]),
        ("trace + compile (s)", [results[n]["compile_s"] for n in names_],
         [MAX_COMPILE_S] * len(names_))]
    fig, axes = plt.subplots(1, 3, figsize=(4.0 * 3, 3.6))
    x = range(len(names_))
    for ax, (title, values, targets) in zip(axes, panels):
        met = [t is None or v <= t for v, t in zip(values, targets)]
        ax.bar(x, values, color=["tab:green" if m else "tab:red" for m in met])
        marked = [(i, t) for i, t in enumerate(targets) if t is not None]
        if marked:
            ax.scatter([i for i, _ in marked], [t for _, t in marked], marker="_", s=900,
                       color="k", zorder=3, label="target")
        ax.set_xticks(list(x), [n.replace("lbt-", "lbt\n") for n in names_], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("search step at the given flags (green: within issue 13's target)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    config = lbt_flags.build_config()
    steps = flags.FLAGS.bench_steps
    if steps < 3:
        raise app.UsageError(f"--bench_steps={steps}: need at least 3 for a median")
    unknown = [m for m in flags.FLAGS.modes if m not in MODES]
    if unknown:
        raise app.UsageError(f"--modes: unknown {unknown}; expected some of {list(MODES)}")
    plot_path = flags.FLAGS.bench_plot
    if plot_path and ("lpt" not in flags.FLAGS.modes
                      or not os.path.isdir(os.path.dirname(os.path.abspath(plot_path)))):
        raise app.UsageError(f"--bench_plot={plot_path}: needs lpt in --modes (the ratios) and "
                             "an existing folder")
    if flags.FLAGS.bench_single:
        mode, hypergrad = MODES[flags.FLAGS.bench_single]
        config = config_lib.replace(config, **{"search.mode": mode, "search.hypergrad": hypergrad,
                                               "run_dir": os.path.join(config.run_dir, "bench")})
        log_memory_every(2)
        print("BENCH " + json.dumps(measure(config, steps)), flush=True)
        return
    results = {}
    for name in flags.FLAGS.modes:
        result = run_child(name)
        if result is not None:
            results[name] = result
            print(f"mode={name} " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else
                                              f"{k}={v}" for k, v in result.items()), flush=True)
    print("\n| mode | step (s) | step / lpt | peak memory (GB) | memory / lpt "
          "| peak tensors (GB) | tensors / lpt | steady peak memory (GB) | steady / lpt "
          "| first step (s) | trace + compile (s) | of it trace (s) "
          "| diagnostic step (s) | its first-call extra (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        def ratio(key):
            return ratio_to_lpt(results, name, key)
        print(f"| {name} | {r['step_s']:.2f} | {ratio('step_s'):.2f} "
              f"| {r['peak_mem_mb'] / 1024:.1f} | {ratio('peak_mem_mb'):.2f} "
              f"| {r['peak_tensor_mb'] / 1024:.1f} | {ratio('peak_tensor_mb'):.2f} "
              f"| {r['steady_peak_mem_mb'] / 1024:.1f} | {ratio('steady_peak_mem_mb'):.2f} "
              f"| {r['first_step_s']:.1f} | {r['compile_s']:.1f} | {r['trace_s']:.1f} "
              f"| {r.get('diagnostic_step_s', float('nan')):.2f} "
              f"| {r.get('diagnostic_first_extra_s', float('nan')):.1f} |")
        if r["traces"] > 1:
            print(f"WARNING: {name} traced its step {r['traces']} times", file=sys.stderr)
    for name in flags.FLAGS.modes:
        if name not in results:
            print(f"| {name} | failed or over --bench_max_rss_gb | | | | | | | | | | | | |")
    if plot_path and "lpt" in results:
        plot(results, plot_path)
        print(f"plot={plot_path}")
    elif plot_path:
        print("no plot: lpt did not complete (its ratios are the plot's)", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
