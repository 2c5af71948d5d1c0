"""The search-quality bench's statistics and report writer, on hand-made inputs."""
import json
import os

import pytest

from lbt_tf.experiments import search_quality, stability
from lbt_tf.models.fasterseg import latency
from lbt_tf.models.fasterseg.latency_table import LatencyTable


def snapshot(epoch, alpha_rows, beta_rows):
    """Arch values whose argmax per row is the given choice (logit 1 there, 0 elsewhere)."""
    one_hot = lambda rows, n: [[1.0 if k == c else 0.0 for k in range(n)] for c in rows]
    return {"epoch": epoch, "arch_values": {"alpha_0": one_hot(alpha_rows, 5),
                                            "beta_1": one_hot(beta_rows, 2)}}


def test_seed_agreement_counts_equal_final_argmax_over_seed_pairs():
    finals = [snapshot(4, [0, 1, 2, 3], [0, 1])["arch_values"],
              snapshot(4, [0, 1, 2, 4], [0, 0])["arch_values"],
              snapshot(4, [0, 2, 2, 4], [1, 0])["arch_values"]]
    agreement = stability.seed_agreement(finals)
    # alpha rows: 3 pairs each; row0 3/3, row1 1/3, row2 3/3, row3 1/3 -> 8/12
    assert agreement["alpha"] == pytest.approx(8 / 12)
    # beta rows: row0 pairs (0,0)=1,(0,1)=0,(0,1)=0; row1 (1,0)=0,(1,0)=0,(0,0)=1 -> 2/6
    assert agreement["beta"] == pytest.approx(2 / 6)
    assert stability.chance_agreement(finals[0]) == {"alpha": 0.2, "beta": 0.5}
    with pytest.raises(ValueError, match="2 searches"):
        stability.seed_agreement(finals[:1])


def test_late_stability_looks_at_the_last_quarter_and_the_snapshot_before_it():
    # 2 warm-up + 8 search epochs: the last quarter is epochs 9-10, compared with epoch 8.
    history = [snapshot(e, [e % 5, 0, 1, 2], [0, 1]) for e in range(1, 8)]
    history += [snapshot(8, [0, 0, 1, 2], [0, 1]), snapshot(9, [0, 3, 1, 2], [0, 1]),
                snapshot(10, [0, 0, 1, 2], [1, 1])]
    late = stability.late_stability(history, search_epochs=8)
    assert late["alpha"] == pytest.approx(3 / 4)   # row 1 went 0 -> 3 -> 0: not stable
    assert late["beta"] == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="search epochs"):
        stability.late_stability(history[:3], search_epochs=8)


def test_report_writer(tmp_path):
    runs = [{"method": "lbt", "seed": s, "retrained_miou": m, "measured_latency_ms": 4.0 + s,
             "predicted_latency_ms": 20.0, "params": 1000, "final_mode": "lbt"}
            for s, m in ((0, 0.5), (1, 0.6))]
    runs += [{"method": "random", "seed": 0, "retrained_miou": m, "measured_latency_ms": 5.0,
              "predicted_latency_ms": 21.0, "params": 900} for m in (0.40, 0.44, 0.48)]
    history = [snapshot(e, [0, 1, 2, 3], [0, 1]) for e in range(1, 5)]
    stability_rows = search_quality.method_stability({"lbt": [history, history]}, 2)
    paths = search_quality.write_report(str(tmp_path), runs, stability_rows,
                                        {"title": "unit", "seeds": [0, 1]})
    assert sorted(os.path.basename(p) for p in paths.values()) == [
        "search_quality.json", "search_quality.md", "search_quality.png"]
    text = open(paths["md"]).read()
    assert "| lbt | 2 | 0.5500 ± 0.0707 | 4.50 ± 0.71 | 20.00 ± 0.00 |" in text
    assert "| random | 3 | 0.4400 ± 0.0400 |" in text
    assert "| lbt | 2 | 1.00 (0.20) | 1.00 | 1.00 (0.50) | 1.00 |" in text
    assert text.count("| random | 0 |") == 3                      # every run listed
    saved = json.load(open(paths["json"]))
    assert {row["method"]: row["runs"] for row in saved["summary"]} == {"lbt": 2, "random": 3}
    assert os.path.getsize(paths["png"]) > 1000


class MacTable(LatencyTable):
    """A latency table whose cost of an op is its multiply count (no timing)."""
    has_glue = False   # no overhead/resize/concat terms (LatencyTable.has_glue)

    def get(self, spec):
        return 1e-6 * spec.cin * spec.cout * spec.height * spec.width * spec.kernel

    def save(self, path=None):
        self.saved = path


