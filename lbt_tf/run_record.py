"""Safe reruns: each stage (search, train) records the config that defines its run in its output
directory (`run_config.json`). A rerun of the same config resumes that run (as Keras'
`BackupAndRestore` does) and says so; another config in the same directory is refused, naming the
directory and the differing flags, unless --overwrite (which removes the earlier run's outputs
first). Nothing is overwritten silently."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Dict, Sequence

from lbt_tf import flags as lbt_flags
from lbt_tf.config import Config, ConfigError
from lbt_tf.json_files import write_json

RECORD_NAME = "run_config.json"
# The config sections that define each stage's result.
STAGE_SECTIONS = {"search": ("data", "teacher", "student", "search"),
                  "train": ("data", "teacher", "train")}
# Fields that change how a run is checked, shown or traced, not what it computes (the tracing
# options give the same values: tests/search/test_hypergradient.py, test_trace_once.py; so do
# kept or recomputed step gradients and activations: test_lbt_model.py, test_trace_once.py;
# and exact's teacher product over the whole pass or by stages: test_layerwise.py).
NOT_DEFINING = {"data.validate_files", "search.log_every", "search.checkpoint_every_steps",
                "teacher.cell_tracing", "search.trace_once", "search.keep_step_gradients",
                "search.recompute_activations", "search.arch_product"}
# A run may be continued for more (or fewer) epochs, as with BackupAndRestore.
EXTENDABLE = {"search.epochs", "train.epochs"}


def run_identity(config: Config, stage: str) -> Dict:
    """{"seed": 0, "data.batch_size": 2, ...}: every field that defines the stage's run."""
    identity = {"seed": config.seed}
    for section in STAGE_SECTIONS[stage]:
        for key, value in dataclasses.asdict(getattr(config, section)).items():
            name = f"{section}.{key}"
            if name not in NOT_DEFINING:
                identity[name] = list(value) if isinstance(value, tuple) else value
    return identity


def differences(old: Dict, new: Dict, ignore=()):
    """["--teacher_lr: 0.01 (recorded) vs 0.02 (now)", ...] for every differing field."""
    lines = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name) and name not in ignore:
            section, _, field = name.partition(".")
            flag = lbt_flags.flag_name(section if field else None, field or section)
            lines.append(f"--{flag}: {old.get(name)!r} (recorded) vs {new.get(name)!r} (now)")
    return lines


@dataclasses.dataclass
class RunPlan:
    """What `check` decided for a run directory; `apply` carries it out."""
    stage: str
    directory: str
    identity: Dict
    resume: bool
    remove: Sequence[str] = ()
    message: str = ""
    write_record: bool = True

    def apply(self) -> bool:
        """Removes what --overwrite replaces, writes the record, says what happens; returns
        `resume`."""
        for name in self.remove:
            path = os.path.join(self.directory, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        if self.write_record:
            _write_record(os.path.join(self.directory, RECORD_NAME), self.stage, self.identity)
        if self.message:
            print(self.message, flush=True)
        return self.resume


def check(config: Config, stage: str, directory: str, outputs: Sequence[str],
          ignore: Sequence[str] = ()) -> RunPlan:
    """Decides, writing nothing, whether the stage starts afresh or continues the run in
    `directory` (`outputs`: the names the stage writes there); raises ConfigError naming the
    directory and the differing flags when it holds a run of another config (`ignore`: fields
    not compared, for a check before they are known)."""
    record_path = os.path.join(directory, RECORD_NAME)
    identity = run_identity(config, stage)
    found = [name for name in outputs if os.path.exists(os.path.join(directory, name))]
    plan = RunPlan(stage, directory, identity, resume=False)
    if os.path.exists(record_path):
        with open(record_path) as f:
            recorded = json.load(f).get("config", {})
        # A field the record lacks was added since; the run computed with its default.
        recorded = {**run_identity(Config(), stage), **recorded}
        changed = differences(recorded, identity, ignore=EXTENDABLE | NOT_DEFINING | set(ignore))
        if not changed:
            extended = differences(recorded, identity)
            plan.resume, plan.write_record = True, bool(extended)
            plan.message = (f"{stage}: {directory} holds a run of the same config; resuming it "
                            f"{'(' + '; '.join(extended) + ') ' if extended else ''}"
                            "(--overwrite starts over)")
            return plan
        if not config.overwrite:
            raise ConfigError(f"--run_dir: {directory} holds a {stage} run of another config "
                              f"({'; '.join(changed)}); use another --run_dir, or --overwrite "
                              "to replace that run")
    elif found and not config.overwrite:
        if not config.resume:
            raise ConfigError(f"--run_dir: {directory} already holds {stage} outputs "
                              f"({', '.join(found)}) of an unrecorded run; use another "
                              "--run_dir, --resume to continue it or --overwrite to replace it")
        plan.resume = True  # an unrecorded run (older lbt_tf) the user asks to continue
        plan.message = f"{stage}: continuing the unrecorded run in {directory} (--resume)"
        return plan
    if config.overwrite and (found or os.path.exists(record_path)):
        plan.remove = found + [RECORD_NAME]
        plan.message = (f"{stage}: --overwrite: removed the earlier run "
                        f"({', '.join(found) or 'record'}) in {directory}")
    return plan


def start_or_resume(config: Config, stage: str, directory: str, outputs: Sequence[str]) -> bool:
    """`check` then `apply`: True when continuing an earlier run of the same config."""
    return check(config, stage, directory, outputs).apply()


def _write_record(path, stage, identity):
    write_json(path, {"stage": stage, "config": identity}, indent=1, sort_keys=True)
