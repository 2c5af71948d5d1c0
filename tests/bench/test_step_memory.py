"""bench/step_memory.py reads TensorFlow's memory profile right: on a step whose peak is a
late temporary while an early result waits, the live allocations at the peak are those two.
Runs in a child process: the profiler's CPU memory events need TF_CPU_ALLOCATOR_USE_BFC=true
before TensorFlow starts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "step_memory.py")

CHILD = textwrap.dedent("""
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("step_memory", sys.argv[1])
    step_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step_memory)  # sets TF_CPU_ALLOCATOR_USE_BFC before TF loads
    import tensorflow as tf

    @tf.function
    def step(x):
        held = x * 2.0  # 32 MiB, made first, used last
        with tf.control_dependencies([held]):
            temporary = tf.tile(x, [4, 1])  # 128 MiB: the peak
        total = tf.reduce_sum(temporary)
        with tf.control_dependencies([total]):  # held stays alive through the peak
            return total + tf.reduce_sum(held)

    x = tf.ones((2048, 4096))
    step(x)
    tf.profiler.experimental.start(sys.argv[2])
    step(x).numpy()
    tf.profiler.experimental.stop()
    profile = step_memory.memory_profile_of(sys.argv[2])
    print("LIVE " + json.dumps([(op, size, at is None)
                                for op, _, _, size, at, _ in
                                step_memory.live_at_peak(profile)[0][2]]))
    allocator, peak, _ = step_memory.live_at_peak(profile)[0]
    peak_at, points = step_memory.timeline(profile)[allocator]
    print("TIMELINE " + json.dumps([peak, peak_at, points]))
    # binned: each window's maximum; 130 s in at most 60 windows: 3 s each
    toy = [(0.5, 1), (1.2, 3), (1.7, 2), (130.0, 5)]
    print("BINNED " + json.dumps([step_memory.binned(toy[:3]), step_memory.binned(toy)]))
""")


def test_live_allocations_at_the_peak(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", CHILD, BENCH, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    live = json.loads([l for l in out.stdout.splitlines() if l.startswith("LIVE ")][0][5:])
    made_in_step = {(op, size) for op, size, before in live if not before}
    assert ("mul", 32 * 2**20) in made_in_step, live
    assert ("Tile", 128 * 2**20) in made_in_step, live
    # The sampled timeline covers the step: its maximum is the peak, at the peak's time, and
    # it goes on after it (the held result and the sums come later).
    peak, peak_at, points = json.loads(
        [l for l in out.stdout.splitlines() if l.startswith("TIMELINE ")][0][9:])
    assert max(size for _, size in points) == peak
    assert [t for t, size in points if size == peak][0] == peak_at
    assert points[-1][0] > peak_at and points[-1][1] < peak
    short, long = json.loads([l for l in out.stdout.splitlines() if l.startswith("BINNED ")][0][7:])
    assert short == [[0, 1], [1, 3]]
    assert long == [[0, 3], [129, 5]]
