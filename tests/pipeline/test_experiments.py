"""The comparison and the ratio study: tables, plots and resumption, with the search / retrain
stages replaced by cheap stand-ins that record their calls (the real stages have their own
tests; the end-to-end pipeline test runs them for real)."""
import json
import os
import sys
import types

import pytest

from lbt_tf import config as config_lib
from lbt_tf.config import Config, ConfigError
from lbt_tf.experiments import compare, ratio_study
from lbt_tf.experiments import results as results_lib


def fake_search_result(config, arch_path):
    """Objective a known function of the hyperparameters: best at ratio 1, λ 1, γ 0.5."""
    s, d = config.search, config.data
    student = 0.5 - 0.1 * abs(d.pseudo_label_ratio - 1.0) - 0.05 * abs(s.pseudo_label_weight - 1) \
        - 0.02 * abs(s.student_val_weight - 0.5)
    teacher = {"fasterseg": 0.30, "lpt": 0.35, "lbt": 0.40}[s.mode]
    return types.SimpleNamespace(
        arch_path=arch_path, teacher_miou=teacher, mode=s.mode,
        student_miou=None if s.mode == "fasterseg" else student,
        expected_latency_ms={"fasterseg": 3.0, "lpt": 2.5, "lbt": 2.0}[s.mode],
        skipped_steps=1 if s.mode == "lbt" else 0,
        history=[{"epoch": e + 1, "val_teacher_miou": teacher * (e + 1) / 3} for e in range(3)])


@pytest.fixture
def stages(monkeypatch):
    """Stand-ins for run_search / run_train / run_evaluate; `calls` records (stage, config)."""
    calls = []
    fail = {"mode": None}

    def run_search(config):
        calls.append(("search", config))
        os.makedirs(config.run_dir, exist_ok=True)
        if fail["mode"] in (config.search.mode, "any"):
            raise KeyboardInterrupt  # interrupted after it started writing its run_dir
        arch_path = os.path.join(config.run_dir, "arch.json")
        with open(arch_path, "w") as f:
            json.dump({"mode": config.search.mode}, f)
        return fake_search_result(config, arch_path)

    def run_train(config):
        calls.append(("train", config))
        return {"weights": "w", "arch": config.train.arch, "history": {}}

    def run_evaluate(config):
        calls.append(("evaluate", config))
        with open(config.train.arch) as f:
            mode = json.load(f)["mode"]
        return {"miou": {"fasterseg": 0.2, "lpt": 0.25, "lbt": 0.3}[mode],
                "speed": {"latency_ms": 4.0, "fps": 250.0}}

    for name, attr, fn in (("lbt_tf.search.runner", "run_search", run_search),
                           ("lbt_tf.retrain.trainer", "run_train", run_train),
                           ("lbt_tf.retrain.evaluate", "run_evaluate", run_evaluate)):
        module = types.ModuleType(name)
        setattr(module, attr, fn)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(results_lib, "count_params", lambda config: 12345)
    return calls, fail


def test_compare_table_plot_and_resume(tmp_path, stages):
    calls, fail = stages
    config = config_lib.replace(Config(), run_dir=str(tmp_path))
    fail["mode"] = "lbt"  # interrupted in the third method's search
    with pytest.raises(KeyboardInterrupt):
        compare.run_compare(config)
    assert [c[0] for c in calls] == ["search", "train", "evaluate"] * 2 + ["search"]
    # every method got the same seed, data and budget; only the search mode differs
    searches = [c[1] for c in calls if c[0] == "search"]
    assert [c.search.mode for c in searches] == ["fasterseg", "lpt", "lbt"]
    for c in searches:
        assert config_lib.replace(c, **{"search.mode": "lbt"}, run_dir="x", mode="demo",
                                  resume=False) == config_lib.replace(config, run_dir="x")
    calls.clear()
    fail["mode"] = None
    rows = compare.run_compare(config)
    # finished methods are not rerun; the interrupted search is resumed
    assert [c[0] for c in calls] == ["search", "train", "evaluate"]
    assert calls[0][1].search.mode == "lbt" and calls[0][1].resume
    assert [r["method"] for r in rows] == ["fasterseg", "lpt", "lbt"]
    table = (tmp_path / "compare" / "compare.md").read_text()
    assert "| lbt | 0.4000 | 0.3000 | 2.00 | 4.00 | 12,345 | 1 |" in table
    assert "| fasterseg | 0.3000 | 0.2000 | 3.00 | 4.00 | 12,345 | 0 |" in table
    assert (tmp_path / "compare" / "compare_val_miou.png").stat().st_size > 0
    assert rows[2]["val_miou_per_epoch"] == pytest.approx([0.4 / 3, 0.8 / 3, 0.4])
    calls.clear()
    compare.run_compare(config)
    assert calls == []  # everything cached


