"""Latency tables (latency_table.py): keys, foreign tables, timing with weights, busy spells,
calibration fit."""
import json

import numpy as np
import pytest

from lbt_tf.models.fasterseg import latency_table, timing
from lbt_tf.models.fasterseg.latency_table import LatencyTable, LatencyTableError, OpSpec
from tests.fasterseg.conftest import shared_file


def test_foreign_table_is_never_topped_up(tmp_path):
    path = tmp_path / "other_device.json"
    key = "BasicResidual1x_H4_W8_Cin16_Cout16_stride1_dilation1"
    path.write_text(json.dumps({"meta": {"device": "GPU:elsewhere", "runtime": "tf"},
                                "entries": {key: 1.5}}))
    table = LatencyTable.load(str(path), measure_missing=True)
    assert not table.own and table.get(key) == 1.5
    missing = "BasicResidual2x_H4_W8_Cin16_Cout16_stride1_dilation1"
    with pytest.raises(LatencyTableError) as err:
        table.get(missing)
    assert missing in str(err.value) and str(path) in str(err.value)
    assert missing not in table.entries


def test_tflite_timing_runs_the_layer_with_its_weights():
    """The TFLite runtime times the converted op with its weights embedded (not zeros/NaN)."""
    spec = OpSpec("BasicResidual2x", 8, 16, 8, 16, 2)
    fn, inputs = spec.timed_function()
    run = timing.compile_for("tflite", fn, inputs)
    run()
    assert latency_table.time_specs([spec], "tflite", runs=2, warmup=1)[0] > 0
    interpreter = run.__self__
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, fn(inputs).numpy(), atol=1e-4)


def test_entry_timed_in_a_busy_spell_is_retimed(monkeypatch):
    """An entry far slower per unit of work than others of its kind is timed again, the
    smaller value kept (a busy spell of a shared machine can cover a whole timing window)."""
    specs = [OpSpec("ConvNorm", 8, 16, c, c, 1, 1) for c in (8, 16, 24, 32, 40)]
    spell = {specs[2].key: 1}   # its first timing falls in a busy spell

    def fake_time(specs, runtime, runs, warmup, clock):
        return [0.0 if spec.kind == "overhead" else
                1e-4 * spec.cin * spec.cout * (1000 if spell.pop(spec.key, 0) else 1)
                for spec in specs]
    monkeypatch.setattr(latency_table, "time_specs", fake_time)
    table = LatencyTable({}, latency_table.this_device_meta("tf", 32, 64, 1, 1),
                         measure_missing=True)
    table.ensure(specs, progress_every=0)
    assert table.get(specs[2]) == pytest.approx(1e-4 * 24 * 24)


def test_a_busy_chunk_is_scaled_back_by_the_anchor(monkeypatch):
    """Entries are timed in chunks; the anchor spec, timed again in every chunk, scales a chunk
    timed during a busy spell back to the others."""
    specs = [OpSpec("ConvNorm", 8, 16, c, c, 1, 1) for c in range(8, 18)]
    chunks = []

    def fake_time(specs, runtime, runs, warmup, clock):
        chunks.append(specs)
        slow = 2.0 if len(chunks) == 2 else 1.0   # a busy spell during the second chunk
        return [0.1 if s.kind == "overhead" else slow * 1e-3 * s.cin for s in specs]
    monkeypatch.setattr(latency_table, "time_specs", fake_time)
    table = LatencyTable({}, latency_table.this_device_meta("tf", 32, 64, 1, 1),
                         measure_missing=True)
    table.ensure(specs, progress_every=0, chunk=4)
    assert len(chunks) == 3 and chunks[1][0] == chunks[2][0] == chunks[0][0]
    for spec in specs:
        assert table.entries[spec.key] == pytest.approx(1e-3 * spec.cin)
    assert table.entries["overhead"] == 0.1


def test_glue_keys_parse_back():
    for spec in (OpSpec("resize", 8, 16, 19, 19, 8), OpSpec("concat", 8, 16, 24, 40),
                 latency_table.OVERHEAD):
        assert OpSpec.from_key(spec.key) == spec


def test_calibration_that_does_not_grow_is_not_used():
    """A fit whose scale is not positive (networks too alike or the machine too busy) is not
    stored; predictions stay plain table sums."""
    table = LatencyTable({}, {"calibration": {"offset_ms": 9.0, "scale": 9.0}})
    assert latency_table.fit_calibration(table, [1.0, 2.0, 3.0], [3.0, 2.5, 2.0]) is None
    assert "calibration" not in table.meta and table.calibrated(2.0) == 2.0
    fit = latency_table.fit_calibration(table, [1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert (fit["offset_ms"], fit["scale"]) == (pytest.approx(0.5), pytest.approx(1.0))
    assert table.calibrated(2.0) == pytest.approx(2.5)


def test_reference_table_loads_and_keys_parse():
    table = LatencyTable.load(shared_file("latency_lookup_table_1080ti_trt.json"))
    assert len(table) == 667
    spec = OpSpec.from_key("BasicResidual_downup_2x_H64_W128_Cin96_Cout192_stride2_dilation1")
    assert (spec.kind, spec.height, spec.cin, spec.cout, spec.stride) == (
        "BasicResidual_downup_2x", 64, 96, 192, 2)
    assert spec.key in table
    for key in list(table.entries)[:50]:
        assert OpSpec.from_key(key).key == key
