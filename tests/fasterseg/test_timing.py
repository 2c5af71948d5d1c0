"""Timing (timing.py): clocks, and no retracing warnings from many compiled functions."""
import pytest

from lbt_tf.models.fasterseg import timing


def test_cpu_clock_leaves_out_time_the_process_does_not_run():
    """--latency_clock=cpu: time this process spends off the CPU (here asleep; on a shared
    machine, other processes' slices) is not counted; the wall clock counts it."""
    import time
    nap = lambda: time.sleep(0.02)   # noqa: E731
    wall, cpu = (timing.interleaved_medians([nap], runs=3, warmup=1, clock=c)[0]
                 for c in ("wall", "cpu"))
    assert wall >= 20.0 and cpu < 5.0
    with pytest.raises(ValueError, match="latency_clock"):
        timing.clock_for("gpu")


def test_timing_many_compiled_functions_logs_no_retracing_warning():
    """Each table entry is its own tf.function, traced once on purpose: TF's retracing warning
    (which counts them as retraces) is not shown to the user."""
    import logging
    import tensorflow as tf
    records, level = [], tf.get_logger().level
    handler = logging.Handler()
    handler.emit = records.append
    tf.get_logger().addHandler(handler)
    try:
        x = tf.zeros([1, 4, 4, 3])
        runners = [timing.compile_for("tf", (lambda k: (lambda t: t * k))(float(i)), x)
                   for i in range(12)]
        timing.interleaved_medians(runners, runs=1, warmup=1)
        for i in range(6):
            timing.time_callable(timing.compile_for("tf", lambda t: t + 1.0, x), 1, 1,
                                 min_total_ms=0.0)
    finally:
        tf.get_logger().removeHandler(handler)
    assert not [r for r in records if "retracing" in r.getMessage()]
    assert tf.get_logger().level == level   # restored after the warm-up calls
