"""What is alive at the search step's memory peak: TensorFlow's memory profile of one step.

    python bench/step_memory.py --flagfile=configs/cityscapes_search.flags --data_source=synthetic \
        --memory_mode=lbt-finite_difference [--profile_dir=DIR] [--top=25]

Runs the step once (trace and first run), then profiles its second run with TensorFlow's
profiler: the trace goes to --profile_dir (TensorBoard's Profile tab, memory_profile tool, shows
it with the TensorBoard profile plugin installed) and the allocations alive at the allocator's
peak are printed, grouped by the op that made them (name without its numeric suffix; shapes of
those over 50 MB) and by when in the step they were made; first the peak's time and the memory
in use over the whole step (the stage running at the peak is what to cut). A weight-sized group
made early and still alive at a late peak is a stage's result (or activations) waiting for a later stage: that
is how the recomputation's schedule was found (docs/paper_scale_log.md).

On CPU the profiler's memory events come from the BFC allocator, so this script sets
TF_CPU_ALLOCATOR_USE_BFC=true: its peaks are that allocator's, to be compared between runs of
this script (bench/search_step.py measures the default allocator's).
"""
from __future__ import annotations

import collections
import glob
import json
import os
import re
import sys

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # before TensorFlow is imported
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCH_DIR), BENCH_DIR]

from absl import app, flags  # noqa: E402

from lbt_tf import config as config_lib  # noqa: E402
from lbt_tf import flags as lbt_flags  # noqa: E402
from search_step import MODES  # noqa: E402  (the bench's mode names)

flags.DEFINE_enum("memory_mode", "lbt-finite_difference", list(MODES), "The mode to profile.")
flags.DEFINE_string("profile_dir", None, "Where the profiler trace goes (default: "
                    "<run_dir>/step_memory).")
flags.DEFINE_integer("top", 25, "Groups of live allocations to print.")

BIG_BYTES = 50e6  # groups of tensors this large are told apart by shape


def live_at_peak(memory_profile):
    """[(allocator, peak bytes, [(op, region, shape, bytes, seconds into the profile, count)])] of
    TensorFlow's memory_profile tool data (its JSON): every allocation alive at the peak."""
    result = []
    for allocator, profile in memory_profile["memoryProfilePerAllocator"].items():
        snapshots = profile["memoryProfileSnapshots"]
        special = profile.get("specialAllocations", [])
        rows = []
        for active in profile["activeAllocations"]:
            index = int(active["snapshotIndex"])
            if index >= 0:
                meta = snapshots[index]["activityMetadata"]
                seconds = int(snapshots[index]["timeOffsetPs"]) / 1e12
            else:  # memory held before the profile started (variables, earlier tensors)
                meta, seconds = special[int(active["specialIndex"])], None
            count = int(active.get("numOccurrences", 1))
            rows.append((meta["tfOpName"], meta["regionType"], meta["tensorShape"],
                         int(meta["allocationBytes"]) * count, seconds, count))
        peak = int(profile["profileSummary"]["peakStats"]["peakBytesInUse"])
        result.append((allocator, peak, rows))
    return result


def group_by_op(rows):
    """{(op without numeric suffix, region, shape if big): (bytes, count)}, largest first."""
    groups = collections.defaultdict(lambda: [0, 0])
    for op, region, shape, size, _, count in rows:
        key = (re.sub(r"_\d+$", "", op), region, shape if size > BIG_BYTES else "")
        groups[key][0] += size
        groups[key][1] += count
    return dict(sorted(groups.items(), key=lambda item: -item[1][0]))


def group_by_second(rows):
    """{whole seconds into the profile (None: before it): bytes} of the live allocations."""
    seconds = collections.Counter()
    for _, _, _, size, at, _ in rows:
        seconds[None if at is None else int(at)] += size
    return dict(sorted(seconds.items(), key=lambda item: -1 if item[0] is None else item[0]))


