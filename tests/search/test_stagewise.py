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
    supernet, _, _ = models_under_test.build(which, cell_tracing="shared")
    supernet.sample_widths = sample_widths
    problem = unrolled.SearchProblem(
        teacher=learner.Learner(supernet, supernet.arch_variables), student=None,
        ignore_label=255)
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
def test_perturbed_arch_gradient_equals_the_whole_pass_one(float64, which, sample_widths, graph):
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
        got = problem.perturbed_arch_gradient(weights, arch, v, step, batch, "test")
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
    real = unrolled.SearchProblem.perturbed_arch_gradient

    def spy(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(unrolled.SearchProblem, "perturbed_arch_gradient", spy)
    model = models_under_test.stand_in_search_model("lbt", "finite_difference",
                                                    arch_product="layerwise", warmup_epochs=0)
    model.set_phase("search")
    arch_before = models_under_test.values(model.teacher_learner.arch_variables)
    history = model.fit(models_under_test.search_dataset(2), epochs=1, verbose=0, shuffle=False)
    assert len(calls) >= 2, "the traced step did not take the stagewise passes (plus and minus)"
    assert np.isfinite(history.history["arch_objective"][-1])
    assert any(np.abs(b - v.numpy()).max() > 0
               for b, v in zip(arch_before, model.teacher_learner.arch_variables))
