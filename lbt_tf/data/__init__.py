"""Data layer of lbt_tf: Cityscapes labels, synthetic street scenes, Cityscapes readers, the LBT
splits and their tf.data pipelines.

Exports resolve lazily (PEP 562), so `lbt_tf.data.labels` / `.synthetic` / `.splits` do not
import TensorFlow.
"""
import importlib

_EXPORTS = {
    "CITYSCAPES_PALETTE": "lbt_tf.data.labels", "TRAIN_ID_NAMES": "lbt_tf.data.labels",
    "LBTSplits": "lbt_tf.data.splits", "Source": "lbt_tf.data.splits",
    "make_splits": "lbt_tf.data.splits",
    "make_dataset": "lbt_tf.data.pipeline", "make_unlabeled_dataset": "lbt_tf.data.pipeline",
    "denormalize": "lbt_tf.data.pipeline",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lbt_tf.data' has no attribute {name!r}")


def __dir__():
    return __all__