def timeline(memory_profile):
    """{allocator: (peak seconds into the profile, [(seconds, bytes in use)])}: the tool's
    sampled timeline of the whole profile (at most 1000 points, each its window's maximum).
    The snapshots `live_at_peak` reads are only those of the allocations alive at the peak, so
    they end there and say nothing about the rest of the step."""
    result = {}
    for allocator, profile in memory_profile["memoryProfilePerAllocator"].items():
        points = []
        for snapshot in profile.get("sampledTimelineSnapshots", []):
            stats = snapshot["aggregationStats"]
            points.append((int(snapshot["timeOffsetPs"]) / 1e12,
                           int(stats.get("heapAllocatedBytes", 0))
                           + int(stats.get("stackReservedBytes", 0))))
        peak_at = int(profile["profileSummary"].get("peakStatsTimePs", 0)) / 1e12
        result[allocator] = (peak_at, points)
    return result


def binned(points, bins=60):
    """[(bin start seconds, max bytes)] of a timeline in at most `bins` equal windows."""
    if not points:
        return []
    width = max(1, int(points[-1][0] // bins) + 1)
    maxima = collections.OrderedDict()
    for seconds, size in points:
        start = int(seconds // width) * width
        maxima[start] = max(maxima.get(start, 0), size)
    return list(maxima.items())


def memory_profile_of(profile_dir):
    """The memory_profile tool's data of the newest trace under `profile_dir`."""
    # TensorFlow's own converter of a trace into the Profile tab's tool data (what TensorBoard's
    # profile plugin calls); TF exports no public name for it.
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as converter

    traces = sorted(glob.glob(os.path.join(profile_dir, "**", "*.xplane.pb"), recursive=True),
                    key=os.path.getmtime)
    if not traces:
        raise FileNotFoundError(f"no profiler trace (*.xplane.pb) under {profile_dir}")
    data, _ = converter.xspace_to_tools_data(traces[-1:], "memory_profile", {})
    return json.loads(data)


def report(memory_profile, top):
    timelines = timeline(memory_profile)
    for allocator, peak, rows in live_at_peak(memory_profile):
        peak_at, points = timelines[allocator]
        length = points[-1][0] if points else float("nan")
        print(f"allocator {allocator}: peak {peak / 2**30:.2f} GiB at {peak_at:.1f} s of "
              f"{length:.1f} s, {len(rows)} live allocations at the peak")
        # Where in the step the peak is: the stage running then is what to cut.
        print("  in use over the profiled step (window start s: max GiB): " + " ".join(
            f"{start}:{size / 2**30:.1f}" for start, size in binned(points)))
        for (op, region, shape), (size, count) in list(group_by_op(rows).items())[:top]:
            print(f"  {size / 2**30:7.3f} GiB  x{count:<5d} {op} ({region}) {shape}")
        print("  made at (seconds into the profiled step; - = before it):")
        for second, size in group_by_second(rows).items():
            if size > BIG_BYTES:
                print(f"    {'-' if second is None else second:>4}  {size / 2**30:6.3f} GiB")


def main(argv):
    del argv
    import tensorflow as tf

    from lbt_tf.search import runner

    config = lbt_flags.build_config()
    mode, hypergrad = MODES[flags.FLAGS.memory_mode]
    config = config_lib.replace(config, **{"search.mode": mode, "search.hypergrad": hypergrad})
    profile_dir = flags.FLAGS.profile_dir or os.path.join(config.run_dir, "step_memory")
    with runner.fast_graph_compilation(), runner.make_strategy(config.search).scope():
        model = runner.build_search_model(config)
        model.set_phase("search")
        train, _, _ = runner.make_search_input(config, mode, config.seed)
        batches = iter(train)
        model.make_train_function()
        print("first step (trace and run) ...", flush=True)
        float(model.train_function([next(batches)])["teacher_loss"])
        print(f"profiling the second step into {profile_dir} ...", flush=True)
        tf.profiler.experimental.start(
            profile_dir, options=tf.profiler.experimental.ProfilerOptions(host_tracer_level=2))
        try:
            float(model.train_function([next(batches)])["teacher_loss"])
        finally:
            tf.profiler.experimental.stop()
    report(memory_profile_of(profile_dir), flags.FLAGS.top)


if __name__ == "__main__":
    app.run(main)
