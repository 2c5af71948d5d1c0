"""P's backward one supernet stage at a time from kept stage inputs (search/stagewise.py) gives
the whole pass's values and gradients: float64, eager and in a graph, on the real tiny supernet
(stem, layers, heads; Gumbel-sampled widths, so the two functions must draw the same noise) and
on the stand-in."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.search import learner, stagewise, unrolled
from tests.search import models_under_test


@pytest.fixture(scope="module")
def float64(keras_float64_module):
    yield


def _case(which, sample_widths, seed=0):
    problem = models_under_test.teacher_problem(which, sample_widths)
    rng = np.random.default_rng(seed)
    h, w = models_under_test.HEIGHT, models_under_test.WIDTH
    images = tf.constant(rng.normal(size=(2, h, w, 3)), tf.float64)
    probs = problem.teacher_probs(problem.teacher.weight_values(), problem.teacher.arch_values(),
                                  images)
    seed_tensor = tf.constant(rng.normal(size=probs.shape), tf.float64)
    return problem, images, seed_tensor


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("which,sample_widths", [("real", True), ("stand_in", False)])
def test_stagewise_backward_equals_the_whole_pass_gradient(float64, which, sample_widths, graph):
    problem, images, seed = _case(which, sample_widths)
    learner_ = problem.teacher
    assert len(learner_.model.stages()) >= 3, "the backward must cross several stages"
    head = lambda outputs: learner.teacher_probabilities(outputs, images.shape[1:3])

    def both(weights, arch):
        probs, checkpoints = problem.teacher_probs_checkpointed(weights, arch, images)
        weight_grads, arch_grads = stagewise.backward(learner_, weights, arch, images,
                                                      checkpoints, head, seed, "test")
        with tf.GradientTape() as tape:
            tape.watch(weights + arch)
            whole = problem.teacher_probs(weights, arch, images)
        expected = tape.gradient(whole, weights + arch, output_gradients=seed)
        return probs, whole, weight_grads + arch_grads, expected

    run = tf.function(both, autograph=False) if graph else both
    probs, whole, got, expected = run(learner_.weight_values(), learner_.arch_values())
    np.testing.assert_allclose(probs.numpy(), whole.numpy(), rtol=1e-12, atol=1e-14)
    names = learner_.weight_names + learner_.arch_names
    assert len(got) == len(names)
    assert sum(e is not None and np.abs(e.numpy()).max() > 1e-8 for e in expected) > len(names) // 2
    for name, g, e in zip(names, got, expected):
        assert (g is None) == (e is None), name
        if e is not None:
            np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-8, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("which,sample_widths", [("real", True), ("stand_in", False)])
def test_perturbed_stagewise_gradient_equals_the_whole_pass_one(float64, which, sample_widths,
                                                                 graph):
    """finite differences with --arch_product=layerwise: grad_A L(T + eps v) with T + eps v
    made one stage at a time equals it at a whole perturbed copy (both signs)."""
    problem, images, _ = _case(which, sample_widths)
    rng = np.random.default_rng(3)
    labels = rng.integers(0, models_under_test.NUM_CLASSES, size=images.shape[:3]).astype(np.int32)
    labels[:, :2] = 255
    batch = (images, tf.constant(labels))
    weights, arch = problem.teacher.weight_values(), problem.teacher.arch_values()
    v = [tf.constant(rng.normal(size=t.shape), tf.float64) for t in weights]

    def both(weights, arch, v, step):
        got = problem.stagewise_loss_gradient(weights, arch, batch, "test", direction=v,
                                              step=step)[1]
        expected = problem.teacher_loss_gradient(learner.axpy(step, v, weights), arch, batch,
                                                 "test")[1]
        return got, expected

    run = tf.function(both, autograph=False) if graph else both
    for step in (1e-3, -1e-3):
        got, expected = run(weights, arch, v, tf.constant(step, tf.float64))
        assert len(got) == len(arch)
        assert any(np.abs(e.numpy()).max() > 1e-6 for e in expected)
        for name, g, e in zip(problem.teacher.arch_names, got, expected):
            np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-8, atol=1e-11,
                                       err_msg=name)


def test_finite_difference_step_uses_the_stagewise_passes_when_asked(monkeypatch):
    calls = []
    real = unrolled.SearchProblem.stagewise_loss_gradient

    def spy(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(unrolled.SearchProblem, "stagewise_loss_gradient", spy)
    model = models_under_test.stand_in_search_model("lbt", "finite_difference",
                                                    arch_product="layerwise", warmup_epochs=0)
    model.set_phase("search")
    arch_before = models_under_test.values(model.teacher_learner.arch_variables)
    history = model.fit(models_under_test.search_dataset(2), epochs=1, verbose=0, shuffle=False)
    assert len(calls) >= 2, "the traced step did not take the stagewise passes (plus and minus)"
    assert np.isfinite(history.history["arch_objective"][-1])
    assert any(np.abs(b - v.numpy()).max() > 0
               for b, v in zip(arch_before, model.teacher_learner.arch_variables))


def test_stagewise_loss_gradient_equals_the_whole_pass_one(float64):
    """The diagnostic val pass with --arch_product=layerwise: (L, grad_(T, A) L) one stage at a
    time equals the whole pass's (real tiny supernet, Gumbel-sampled widths)."""
    problem, images, _ = _case("real", True)
    labels = np.random.default_rng(4).integers(
        0, models_under_test.NUM_CLASSES, size=images.shape[:3]).astype(np.int32)
    batch = (images, tf.constant(labels))
    weights, arch = problem.teacher.weight_values(), problem.teacher.arch_values()

    @tf.function(autograph=False)
    def both(weights, arch):
        return (problem.stagewise_loss_gradient(weights, arch, batch, "test", weights_too=True),
                problem.teacher_loss_gradient(weights, arch, batch, "test", weights_too=True))

    (loss, got), (expected_loss, expected) = both(weights, arch)
    np.testing.assert_allclose(loss.numpy(), expected_loss.numpy(), rtol=1e-12)
    names = problem.teacher.weight_names + problem.teacher.arch_names
    assert len(got) == len(names)
    for name, g, e in zip(names, got, expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-8, atol=1e-11, err_msg=name)


