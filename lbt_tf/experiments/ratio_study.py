"""`--mode=ratio_study`: how much pseudo-labeled data should the student see?

keras-tuner over three hyperparameters of an LBT search:
- `pseudo_label_ratio`  |D_u used| : |D_s^tr|            (`--tuner_ratios`)
- `pseudo_label_weight` λ, weight of the pseudo-label loss (`--tuner_pseudo_label_weights`)
- `student_val_weight`  γ, weight of the student's val loss in the arch objective
                                                          (`--tuner_student_val_weights`)
Objective: the student's val mIoU after a short LBT search (the search flags as given).
`--tuner_algorithm=grid` walks the grid (the ratio varies fastest, so a truncated grid still
covers every ratio); `bayesian` uses keras-tuner's Bayesian optimisation with
`--tuner_max_trials` trials.

Outputs under `<run_dir>/ratio_study/`: keras-tuner's own state (`tuner/`, resumed with
`overwrite=False`: completed trials are kept, an interrupted one is retried and its search
resumes from its checkpoint), `ratio_study.md` (one row per trial) and `ratio_study.png`
(objective vs ratio, one line per (λ, γ)).
"""
from __future__ import annotations

import itertools
import os
from typing import Dict, List

import keras_tuner

from lbt_tf import config as config_lib
from lbt_tf.config import ConfigError
from lbt_tf.experiments import results as results_lib

OBJECTIVE = "student_val_miou"
PROJECT = "tuner"
COLUMNS = (("trial_id", "trial", "{}"),
           ("pseudo_label_ratio", "ratio D_u : D_s^tr (pseudo_label_ratio)", "{:g}"),
           ("pseudo_label_weight", "λ (pseudo_label_weight)", "{:g}"),
           ("student_val_weight", "γ (student_val_weight)", "{:g}"),
           (OBJECTIVE, "student val mIoU", "{:.4f}"),
           ("teacher_val_miou", "teacher val mIoU", "{:.4f}"),
           ("skipped_steps", "skipped steps", "{}"))


def hyperparameters(pipeline_config) -> keras_tuner.HyperParameters:
    """The study's space; the ratio is declared last so that grid search varies it fastest."""
    hp = keras_tuner.HyperParameters()
    hp.Choice("pseudo_label_weight", [float(v) for v in pipeline_config.tuner_pseudo_label_weights])
    hp.Choice("student_val_weight", [float(v) for v in pipeline_config.tuner_student_val_weights])
    hp.Choice("pseudo_label_ratio", [float(v) for v in pipeline_config.tuner_ratios])
    return hp


class RatioStudyTuner(keras_tuner.Tuner):
    """A keras-tuner `Tuner` whose trial is one LBT search, not a Keras model fit."""

    def __init__(self, lbt_config, **kwargs):
        self.lbt_config = lbt_config
        super().__init__(**kwargs)

    def run_trial(self, trial, *args, **kwargs) -> Dict[str, float]:
        from lbt_tf.pipeline_steps import search_summary
        from lbt_tf.search.runner import run_search
        values = trial.hyperparameters.values
        trial_dir = self.get_trial_dir(trial.trial_id)
        search_dir = os.path.join(trial_dir, "search")
        config = trial_config(self.lbt_config, values, search_dir,
                              resume=self.lbt_config.resume or os.path.isdir(search_dir))
        print(f"[ratio_study] trial {trial.trial_id}: {values}", flush=True)
        result = run_search(config)
        summary = search_summary(result, "lbt")
        if summary[OBJECTIVE] is None:
            raise ConfigError("the ratio study needs the student's val mIoU: an lbt search "
                              "returned none")
        results_lib.write_json(os.path.join(trial_dir, "trial_result.json"),
                               dict(summary, **values, trial_id=trial.trial_id))
        return {OBJECTIVE: summary[OBJECTIVE]}

    def save_model(self, trial_id, model, step=0):
        """Nothing to save: the trial's search keeps its own checkpoints."""

    def load_model(self, trial):
        raise TypeError("a ratio-study trial has no Keras model; read "
                                  "trial_result.json in its trial directory")


def trial_config(config, values: Dict, search_dir: str, resume: bool):
    """The config of one trial: an lbt search with the trial's ratio, λ and γ."""
    return config_lib.replace(
        config, mode="search", run_dir=search_dir, resume=resume,
        **{"search.mode": "lbt",
           "data.pseudo_label_ratio": float(values["pseudo_label_ratio"]),
           "search.pseudo_label_weight": float(values["pseudo_label_weight"]),
           "search.student_val_weight": float(values["student_val_weight"])})