def test_run_search_quality_with_stand_in_stages(tmp_path, monkeypatch):
    """Orchestration with the search/retrain stages replaced by stand-ins (the real stages have
    their own tests): random archs come from the latency band, the target row is searched
    with the random median as target, and a rerun retrains nothing."""
    from lbt_tf.experiments import compare
    from lbt_tf.models.fasterseg import genotype, sampling
    from tests.fasterseg.conftest import tiny_config
    config = tiny_config(**{"teacher.layers": 6, "run_dir": str(tmp_path),
                            "search.warmup_epochs": 1, "search.epochs": 4})
    calls = []

    def compare_method(cfg, mode, method_dir, lock=None):
        calls.append(("search", mode, cfg.seed, cfg.search.latency_target_max_ms))
        arch = sampling.sample_architectures(cfg.teacher, 1, seed=cfg.seed + 7)[0]
        arch_path = os.path.join(method_dir, "search", "arch.json")
        genotype.save_architecture(arch, arch_path)
        history = [snapshot(e, [cfg.seed % 5] * 4, [0, 1]) for e in range(1, 6)]
        with open(os.path.join(method_dir, "search", "search_state.json"), "w") as f:
            json.dump({"arch_history": history}, f)
        row = {"arch_path": arch_path, "retrained_miou": 0.5, "measured_latency_ms": 3.0,
               "teacher_val_miou": 0.2, "final_mode": mode}
        with open(os.path.join(method_dir, "result.json"), "w") as f:   # as the real one
            json.dump(row, f)
        return row

    def retrain_and_evaluate(cfg, arch_path, retrain_dir, lock=None):
        calls.append(("retrain", arch_path))
        return {"retrained_miou": 0.4, "measured_latency_ms": 3.1, "params": 10}

    monkeypatch.setattr(compare, "compare_method", compare_method)
    monkeypatch.setattr(compare, "retrain_and_evaluate", retrain_and_evaluate)
    monkeypatch.setattr(latency, "table_for_config", lambda cfg: (MacTable(), "table.json"))
    options = search_quality.QualityOptions(methods=("lpt", "lbt"), seeds=(0, 1),
                                            random_archs=3, random_pool=24, interleaved_rounds=2,
                                            stage_processes=False)   # stand-ins patched here
    paths = search_quality.run_search_quality(config, options)
    report = json.load(open(paths["json"]))
    runs = report["runs"]
    found = [r["predicted_latency_ms"] for r in runs if r["method"] in ("lpt", "lbt")]
    reference = sorted(found)[1:3]
    reference = (reference[0] + reference[1]) / 2                 # median of 4
    randoms = [r for r in runs if r["method"] == "random"]
    assert len(randoms) == 3
    assert all(abs(r["predicted_latency_ms"] / reference - 1) <= 0.15 for r in randoms)
    target = [r for r in runs if r["method"] == search_quality.TARGET][0]
    median_random = sorted(r["predicted_latency_ms"] for r in randoms)[1]
    assert target["target_latency_ms"] == pytest.approx(median_random)
    assert calls[-1] == ("search", "lbt", 0, pytest.approx(1.05 * median_random))
    assert [row["method"] for row in report["stability"]] == ["lpt", "lbt"]
    assert report["stability"][0]["alpha_seed_agreement"] == 0.0   # seeds 0, 1 differ
    # every network re-timed together: the stand-ins' evaluate timings are kept aside
    timed = json.load(open(tmp_path / "interleaved_latency.json"))
    assert len(timed["latency_ms"]) == len({r["arch_path"] for r in runs}) == len(runs)
    for row in runs:
        assert row["evaluate_latency_ms"] in (3.0, 3.1)
        assert row["measured_latency_ms"] == timed["latency_ms"][row["arch_path"]] > 0
    retrains = len([c for c in calls if c[0] == "retrain"])
    search_quality.run_search_quality(config, options)
    assert len([c for c in calls if c[0] == "retrain"]) == retrains   # resumed from files
    assert json.load(open(tmp_path / "interleaved_latency.json")) == timed   # not re-timed
    # report only: nothing runs, a missing search is left out, the fixed reference is used
    calls.clear()
    os.remove(tmp_path / "lbt" / "seed_1" / "result.json")
    report_only = search_quality.QualityOptions(methods=("lpt", "lbt", "fasterseg"),
                                                seeds=(0, 1), random_archs=3, random_pool=24,
                                                report_only=True, reference_ms=reference,
                                                stage_processes=False)
    paths = search_quality.run_search_quality(config, report_only)
    assert [c for c in calls if c[0] == "retrain"] == []
    methods = [r["method"] for r in json.load(open(paths["json"]))["runs"]]
    assert "fasterseg" not in methods and methods.count("random") == 3
    assert methods.count("lbt") == 1 and methods.count("lpt") == 2


def test_run_stage_runs_each_stage_in_its_own_process():
    """A long bench's memory is that of one stage: stages run in fresh child processes."""
    options = search_quality.QualityOptions()
    child = search_quality.run_stage(options, os.getpid)
    assert child != os.getpid() != search_quality.run_stage(options, os.getpid) != child
    in_process = search_quality.QualityOptions(stage_processes=False)
    assert search_quality.run_stage(in_process, os.getpid) == os.getpid()
