"""Resizing that stays twice differentiable.

TF 2.21's bilinear resize kernels have no gradient-of-gradient: under nested GradientTapes the
outer gradient through `tf.image.resize` / Keras resizing is silently None (see
shared/notes/second-order-tf.md). The unrolled LBT hypergradient differentiates through a weight
step, so every resize on that path is written here as two interpolation matrices applied with
`einsum`, which TF differentiates to any order. The matrices are built with NumPy at trace time
(shapes are static inside the models), so they are constants of the graph.
"""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf


@functools.lru_cache(maxsize=256)
def interpolation_matrix(in_size: int, out_size: int, align_corners: bool = False) -> np.ndarray:
    """(out_size, in_size) linear interpolation weights along one axis.

    align_corners=False matches `tf.image.resize(..., "bilinear")` (half-pixel centres, no
    antialias); align_corners=True matches PyTorch's `align_corners=True` used by FasterSeg.
    """
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = np.arange(out_size) * scale
    else:
        scale = in_size / out_size
        src = (np.arange(out_size) + 0.5) * scale - 0.5
        src = np.clip(src, 0.0, in_size - 1)
    lower = np.floor(src).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = src - lower
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower), 1.0 - frac)
    np.add.at(matrix, (rows, upper), frac)
    return matrix


def _static_hw(x):
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        raise ValueError("resize_bilinear needs static spatial dimensions, got shape "
                         f"{x.shape}; use `resize_bilinear_dynamic` for serving graphs")
    return int(height), int(width)


def resize_bilinear(x, size, align_corners: bool = False, twice_differentiable: bool = True):
    """Bilinear resize of an NHWC tensor to `size` = (height, width), twice differentiable.

    twice_differentiable=False: TF's resize kernel, same values (to float rounding), for
    networks that are only trained first-order and deployed (the derived network): the dense
    einsum costs O(H_out * H_in) per column (561 ms for the final x8 upsampling at 512x1024,
    TF's kernel a few ms) and TFLite runs it as matmuls instead of RESIZE_BILINEAR.
    """
    in_h, in_w = _static_hw(x)
    out_h, out_w = int(size[0]), int(size[1])
    if (in_h, in_w) == (out_h, out_w):
        return x
    if not twice_differentiable:
        return tf.raw_ops.ResizeBilinear(images=x, size=[out_h, out_w], align_corners=align_corners,
                                         half_pixel_centers=not align_corners)
    rows = tf.constant(interpolation_matrix(in_h, out_h, align_corners), dtype=x.dtype)
    cols = tf.constant(interpolation_matrix(in_w, out_w, align_corners), dtype=x.dtype)
    return tf.einsum("oh,bhwc,pw->bopc", rows, x, cols)


def downsample_labels_nearest(labels, size):
    """Nearest-neighbour down-sampling of integer label maps [B, H, W] to `size`.

    Picks the source pixel at the centre of each output cell, as `tf.image.resize(nearest)`
    with half-pixel centres does; used for FasterSeg's 1/8-resolution search loss.
    """
    in_h, in_w = int(labels.shape[1]), int(labels.shape[2])
    out_h, out_w = int(size[0]), int(size[1])
    if (in_h, in_w) == (out_h, out_w):
        return labels
    rows = np.minimum(np.floor((np.arange(out_h) + 0.5) * in_h / out_h), in_h - 1).astype(np.int32)
    cols = np.minimum(np.floor((np.arange(out_w) + 0.5) * in_w / out_w), in_w - 1).astype(np.int32)
    return tf.gather(tf.gather(labels, rows, axis=1), cols, axis=2)
