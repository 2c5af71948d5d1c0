"""Fixtures shared by the whole suite."""
import contextlib
import os

# TensorFlow keeps CPU allocator statistics (tf.config.experimental.get_memory_info, used by
# memory tests) with oneDNN, which it turns on by default only on CPUs with AVX-512-class
# features, or with its BFC allocator: set before TensorFlow starts, so that those tests run on
# every x86 CPU.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import keras  # noqa: E402
import pytest


@contextlib.contextmanager
def _keras_float64():
    """floatx AND the dtype policy: Keras caches the policy from floatx at the first layer made,
    so setting floatx alone can silently build float32 layers after other tests ran."""
    previous = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(previous[0])
        keras.config.set_dtype_policy(previous[1])


@pytest.fixture
def keras_float64():
    with _keras_float64():
        yield


@pytest.fixture(scope="module")
def keras_float64_module():
    with _keras_float64():
        yield


def read_tree(directory):
    """{relative path: bytes} of every file under `directory` (to show nothing was touched)."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = f.read()
    return found


@pytest.fixture
def directory_contents():
    return read_tree
