"""The fasterseg package's modules form layers: no import cycle, none hidden inside functions."""
import ast
import os
import subprocess
import sys

import lbt_tf.models.fasterseg as package

PACKAGE = package.__name__
FOLDER = os.path.dirname(package.__file__)
MODULES = sorted(f[:-3] for f in os.listdir(FOLDER) if f.endswith(".py") and f != "__init__.py")


def _package_imports(module):
    """[(imported module, at top level?)] of the package's own modules imported by `module`."""
    with open(os.path.join(FOLDER, module + ".py")) as f:
        tree = ast.parse(f.read())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
            names = [f"{PACKAGE}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            if name.startswith(PACKAGE + ".") and name.split(".")[-1] in MODULES:
                found.append((name.split(".")[-1], id(node) in top_level))
    return found


def test_no_import_cycle_and_no_imports_inside_functions():
    graph = {}
    for module in MODULES:
        imports = _package_imports(module)
        hidden = [name for name, top in imports if not top]
        assert not hidden, f"{module} imports {hidden} inside a function (hides a cycle)"
        graph[module] = {name for name, _ in imports}
    order, done = [], set()

    def visit(module, stack):
        assert module not in stack, f"import cycle: {' -> '.join(stack + [module])}"
        if module not in done:
            for dependency in sorted(graph[module]):
                visit(dependency, stack + [module])
            done.add(module)
            order.append(module)
    for module in MODULES:
        visit(module, [])
    assert graph["space"] == set() and order.index("space") == 0


def test_latency_table_machinery_knows_no_network():
    """latency_table.py (entries, timing, file, calibration fit) sits below the FasterSeg
    space's latency (latency.py): it builds single ops, never a supernet or derived network."""
    imported = {name for name, _ in _package_imports("latency_table")}
    assert imported <= {"space", "operations", "timing"}, imported
    assert "latency_table" in {name for name, _ in _package_imports("latency")}


def test_space_and_config_import_alone_without_tensorflow():
    """A fresh interpreter: the search-space vocabulary (and the config built on it) loads
    without TensorFlow or any other module of the package."""
    code = ("import sys, lbt_tf.config, lbt_tf.models.fasterseg.space as s; "
            "assert s.OP_NAMES and s.WIDTH_MULT_LIST; "
            "extra = sorted(m for m in sys.modules if m.startswith('lbt_tf.models.fasterseg.')); "
            "assert extra == ['lbt_tf.models.fasterseg.space'], extra; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    root = os.path.dirname(os.path.dirname(os.path.dirname(FOLDER)))
    env = dict(os.environ, PYTHONPATH=root)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
