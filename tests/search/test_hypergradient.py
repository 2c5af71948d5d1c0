"""The LBT architecture gradient against central finite differences of the unrolled objective.

Float64 throughout, and ReLU swapped for the smooth softplus(4x)/4 while a test runs: the inner
gradient of the virtual teacher step contains relu'(z(T, A)), a step function of A, so the
unrolled objective jumps wherever a pre-activation crosses zero and central differences of it do
not converge. relu'' = 0 almost everywhere, so the swap hides no second-order path; it only makes
the objective smooth enough for differences to be a reference (as in
tests/fasterseg/test_supernet_latency.py::test_stateless_second_order_matches_finite_differences).
"""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lbt_tf import names
from lbt_tf.search import learner, unrolled
from tests.search import models_under_test

# The search's default learning rate is 0.01; larger steps put T' where the tiny real supernet
# (BatchNorm over 2x4 maps at stride 32) is so curved that finite differences stop converging.
XI_T, XI_S, LATENCY_WEIGHT = 0.01, 0.01, 0.05
FD_STEP = 1e-6


def smooth_relu(x, name=None):
    return tf.nn.softplus(4.0 * x) / 4.0


@pytest.fixture(scope="module")
def float64(keras_float64_module):
    """Every model of this module is built in float64 (see tests/conftest.py)."""
    yield


@pytest.fixture
def smooth(float64, monkeypatch):
    """float64 + smooth ReLU (tf.nn.relu is what Keras' "relu" activation and the supernet's
    operations call at run time, so one patch covers teacher and student)."""
    monkeypatch.setattr(tf.nn, "relu", smooth_relu)


def _batches(num_classes, height=models_under_test.HEIGHT, width=models_under_test.WIDTH,
             batch=4, seed=0):
    rng = np.random.default_rng(seed)

    def labeled():
        images = tf.constant(rng.normal(size=(batch, height, width, 3)), tf.float64)
        labels = rng.integers(0, num_classes, size=(batch, height, width)).astype(np.int32)
        labels[:, :2, :] = 255  # some ignored pixels
        return images, tf.constant(labels)

    return learner.Batches(teacher_train=labeled(), teacher_val=labeled(),
                             student_train=labeled(), student_val=labeled(),
                             unlabeled=tf.constant(rng.normal(size=(batch, height, width, 3)),
                                                   tf.float64))


def _problem(student_val_weight=1.0, latency=True, which="real", cell_tracing=None):
    supernet, student, num_classes = models_under_test.build(which, cell_tracing=cell_tracing)
    assert all(v.dtype == "float64" for v in supernet.trainable_variables + student.weights)
    teacher = learner.Learner(supernet, supernet.arch_variables)
    problem = unrolled.SearchProblem(
        teacher=teacher, student=learner.Learner(student), ignore_label=255,
        # The real supernet needs a measured latency table (minutes); its latency model is
        # tested by its own tests, the latency term here by the stand-in.
        latency_fn=supernet.expected_latency if latency and which == "stand_in" else None,
        pseudo_label_weight=0.7, student_val_weight=student_val_weight)
    return problem, num_classes


def _directional_fd(problem, arch, direction, batches, step=FD_STEP):
    teacher_w = problem.teacher.weight_values()
    student_w = problem.student.weight_values()

    def objective(sign):
        shifted = [a + sign * step * d for a, d in zip(arch, direction)]
        value, _ = problem.unrolled_objective(teacher_w, shifted, student_w, XI_T, XI_S,
                                              LATENCY_WEIGHT, batches)
        return float(value)

    return (objective(1.0) - objective(-1.0)) / (2 * step)


def _hypergradient(problem, hypergrad, args):
    """grad_A F by `hypergrad`, or by the definition for "unrolled" (nested tapes around all of
    (1)-(3)); the search's methods are darts.py's form."""
    if hypergrad == "unrolled":
        return problem.unrolled_hypergradient(*args).grads
    return problem.arch_gradient("lbt", hypergrad, *args).grads


def _dot(grads, direction):
    return float(tf.add_n([tf.reduce_sum(g * d) for g, d in zip(grads, direction)]))


# exact with recompute_activations (the search's default) and without.
@pytest.mark.parametrize("which", models_under_test.MODELS)
@pytest.mark.parametrize("hypergrad,recompute,tolerance", [
    ("unrolled", False, 1e-5), ("exact", True, 1e-5), ("exact", False, 1e-5),
    ("finite_difference", True, 1e-2)])
