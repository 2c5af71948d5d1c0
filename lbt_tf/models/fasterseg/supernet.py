"""FasterSeg's multi-resolution supernet (search/model_search.py: Network_Multi_Path) in Keras 3.

Stem to output stride 8, then `layers` cells; cell (i, j) works at scale j <= min(i, 2) (output
stride 8/16/32, channels 8F/16F/32F times the width ratio) with a "keep" MixedOp (stride 1) and,
except at scale 2 and in the last layer, a "down" MixedOp (stride 2) feeding scale j + 1.

Architecture parameters (separate Keras variables, `arch_variables`, FasterSeg's shapes):
  alpha_s [layers - s, 5]  operator logits of the cells at scale s (keep and down share them)
  beta_s  [layers - s - 1, 2] for s = 1, 2: input logits (column 0 "down" from the finer scale,
                              column 1 "keep" from the same scale) of cells (i >= s + 1, s)
  gamma_s [layers - 1 | layers - 2, n_widths]: width logits of the feature maps at scale s
          (FasterSeg's `ratio_a_s`; only when search_widths and more than one width).

Differences to FasterSeg, on purpose:
- beta mixes the cell's two *inputs* (one cell evaluation), FasterSeg runs the cell on each
  input and mixes the outputs (twice the cost); both agree for a one-hot beta.
- width switching masks channels (operations.MaskedOp) instead of slicing kernels; widths are
  round(C * ratio) like the derived network (FasterSeg's supernet rounds to multiples of 8).
- gamma: straight-through Gumbel-softmax like FasterSeg (forward = the sampled width's mask,
  backward through the soft sample), but the straight-through weights multiply the channel
  masks, so the gradient reaches every gamma entry through the masks (FasterSeg scales the op
  output by the chosen entry). `sample_widths = False`: no noise, mask = softmax(gamma) @ masks,
  a smooth function of gamma (exact finite differences).
- the supernet's batch norm keeps one set of moving statistics for all widths (FasterSeg: one
  BN per width); the search runs in training mode, which uses batch statistics.
"""
from __future__ import annotations

import functools
import os

import keras
import numpy as np
import tensorflow as tf

from lbt_tf.models.fasterseg import latency as latency_lib
from lbt_tf.models.fasterseg.latency_table import LatencyTable
from lbt_tf.models.fasterseg.operations import (CellFunctions, ConvNorm, CellOp, Head, MixedOp,
                                                num_filters)
from lbt_tf.models.fasterseg.space import (arch_variable_shapes, cell_scales, gamma_row, has_down,
                                           next_cell_inputs, searched_widths)
from lbt_tf.ops.resize import resize_bilinear

HEAD_NAMES = ("head0", "head1", "head2", "head02", "head12")


