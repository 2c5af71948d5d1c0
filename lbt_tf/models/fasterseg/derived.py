"""The derived (discrete) FasterSeg network (train/model_seg.py: Network_Multi_Path_Infer).

Stem, then the kept branches (e.g. ending at output stride 32 and 16); branches share their
cells while they agree on op, next scale and width (FasterSeg's branch groups); each branch's
1/32 and 1/16 outputs are refined up to 1/8 (1x1 "arm" conv, x2 bilinear up, concat with the
branch's last 1/16 or 1/8 feature, 3x3 conv), the 1/8 features of all branches are fused and
classified, then upsampled x8 to the input size. Auxiliary heads (training) classify the 1/16
and 1/32 features, upsampled to the input size. All resizes: `operations.deployed_resize`
(align_corners=True as FasterSeg; TF's kernel: this network is never differentiated twice).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional

import keras
import numpy as np
import tensorflow as tf

from lbt_tf.config import ConfigError
from lbt_tf.models.fasterseg.genotype import validate_architecture
from lbt_tf.models.fasterseg.operations import (CellOp, ConvNorm, FeatureFusion, Head,
                                                deployed_resize, num_filters)
from lbt_tf.models.fasterseg.space import OP_NAMES


@dataclasses.dataclass(frozen=True)
class CellPlan:
    op: int
    scale: int       # 0/1/2: the scale the cell reads (output stride 8/16/32)
    stride: int
    cin: int
    cout: int


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    name: str
    scale: int
    cin: int
    cout: int
    kernel: int


@dataclasses.dataclass
class BranchPlan:
    output_stride: int
    cells: List[CellPlan]
    shared_prefix: int = 0          # cells computed by `shares_with` (FasterSeg branch groups)
    shares_with: Optional[int] = None
    refines: List[ConvPlan] = dataclasses.field(default_factory=list)
    # channels of the branch's last feature map at scale 1/16 and 1/8 (inputs of its refines)
    last_channels: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class NetworkPlan:
    base_width: int
    stem_ratio: float
    head_ratio: float
    branches: List[BranchPlan]

    @property
    def head_channels(self):
        return num_filters(self.base_width, 8, self.head_ratio)


def _branch_cells(candidate, base_width, stem_ratio, head_ratio):
    ops = [OP_NAMES.index(op) for op in candidate["ops"]]
    path, widths = candidate["path"], candidate["widths"]
    cells = []
    for layer, (op, scale) in enumerate(zip(ops, path)):
        down = path[layer + 1] - scale if layer + 1 < len(path) else 0
        channels = 8 * 2 ** scale
        if layer == 0:
            cin_ratio = stem_ratio
        else:
            cin_ratio = widths[layer - 1]
        cout_ratio = head_ratio if layer == len(path) - 1 else widths[layer]
        cin = num_filters(base_width, channels, cin_ratio)
        cout = num_filters(base_width, channels * (down + 1), cout_ratio)
        if op == 0 and not down and cin != cout:
            raise ValueError(f"skip at stride 1 with {cin} -> {cout} channels (identity needs "
                             "equal widths)")
        cells.append(CellPlan(op, scale, 1 + down, cin, cout))
    return cells


def network_plan(arch, base_width=None) -> NetworkPlan:
    """Cells, channels, branch sharing and refines of a derived network, from the JSON form."""
    arch = validate_architecture(arch)
    F = int(base_width or arch["base_width"])
    stem_ratio, head_ratio = (float(r) for r in arch["stem_head_width"])
    c8, c16, c32 = (num_filters(F, s, head_ratio) for s in (8, 16, 32))
    candidates = [arch["candidates"][str(s)] for s in arch["branch_output_strides"]]
    branches = []
    for b, (stride, cand) in enumerate(zip(arch["branch_output_strides"], candidates)):
        branch = BranchPlan(stride, _branch_cells(cand, F, stem_ratio, head_ratio))
        # FasterSeg shares cell l between two branches while op, width and the next scale agree
        # for every layer up to l; the last cell of a branch is never shared.
        for other in range(b):
            o = candidates[other]
            prefix = 0
            while (prefix + 1 < min(len(o["path"]), len(cand["path"]))
                   and o["path"][prefix + 1] == cand["path"][prefix + 1]
                   and o["ops"][prefix] == cand["ops"][prefix]
                   and o["widths"][prefix] == cand["widths"][prefix]):
                prefix += 1
            if prefix > branch.shared_prefix:
                branch.shared_prefix, branch.shares_with = prefix, other
        for cell in branch.cells:
            if cell.stride == 2:
                branch.last_channels[cell.scale] = cell.cin
        if stride == 32:
            branch.refines = [ConvPlan("arm32_0", 2, c32, c16, 1),
                              ConvPlan("refine32_0", 1, c16 + branch.last_channels[1], c16, 3),
                              ConvPlan("arm32_1", 1, c16, c8, 1),
                              ConvPlan("refine32_1", 0, c8 + branch.last_channels[0], c8, 3)]
        elif stride == 16:
            branch.refines = [ConvPlan("arm16", 1, c16, c8, 1),
                              ConvPlan("refine16", 0, c8 + branch.last_channels[0], c8, 3)]
        branches.append(branch)
    return NetworkPlan(F, stem_ratio, head_ratio, branches)


class DerivedNetwork(keras.Model):
    """call(images) -> {"logits": [B, H, W, C], "aux_logits": [1/16 head, 1/32 head]}."""

    def __init__(self, arch, num_classes, input_shape, base_width=None, aux_heads=True, **kwargs):
        super().__init__(**kwargs)
        self.built = True   # sublayers build on the first call (no symbolic trace)
        height, width = int(input_shape[0]), int(input_shape[1])
        if height % 32 or width % 32 or height <= 0 or width <= 0:
            raise ConfigError(f"input size {height}x{width} must be divisible by 32 (the "
                              "network downsamples by 32): check --image_height/--image_width "
                              "and --crop_height/--crop_width")
        self.arch = arch
        self.image_size = (height, width)
        self.plan = plan = network_plan(arch, base_width)
        self.aux_heads = aux_heads
        F, stem_ratio, head_ratio = plan.base_width, plan.stem_ratio, plan.head_ratio
        c16, c32 = num_filters(F, 16, head_ratio), num_filters(F, 32, head_ratio)
        self.stem = [ConvNorm(num_filters(F, 2, stem_ratio) * 2, 3, 2, name="stem_conv"),
                     CellOp(3, num_filters(F, 4, stem_ratio) * 2, 2, name="stem_res1"),
                     CellOp(3, num_filters(F, 8, stem_ratio), 2, name="stem_res2")]
        self.branch_cells = [
            [CellOp(c.op, c.cout, c.stride, name=f"branch{branch.output_stride}_cell{l}")
             if l >= branch.shared_prefix else None for l, c in enumerate(branch.cells)]
            for branch in plan.branches]
        self.refines = {r.name: ConvNorm(r.cout, r.kernel, name=r.name)
                        for branch in plan.branches for r in branch.refines}
        n = len(plan.branches)
        self.fusion = FeatureFusion(plan.head_channels * n, name="ffm")
        self.head8 = Head(plan.head_channels * n, num_classes, name="head8")
        strides = [b.output_stride for b in plan.branches]
        self.head16 = self.head32 = None
        if aux_heads:
            ch16 = sum(c16 if b.output_stride == 16 else b.last_channels.get(1, 0)
                       for b in plan.branches if b.output_stride in (16, 32))
            if ch16:
                self.head16 = Head(ch16, num_classes, name="aux_head16")
            if 32 in strides:
                self.head32 = Head(c32, num_classes, name="aux_head32")

    def count_params(self):
        """Trainable parameters, the number FasterSeg reports (BN moving statistics, which
        Keras' default count_params includes, are not parameters there)."""
        return int(sum(np.prod(v.shape) for v in self.trainable_variables))

    def _run_branch(self, index, features, stem_out, training):
        """Runs branch `index` from its shared prefix; returns per-layer outputs."""
        branch = self.plan.branches[index]
        outputs = list(features[branch.shares_with][:branch.shared_prefix]) \
            if branch.shared_prefix else []
        x = outputs[-1] if outputs else stem_out
        for layer in range(branch.shared_prefix, len(branch.cells)):
            x = self.branch_cells[index][layer](x, training=training)
            outputs.append(x)
        return outputs

    def call(self, images, training=None):
        x = images
        for layer in self.stem:
            x = layer(x, training=training)
        stem_out = x
        per_branch = []
        for index in range(len(self.plan.branches)):
            per_branch.append(self._run_branch(index, per_branch, stem_out, training))
        up = lambda t, ref: deployed_resize(t, ref.shape[1:3])
        pred8, pred16, pred32 = [], [], []
        for branch, outputs in zip(self.plan.branches, per_branch):
            # the branch's last feature map at each scale (the stem for scale 0 if no cell ran)
            last = {0: stem_out}
            for cell, out in zip(branch.cells, outputs):
                last[cell.scale + (cell.stride == 2)] = out
            if branch.output_stride == 32:
                pred32.append(last[2])
                pred16.append(last[1])
                out = self.refines["arm32_0"](last[2], training=training)
                out = self.refines["refine32_0"](tf.concat([up(out, last[1]), last[1]], -1), training=training)
                out = self.refines["arm32_1"](out, training=training)
                out = self.refines["refine32_1"](tf.concat([up(out, last[0]), last[0]], -1), training=training)
            elif branch.output_stride == 16:
                pred16.append(last[1])
                out = self.refines["arm16"](last[1], training=training)
                out = self.refines["refine16"](tf.concat([up(out, last[0]), last[0]], -1), training=training)
            else:
                out = last[0]
            pred8.append(out)
        logits = self.head8(self.fusion(tf.concat(pred8, -1), training=training), training=training)
        result = {"logits": deployed_resize(logits, self.image_size)}
        if self.aux_heads:
            aux = []
            if self.head16 is not None:
                aux.append(self.head16(tf.concat(pred16, -1), training=training))
            if self.head32 is not None:
                aux.append(self.head32(tf.concat(pred32, -1), training=training))
            result["aux_logits"] = [deployed_resize(a, self.image_size) for a in aux]
        return result


def build_derived_network(arch, num_classes, input_shape=(512, 1024, 3), base_width=None,
                          aux_heads=True) -> DerivedNetwork:
    """A built DerivedNetwork for the architecture dict (`genotype.load_architecture`)."""
    network = DerivedNetwork(arch, num_classes, input_shape, base_width, aux_heads,
                             name="fasterseg_derived")
    height, width = network.image_size
    network(np.zeros((1, height, width, 3), np.float32), training=False)
    return network
