"""Accuracy of --hypergrad=finite_difference against the exact hypergradient, per eps, at the
demo config (configs/demo.flags) in float32, on one batch of the demo's synthetic input.

    python bench/finite_difference_eps.py [--scales=1e-1,1e-2,1e-3,1e-4,1e-5]

Prints, per eps numerator c (eps = c / ||direction||, DARTS uses c = 0.01) and per arch tensor
group (alpha, beta, gamma), the cosine and the relative norm error ||FD - exact|| / ||exact||
(a markdown table). The latency term is left out (its gradient is the same in both methods).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from tests.search.models_under_test import GROUPS, agreement, demo_problem  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1e-1,1e-2,1e-3,1e-4,1e-5")
    parser.add_argument("--smooth_relu", action="store_true",
                        help="ReLU -> softplus(4x)/4 (as the tests): without kinks the two "
                             "methods can converge to each other")
    args = parser.parse_args()
    if args.smooth_relu:
        tf.nn.relu = lambda x, name=None: tf.nn.softplus(4.0 * x) / 4.0
    problem, batches, xi_t, xi_s = demo_problem()
    weights = (problem.teacher.weight_values(), problem.teacher.arch_values(),
               problem.student.weight_values())
    start = time.perf_counter()
    exact = problem.unrolled_hypergradient(*weights, xi_t, xi_s, 0.0, batches).grads
    print(f"exact hypergradient: {time.perf_counter() - start:.1f} s (eager)")
    print("| eps numerator c | " + " | ".join(f"{g} cosine | {g} rel. error" for g in GROUPS)
          + " |")
    print("|---" * (1 + 2 * len(GROUPS)) + "|")
    for scale in (float(s) for s in args.scales.split(",")):
        problem.finite_difference_scale = scale
        fd = problem.arch_gradient("lbt", "finite_difference", *weights, xi_t, xi_s, 0.0,
                                   batches).grads
        cells = [f"{c:.5f} | {e:.2%}" for c, e in agreement(problem, fd, exact).values()]
        print(f"| {scale:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
