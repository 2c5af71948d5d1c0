"""FasterSeg's search space in Keras 3: supernet, latency tables, derivation, derived network.

The public names below load their module on first use (PEP 562), so that importing the
TensorFlow-free `space` (as lbt_tf.config does, for the default widths) loads nothing else.
"""
import importlib

_EXPORTS = {"build_supernet": "supernet", "FasterSegSupernet": "supernet",
            "build_derived_network": "derived", "derive_architecture": "genotype",
            "save_architecture": "genotype", "load_architecture": "genotype",
            "import_fasterseg": "genotype", "LatencyTable": "latency_table"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
