"""The FasterSeg space's latency (latency.py): FasterSeg parity, the config's table (timed,
re-used, re-timed), a rank check, one reported number per network."""
import json

import numpy as np
import pytest

from lbt_tf import config as config_lib
from lbt_tf.models.fasterseg import (build_derived_network, import_fasterseg, latency as latency_lib,
                                     latency_table, timing)
from lbt_tf.models.fasterseg.latency_table import LatencyTable
from tests.fasterseg.conftest import shared_file, tiny_config
from tests.fasterseg.test_genotype_derived import REFERENCE


def fasterseg_forward_latency(table, branches, F, stem_ratio, head_ratio, downup_2x_key,
                              height=1024, width=2048, num_classes=19):
    """FasterSeg's `Network_Multi_Path_Infer.forward_latency` (train/model_seg.py, commit
    478b026 of github.com/VITA-Group/FasterSeg), re-computed in pure Python over a key -> ms
    table: its stem, its branch groups (`get_branch_groups_cells`: a cell is shared, and
    counted once, while the branches agree on op, width and next scale), its cell channel rule,
    its ch_16/ch_8 refine inputs, arms/refines, feature fusion and head, with every key spelled
    as its operations.py / seg_oprs.py `forward_latency` spells it. `downup_2x_key` is the key
    class its `BasicResidual_downup_2x.forward_latency` reads: "BasicResidual2x" in FasterSeg
    (the copy-paste slip), "BasicResidual_downup_2x" for the faithful reading.
    branches: [(last, ops, path, widths)] in FasterSeg's order (lasts [2, 1] or [2, 0]) with
    ops/path/widths as its `network_metas` derived them (REFERENCE of test_genotype_derived).
    """
    names = ["FactorizedReduce", "BasicResidual1x", "BasicResidual_downup_1x", "BasicResidual2x",
             downup_2x_key]
    nf = lambda scale, ratio=1.0: int(np.round(scale * F * ratio))  # noqa: E731
    total = 0.0
    c1, c2, c3 = nf(2, stem_ratio) * 2, nf(4, stem_ratio) * 2, nf(8, stem_ratio)
    total += table[f"ConvNorm_H{height}_W{width}_Cin3_Cout{c1}_kernel3_stride2"]
    total += table[f"BasicResidual2x_H{height // 2}_W{width // 2}_Cin{c1}_Cout{c2}_stride2_dilation1"]
    total += table[f"BasicResidual2x_H{height // 4}_W{width // 4}_Cin{c2}_Cout{c3}_stride2_dilation1"]
    stem_size = (c3, height // 8, width // 8)
    lasts = [b[0] for b in branches]
    ops, paths, widths = ([b[i] for b in branches] for i in (1, 2, 3))
    downs = [[int(b > a) for a, b in zip(p[:-1], p[1:])] + [0] for p in paths]
    n = len(branches)
    outputs, out16, out32 = [stem_size] * n, [stem_size] * n, [stem_size] * n
    ch_16 = ch_8_2 = ch_8_1 = 0
    connected = np.ones((n, n))
    for l in range(max(len(p) for p in paths)):
        for i in range(n):
            for j in range(i + 1, n):
                if (len(paths[i]) <= l + 1 or len(paths[j]) <= l + 1 or
                        paths[i][l + 1] != paths[j][l + 1] or ops[i][l] != ops[j][l] or
                        widths[i][l] != widths[j][l]):
                    connected[i, j] = connected[j, i] = 0
        groups = []
        for b in range(n):
            if len(paths[b]) < l + 1:
                continue
            group = next((g for g in groups if connected[g[0], b] == 1), None)
            if group is None:
                groups.append([b])
            else:
                group.append(b)
        for group in groups:
            g = group[0]
            op, scale, down = ops[g][l], 2 ** (paths[g][l] + 3), downs[g][l]
            if l == 0:
                cin, cout = nf(scale, stem_ratio), nf(scale * (down + 1), widths[g][l])
            elif l == len(paths[g]) - 1:
                cin, cout = nf(scale, widths[g][l - 1]), nf(scale, head_ratio)
            else:
                cin, cout = nf(scale, widths[g][l - 1]), nf(scale * (down + 1), widths[g][l])
            if 2 in lasts and lasts.index(2) in group and down and scale == 16:
                ch_16 = cin
            if 2 in lasts and lasts.index(2) in group and down and scale == 8:
                ch_8_2 = cin
            if 1 in lasts and lasts.index(1) in group and down and scale == 8:
                ch_8_1 = cin
            _, h, w = outputs[g]
            stride = 1 + down
            suffix = "" if op == 0 else "_dilation1"
            total += table[f"{names[op]}_H{h}_W{w}_Cin{cin}_Cout{cout}_stride{stride}{suffix}"]
            size = (cout, h // stride, w // stride)
            for b in group:
                outputs[b] = size
                if height // size[1] == 16:
                    out16[b] = size
                elif height // size[1] == 32:
                    out32[b] = size

    def conv_norm(size, cout, kernel):
        return table[f"ConvNorm_H{size[1]}_W{size[2]}_Cin{size[0]}_Cout{cout}_kernel{kernel}_stride1"]

    c8, c16, c32 = nf(8, head_ratio), nf(16, head_ratio), nf(32, head_ratio)
    for b, last in enumerate(lasts):
        if last == 2:
            total += conv_norm(out32[b], c16, 1)
            total += conv_norm((c16 + ch_16, out32[b][1] * 2, out32[b][2] * 2), c16, 3)
            total += conv_norm((c16, out32[b][1] * 2, out32[b][2] * 2), c8, 1)
            out_size = (c8, out32[b][1] * 4, out32[b][2] * 4)
            total += conv_norm((c8 + ch_8_2,) + out_size[1:], c8, 3)
        elif last == 1:
            total += conv_norm(out16[b], c8, 1)
            out_size = (c8, out16[b][1] * 2, out16[b][2] * 2)
            total += conv_norm((c8 + ch_8_1,) + out_size[1:], c8, 3)
        else:
            out_size = stem_size   # FasterSeg never updates outputs8 (its `scale == 4` test)
    total += table[f"ff_H{out_size[1]}_W{out_size[2]}_C{out_size[0] * n}"]
    total += table[f"head_H{out_size[1]}_W{out_size[2]}_Cin{out_size[0] * n}_Cout{num_classes}"]
    return total


@pytest.fixture(scope="module")
def fasterseg_table():
    with open(shared_file("latency_lookup_table_1080ti_trt.json")) as f:
        return json.load(f)


# Our faithful totals at 1024x2048 before --latency_compat existed (issue 12): a regression pin.
FAITHFUL_MS = {0: 17.94, 1: 5.70}


@pytest.mark.parametrize("index", [0, 1])
def test_parity_with_fasterseg_forward_latency(index, fasterseg_table):
    arch = import_fasterseg(shared_file(f"arch_{index}.json"))
    stem_ratio, head_ratio = arch["stem_head_width"]
    branches = [(int(np.log2(s)) - 3, *REFERENCE[index][str(s)]) for s in arch["branch_output_strides"]]
    totals = {}
    for compat, key in (("faithful", "BasicResidual_downup_2x"), ("fasterseg", "BasicResidual2x")):
        table = LatencyTable.load(shared_file("latency_lookup_table_1080ti_trt.json"), compat=compat)
        assert not table.own and not table.has_glue
        ours = latency_lib.derived_latency(arch, table, 19, 1024, 2048, base_width=12)["total"]
        reference = fasterseg_forward_latency(fasterseg_table, branches, 12, stem_ratio,
                                              head_ratio, key)
        assert ours == pytest.approx(reference, abs=1e-3), compat
        totals[compat] = ours
    assert totals["faithful"] == pytest.approx(FAITHFUL_MS[index], abs=5e-3)
    if index == 1:
        # FasterSeg's own number: the 16+32 pair's latency its search stored in arch_1.pt,
        # computed by its code on its table, equals the fasterseg reading
        with open(shared_file("arch_1.json")) as f:
            assert totals["fasterseg"] == pytest.approx(json.load(f)["latency12"], abs=1e-6)
    # arch_0 and arch_1 use conv_2x_downup cells, so the two readings differ
    assert totals["fasterseg"] > totals["faithful"] + 0.1


def test_table_round_trip_and_reuse_key(tmp_path, monkeypatch):
    config = tiny_config(**{"teacher.layers": 3, "teacher.width_mult_list": (0.5, 1.0),
                            "run_dir": str(tmp_path), "teacher.latency_calibration_networks": 0})
    timed = []

    def fake_time(specs, runtime, runs, warmup, clock):
        timed.extend((spec.key, runtime) for spec in specs)
        return [0.5 if spec.kind == "overhead" else 1.0 + spec.cin / 100 - 0.5 for spec in specs]
    monkeypatch.setattr(latency_table, "time_specs", fake_time)
    table, path = latency_lib.table_for_config(config)
    assert path.endswith("latency_table_tf_32x64.json")
    assert {key for key, _ in timed} == set(table.entries)
    saved = json.load(open(path))
    meta = saved["meta"]
    assert (meta["runtime"], meta["height"], meta["width"], meta["batch"]) == ("tf", 32, 64, 1)
    assert meta["device"] == latency_table.device_name() and meta["tensorflow"]
    assert saved["entries"]["overhead"] == 0.5
    key = "BasicResidual2x_H4_W8_Cin16_Cout16_stride1_dilation1"
    assert saved["entries"][key] == pytest.approx(1.16 - 0.5)   # per-call overhead taken out
    assert LatencyTable.load(path).entries == table.entries      # round trip

    timed.clear()
    again, _ = latency_lib.table_for_config(config)               # same key: re-used
    assert not timed and again.entries == table.entries
    xla = tiny_config(**{"teacher.layers": 3, "teacher.width_mult_list": (0.5, 1.0),
                         "run_dir": str(tmp_path), "teacher.latency_runtime": "xla",
                         "teacher.latency_calibration_networks": 0,
                         "teacher.latency_table": path})
    latency_lib.table_for_config(xla)                              # other runtime: re-timed
    assert timed and all(runtime == "xla" for _, runtime in timed)
    assert json.load(open(path))["meta"]["runtime"] == "xla"


def test_bigger_network_predicted_and_measured_slower(tmp_path):
    """A clearly bigger network (F=48 vs F=2, same arch) costs more, predicted and measured
    (timed round-robin, so a busy spell of the shared machine hits both alike)."""
    arch = import_fasterseg(shared_file("arch_1.json"))
    size = (64, 128)
    config = tiny_config(**{"data.image_height": size[0], "data.image_width": size[1],
                            "run_dir": str(tmp_path)})
    table, _ = latency_lib.table_for_config(config, measure=False, runs=3, warmup=2)
    assert table.own and table.has_glue
    predicted, runners = [], []
    for base_width in (2, 48):
        predicted.append(latency_lib.derived_latency(arch, table, 3, *size, base_width)["total"])
        network = build_derived_network(arch, 3, size + (3,), base_width=base_width,
                                        aux_heads=False)
        runners.append(latency_lib.network_runner(network, *size, "tf"))
    measured = timing.interleaved_medians(runners, runs=7, warmup=2)
    assert predicted[1] > 1.5 * predicted[0] and measured[1] > 1.5 * measured[0]


def test_search_describe_and_measure_latency_report_one_number(tmp_path, monkeypatch, capsys):
    """The latency the search logs and reports for the network it found
    (`runner.derived_latency_fn`), `--mode=describe_arch`'s total and `--mode=measure_latency`'s
    prediction are one number: this device's calibrated table sum for that network."""
    from lbt_tf.models.fasterseg import build_supernet, derive_architecture, describe
    from lbt_tf.models.fasterseg.genotype import save_architecture
    from lbt_tf.search import runner

    config = tiny_config(**{"teacher.width_mult_list": (0.5, 1.0), "run_dir": str(tmp_path),
                            "teacher.latency_calibration_networks": 3})
    d = config.data

    def entry_ms(spec):
        return 0.2 if spec.kind == "overhead" else 0.01 * spec.cin + 0.001 * spec.cout

    def network_ms(arch):   # a whole network: 0.25 ms + 1.5 x its entries (what calibrate fits)
        specs = latency_lib.derived_specs(arch, d.num_classes, d.image_height, d.image_width)
        return 0.25 + 1.5 * sum(entry_ms(s) for group in specs.values() for s in group)
    monkeypatch.setattr(latency_table, "time_specs",
                        lambda specs, *a, **k: [entry_ms(s) for s in specs])
    monkeypatch.setattr(latency_lib, "measure_networks",
                        lambda archs, *a, **k: [network_ms(arch) for arch in archs])
    monkeypatch.setattr(latency_lib, "measure_network", lambda *a, **k: 1.0)
    table, _ = latency_lib.table_for_config(config)
    fit = table.meta["calibration"]
    assert (fit["offset_ms"], fit["scale"]) == (pytest.approx(0.25), pytest.approx(1.5))

    supernet = build_supernet(config, latency_table=table)
    arch = derive_architecture(supernet, config.teacher)
    arch_path = str(tmp_path / "found.json")
    save_architecture(arch, arch_path)
    problem = type("Problem", (), {"latency_fn": supernet.expected_latency})
    model = type("Search", (), {"supernet": supernet, "problem": problem})
    searched = runner.derived_latency_fn(model, config)()
    described = describe.describe_lines(arch, config, table)[-1]
    described = float(described.split("total ")[1].split()[0])
    latency_lib.run_measure_latency(config_lib.replace(config, **{"train.arch": arch_path}))
    predicted = float(capsys.readouterr().out.split("predicted ")[1].split()[0])
    assert searched == pytest.approx(network_ms(arch))
    assert described == pytest.approx(searched, abs=1e-3)
    assert predicted == pytest.approx(searched, abs=1e-3)
