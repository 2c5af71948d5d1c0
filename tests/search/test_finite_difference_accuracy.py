"""--hypergrad=finite_difference at the demo config in float32, with the default eps numerator
(search.finite_difference_scale), against the exact hypergradient: per arch tensor group
cosine >= 0.99 and relative norm error <= 5% (bench/finite_difference_eps.py prints the table
over eps).

ReLU is swapped for the smooth softplus(4x)/4 as in test_hypergradient: with ReLU the difference
quotient of grad_A L(T +- eps v) counts the activation kinks it crosses (relu'' is a delta there),
which autodiff's exact Hessian-vector product leaves out, so the two do not converge to each
other for any eps (measured in the README).
"""
from __future__ import annotations

import pytest
import tensorflow as tf

from lbt_tf.config import SearchConfig
from tests.search.models_under_test import GROUPS, agreement, demo_problem


def smooth_relu(x, name=None):
    return tf.nn.softplus(4.0 * x) / 4.0


@pytest.fixture(scope="module")
def demo():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf.nn, "relu", smooth_relu)
        problem, batches, xi_t, xi_s = demo_problem(seed=0)
        weights = (problem.teacher.weight_values(), problem.teacher.arch_values(),
                   problem.student.weight_values(), xi_t, xi_s, 0.0, batches)
        exact = problem.unrolled_hypergradient(*weights).grads
        yield problem, weights, exact


def test_finite_difference_matches_exact_at_demo_config_in_float32(demo):
    problem, weights, exact = demo
    assert all(g.dtype == tf.float32 for g in exact)
    assert problem.finite_difference_scale == SearchConfig().finite_difference_scale
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf.nn, "relu", smooth_relu)
        fd = problem.arch_gradient("lbt", "finite_difference", *weights).grads
    result = agreement(problem, fd, exact)
    print(result)
    assert set(result) == set(GROUPS)
    for group, (cosine, relative_error) in result.items():
        assert cosine >= 0.99 and relative_error <= 0.05, (group, cosine, relative_error)
