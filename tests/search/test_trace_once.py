"""--trace_once (Learner's forward as one tf.function per `training`, called not inlined) gives
the same hypergradients as the inline forward: exact (second order through the function's
gradient) and finite differences, on the stand-in supernet and student (the real ones take
minutes on 2 cores)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lbt_tf import names
from lbt_tf.search import learner, stagewise, unrolled
from tests.search import models_under_test


@pytest.fixture(scope="module")
def float64(keras_float64_module):
    yield


def _batches(num_classes, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch, models_under_test.HEIGHT, models_under_test.WIDTH)

    def labeled():
        return (tf.constant(rng.normal(size=shape + (3,)), tf.float64),
                tf.constant(rng.integers(0, num_classes, size=shape), tf.int32))

    return learner.Batches(teacher_train=labeled(), teacher_val=labeled(),
                           student_train=labeled(), student_val=labeled(),
                           unlabeled=tf.constant(rng.normal(size=shape + (3,)), tf.float64))


def _lbt_gradient(models, batches, hypergrad, trace_once, **problem_options):
    """(the SearchProblem, its lbt hypergradient) on the stand-in supernet and student."""
    supernet, student = models
    problem = unrolled.SearchProblem(
        teacher=learner.Learner(supernet, supernet.arch_variables, trace_once),
        student=learner.Learner(student, trace_once=trace_once), ignore_label=255,
        pseudo_label_weight=0.7, **problem_options)
    return problem, problem.arch_gradient(
        "lbt", hypergrad, problem.teacher.weight_values(), problem.teacher.arch_values(),
        problem.student.weight_values(), 0.01, 0.01, 0.0, batches).grads


@pytest.mark.parametrize("hypergrad", names.HYPERGRADS)
def test_trace_once_gives_the_same_hypergradient(float64, hypergrad):
    supernet, student, num_classes = models_under_test.build("stand_in")
    batches = _batches(num_classes)
    results = [_lbt_gradient((supernet, student), batches, hypergrad, trace_once)
               for trace_once in (False, True)]
    problem = results[-1][0]
    assert problem.teacher._traced and problem.student._traced  # the traced path ran
    for inline, traced in zip(*(grads for _, grads in results)):
        np.testing.assert_allclose(traced.numpy(), inline.numpy(), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("mode,hypergrad,flag,expected", [
    ("lbt", "finite_difference", None, True), ("lbt", "exact", None, True),
    ("lbt", "hvp", None, False), ("lpt", "finite_difference", None, False),
    ("lbt", "finite_difference", False, False), ("lpt", "exact", True, True)])
def test_trace_once_default_is_on_for_lbt_but_hvp(mode, hypergrad, flag, expected):
    model = models_under_test.stand_in_search_model(mode, hypergrad, trace_once=flag)
    assert model.teacher_learner.trace_once is expected
    assert model.student_learner.trace_once is expected


@pytest.mark.parametrize("hypergrad", names.HYPERGRADS)
@pytest.mark.parametrize("trace_once", [False, True])
def test_recomputed_val_passes_give_the_same_hypergradient(float64, hypergrad, trace_once):
    """--recompute_activations: darts.py's val passes at T' through tf.recompute_grad (their
    backward redoes the forward) give the same hypergradient as kept activations."""
    supernet, student, num_classes = models_under_test.build("stand_in")
    batches = _batches(num_classes, seed=1)
    results = [_lbt_gradient((supernet, student), batches, hypergrad, trace_once,
                             recompute_activations=recompute)[1] for recompute in (False, True)]
    for kept, recomputed in zip(*results):
        assert np.abs(kept.numpy()).max() > 0
        np.testing.assert_allclose(recomputed.numpy(), kept.numpy(), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("mode,hypergrad,flag,expected", [
    ("lbt", "finite_difference", None, True), ("lbt", "hvp", None, True),
    ("lbt", "exact", None, True), ("lpt", "exact", None, False),
    ("lbt", "finite_difference", False, False), ("lbt", "exact", False, False)])
def test_recompute_activations_default(mode, hypergrad, flag, expected):
    model = models_under_test.stand_in_search_model(mode, hypergrad, recompute_activations=flag)
    assert model.problem.recompute_activations is expected


def _ancestors(op):
    """The names of every op `op` waits for in its graph (data and control inputs)."""
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        for parent in [t.op for t in current.inputs] + list(current.control_inputs):
            if parent.name not in seen:
                seen.add(parent.name)
                stack.append(parent)
    return seen


@pytest.mark.parametrize("trace_once", [False, True])
def test_recomputed_val_passes_run_after_the_soft_product_one_at_a_time(trace_once):
    """--recompute_activations (SearchProblem.recomputed_val_gradient): the recomputed passes
    start only once P's incoming gradient (the soft product) exists, and P's stage-by-stage
    backward only once L_t^val's whole gradient exists (then one gradient list and one stage's
    activations are alive beside T'; in the other order P's gradient list waited beside
    L_t^val's whole activations: the exact step's peak at the paper's setting). With
    `tf.recompute_grad` around both, the recomputation started at once (L_t^val's seed is a
    constant) and held both passes' activations through the student stages (2.6 GB)."""
    supernet, student, num_classes = models_under_test.build("stand_in")
    batches = _batches(num_classes, seed=2)
    problems = []

    def hypergradient():
        problem, grads = _lbt_gradient((supernet, student), batches, "finite_difference",
                                       trace_once, recompute_activations=True)
        problems.append(problem)
        return grads

    graph = tf.function(hypergradient).get_concrete_function().graph
    # finite_difference.py's soft product: the student's forward at S - eps u (its arch
    # product's scopes, made later, are fd_minus_1/...).
    soft_product = {op.name for op in graph.get_operations() if op.name.startswith("fd_minus/")}
    if trace_once:  # one function for both passes: its call waits for the soft product
        calls = [op for op in graph.get_operations() if op.type.endswith("PartitionedCall")
                 and "val_gradient" in op.get_attr("f").name]
        assert len(calls) == 1 and soft_product & _ancestors(calls[0])
        graph = problems[0].teacher.traced("val_gradient", None).get_concrete_function(
            *[tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), group)
              for group in _val_gradient_arguments(calls[0], problems[0])]).graph
    probs_pass = [op for op in graph.get_operations() if "probs_pass/" in op.name]
    val_pass = [op for op in graph.get_operations() if "val_pass/" in op.name]
    assert probs_pass and val_pass
    ancestors = {op.name: _ancestors(op) for op in probs_pass + val_pass}
    if not trace_once:  # (placeholders: values captured from outside, not computation)
        assert all(soft_product & ancestors[op.name] for op in val_pass
                   if op.type != "Placeholder")
    # L_t^val's gradient: what P's stage gradients are added to; every op of P's pass (the
    # stages' recomputed forwards included) must wait for all of it.
    val_gradient = {t.op.name for op in graph.get_operations() if op.type in ("Add", "AddV2")
                    and any("probs_pass/" in t.op.name for t in op.inputs)
                    for t in op.inputs if "val_pass/" in t.op.name}
    assert len(val_gradient) >= len(supernet.trainable_variables)
    for op in probs_pass:
        assert val_gradient <= ancestors[op.name], op.name


def _val_gradient_arguments(call, problem):
    """The val_gradient call's inputs grouped as its Python arguments (weights, arch, val
    images, val labels, D_u images, P's stage inputs, P's seed; then come the captured
    variables)."""
    inputs = list(call.inputs)
    num_t, num_a = len(problem.teacher.weight_names), len(problem.teacher.arch_names)
    images = inputs[num_t + num_a + 2]
    _, checkpoints = stagewise.forward(  # for their structure
        problem.teacher, problem.teacher.weight_values(), problem.teacher.arch_values(),
        tf.zeros(images.shape, images.dtype))
    rest = inputs[num_t + num_a + 3:]
    num_c = len(tf.nest.flatten(checkpoints))
    return ([inputs[:num_t], inputs[num_t:num_t + num_a]] + inputs[num_t + num_a:][:3]
            + [tf.nest.pack_sequence_as(checkpoints, rest[:num_c]), rest[num_c]])