class ResumableGridOracle(keras_tuner.Oracle):
    """Grid search whose next point is the first grid point (last hyperparameter fastest) that
    no stored trial has tried. It needs no state beyond the trials keras-tuner already saves,
    so `overwrite=False` resumes it; keras-tuner 1.4's GridSearchOracle does not save its walk
    (`_ordered_ids`) and fails to reload an interrupted study with a KeyError."""

    def populate_space(self, trial_id):
        space = self.get_space().space
        names = [hp.name for hp in space]
        tried = {tuple(trial.hyperparameters.values.get(name) for name in names)
                 for trial in self.trials.values()}
        for point in itertools.product(*(hp.values for hp in space)):
            if point not in tried:
                return {"status": keras_tuner.engine.trial.TrialStatus.RUNNING,
                        "values": dict(zip(names, point))}
        return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}


def make_oracle(pipeline_config):
    objective = keras_tuner.Objective(OBJECTIVE, direction="max")
    common = dict(objective=objective, max_trials=pipeline_config.tuner_max_trials,
                  hyperparameters=hyperparameters(pipeline_config), tune_new_entries=False)
    if pipeline_config.tuner_algorithm == "grid":
        return ResumableGridOracle(**common)
    if pipeline_config.tuner_algorithm == "bayesian":
        try:
            return keras_tuner.oracles.BayesianOptimizationOracle(**common)
        except ImportError:
            raise ConfigError("--tuner_algorithm=bayesian needs scikit-learn "
                              "(pip install 'keras-tuner[bayesian]'); or use "
                              "--tuner_algorithm=grid") from None
    raise ConfigError(f"--tuner_algorithm={pipeline_config.tuner_algorithm!r}: expected grid "
                      "or bayesian")


def run_ratio_study(config) -> List[Dict]:
    p = config.pipeline
    if p.tuner_max_trials <= 0:
        raise ConfigError(f"--tuner_max_trials must be positive, got {p.tuner_max_trials}")
    for flag, values in (("tuner_ratios", p.tuner_ratios),
                         ("tuner_pseudo_label_weights", p.tuner_pseudo_label_weights),
                         ("tuner_student_val_weights", p.tuner_student_val_weights)):
        if not values or any(float(v) < 0 for v in values):
            raise ConfigError(f"--{flag}={','.join(map(str, values))}: need one or more "
                              "values >= 0")
    out_dir = os.path.join(config.run_dir, "ratio_study")
    tuner = RatioStudyTuner(config, oracle=make_oracle(p), directory=out_dir,
                            project_name=PROJECT, overwrite=False)
    tuner.search()
    rows = study_rows(tuner)
    table = results_lib.markdown_table(rows, COLUMNS)
    table_path = os.path.join(out_dir, "ratio_study.md")
    with open(table_path, "w") as f:
        f.write(f"# Pseudo-label ratio study ({p.tuner_algorithm}, {len(rows)} trials, "
                f"objective: student val mIoU after {config.search.warmup_epochs} warm-up + "
                f"{config.search.epochs} LBT epochs, seed {config.seed})\n\n{table}\n")
    plot_path = os.path.join(out_dir, "ratio_study.png")
    plot_objective_vs_ratio(plot_path, rows)
    print(table)
    print(f"ratio_study_table={table_path}\nratio_study_plot={plot_path}", flush=True)
    return rows


def study_rows(tuner) -> List[Dict]:
    """One row per completed trial, from keras-tuner's oracle and the trials' result JSONs."""
    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        if trial.status != keras_tuner.engine.trial.TrialStatus.COMPLETED:
            continue
        path = os.path.join(tuner.get_trial_dir(trial_id), "trial_result.json")
        row = results_lib.read_json(path) if os.path.isfile(path) else {}
        row.update(trial.hyperparameters.values, trial_id=trial_id,
                   **{OBJECTIVE: trial.score})
        rows.append(row)
    return sorted(rows, key=lambda r: (r["pseudo_label_weight"], r["student_val_weight"],
                                       r["pseudo_label_ratio"]))


def plot_objective_vs_ratio(path: str, rows: List[Dict]) -> str:
    """Objective against the ratio, one line per (λ, γ) pair."""
    groups: Dict[tuple, list] = {}
    for row in rows:
        key = (row["pseudo_label_weight"], row["student_val_weight"])
        groups.setdefault(key, []).append((row["pseudo_label_ratio"], row[OBJECTIVE]))
    series = {f"λ={weight:g}, γ={val_weight:g}": sorted(points)
              for (weight, val_weight), points in sorted(groups.items())}
    return results_lib.plot_points(path, series, "pseudo-label ratio |D_u used| : |D_s^tr|",
                               "student val mIoU", "ratio study")