class FasterSegSupernet(keras.Model):
    """The search supernet; `call` returns [pred0, pred1, pred2, pred02, pred12] at 1/8."""

    def __init__(self, teacher_config, num_classes: int, input_size, seed: int = 0,
                 latency_input_size=None, latency_table=None, **kwargs):
        super().__init__(**kwargs)
        self.built = True   # sublayers build on the first call (no symbolic trace)
        self.teacher_config = teacher_config
        self.layers_count = int(teacher_config.layers)
        if self.layers_count < 3:
            raise ValueError(f"--layers={self.layers_count}: FasterSeg needs at least 3 cells")
        self.base_width = int(teacher_config.base_width)
        self.num_classes = int(num_classes)
        self.input_size = tuple(int(s) for s in input_size)
        self.latency_input_size = tuple(latency_input_size or self.input_size)
        self.width_mult_list = searched_widths(teacher_config)
        self.stem_ratio, self.head_ratio = (float(r) for r in teacher_config.stem_head_width)
        self.gumbel_temperature = float(teacher_config.gumbel_temperature)
        self.sample_widths = True
        self.latency_table = latency_table
        self._latency_model = None
        self.seed_generator = keras.random.SeedGenerator(seed, name="gumbel_seed")
        F, L = self.base_width, self.layers_count

        self.stem = [
            ConvNorm(num_filters(F, 2, self.stem_ratio) * 2, 3, 2, name="stem_conv"),
            CellOp(3, num_filters(F, 4, self.stem_ratio) * 2, 2, name="stem_res1"),
            CellOp(3, num_filters(F, 8, self.stem_ratio), 2, name="stem_res2")]
        self.keep_ops, self.down_ops = {}, {}
        cells = CellFunctions() if teacher_config.cell_tracing == "shared" else None
        self.cell_functions = cells
        for i in range(L):
            for j in cell_scales(i):
                channels = num_filters(F, 8 * 2 ** j)
                keep_widths = (self.head_ratio,) if i == L - 1 else self.width_mult_list
                self.keep_ops[(i, j)] = MixedOp(channels, 1, keep_widths, cells,
                                                name=f"cell{i}_{j}_keep")
                if has_down(i, j, L):
                    self.down_ops[(i, j)] = MixedOp(2 * channels, 2, self.width_mult_list, cells,
                                                    name=f"cell{i}_{j}_down")
        self._track_cells = list(self.keep_ops.values()) + list(self.down_ops.values())

        c8, c16, c32 = (num_filters(F, s, self.head_ratio) for s in (8, 16, 32))
        self.refine16 = [ConvNorm(c8, 1, name="refine16_0"), ConvNorm(c8, 3, name="refine16_1")]
        self.refine32 = [ConvNorm(c16, 1, name="refine32_0"), ConvNorm(c16, 3, name="refine32_1"),
                         ConvNorm(c8, 1, name="refine32_2"), ConvNorm(c8, 3, name="refine32_3")]
        self.heads = [Head(c, num_classes, name=name)
                      for c, name in zip((c8, c8, c8, 2 * c8, 2 * c8), HEAD_NAMES)]

        n_widths = len(self.width_mult_list)
        self._arch_names = list(arch_variable_shapes(L, n_widths))
        self.arch_variables = [
            self.add_weight(name=name, shape=shape, trainable=True,
                            initializer=keras.initializers.Constant(1e-3))
            for name, shape in arch_variable_shapes(L, n_widths).items()]

    # ------------------------------------------------------------------ variables
    @property
    def arch_variable_names(self):
        return list(self._arch_names)

    @property
    def weight_variables(self):
        arch_ids = {id(v) for v in self.arch_variables}
        return [v for v in self.trainable_variables if id(v) not in arch_ids]

    def arch_values_dict(self, arch_values=None):
        values = arch_values if arch_values is not None else self.arch_variables
        if len(values) != len(self._arch_names):
            raise ValueError(f"expected {len(self._arch_names)} arch values "
                             f"({self._arch_names}), got {len(values)}")
        return {name: tf.convert_to_tensor(v) for name, v in zip(self._arch_names, values)}

    # ------------------------------------------------------------------ widths
    def _width_weights(self, gammas, width_mode):
        """(layer, scale) -> weights over self.width_mult_list for every searched feature map."""
        L = self.layers_count
        weights = {}
        for scale in range(3):
            if not gammas:
                continue
            logits = gammas[f"gamma_{scale}"]
            if width_mode in ("max", "min"):
                index = len(self.width_mult_list) - 1 if width_mode == "max" else 0
                probs = tf.one_hot(tf.fill([logits.shape[0]], index), len(self.width_mult_list),
                                   dtype=logits.dtype)
            elif self.sample_widths and width_mode is None:
                log_probs = tf.nn.log_softmax(logits, axis=-1)
                uniform = keras.random.uniform(logits.shape, minval=1e-20, maxval=1.0,
                                               seed=self.seed_generator, dtype=logits.dtype)
                gumbel = -tf.math.log(-tf.math.log(uniform) + 1e-20)
                soft = tf.nn.softmax((log_probs + gumbel) / self.gumbel_temperature, axis=-1)
                hard = tf.one_hot(tf.argmax(soft, axis=-1), soft.shape[-1], dtype=soft.dtype)
                probs = tf.stop_gradient(hard - soft) + soft   # straight-through
            else:
                probs = tf.nn.softmax(logits, axis=-1)
            rows = tf.unstack(probs)   # one op, not a slice per row (traced once per pass)
            for layer in range(max(0, scale - 1), L - 1):
                weights[(layer, scale)] = rows[gamma_row(layer, scale)]
        return weights

    # ------------------------------------------------------------------ forward
    def arch_inputs(self, width_mode=None):
        """The arch values as the cells take them: softmax rows of alpha and beta, per feature
        map width weights (Gumbel-sampled in training passes unless `width_mode`); read from the
        arch variables (in a stateless call: their mapped values)."""
        arch = self.arch_values_dict([v.value if hasattr(v, "value") else v
                                      for v in self.arch_variables])
        # Rows (and beta's two entries) unstacked once: indexing would add a slice per use.
        alphas = [tf.unstack(tf.nn.softmax(arch[f"alpha_{s}"], axis=-1)) for s in range(3)]
        betas = [None] + [[tf.unstack(row) for row in tf.unstack(tf.nn.softmax(arch[f"beta_{s}"]))]
                          for s in (1, 2)]
        gammas = {k: v for k, v in arch.items() if k.startswith("gamma")}
        return {"alpha": alphas, "beta": betas, "width": self._width_weights(gammas, width_mode)}

    def stages(self):
        """The forward as a chain, `x = stage(x, arch_inputs, training)` from the images to the
        output list: the stem, the cells of layers 0 .. L-2 (x: the next layer's inputs per
        scale), the last layer with the heads. `call` runs it; the exact mode's teacher product
        runs it one stage at a time (layerwise.py)."""
        return ([self._stem_stage]
                + [functools.partial(self._cells_stage, i) for i in range(self.layers_count - 1)]
                + [self._head_stage])

    def call(self, images, training=None, width_mode=None):
        x, arch_inputs = images, self.arch_inputs(width_mode)
        for stage in self.stages():
            x = stage(x, arch_inputs, training)
        return x

    def _stem_stage(self, images, arch_inputs, training):
        del arch_inputs
        x = images
        for layer in self.stem:
            x = layer(x, training=training)
        pad = num_filters(self.base_width, 8) - int(x.shape[-1])
        return {0: tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, pad]]) if pad > 0 else x}

    def _cells(self, i, inputs, arch_inputs, training):
        """Layer i's keep and down outputs, per scale."""
        alphas, widths = arch_inputs["alpha"], arch_inputs["width"]
        one = tf.ones([1], inputs[0].dtype)
        keep_out, down_out = {}, {}
        for j in cell_scales(i):
            alpha = alphas[j][i - j]
            keep_width = one if i == self.layers_count - 1 else widths.get((i, j), one)
            keep_out[j] = self.keep_ops[(i, j)](inputs[j], alpha, keep_width, training=training)
            if (i, j) in self.down_ops:
                down_out[j + 1] = self.down_ops[(i, j)](
                    inputs[j], alpha, widths.get((i, j + 1), one), training=training)
        return keep_out, down_out

    def _cells_stage(self, i, inputs, arch_inputs, training):
        keep_out, down_out = self._cells(i, inputs, arch_inputs, training)
        return next_cell_inputs(keep_out, down_out, arch_inputs["beta"], i)

    def _head_stage(self, inputs, arch_inputs, training):
        keep_out, _ = self._cells(self.layers_count - 1, inputs, arch_inputs, training)
        c8, c16, c32 = (num_filters(self.base_width, s, self.head_ratio) for s in (8, 16, 32))
        out0, out1, out2 = keep_out[0][..., :c8], keep_out[1][..., :c16], keep_out[2][..., :c32]
        size8, size16 = out0.shape[1:3], out1.shape[1:3]
        up = lambda t, size: resize_bilinear(t, size, align_corners=True)
        r16 = self.refine16[0](out1, training=training)
        r16 = self.refine16[1](tf.concat([up(r16, size8), out0], -1), training=training)
        r32 = self.refine32[0](out2, training=training)
        r32 = self.refine32[1](tf.concat([up(r32, size16), out1], -1), training=training)
        r32 = self.refine32[2](r32, training=training)
        r32 = self.refine32[3](tf.concat([up(r32, size8), out0], -1), training=training)
        features = (out0, r16, r32, tf.concat([out0, r32], -1), tf.concat([r16, r32], -1))
        return [head(f, training=training) for head, f in zip(self.heads, features)]

    # ------------------------------------------------------------------ latency
    def set_latency_table(self, table):
        """A `LatencyTable` (or a plain key -> ms dict) for `expected_latency`."""
        if isinstance(table, dict):
            table = LatencyTable(table, compat=self.teacher_config.latency_compat)
        self.latency_table = table
        self._latency_model = None

    def expected_latency(self, arch_values=None):
        """Expected latency (ms) under softmax(alpha), beta path mixing and softmax(gamma).

        Differentiable w.r.t. the arch values (default: the variables; or a list of tensors in
        `arch_variables` order). Needs a latency table (`set_latency_table`, the config's
        --latency_table, or one measured and cached on first use).
        """
        if self._latency_model is None:
            if self.latency_table is None:
                raise ValueError("expected_latency needs a latency table: call "
                                 "set_latency_table() or build with --latency_table")
            self._latency_model = latency_lib.SupernetLatencyModel(self, self.latency_table)
        return self._latency_model(self.arch_values_dict(arch_values))


def build_supernet(config, latency_table=None) -> FasterSegSupernet:
    """The supernet for config.teacher / config.data, weights created.

    latency_table: a LatencyTable or dict; else the table at --latency_table when it exists
    (`latency.table_for_config`: this device's, topped up; or another device's, as it is);
    else none until `set_latency_table`.
    """
    data = config.data
    if latency_table is None and config.teacher.latency_table:
        if os.path.exists(config.teacher.latency_table):
            latency_table = latency_lib.table_for_config(config)[0]
    if isinstance(latency_table, dict):
        latency_table = LatencyTable(latency_table, compat=config.teacher.latency_compat)
    supernet = FasterSegSupernet(
        config.teacher, data.num_classes, (data.crop_height, data.crop_width), seed=config.seed,
        latency_input_size=(data.image_height, data.image_width), latency_table=latency_table,
        name="fasterseg_supernet")
    supernet(np.zeros((1, data.crop_height, data.crop_width, 3), np.float32), training=False)
    return supernet
