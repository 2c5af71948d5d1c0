"""Function-call ops traced without TensorFlow's shape inference into the callee.

Creating a call op in a graph (TF 2.21: `atomic_function.make_call_op_in_graph`) runs the
graph's shape refiner over the whole callee body, and over every function that body calls, again
at each call site (shape_refiner.cc caches the callee's graph, not its inference). The search
step calls the supernet's cell functions, their gradient functions and the traced products at
hundreds of sites, nested up to four deep, so a large part of its trace was this inference
(paper setting, exact: 35% of the trace in creating call ops; README, "Twelfth session"). Python
sets every call's output shapes from the callee's signature right after
(`AtomicFunction.call_flat`), so the trace uses nothing the inference finds. The refiner skips a
call op whose node carries `_disable_call_shape_inference=true`; TF sets that attribute only on
its TF1 `Defun` calls, so `skipped()` adds it to the call ops TF makes while it is entered.
Nothing else changes: the runtime never runs this inference, and the same ops and values result
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
_state = {"depth": 0, "create_call": None}


def _create_call_without_inference(*args, **kwargs):
    """`atomic_function.partitioned_call_op` whose op carries _SKIP while skipped() is entered."""
    create_call = _state["create_call"]
    if _state["depth"] == 0:
        return create_call(*args, **kwargs)
    graph = ops.get_default_graph()
    create_op = graph.create_op

    def create_op_skipping(op_type, inputs, dtypes=None, name=None, attrs=None, **kw):
        return create_op(op_type, inputs, dtypes, name=name, attrs={**(attrs or {}), **_SKIP},
                         **kw)

    graph.create_op = create_op_skipping  # the one op partitioned_call_op creates
    try:
        return create_call(*args, **kwargs)
    finally:
        del graph.create_op


@contextlib.contextmanager
def skipped():
    """Call ops made inside carry `_disable_call_shape_inference` (reentrant, any thread: a
    replica thread of MirroredStrategy traces the step inside its own `skipped()`)."""
    with _lock:
        if _state["create_call"] is None and hasattr(atomic_function, "partitioned_call_op"):
            _state["create_call"] = atomic_function.partitioned_call_op
            atomic_function.partitioned_call_op = _create_call_without_inference
        installed = _state["create_call"] is not None
        _state["depth"] += installed
    if not installed:
        logging.warning("this TensorFlow has no atomic_function.partitioned_call_op: call ops "
                        "keep their shape inference (only the trace is slower)")
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= installed
