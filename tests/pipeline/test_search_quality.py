"""The search-quality bench's statistics and report writer, on hand-made inputs."""
import json
import os

import pytest

from lbt_tf.experiments import search_quality, stability


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
