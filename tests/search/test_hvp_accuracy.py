"""--hypergrad=hvp (darts.py's form with forward-over-reverse Hessian-vector products) against
the exact nested-tape hypergradient: at the demo config (configs/demo.flags) in float32 with the
real ReLU, per arch tensor group cosine >= 0.99 and relative norm error <= 5% (where no
finite-difference eps gets there: test_finite_difference_accuracy needs a smooth activation);
and in float64, ReLU too, to 1e-6: the tiny real models with the student, the stand-ins
without it (fasterseg-like, teacher only); under XLA with a bfloat16 student. Both methods are
exact, so they differ only by rounding."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.search import learner, runner, unrolled
from tests.search import models_under_test
from tests.search.models_under_test import GROUPS, agreement, demo_problem
from tests.search.stand_ins import build_tiny


@pytest.fixture(scope="module")
def demo():
    problem, batches, xi_t, xi_s = demo_problem(seed=0)
    weights = (problem.teacher.weight_values(), problem.teacher.arch_values(),
               problem.student.weight_values(), xi_t, xi_s, 0.0, batches)
    return problem, weights


def test_hvp_matches_exact_at_demo_config_in_float32_with_relu(demo):
    problem, weights = demo
    exact = problem.unrolled_hypergradient(*weights).grads
    hvp = problem.arch_gradient("lbt", "hvp", *weights).grads
    assert all(g.dtype == tf.float32 for g in hvp)
    result = agreement(problem, hvp, exact)
    print(result)
    assert set(result) == set(GROUPS)
    for group, (cosine, relative_error) in result.items():
        assert cosine >= 0.99 and relative_error <= 0.05, (group, cosine, relative_error)


def test_hvp_under_xla_with_a_bfloat16_student_matches_exact():
    """The GPU step's paths at once: inside tf.function with jit_compile (XLA), the student in
    bfloat16 compute (--mixed_precision; the supernet stays float32), on the stand-ins (batch
    norm in training mode, the einsum resize, soft CE). Measured: cosine 0.99997, relative
    error 0.8% (float32 student: 2e-6)."""
    supernet, _ = build_tiny(3, models_under_test.HEIGHT, models_under_test.WIDTH)
    with runner.dtype_policy("mixed_bfloat16"):
        _, student = build_tiny(3, models_under_test.HEIGHT, models_under_test.WIDTH)
    problem = unrolled.SearchProblem(
        teacher=learner.Learner(supernet, supernet.arch_variables),
        student=learner.Learner(student), ignore_label=255, pseudo_label_weight=0.7)
    batches = _batches(3, dtype=tf.float32)
    args = (problem.teacher.weight_values(), problem.teacher.arch_values(),
            problem.student.weight_values())
    exact = problem.unrolled_hypergradient(*args, 0.02, 0.02, 0.0, batches).grads
    xla = tf.function(lambda t, a, s: problem.arch_gradient("lbt", "hvp", t, a, s, 0.02, 0.02,
                                                            0.0, batches).grads,
                      jit_compile=True)
    got = xla(*args)
    a, e = (np.concatenate([g.numpy().ravel() for g in grads]) for grads in (got, exact))
    assert a.dtype == np.float32
    cosine = a @ e / (np.linalg.norm(a) * np.linalg.norm(e))
    relative_error = np.linalg.norm(a - e) / np.linalg.norm(e)
    print(f"cosine {cosine:.6f} relative error {relative_error:.3g}")
    assert cosine >= 0.99 and relative_error <= 0.05


@pytest.fixture(scope="module")
def float64(keras_float64_module):
    yield


def _batches(num_classes, batch=2, seed=0, dtype=tf.float64):
    rng = np.random.default_rng(seed)
    shape = (batch, models_under_test.HEIGHT, models_under_test.WIDTH)

    def labeled():
        labels = rng.integers(0, num_classes, size=shape).astype(np.int32)
        labels[:, :2, :] = 255  # some ignored pixels
        return tf.constant(rng.normal(size=shape + (3,)), dtype), tf.constant(labels)

    return learner.Batches(teacher_train=labeled(), teacher_val=labeled(),
                           student_train=labeled(), student_val=labeled(),
                           unlabeled=tf.constant(rng.normal(size=shape + (3,)), dtype))


@pytest.mark.parametrize("which,with_student", [("real", True), ("stand_in", False)])
def test_hvp_equals_exact_in_float64(float64, which, with_student):
    """Measured: relative error 2e-15 (real, teacher only as well)."""
    supernet, student, num_classes = models_under_test.build(which)
    problem = unrolled.SearchProblem(
        teacher=learner.Learner(supernet, supernet.arch_variables),
        student=learner.Learner(student), ignore_label=255, pseudo_label_weight=0.7)
    if not with_student:
        problem = dataclasses.replace(problem, student=None)
    student_weights = problem.student.weight_values() if with_student else None
    args = (problem.teacher.weight_values(), problem.teacher.arch_values(), student_weights,
            0.02, 0.02, 0.0, _batches(num_classes))
    exact = problem.unrolled_hypergradient(*args).grads
    hvp = problem.arch_gradient("lbt", "hvp", *args).grads
    a, e = (np.concatenate([g.numpy().ravel() for g in grads]) for grads in (hvp, exact))
    assert a.dtype == np.float64 and np.linalg.norm(e) > 0
    relative_error = np.linalg.norm(a - e) / np.linalg.norm(e)
    print(f"{which} with_student={with_student}: relative error {relative_error:.3g}")
    assert relative_error <= 1e-6


def test_a_none_jvp_raises_never_zero():
    """A loss whose arch gradient does not depend on T: its jvp along v is None (no path), which
    must raise naming the arch variable rather than count as a zero product."""
    from types import SimpleNamespace

    from lbt_tf.search import hvp
    problem = SimpleNamespace(
        teacher=SimpleNamespace(arch_names=["supernet/alpha"]),
        teacher_loss=lambda weights, arch, batch: tf.reduce_sum(arch[0]))
    weights, arch = [tf.ones(3)], [tf.ones(2)]
    with pytest.raises(learner.HypergradientError, match="supernet/alpha"):
        hvp.ForwardOverReverse().arch_product(problem, weights, arch, [tf.ones(3)], None)