@pytest.mark.parametrize("hypergrad", ["exact", "finite_difference"])
def test_layerwise_hypergradient_and_its_teacher_term_equal_the_whole_pass_ones(float64,
                                                                                hypergrad):
    """--arch_product=layerwise through darts.py (exact: layerwise.py's product; FD: the
    stagewise perturbed passes; both: the diagnostic teacher term's stagewise val pass) gives
    the whole-pass hypergradient and teacher term (stand-in, traced step)."""
    supernet, student, num_classes = models_under_test.build("stand_in")
    rng = np.random.default_rng(5)
    shape = (2, models_under_test.HEIGHT, models_under_test.WIDTH)

    def labeled():
        return (tf.constant(rng.normal(size=shape + (3,)), tf.float64),
                tf.constant(rng.integers(0, num_classes, size=shape), tf.int32))

    batches = learner.Batches(teacher_train=labeled(), teacher_val=labeled(),
                              student_train=labeled(), student_val=labeled(),
                              unlabeled=tf.constant(rng.normal(size=shape + (3,)), tf.float64))
    results = []
    for arch_product in ("whole", "layerwise"):
        problem = unrolled.SearchProblem(
            teacher=learner.Learner(supernet, supernet.arch_variables, trace_once=True),
            student=learner.Learner(student, trace_once=True), ignore_label=255,
            pseudo_label_weight=0.7, recompute_activations=True, arch_product=arch_product)
        def step():
            result = problem.arch_gradient(
                "lbt", hypergrad, problem.teacher.weight_values(), problem.teacher.arch_values(),
                problem.student.weight_values(), 0.01, 0.01, 0.0, batches,
                diagnose=tf.constant(True))
            return result.grads, result.terms["teacher_val"]

        results.append(tf.function(step, autograph=False)())
    (whole, whole_teacher), (layerwise, layerwise_teacher) = results
    for w, l in zip(whole + whole_teacher, layerwise + layerwise_teacher):
        assert np.abs(w.numpy()).max() > 0
        np.testing.assert_allclose(l.numpy(), w.numpy(), rtol=1e-7, atol=1e-12)


def test_each_stage_makes_only_the_perturbed_weights_it_reads(float64):
    """stage_weights is applied where a stage first reads a weight: one perturbed copy of each
    weight per pass (every supernet weight belongs to one stage), not one per stage."""
    problem, images, _ = _case("real", True)
    made = []

    def perturbed(i, value):
        made.append(i)
        return value * 1.0

    stagewise.forward(problem.teacher, problem.teacher.weight_values(),
                      problem.teacher.arch_values(), images, stage_weights=perturbed)
    assert sorted(made) == list(range(len(problem.teacher.weight_names)))
