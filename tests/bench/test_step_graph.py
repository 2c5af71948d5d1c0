"""bench/step_graph.py counts a traced step's functions, call sites and call tree right."""
from __future__ import annotations

import functools
import importlib.util
import os

import tensorflow as tf

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "step_graph.py")


@functools.lru_cache(maxsize=None)
def load_step_graph():  # once: the module defines absl flags
    spec = importlib.util.spec_from_file_location("step_graph", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_function_kinds_call_sites_and_call_tree():
    step_graph = load_step_graph()

    def cell(x):
        return tf.sin(x) * 2.0

    def stage(x):
        return cell_fn(x) + cell_fn(x + 1.0)

    cell_fn = tf.function(cell, experimental_attributes={"_noinline": True})
    stage_fn = tf.function(stage, experimental_attributes={"_noinline": True})

    @tf.function
    def step(x):
        return stage_fn(x) + stage_fn(x * 3.0) + cell_fn(x)

    graph_def = step.get_concrete_function(tf.TensorSpec([4])).graph.as_graph_def()
    rows, totals = step_graph.graph_summary(graph_def)
    by_kind = {kind: (count, nodes, sites) for kind, count, nodes, sites in rows}
    cell_nodes, stage_nodes = by_kind["cell"][1], by_kind["stage"][1]
    # call sites: stage twice from the step; cell once from the step and twice in stage
    assert by_kind["cell"][0] == by_kind["stage"][0] == 1
    assert by_kind["stage"][2] == 2 and by_kind["cell"][2] == 3
    assert totals == {
        "step_nodes": len(graph_def.node), "functions": 2,
        "function_nodes": cell_nodes + stage_nodes, "call_sites": 5,
        # each call of stage reaches its own nodes and cell's twice
        "call_tree_nodes": 2 * (stage_nodes + 2 * cell_nodes) + cell_nodes + 2 * cell_nodes}
    assert stage_nodes > cell_nodes > 0


def test_function_kind_names():
    kind = load_step_graph().function_kind
    assert kind("__inference_loss_gradient_1234") == "loss_gradient"
    assert kind("__forward_mixed_forward_99") == "forward of mixed_forward"
    assert kind("__inference___backward_mixed_forward_99_120") == "backward of mixed_forward"
    assert kind("__inference_probs_checkpointed_5_77") == "probs_checkpointed"
