"""How large the traced search step is, and where: node counts of its graph and its functions.

    python bench/step_graph.py --flagfile=configs/cityscapes_search.flags --data_source=synthetic \
        --graph_mode=lbt-finite_difference [--top=20]

Traces the search step (the model's `train_step` in a `tf.function`, in the config's strategy as
Keras runs it, on one batch; not run) and
prints, per kind of function (its name without TensorFlow's prefixes and numeric suffixes; a
gradient's forward and backward variants apart): how many there are, their nodes, and how many
call sites the step's functions have for them. The graph is what the first step pays for twice:
Python builds it (the trace) and the runtime instantiates every function of it on the first call
(docs/paper_scale_log.md: the runtime's first-call work grows with call sites x callee size, see
"call tree").
Also the total nodes and call sites, and the "call tree": the nodes reached through every call
site, each callee counted with everything it calls (what TensorFlow's XLA clustering pass, which
runs on every instantiated function, converts per call site even without XLA).
"""
from __future__ import annotations

import collections
import functools
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from lbt_tf import config as config_lib  # noqa: E402
from lbt_tf import flags as lbt_flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from search_step import MODES  # noqa: E402  (the bench's mode names)

flags.DEFINE_enum("graph_mode", "lbt-finite_difference", list(MODES), "The mode to trace.")
flags.DEFINE_integer("top", 20, "Kinds of function to print (largest first).")

def function_kind(name):
    """A function's name without TensorFlow's prefix and numeric suffixes, its gradient
    variant kept: '__inference_loss_gradient_1234' -> 'loss_gradient',
    '__forward_mixed_forward_99' -> 'forward of mixed_forward'."""
    variant = ""
    for prefix, label in (("__inference___backward_", "backward of "),
                          ("__inference___forward_", "forward of "),
                          ("__backward_", "backward of "), ("__forward_", "forward of "),
                          ("__inference_", "")):
        if name.startswith(prefix):
            name, variant = name[len(prefix):], label
            break
    return variant + re.sub(r"(_\d+)+$", "", name)


def callees(nodes, library):
    """The names of `library`'s functions called by these NodeDefs, one entry per call site:
    a node whose op is a library function, or its function-valued attributes (call ops' `f`,
    control-flow branches), as TensorFlow's clustering pass finds them."""
    names = []
    for node in nodes:
        if node.op in library:
            names.append(node.op)
            continue
        for value in node.attr.values():
            if value.HasField("func"):
                names.append(value.func.name)
            elif value.HasField("list"):
                names.extend(f.name for f in value.list.func)
    return [name for name in names if name in library]


def graph_summary(graph_def):
    """(rows per kind: [kind, functions, nodes, call sites], totals dict) of a GraphDef with
    its function library."""
    bodies = {f.signature.name: f.node_def for f in graph_def.library.function}
    calls = {name: callees(body, bodies) for name, body in bodies.items()}
    step_calls = callees(graph_def.node, bodies)

    @functools.lru_cache(maxsize=None)
    def tree(name):  # nodes reached by calling `name`, callees included, per call
        return len(bodies[name]) + sum(tree(c) for c in calls[name])

    sites = collections.Counter(step_calls)
    for called in calls.values():
        sites.update(called)
    kinds = collections.defaultdict(lambda: [0, 0, 0])
    for name, body in bodies.items():
        row = kinds[function_kind(name)]
        row[0] += 1
        row[1] += len(body)
        row[2] += sites[name]
    rows = sorted(([k] + v for k, v in kinds.items()), key=lambda r: -r[2])
    totals = {
        "step_nodes": len(graph_def.node),
        "functions": len(bodies),
        "function_nodes": sum(len(b) for b in bodies.values()),
        "call_sites": sum(sites.values()),
        "call_tree_nodes": sum(tree(name) * count for name, count in sites.items()),
    }
    return rows, totals


def main(argv):
    del argv
    import tensorflow as tf

    from lbt_tf.search import runner

    config = lbt_flags.build_config()
    mode, hypergrad = MODES[flags.FLAGS.graph_mode]
    config = config_lib.replace(config, **{"search.mode": mode, "search.hypergrad": hypergrad})
    with runner.fast_graph_compilation(), runner.make_strategy(config.search).scope():
        model = runner.build_search_model(config)
        model.set_phase("search")
        train, _, _ = runner.make_search_input(config, mode, config.seed)
        batch = next(iter(train))
        print("tracing the step ...", flush=True)
        start = time.perf_counter()
        strategy = tf.distribute.get_strategy()  # the step runs in a replica, as Keras' does
        concrete = tf.function(
            lambda data: strategy.run(model.train_step, args=(data,))
        ).get_concrete_function(batch)
        print(f"traced in {time.perf_counter() - start:.1f} s", flush=True)
        graph_def = concrete.graph.as_graph_def()
    rows, totals = graph_summary(graph_def)
    print(" ".join(f"{k}={v}" for k, v in totals.items()))
    print("\n| function kind | functions | nodes | call sites |\n|---|---|---|---|")
    for kind, count, nodes, sites in rows[:flags.FLAGS.top]:
        print(f"| {kind} | {count} | {nodes} | {sites} |")


if __name__ == "__main__":
    app.run(main)