def test_lbt_gradient_matches_finite_difference_of_unrolled_objective(smooth, which, hypergrad,
                                                                      recompute, tolerance):
    problem, num_classes = _problem(which=which)
    problem.recompute_activations = recompute
    batches = _batches(num_classes)
    arch = problem.teacher.arch_values()
    args = (problem.teacher.weight_values(), arch, problem.student.weight_values(), XI_T, XI_S,
            LATENCY_WEIGHT, batches)
    grads = _hypergradient(problem, hypergrad, args)
    rng = np.random.default_rng(1)
    for trial in range(2):
        direction = [tf.constant(rng.normal(size=a.shape), tf.float64) for a in arch]
        expected = _directional_fd(problem, arch, direction, batches)
        got = _dot(grads, direction)
        assert abs(expected) > 1e-8, "degenerate direction: the objective does not depend on A"
        relative_error = abs(got - expected) / abs(expected)
        print(f"{which}/{hypergrad} trial {trial}: got {got:.10g} expected {expected:.10g} "
              f"relative error {relative_error:.3g}")
        assert relative_error <= tolerance, (trial, got, expected)


def test_shared_cell_functions_give_the_same_hypergradient_and_statistics(float64):
    """In a traced step the supernet's MixedOps run as tf.functions shared by every cell of one
    configuration (--cell_tracing=shared, the default): the exact hypergradient, F and the
    teacher's new BatchNorm statistics equal those of the eager, per-cell forward (which the
    test above checks against central differences)."""
    problem, num_classes = _problem(latency=False, cell_tracing="shared")
    batches = _batches(num_classes)

    def arch_gradient():
        result = problem.arch_gradient(
            "lbt", "exact", problem.teacher.weight_values(), problem.teacher.arch_values(),
            problem.student.weight_values(), XI_T, XI_S, LATENCY_WEIGHT, batches)
        return result.grads, result.objective, result.reuse.teacher_stats

    grads, objective, stats = arch_gradient()
    supernet = problem.teacher.model
    assert not supernet.cell_functions.functions, "eager passes run every cell as it is"
    shared_grads, shared_objective, shared_stats = tf.function(arch_gradient, autograph=False)()
    mixed_ops = list(supernet.keep_ops.values()) + list(supernet.down_ops.values())
    configurations = {op.config_key for op in mixed_ops}
    assert len(supernet.cell_functions.functions) == len(configurations) < len(mixed_ops)
    np.testing.assert_allclose(float(shared_objective), float(objective), rtol=1e-12)
    for got, expected in zip(shared_grads + shared_stats, grads + stats):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("which", models_under_test.MODELS)
@pytest.mark.parametrize("hypergrad", ["unrolled", "exact"])
def test_student_term_matches_finite_difference(smooth, which, hypergrad):
    """The student's part of the gradient alone, w_sv d L(S'(A); D_s^val) / dA (exact gradient
    with minus without the student term), against central differences of that part: guards the
    path A -> P(T', A) -> soft CE -> S' -> student val loss, which the full check above could
    hide under the larger teacher term."""
    problem, num_classes = _problem(which=which)
    batches = _batches(num_classes)
    teacher_w, student_w = problem.teacher.weight_values(), problem.student.weight_values()
    arch = problem.teacher.arch_values()
    args = (teacher_w, arch, student_w, XI_T, XI_S, LATENCY_WEIGHT, batches)
    with_student = _hypergradient(problem, hypergrad, args)
    problem.student_val_weight = 0.0
    without = _hypergradient(problem, hypergrad, args)
    problem.student_val_weight = 1.0
    student_grads = [a - b for a, b in zip(with_student, without)]
    direction = [tf.constant(np.random.default_rng(2).normal(size=a.shape), tf.float64)
                 for a in arch]

    def student_val_loss(sign, step=1e-5):
        shifted = [a + sign * step * d for a, d in zip(arch, direction)]
        _, parts = problem.unrolled_objective(teacher_w, shifted, student_w, XI_T, XI_S,
                                              LATENCY_WEIGHT, batches)
        return float(parts["arch_student_val_loss"]), step

    (plus, step), (minus, _) = student_val_loss(1.0), student_val_loss(-1.0)
    expected = (plus - minus) / (2 * step)
    got = _dot(student_grads, direction)
    relative_error = abs(got - expected) / abs(expected)
    print(f"{which}/{hypergrad} student term: got {got:.10g} expected {expected:.10g} "
          f"relative error {relative_error:.3g}")
    assert abs(expected) > 1e-10, "the student's val loss does not depend on A"
    assert relative_error <= 1e-4, (got, expected)


