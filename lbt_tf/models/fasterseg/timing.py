"""Timing a function the way a deployed network runs: batch 1, compiled, warm-up, median of N.

Runtimes (`--latency_runtime`):
  tf      one `tf.function` graph (TF's executor, as `--mode=evaluate` times the network)
  xla     the same with `jit_compile=True`
  tflite  converted to TFLite and run by the LiteRT interpreter with its default XNNPACK
          delegate (what a phone runs): `ai_edge_litert` when installed, else `tf.lite`.
The latency table's entries and the whole networks of bench/latency_rank.py are timed through
the same `compile_for`, so a prediction and a measurement differ only by what the sum misses.

Clocks (`--latency_clock`): `wall` (elapsed time, what a dedicated device's user waits) or `cpu`
(CPU time of this process, all its threads). On a shared CPU the wall clock of a call longer
than a scheduler slice includes the slices other processes ran: measured here at load 10 on 2
cores, a 4.2 ms-CPU TFLite network took 8.2 ms wall in every run while its sub-millisecond ops
ran unpreempted, so sums of op times came out 1.4-2x below whole networks. The CPU clock leaves
that time out; with one thread per runtime it equals the wall clock of an idle machine.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import time

import numpy as np
import tensorflow as tf

RUNTIMES = ("tf", "xla", "tflite")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interpreter_name() -> str:
    """LiteRT's interpreter (`ai_edge_litert`, installed with lbt_tf on x86_64/aarch64), else
    TF's deprecated copy (platforms LiteRT has no wheel for)."""
    return "ai_edge_litert" if importlib.util.find_spec("ai_edge_litert") else "tf.lite"


def tflite_interpreter(model_content: bytes, num_threads=None):
    """The one place lbt_tf makes a TFLite interpreter (latency tables, TFLite evaluation)."""
    if interpreter_name() == "ai_edge_litert":
        from ai_edge_litert.interpreter import Interpreter
    else:
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_content=model_content, num_threads=num_threads)


def num_threads() -> int:
    """Threads of the TFLite interpreter: one. XNNPACK's thread pool spin-waits at every op's
    barrier; on a shared CPU a preempted worker stalls each barrier, so multi-threaded times of
    whole networks measured 2-10x their single-thread sum here (bench/latency_rank.py)."""
    return 1


def frozen_call(layer, call=None):
    """fn(x) = layer(x) with the layer's weights as graph constants (`stateless_call`), so the
    TFLite converter embeds them (variables would stay uninitialised READ_VARIABLE ops)."""
    trainable = [tf.constant(v.numpy()) for v in layer.trainable_variables]
    non_trainable = [tf.constant(v.numpy()) for v in layer.non_trainable_variables]
    call = call or (lambda outputs: outputs)

    def fn(x):
        outputs, _ = layer.stateless_call(trainable, non_trainable, x, training=False)
        return call(outputs)
    return fn


def compile_for(runtime: str, fn, inputs):
    """A zero-argument callable that runs fn(inputs) once in `runtime` and waits for it."""
    if runtime in ("tf", "xla"):
        compiled = tf.function(fn, jit_compile=runtime == "xla")
        return lambda: _block(compiled(inputs))
    if runtime == "tflite":
        concrete = tf.function(fn).get_concrete_function(tf.TensorSpec(inputs.shape, inputs.dtype))
        content = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf.Module()).convert()
        interpreter = tflite_interpreter(content, num_threads())
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], np.asarray(inputs))
        return interpreter.invoke
    raise ValueError(f"--latency_runtime={runtime!r}: expected one of {RUNTIMES}")


def clock_for(name: str):
    if name not in CLOCKS:
        raise ValueError(f"--latency_clock={name!r}: expected one of {tuple(CLOCKS)}")
    return CLOCKS[name]


@contextlib.contextmanager
def first_calls():
    """Warm-up calls, which trace each timed function once on purpose: TF's "N out of the last M
    calls triggered tf.function retracing" warning counts hundreds of distinct table entries
    as retracing, so it is silenced here (and only here)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def time_callable(run, runs: int = 5, warmup: int = 2, min_total_ms: float = 50.0,
                  max_runs: int = 200, clock: str = "wall") -> float:
    """Median milliseconds of `run()` after `warmup` untimed calls (the first one compiles).

    At least `runs` timed calls, more (up to `max_runs`) until they add up to `min_total_ms`:
    a 0.1 ms op then gets a median of hundreds of calls, robust to a busy machine's spikes.
    """
    now = clock_for(clock)
    with first_calls():
        for _ in range(max(1, warmup)):
            run()
    timings = []
    while len(timings) < max(1, runs) or (sum(timings) < min_total_ms and len(timings) < max_runs):
        start = now()
        run()
        timings.append((now() - start) * 1e3)
    return float(np.median(timings))


def interleaved_medians(runners, runs: int = 10, warmup: int = 3, clock: str = "wall",
                        min_total_ms: float = 0.0, max_runs: int = 200):
    """Median ms per zero-argument runner, timed round-robin (one call each per round), so a
    busy spell of a shared machine slows every runner alike instead of a few. At least `runs`
    rounds, more (up to `max_runs`) until every runner's calls add up to `min_total_ms`."""
    now = clock_for(clock)   # a bad --latency_clock fails before any warm-up work
    with first_calls():
        for run in runners:
            for _ in range(max(1, warmup)):
                run()
    timings = [[] for _ in runners]
    while len(timings[0]) < max(1, runs) or (
            min(sum(t) for t in timings) < min_total_ms and len(timings[0]) < max_runs):
        for run, times in zip(runners, timings):
            start = now()
            run()
            times.append((now() - start) * 1e3)
    return [float(np.median(t)) for t in timings]


def _block(outputs):
    """Waits for the result (GPU execution is asynchronous)."""
    for leaf in tf.nest.flatten(outputs):
        leaf.numpy()
