"""The exact teacher product one supernet stage at a time (search/layerwise.py) gives the
whole-pass product's values: float64, in a graph (the only place it runs), on the real tiny
supernet (stem, layers, heads; Gumbel-sampled widths and fixed ones) and on the stand-in."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.search import layerwise
from lbt_tf.search.reverse_over_reverse import symbolic_product
from tests.search import models_under_test


@pytest.fixture(scope="module")
def float64(keras_float64_module):
    yield


def _case(which, sample_widths, seed=0):
    problem = models_under_test.teacher_problem(which, sample_widths)
    num_classes = models_under_test.NUM_CLASSES
    rng = np.random.default_rng(seed)
    h, w = models_under_test.HEIGHT, models_under_test.WIDTH
    labels = rng.integers(0, num_classes, size=(2, h, w)).astype(np.int32)
    labels[:, :3] = 255
    batch = (tf.constant(rng.normal(size=(2, h, w, 3)), tf.float64), tf.constant(labels))
    weights, arch = problem.teacher.weight_values(), problem.teacher.arch_values()
    v = [tf.constant(rng.normal(size=t.shape), tf.float64) for t in weights]
    return problem, weights, arch, v, batch


@pytest.mark.parametrize("which,sample_widths", [("real", True), ("stand_in", False)])
def test_layerwise_product_equals_the_whole_pass_product(float64, which, sample_widths):
    problem, weights, arch, v, batch = _case(which, sample_widths)
    stages = problem.teacher.model.stages()
    assert len(stages) >= 3, "the product must be checked across several stages"

    @tf.function(autograph=False)
    def both(weights, arch, v):
        return (layerwise.layerwise_product(problem, weights, arch, v, batch),
                symbolic_product(problem, weights, arch, v, batch))

    got, expected = both(weights, arch, v)
    assert len(got) == len(arch)
    assert any(np.abs(e.numpy()).max() > 1e-6 for e in expected)
    for name, g, e in zip(problem.teacher.arch_names, got, expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-8, atol=1e-10, err_msg=name)


def test_search_step_uses_the_layerwise_product_when_asked(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    real = layerwise.layerwise_product
    monkeypatch.setattr(layerwise, "layerwise_product", spy)
    model = models_under_test.stand_in_search_model("lbt", "exact", arch_product="layerwise",
                                                    warmup_epochs=0)
    model.set_phase("search")
    arch_before = models_under_test.values(model.teacher_learner.arch_variables)
    history = model.fit(models_under_test.search_dataset(2), epochs=1, verbose=0, shuffle=False)
    assert calls, "the traced step did not take the layerwise product"
    assert np.isfinite(history.history["arch_objective"][-1])
    assert any(np.abs(b - v.numpy()).max() > 0
               for b, v in zip(arch_before, model.teacher_learner.arch_variables))
