"""The unrolled step's stages are sequenced in the graph (learner.after: at most one perturbed
copy of the weights alive at a time) and the sequencing leaves the values unchanged: the
finite-difference hypergradient traced in a tf.function equals the eager one, which runs the same
ops in program order (stand-in models, float64)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.search import learner, unrolled
from tests.search import models_under_test
from tests.search.test_trace_once import _ancestors, _batches


@pytest.fixture(scope="module")
def float64(keras_float64_module):
    yield


def _problem():
    supernet, student, num_classes = models_under_test.build("stand_in")
    problem = unrolled.SearchProblem(
        teacher=learner.Learner(supernet, supernet.arch_variables),
        student=learner.Learner(student), ignore_label=255, pseudo_label_weight=0.7,
        latency_fn=supernet.expected_latency)
    return problem, _batches(num_classes)


def _gradient(problem, batches, diagnose):
    result = problem.arch_gradient(
        "lbt", "finite_difference", problem.teacher.weight_values(),
        problem.teacher.arch_values(), problem.student.weight_values(), 0.01, 0.01, 0.05,
        batches, diagnose)
    return result.grads, result.terms.get("teacher_val")


def test_sequenced_graph_gives_the_eager_values(float64):
    problem, batches = _problem()
    eager = _gradient(problem, batches, tf.constant(True))
    graph = tf.function(lambda: _gradient(problem, batches, tf.constant(True)))()
    for got, expected in zip(graph[0] + graph[1], eager[0] + eager[1]):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-10, atol=1e-14)
    assert float(tf.reduce_max(tf.abs(graph[1][0]))) > 0  # the diagnostic branch ran


def test_minus_copies_wait_for_the_plus_pass(float64):
    problem, batches = _problem()
    graph = tf.function(lambda: _gradient(problem, batches, None)).get_concrete_function().graph
    ops = graph.get_operations()
    # The first ops of each fd_minus scope (T - eps v, S - eps u) have control inputs from the
    # fd_plus pass of the same product: two products, each sequenced.
    def scope(op, name):
        return next((part for part in op.name.split("/") if part.startswith(name)), None)

    def waits_for_plus(op):  # through the NoOp that learner.after makes
        return any(scope(c, "fd_plus") or (c.type == "NoOp" and waits_for_plus(c))
                   for c in op.control_inputs)

    minus_ops = [op for op in ops if scope(op, "fd_minus")]
    sequenced = {scope(op, "fd_minus") for op in minus_ops if waits_for_plus(op)}
    assert len(sequenced) == 2, sorted(op.name for op in minus_ops)[:20]
    # One control edge (a NoOp) per enclosing `after`, not one per weight tensor.
    assert max(len(op.control_inputs) for op in minus_ops) <= 4


def test_real_weight_step_runs_one_pass_at_a_time():
    """lpt's real weight step: the student's pseudo-label pass starts after its own training
    pass's gradient, and the teacher's gradient after both (without an order the runtime
    overlapped them in some runs: lpt's peak tensors at the paper's setting 5.4-7.1 GB)."""
    model = models_under_test.stand_in_search_model("lpt")
    model.set_phase("search")
    data = next(iter(models_under_test.search_dataset(1)))
    graph = tf.function(model.train_step).get_concrete_function(data).graph
    ops = graph.get_operations()

    def scope(name):
        return [op for op in ops if f"{name}/" in op.name]

    def first_ops(scope_ops):  # those that wait for no other op of their scope
        names = {op.name for op in scope_ops}
        return [op for op in scope_ops if not names & _ancestors(op)]

    def filter_gradients(scope_ops):
        return {op.name for op in scope_ops if op.type == "Conv2DBackpropFilter"}

    student_pass, pseudo_label_pass = scope("student_pass"), scope("pseudo_label_pass")
    teacher_step = scope("teacher_weight_step")
    assert filter_gradients(student_pass) and filter_gradients(pseudo_label_pass)
    for op in first_ops(pseudo_label_pass):
        assert filter_gradients(student_pass) <= _ancestors(op), op.name
    for op in first_ops(teacher_step):
        assert filter_gradients(student_pass + pseudo_label_pass) <= _ancestors(op), op.name


@pytest.mark.parametrize("hypergrad", ["exact", "finite_difference"])
def test_real_weight_step_waits_for_the_diagnostic_terms(hypergrad):
    """The hypergradient's diagnostic split (a tf.cond, every --arch_signal_every steps) runs
    before the real weight step, not beside it (FD at the paper's setting: its diagnostic steps
    peaked 0.9 GB higher than the others while the two overlapped)."""
    model = models_under_test.stand_in_search_model("lbt", hypergrad, keep_step_gradients=False)
    model.set_phase("search")
    data = next(iter(models_under_test.search_dataset(1)))
    graph = tf.function(model.train_step).get_concrete_function(data).graph
    # The diagnostic cond: its predicate is arch_steps % every == 0 (the others: finiteness).
    conds = {op.name for op in graph.get_operations() if op.type in ("If", "StatelessIf")
             and op.inputs[0].op.type == "Equal"}
    teacher_step = [op for op in graph.get_operations() if "teacher_weight_step/" in op.name]
    assert conds and teacher_step
    for op in teacher_step:
        assert conds <= _ancestors(op), op.name
