"""Function-call ops traced without TensorFlow's shape inference into the callee.

Creating a call op in a graph (TF 2.21: `atomic_function.make_call_op_in_graph`) runs the
graph's shape refiner over the whole callee body, and over every function that body calls, again
at each call site (shape_refiner.cc caches the callee's graph, not its inference). The search
step calls the supernet's cell functions, their gradient functions and the traced products at
hundreds of sites, nested up to four deep, so a large part of its trace was this inference
(paper setting, exact: 47% of a 40-s sample of its trace in creating call ops; trace
101 -> 78-85 s with this; docs/paper_scale_log.md, "Twelfth session"). Python sets every call's
output shapes from the callee's signature right after (`AtomicFunction.call_flat`): where those
are fully known, the trace uses nothing the inference finds. The refiner skips a call op whose node
carries `_disable_call_shape_inference=true`; TF sets that attribute only on its TF1 `Defun`
calls, so `skipped()` adds it to the call ops TF makes while it is entered whose callee's output
shapes are fully known (a forward-mode jvp function's may not be: those keep the inference). Nothing
else changes: the runtime never runs this inference, and the same ops and values result
(tests/search/test_call_shapes.py).
"""
from __future__ import annotations

import contextlib
import threading

from absl import logging
from tensorflow.core.framework import attr_value_pb2
from tensorflow.python.eager.polymorphic_function import atomic_function
from tensorflow.python.framework import ops

ATTRIBUTE = "_disable_call_shape_inference"
_SKIP = {ATTRIBUTE: attr_value_pb2.AttrValue(b=True)}
_lock = threading.Lock()
_state = {"depth": 0, "make_call": None}


def _make_call_skipping_inference(atomic, tensor_inputs, context_call_attrs):
    """`atomic_function.make_call_op_in_graph` whose call op carries _SKIP while skipped() is
    entered and every output shape of the callee's signature is fully known (those shapes then
    replace the inference's; otherwise, e.g. forward-mode's jvp functions, inference stays)."""
    make_call = _state["make_call"]
    if _state["depth"] == 0 or not all(
            output.shape.is_fully_defined() for output in atomic.function_type.flat_outputs):
        return make_call(atomic, tensor_inputs, context_call_attrs)
    graph = ops.get_default_graph()
    create_op = graph.create_op

    def create_op_skipping(op_type, inputs, dtypes=None, name=None, attrs=None, **kw):
        return create_op(op_type, inputs, dtypes, name=name, attrs={**(attrs or {}), **_SKIP},
                         **kw)

    graph.create_op = create_op_skipping  # the call op, the one op made in make_call
    try:
        return make_call(atomic, tensor_inputs, context_call_attrs)
    finally:
        del graph.create_op


@contextlib.contextmanager
def skipped():
    """Call ops made inside carry `_disable_call_shape_inference` (reentrant, any thread: a
    replica thread of MirroredStrategy traces the step inside its own `skipped()`)."""
    with _lock:
        if _state["make_call"] is None and hasattr(atomic_function, "make_call_op_in_graph"):
            _state["make_call"] = atomic_function.make_call_op_in_graph
            atomic_function.make_call_op_in_graph = _make_call_skipping_inference
        installed = _state["make_call"] is not None
        _state["depth"] += installed
    if not installed:
        logging.warning("this TensorFlow has no atomic_function.make_call_op_in_graph: call ops "
                        "keep their shape inference (only the trace is slower)")
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= installed