@pytest.mark.parametrize("which", models_under_test.MODELS)
def test_lbt_without_student_and_latency_equals_darts_second_order(float64, which):
    problem, num_classes = _problem(student_val_weight=0.0, latency=False, which=which)
    batches = _batches(num_classes)
    weights = problem.teacher.weight_values()
    arch = problem.teacher.arch_values()
    grads = problem.unrolled_hypergradient(weights, arch, problem.student.weight_values(),
                                        XI_T, XI_S, 0.0, batches).grads
    # DARTS (Liu et al. 2019, eq. 7) written independently:
    # grad_A L_val(w', A) - xi * d/dA [ grad_w L_train(w, A) . grad_w' L_val(w', A) ]
    with tf.GradientTape() as tape:
        tape.watch(weights)
        train_loss = problem.teacher_loss(weights, arch, batches.teacher_train)
    w_prime = [w - XI_T * g for w, g in zip(weights, tape.gradient(train_loss, weights))]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(w_prime)
        tape.watch(arch)
        val_loss = problem.teacher_loss(w_prime, arch, batches.teacher_val)
    v = tape.gradient(val_loss, w_prime)
    direct = tape.gradient(val_loss, arch)
    with tf.GradientTape() as outer:
        outer.watch(arch)
        with tf.GradientTape() as inner:
            inner.watch(weights)
            train_loss = problem.teacher_loss(weights, arch, batches.teacher_train)
        g = inner.gradient(train_loss, weights)
        inner_product = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(g, v)])
    mixed = outer.gradient(inner_product, arch)
    for got, d, m in zip(grads, direct, mixed):
        # Entries where the two terms nearly cancel keep the rounding of the terms (~1e-9 of
        # them here in float64, either way of computing): atol scales with the terms.
        scale = float(tf.reduce_max(tf.abs(d)) + XI_T * tf.reduce_max(tf.abs(m)))
        np.testing.assert_allclose(got.numpy(), (d - XI_T * m).numpy(), rtol=1e-6,
                                   atol=1e-8 * scale)


def test_none_gradient_raises_naming_the_variable():
    names = ["supernet/alpha", "supernet/beta"]
    with pytest.raises(learner.HypergradientError, match="supernet/beta"):
        learner.checked_gradients([tf.zeros(2), None], names, "test")


@pytest.mark.parametrize("hypergrad", names.HYPERGRADS)
@pytest.mark.parametrize("recompute", [False, True])
def test_gradient_terms_split_the_hypergradient(float64, hypergrad, recompute):
    """On a diagnostic step the teacher-val term is the hypergradient without student and
    latency, and teacher val + student val + latency terms sum to grad_A F (with
    recompute_activations the term's val pass is the main one's function, P's seed zero)."""
    problem, num_classes = _problem(which="stand_in")
    problem.recompute_activations = recompute
    batches = _batches(num_classes)
    weights = (problem.teacher.weight_values(), problem.teacher.arch_values(),
               problem.student.weight_values(), XI_T, XI_S)
    split = problem.arch_gradient("lbt", hypergrad, *weights[:3], XI_T, XI_S, LATENCY_WEIGHT,
                                  batches, diagnose=tf.constant(True))
    quiet = problem.arch_gradient("lbt", hypergrad, *weights[:3], XI_T, XI_S, LATENCY_WEIGHT,
                                  batches, diagnose=tf.constant(False))
    problem.student_val_weight = 0.0
    teacher_alone = problem.arch_gradient("lbt", hypergrad, *weights, 0.0, batches).grads
    problem.student_val_weight = 1.0
    terms = [split.terms[name] for name in ("teacher_val", "student_val", "latency")]
    for got, alone in zip(split.terms["teacher_val"], teacher_alone):
        np.testing.assert_allclose(got.numpy(), alone.numpy(), rtol=1e-8, atol=1e-14)
    for total, teacher, student, latency, same in zip(split.grads, *terms, quiet.grads):
        np.testing.assert_allclose(total.numpy(), (teacher + student + latency).numpy(),
                                   rtol=1e-10, atol=1e-14)
        np.testing.assert_array_equal(total.numpy(), same.numpy())
        assert float(tf.reduce_max(tf.abs(student))) > 0 and float(tf.reduce_max(
            tf.abs(latency))) > 0
    assert all(float(tf.reduce_max(tf.abs(t))) == 0 for t in quiet.terms["teacher_val"])


def test_exact_equals_the_definition_with_sampled_widths(float64):
    """With Gumbel width sampling on (the search's training passes; the tests above fix the
    widths), darts.py's separate passes draw the same noise as the definition's single tape (the
    seed is a non-trainable value, the same for every pass of a step): the exact hypergradient
    equals unrolled_hypergradient."""
    problem, num_classes = _problem()
    problem.teacher.model.sample_widths = True
    problem.recompute_activations = True
    batches = _batches(num_classes)
    args = (problem.teacher.weight_values(), problem.teacher.arch_values(),
            problem.student.weight_values(), XI_T, XI_S, LATENCY_WEIGHT, batches)
    exact = problem.arch_gradient("lbt", "exact", *args).grads
    definition = problem.unrolled_hypergradient(*args).grads
    assert any(np.abs(g.numpy()).max() > 0 for g in definition)
    for got, expected in zip(exact, definition):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-7, atol=1e-12)
