"""Cost of the arch-gradient diagnostics (--arch_signal_every) on the lbt search step.

    python bench/arch_signals.py [--flagfile=configs/demo.flags] [--steps=6]

For lbt-exact and lbt-finite_difference: one search model with --arch_signal_every=0 (no split
of ||grad_A|| into its teacher/student val terms) and one with 1 (the split on every arch step:
the worst case), built from the same seed; their compiled steps run alternately on the same
batches. Prints the median step times and their ratio (the overhead of a diagnostic step). The
latency table is synthetic (no minutes spent measuring one; the latency term costs the same in
both).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from lbt_tf import config as config_lib  # noqa: E402
from lbt_tf.models.fasterseg import latency as latency_lib  # noqa: E402
from lbt_tf.models.fasterseg.latency_table import LatencyTable  # noqa: E402
from lbt_tf.search import runner  # noqa: E402
from tests.search.models_under_test import ROOT, flagfile_config  # noqa: E402


def synthetic_table(config):
    d = config.data
    specs = latency_lib.supernet_specs(config.teacher, d.image_height, d.image_width,
                                       d.num_classes)
    return LatencyTable(
        {s.key: 0.1 + (zlib.crc32(s.key.encode()) % 1000) / 100.0 for s in specs})


def compiled_step(config, hypergrad, every):
    config = config_lib.replace(config, **{"search.mode": "lbt", "search.hypergrad": hypergrad,
                                           "search.arch_signal_every": every,
                                           "teacher.latency_table": None})
    original = runner.build_supernet

    def with_table(cfg):
        supernet = original(cfg)
        supernet.set_latency_table(synthetic_table(cfg))
        return supernet

    runner.build_supernet = with_table
    try:
        model = runner.build_search_model(config)
    finally:
        runner.build_supernet = original
    model.set_phase("search")
    return tf.function(model.train_step)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flagfile", default=os.path.join(ROOT, "configs", "demo.flags"))
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    config = flagfile_config(args.flagfile)
    with runner.fast_graph_compilation():
        for hypergrad in ("exact", "finite_difference"):
            steps = {every: compiled_step(config, hypergrad, every) for every in (0, 1)}
            train, _, _ = runner.make_search_input(config, "lbt", config.seed)
            batches = [batch for batch, _ in zip(iter(train), range(args.steps + 2))]
            times = {0: [], 1: []}
            for i, batch in enumerate(batches):
                for every, step in steps.items():
                    start = time.perf_counter()
                    float(step(batch)["teacher_loss"])
                    if i >= 2:  # the first calls trace
                        times[every].append(time.perf_counter() - start)
            off, on = (float(np.median(times[e])) for e in (0, 1))
            print(f"lbt-{hypergrad}: step {off:.3f} s without the split, {on:.3f} s with it "
                  f"on every step: overhead {on / off - 1:+.1%}", flush=True)


if __name__ == "__main__":
    main()