def test_compare_rejects_unknown_mode(tmp_path):
    config = config_lib.replace(Config(), run_dir=str(tmp_path),
                                **{"pipeline.compare_modes": ("lbt", "darts")})
    with pytest.raises(ConfigError, match="--compare_modes"):
        compare.run_compare(config)


def study_config(tmp_path, **changes):
    return config_lib.replace(Config(), run_dir=str(tmp_path), **{
        "pipeline.tuner_ratios": (0.5, 1.0, 2.0), "pipeline.tuner_pseudo_label_weights": (1.0,),
        "pipeline.tuner_student_val_weights": (0.5, 1.0), "pipeline.tuner_max_trials": 6,
        **changes})


def test_ratio_study_grid_table_plot_and_resume(tmp_path, stages):
    calls, fail = stages
    config = study_config(tmp_path)
    original_run_search = sys.modules["lbt_tf.search.runner"].run_search
    count = {"n": 0}

    def interrupted_fourth(cfg):
        count["n"] += 1
        if count["n"] == 4:
            raise KeyboardInterrupt
        return original_run_search(cfg)

    sys.modules["lbt_tf.search.runner"].run_search = interrupted_fourth
    with pytest.raises(KeyboardInterrupt):
        ratio_study.run_ratio_study(config)
    sys.modules["lbt_tf.search.runner"].run_search = original_run_search
    first = [c[1] for c in calls if c[0] == "search"]
    assert len(first) == 3
    calls.clear()
    rows = ratio_study.run_ratio_study(config)
    # keras-tuner resumed: the 3 completed trials are kept, the interrupted one is retried
    resumed = [c[1] for c in calls if c[0] == "search"]
    assert len(resumed) == 3
    assert len(rows) == 6
    seen = {(c.data.pseudo_label_ratio, c.search.student_val_weight) for c in first + resumed}
    assert seen == {(r, g) for r in (0.5, 1.0, 2.0) for g in (0.5, 1.0)}
    for c in first + resumed:
        assert c.search.mode == "lbt" and c.search.pseudo_label_weight == 1.0
    best = max(rows, key=lambda r: r["student_val_miou"])
    assert (best["pseudo_label_ratio"], best["student_val_weight"]) == (1.0, 0.5)
    assert best["student_val_miou"] == pytest.approx(0.5)
    table = (tmp_path / "ratio_study" / "ratio_study.md").read_text()
    assert table.count("\n| ") == 7  # header + 6 trials
    assert (tmp_path / "ratio_study" / "ratio_study.png").stat().st_size > 0
    calls.clear()
    assert len(ratio_study.run_ratio_study(config)) == 6
    assert calls == []  # a finished study runs no search


def test_ratio_study_grid_varies_ratio_fastest(tmp_path, stages):
    calls, _ = stages
    rows = ratio_study.run_ratio_study(study_config(tmp_path, **{"pipeline.tuner_max_trials": 3}))
    assert sorted(r["pseudo_label_ratio"] for r in rows) == [0.5, 1.0, 2.0]


def test_ratio_study_rejects_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="--tuner_ratios"):
        ratio_study.run_ratio_study(study_config(tmp_path, **{"pipeline.tuner_ratios": (-1.0,)}))
    with pytest.raises(ConfigError, match="--tuner_algorithm"):
        ratio_study.run_ratio_study(study_config(tmp_path, **{"pipeline.tuner_algorithm": "x"}))


def test_markdown_table_formats_missing_values():
    table = results_lib.markdown_table([{"a": 1.23456, "b": None}], (("a", "A", "{:.2f}"),
                                                                    ("b", "B", "{:.2f}")))
    assert table.splitlines() == ["| A | B |", "|---|---|", "| 1.23 | n/a |"]


def test_ratio_study_bayesian(tmp_path, stages):
    calls, _ = stages
    config = study_config(tmp_path, **{"pipeline.tuner_algorithm": "bayesian",
                                       "pipeline.tuner_max_trials": 3})
    try:
        import sklearn  # noqa: F401  keras-tuner's Bayesian oracle needs it
    except ImportError:
        with pytest.raises(ConfigError, match="--tuner_algorithm=bayesian needs scikit-learn"):
            ratio_study.run_ratio_study(config)
        return
    rows = ratio_study.run_ratio_study(config)
    assert len(rows) == 3 == len([c for c in calls if c[0] == "search"])
    for row in rows:  # every trial's objective is the one its own search returned
        expected = 0.5 - 0.1 * abs(row["pseudo_label_ratio"] - 1.0) \
            - 0.02 * abs(row["student_val_weight"] - 0.5)
        assert row["student_val_miou"] == pytest.approx(expected)
