"""FasterSeg's search space as data: operators, widths, scales, arch tensor shapes, wiring rules.

The supernet, the derivation (genotype, derived) and the latency model all read the space from
here; this module imports nothing else of lbt_tf (and no TensorFlow), so it sits at the bottom
of the package's layering:
  space <- operations <- genotype <- derived <- latency <- supernet <- describe
"""
from __future__ import annotations

# Operator order is FasterSeg's (genotypes.PRIMITIVES); see operations.py for what each does.
OP_NAMES = ("skip", "conv", "conv_downup", "conv_2x", "conv_2x_downup")
# FasterSeg's class names for the same operators, used in latency-table keys.
OP_TABLE_NAMES = ("FactorizedReduce", "BasicResidual1x", "BasicResidual_downup_1x",
                  "BasicResidual2x", "BasicResidual_downup_2x")
# FasterSeg's expansion ratios of a cell's width (search/model_search.py: width_mult_list).
WIDTH_MULT_LIST = (4.0 / 12, 6.0 / 12, 8.0 / 12, 10.0 / 12, 1.0)
# Scales 0/1/2 of the cells and the output stride of a branch ending there.
OUTPUT_STRIDES = (8, 16, 32)
NUM_SCALES = len(OUTPUT_STRIDES)


def searched_widths(teacher_config):
    """The width ratios gamma chooses from; (1.0,) when widths are not searched."""
    widths = tuple(float(w) for w in teacher_config.width_mult_list)
    if teacher_config.search_widths and len(widths) > 1:
        return widths
    return (1.0,)


def arch_variable_shapes(layers: int, n_widths: int):
    """Name -> shape of every architecture variable, in `arch_variables` order."""
    n_ops = len(OP_NAMES)
    shapes = {"alpha_0": (layers, n_ops), "alpha_1": (layers - 1, n_ops),
              "alpha_2": (layers - 2, n_ops), "beta_1": (layers - 2, 2), "beta_2": (layers - 3, 2)}
    if n_widths > 1:
        shapes.update({"gamma_0": (layers - 1, n_widths), "gamma_1": (layers - 1, n_widths),
                       "gamma_2": (layers - 2, n_widths)})
    return shapes


def gamma_row(layer: int, scale: int) -> int:
    """Row of gamma_scale holding the width of the feature map at (layer, scale)."""
    return layer - 1 if scale == 2 else layer


def cell_scales(layer: int):
    """Scales of the cells of `layer`: scale j exists from layer j on."""
    return range(min(layer, NUM_SCALES - 1) + 1)


def has_down(layer: int, scale: int, layers: int) -> bool:
    """Cell (layer, scale) has a stride-2 "down" op unless at the coarsest scale or last layer."""
    return layer < layers - 1 and scale < NUM_SCALES - 1


def next_cell_inputs(keep, down, betas, layer):
    """Inputs of the cells of layer + 1, per scale j, from layer's "keep" and "down" outputs:
    scale 0 keeps, a newly reached scale takes "down", the others mix both by beta. Used for the
    feature maps (supernet) and for their expected latencies (latency model) alike."""
    inputs = {}
    for j in cell_scales(layer + 1):
        if j == 0:
            inputs[0] = keep[0]
        elif j == layer + 1:
            inputs[j] = down[j]
        else:
            beta = betas[j][layer - j]   # cell (layer + 1, j): row (layer + 1) - j - 1
            inputs[j] = beta[0] * down[j] + beta[1] * keep[j]
    return inputs
