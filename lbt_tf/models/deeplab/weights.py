"""Loading the student's weights from local files (nothing is downloaded).

Two kinds of file:
- Keras' ResNet50 ImageNet weights (`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`), the
  legacy Keras HDF5 layout: root attribute `layer_names`; per layer a group `<layer>` with
  attribute `weight_names` (e.g. `conv1_conv/kernel:0`) naming datasets inside the group. Keras'
  convs have a bias before each BatchNorm; our backbone has none, so each bias is folded into the
  BN's moving mean (BN(conv(x) + b) with mean m equals BN(conv(x)) with mean m - b).
- A `.weights.h5` of our own model (`model.save_weights`), loaded with Keras.

Keras' ImageNet weights expect caffe preprocessing (BGR, 0..255, minus the ImageNet mean pixel).
Given the data pipeline's `input_mean`/`input_std` (RGB, 0..1 scale), that affine map is folded
into `conv1_conv` too, so the model takes the pipeline's normalised RGB images directly.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import h5py
import numpy as np

from lbt_tf.errors import WeightsError

# keras.applications.imagenet_utils "caffe" mode: mean pixel subtracted, BGR order.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def _decode(value):
    return value.decode("utf8") if hasattr(value, "decode") else str(value)


def _legacy_root(h5file):
    """The group holding `layer_names` (the file root, or `model_weights` of a full-model save)."""
    if "layer_names" in h5file.attrs:
        return h5file
    if "model_weights" in h5file and "layer_names" in h5file["model_weights"].attrs:
        return h5file["model_weights"]
    return None


def read_legacy_h5_weights(path: str) -> Dict[str, Dict[str, np.ndarray]]:
    """{layer name: {"kernel"/"bias"/"gamma"/...: array}} from a legacy Keras .h5 weights file."""
    try:
        with h5py.File(path, "r") as h5file:
            root = _legacy_root(h5file)
            if root is None:
                raise WeightsError(f"{path}: not a Keras ResNet50 weights file (no 'layer_names' "
                                   "attribute); pass Keras' resnet50 ..._notop.h5 or a "
                                   ".weights.h5 saved from this model")
            layers = {}
            for layer_name in (_decode(n) for n in root.attrs["layer_names"]):
                group = root[layer_name]
                weights = {}
                for weight_name in (_decode(n) for n in group.attrs.get("weight_names", [])):
                    short = weight_name.split("/")[-1].split(":")[0]
                    weights[short] = np.asarray(group[weight_name])
                if weights:
                    layers[layer_name] = weights
            return layers
    except WeightsError:
        raise
    except (OSError, KeyError) as error:
        raise WeightsError(f"{path}: cannot read as a Keras HDF5 weights file ({error})") from None


def _fold_input_normalization(kernel, input_mean, input_std):
    """conv1 kernel and bias taking RGB (x - mean) / std instead of caffe-preprocessed BGR.

    caffe input x_k[j] = 255 * (std[c] x[c] + mean[c]) - caffe_mean[j] with c = 2 - j, so the
    kernel is channel-flipped and scaled by 255 std, and the constant becomes a bias. Exact
    except where the 7x7 conv reads zero padding, whose value differs by 255 mean - caffe mean
    (under half a grey level for ImageNet's mean/std).
    """
    mean = np.asarray(input_mean, dtype=np.float64)
    std = np.asarray(input_std, dtype=np.float64)
    if mean.shape != (3,) or std.shape != (3,) or kernel.shape[2] != 3:
        raise WeightsError(f"input normalisation needs 3-channel mean/std and RGB input, got "
                           f"mean={input_mean}, std={input_std}")
    flipped = kernel[:, :, ::-1, :].astype(np.float64)        # index c now reads BGR 2 - c
    new_kernel = flipped * (255.0 * std)[None, None, :, None]
    offset_bgr = 255.0 * mean[::-1] - CAFFE_MEAN_BGR
    bias = np.einsum("hwjo,j->o", kernel.astype(np.float64), offset_bgr)
    return new_kernel, bias


def load_keras_resnet50_h5(model, path: str, input_mean: Optional[Sequence[float]] = None,
                           input_std: Optional[Sequence[float]] = None) -> int:
    """Loads Keras' ResNet50 (legacy .h5) weights into the backbone; returns layers loaded.

    Every conv/BN layer of the file must exist in `model` with the same shapes (a backbone with
    fewer blocks or another width is an error naming the file); the heads keep their init.
    """
    file_layers = read_legacy_h5_weights(path)
    model_layers = {layer.name: layer for layer in model.layers}
    folded_bias = {}
    assignments = []  # (layer, [arrays]) checked first, assigned only if the whole file fits
    for name, weights in file_layers.items():
        if name not in model_layers:
            raise WeightsError(f"{path}: layer '{name}' is not in the model (does "
                               "--student_blocks / --student_base_width match ResNet-50?)")
        if "kernel" in weights:
            kernel, bias = weights["kernel"], weights.get("bias")
            bias = np.zeros(kernel.shape[-1]) if bias is None else bias.astype(np.float64)
            if name == "conv1_conv" and input_mean is not None and input_std is not None:
                kernel, input_bias = _fold_input_normalization(kernel, input_mean, input_std)
                bias = bias + input_bias
            if name.endswith("_conv"):
                folded_bias[name[:-len("_conv")] + "_bn"] = bias
            assignments.append((model_layers[name], [kernel]))
        elif "gamma" in weights:
            assignments.append((model_layers[name], weights))
        else:
            raise WeightsError(f"{path}: layer '{name}' has weights {sorted(weights)}, expected a "
                               "conv (kernel, bias) or BatchNorm (gamma, beta, moving_*)")
    backbone = [layer.name for layer in model.layers
                if layer.name.startswith("conv") and layer.weights]
    missing = [name for name in backbone if name not in file_layers]
    if missing:
        raise WeightsError(f"{path}: has no weights for the model's backbone layers "
                           f"{missing[:4]}{'...' if len(missing) > 4 else ''}")
    resolved = []
    for layer, weights in assignments:
        if isinstance(weights, dict):
            weights = [weights["gamma"], weights["beta"],
                       weights["moving_mean"] - folded_bias.get(layer.name, 0.0),
                       weights["moving_variance"]]
        expected = [tuple(v.shape) for v in layer.weights]
        got = [tuple(np.shape(w)) for w in weights]
        if expected != got:
            raise WeightsError(f"{path}: layer '{layer.name}' has weight shapes {got}, the model "
                               f"expects {expected}")
        resolved.append((layer, weights))
    for layer, weights in resolved:
        layer.set_weights([np.asarray(w, dtype=v.dtype) for w, v in zip(weights, layer.weights)])
    return len(resolved)


def load_pretrained(model, path: str, input_mean: Optional[Sequence[float]] = None,
                    input_std: Optional[Sequence[float]] = None):
    """Loads `path` into the student: Keras' ResNet50 .h5 or a .weights.h5 of this model.

    input_mean/input_std: the data pipeline's RGB normalisation, folded into conv1 when loading
    Keras' caffe-preprocessed ImageNet weights (ignored for our own .weights.h5). Raises
    `WeightsError` naming the path on a missing, unreadable or mismatching file.
    """
    if not path or not os.path.isfile(path):
        raise WeightsError(f"--student_weights={path!r}: no such file")
    if not h5py.is_hdf5(path):
        raise WeightsError(f"--student_weights={path!r}: not an HDF5 weights file")
    if path.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except (ValueError, KeyError, OSError) as error:
            raise WeightsError(f"--student_weights={path!r}: does not fit the student built "
                               f"from the student flags ({error})") from None
        return model
    load_keras_resnet50_h5(model, path, input_mean, input_std)
    return model
