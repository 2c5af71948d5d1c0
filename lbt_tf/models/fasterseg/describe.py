"""--mode=describe_arch: an architecture JSON as a table (per branch: layers, ops, widths,
estimated latency) ending with `trainable_params=<N>` of the derived network (no aux heads)."""
from __future__ import annotations

from lbt_tf.config import ConfigError
from lbt_tf.models.fasterseg import genotype, latency as latency_lib
from lbt_tf.models.fasterseg.derived import build_derived_network, network_plan
from lbt_tf.models.fasterseg.space import OP_NAMES


def describe_lines(arch, config, table=None):
    d = config.data
    plan = network_plan(arch)
    lines = [f"architecture: {arch.get('source', '?')}  layers={arch['layers']} "
             f"F={plan.base_width} stem/head width={plan.stem_ratio:.3f}/{plan.head_ratio:.3f} "
             f"branches (output stride)={arch['branch_output_strides']}"]
    estimate = None
    if table is not None:
        estimate = latency_lib.derived_latency(arch, table, d.num_classes, d.image_height,
                                               d.image_width, plan.base_width)
    header = f"{'branch':>6} {'layer':>5} {'scale':>6} {'op':<15} {'width':>6} {'cin':>5} {'cout':>5}"
    lines.append(header)
    lines.append("-" * len(header))
    for branch in plan.branches:
        widths = arch["candidates"][str(branch.output_stride)]["widths"] + [plan.head_ratio]
        for layer, (cell, width) in enumerate(zip(branch.cells, widths)):
            shared = " (shared)" if layer < branch.shared_prefix else ""
            lines.append(f"{'1/' + str(branch.output_stride):>6} {layer:>5} "
                         f"{8 * 2 ** cell.scale:>6} {OP_NAMES[cell.op]:<15} "
                         f"{width:>6.3f} {cell.cin:>5} {cell.cout:>5}{shared}")
        if estimate is not None:
            lines.append(f"  branch 1/{branch.output_stride}: estimated latency "
                         f"{estimate[f'branch_{branch.output_stride}']:.3f} ms "
                         f"(own cells and refines)")
    if estimate is not None:
        fit = table.meta.get("calibration")
        lines.append(f"estimated latency at {d.image_height}x{d.image_width}: stem "
                     f"{estimate['stem']:.3f} ms, fusion+head {estimate['fusion']:.3f} ms, "
                     + (f"overhead+resizes+concats {estimate['glue']:.3f} ms, "
                        if "glue" in estimate else "")
                     + f"total {estimate['total']:.3f} ms"
                     + (f" (calibrated: {fit['offset_ms']:.3f} ms + {fit['scale']:.3f} x table "
                        f"sum {estimate['table_sum']:.3f} ms)" if fit else ""))
    return lines


def run_describe_arch(config):
    if not config.train.arch:
        raise ConfigError("--mode=describe_arch needs --arch=PATH (architecture JSON)")
    arch = genotype.load_architecture(config.train.arch)
    d = config.data
    # the configured/cached table; this device's times missing entries on first use
    table, table_path = latency_lib.table_for_config(config, measure=False)
    for line in describe_lines(arch, config, table):
        print(line)
    if table.own:
        table.save()
    print(f"latency table: {table_path} (--latency_compat={table.compat})")
    network = build_derived_network(arch, d.num_classes, (d.image_height, d.image_width, 3),
                                    aux_heads=False)
    print(f"trainable_params={network.count_params()}")
    return network.count_params()
