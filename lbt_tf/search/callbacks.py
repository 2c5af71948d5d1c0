"""Keras callbacks of the search: schedule, lbt -> lpt fallback, architecture log, checkpoints."""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from lbt_tf.errors import LbtError
from lbt_tf.json_files import write_json
from lbt_tf.names import LATENCY_TARGETS, PHASES


class EpochSchedule(keras.callbacks.Callback):
    """FasterSeg's schedule, per epoch: warm-up (A frozen) for `warmup_epochs`, then search;
    weight learning rates lr0 * lr_decay**epoch (FasterSeg: ExponentialLR per epoch); the
    latency weight halved/doubled to keep a latency in [min, max] ms: the derived network's
    predicted latency (`derived_latency_fn()`, --latency_target_of=derived) or the supernet's
    expected latency (FasterSeg's rule). FasterSeg's rule steers a number the found network does
    not have: the expectation over the softmaxes sits well above the argmax network's latency,
    so a derived network ended 17% below its target (README, search quality)."""

    def __init__(self, search_config, latency_fn: Optional[Callable] = None,
                 derived_latency_fn: Optional[Callable] = None):
        super().__init__()
        self.config = search_config
        self.latency_fn = latency_fn
        self.derived_latency_fn = derived_latency_fn

    def on_epoch_begin(self, epoch, logs=None):
        cfg, model = self.config, self.model
        factor = cfg.lr_decay ** epoch
        model.teacher_optimizer.learning_rate.assign(cfg.teacher_lr * factor)
        model.student_optimizer.learning_rate.assign(cfg.student_lr * factor)
        warmup, search = PHASES
        model.set_phase(warmup if epoch < cfg.warmup_epochs else search)

    def on_epoch_end(self, epoch, logs=None):
        cfg, model = self.config, self.model
        if self.latency_fn is None:
            return
        latency = float(self.latency_fn(model.teacher_learner.arch_values()))
        if logs is not None:
            logs["expected_latency_ms"] = latency
        if self.derived_latency_fn is not None:
            derived = float(self.derived_latency_fn())
            if logs is not None:
                logs["derived_latency_ms"] = derived
            if cfg.latency_target_of == LATENCY_TARGETS[0]:
                latency = derived
        if (not cfg.adaptive_latency or cfg.latency_target_max_ms <= 0
                or epoch < cfg.warmup_epochs):
            return
        weight = float(model.latency_weight.numpy())
        if latency > cfg.latency_target_max_ms:
            weight *= 2.0
        elif latency < cfg.latency_target_min_ms:
            weight /= 2.0
        model.latency_weight.assign(weight)
        if logs is not None:
            logs["latency_weight"] = weight


class NonFiniteFallback(keras.callbacks.Callback):
    """After `max_skipped_steps` non-finite steps in a row, lbt falls back to lpt (and says so)."""

    def __init__(self, max_skipped_steps: int, log_fn=print):
        super().__init__()
        self.max_skipped_steps = max_skipped_steps
        self.log_fn = log_fn
        self.fell_back = False

    def on_train_batch_end(self, batch, logs=None):
        model = self.model
        if model.mode != "lbt" or self.max_skipped_steps <= 0:
            return
        in_a_row = int(model.consecutive_skips.numpy())
        if in_a_row >= self.max_skipped_steps:
            self.log_fn(f"search: {in_a_row} non-finite steps in a row; falling back from lbt "
                        "to lpt (first-order architecture gradient) for the rest of the search")
            model.consecutive_skips.assign(0)
            model.set_mode("lpt")
            self.fell_back = True


class ArchitectureLog(keras.callbacks.Callback):
    """After every epoch: the derived architecture JSON and the arch values (alpha/beta/...)
    history; at the end a plot of their evolution (softmax of each row, per variable)."""

    def __init__(self, run_dir: str, derive_fn: Callable, save_fn: Callable,
                 history: Optional[List[Dict]] = None):
        super().__init__()
        self.run_dir = run_dir
        self.derive_fn = derive_fn
        self.save_fn = save_fn
        self.history = history if history is not None else []
        self.latest_path = None
        self.previous = history[-1]["arch_values"] if history else None
        os.makedirs(os.path.join(run_dir, "arch"), exist_ok=True)

    def on_train_begin(self, logs=None):
        if self.previous is None:
            self.previous = self.arch_values()

    def arch_values(self) -> Dict[str, list]:
        return {v.name: np.asarray(v.numpy()).tolist()  # name: stable across builds
                for v in self.model.teacher_learner.arch_variables}

    def on_epoch_end(self, epoch, logs=None):
        arch = self.derive_fn()
        path = os.path.join(self.run_dir, "arch", f"arch_epoch_{epoch + 1:03d}.json")
        self.save_fn(arch, path)  # arch.json (the found architecture) only when the run ends
        self.latest_path = path
        values = self.arch_values()
        if logs is not None and self.previous is not None:
            # Is the search still deciding, or has every row settled? (TensorBoard + history)
            logs.update(argmax_changed(self.previous, values))
        self.previous = values
        self.history.append({"epoch": epoch + 1, "arch_values": values})
        write_json(os.path.join(self.run_dir, "arch", "arch_history.json"), self.history)

    def on_train_end(self, logs=None):
        if self.history:
            plot_arch_history(self.history, os.path.join(self.run_dir, "arch_evolution.png"))


def row_probabilities(value) -> np.ndarray:
    """Softmax of every row of an arch variable, as [rows, choices]."""
    logits = np.asarray(value, dtype=np.float64)
    logits = logits.reshape(-1, logits.shape[-1]) if logits.ndim else logits.reshape(1, 1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def argmax_changed(previous: Dict, current: Dict) -> Dict[str, float]:
    """arch_argmax_changed_<alpha|beta|gamma>: fraction of the rows of that kind of arch
    variable whose argmax differs between two snapshots (name -> values)."""
    changed: Dict[str, List[int]] = {}
    for name, value in current.items():
        kind = name.split("/")[-1].split("_")[0].split(":")[0]
        before = np.argmax(row_probabilities(previous[name]), -1)
        now = np.argmax(row_probabilities(value), -1)
        counts = changed.setdefault(f"arch_argmax_changed_{kind}", [0, 0])
        counts[0] += int((before != now).sum())
        counts[1] += now.size
    return {key: n / max(total, 1) for key, (n, total) in sorted(changed.items())}


def plot_arch_history(history: List[Dict], path: str):
    """One heatmap per arch variable: rows x epochs, colour = the row's argmax choice, opacity
    = how peaked its softmax is (transparent: uniform, opaque: one-hot), max prob written in."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    names = list(history[0]["arch_values"].keys())
    epochs = [h["epoch"] for h in history]
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for ax, name in zip(axes.flat, names):
        probs = np.stack([row_probabilities(h["arch_values"][name]) for h in history], 1)
        choices = probs.shape[-1]
        best, top = probs.argmax(-1), probs.max(-1)            # [rows, epochs]
        peaked = np.clip((top - 1.0 / choices) / max(1.0 - 1.0 / choices, 1e-9), 0, 1)
        image = np.ones(best.shape + (4,))
        image[..., :3] = np.asarray(colours)[best % len(colours)]
        image[..., 3] = 0.2 + 0.8 * np.sqrt(peaked)
        ax.imshow(image, aspect="auto", interpolation="nearest",
                  extent=(epochs[0] - 0.5, epochs[-1] + 0.5, best.shape[0] - 0.5, -0.5))
        if best.size <= 400:
            for (r, e), p in np.ndenumerate(top):
                ax.text(epochs[e], r, f"{p:.2f}", ha="center", va="center", fontsize=5)
        ax.set_title(f"{name.split('/')[-1]}: argmax per row (text: max prob)", fontsize=7)
        ax.set_xlabel("epoch", fontsize=7)
        ax.set_ylabel("row", fontsize=7)
        ax.set_yticks(range(0, best.shape[0], max(1, best.shape[0] // 16)))
        ax.legend(handles=[Patch(color=colours[k % len(colours)], label=f"choice {k}")
                           for k in range(choices)], fontsize=5, loc="upper right",
                  bbox_to_anchor=(1.3, 1.0))
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


class PeriodicCheckpoint(keras.callbacks.Callback):
    """`tf.train.CheckpointManager` saves at every epoch end and every `every_steps` steps of an
    epoch (0: at epoch ends only), numbered by the steps done (`ckpt-N`: after N steps), so a
    kill loses at most `every_steps` steps. `position` = (epoch, step) variables in the
    checkpoint: where the run continues (step 0: at an epoch's start). `state_fn(epoch, logs,
    epoch_end)` writes the run's other state first. A fit resumed mid-epoch starts at
    `first_step` of its first epoch and gets back that epoch's running metrics (`metric_values`,
    as checkpointed; `fit` resets them when an epoch begins), so the epoch's logged means equal
    the uninterrupted run's."""

    def __init__(self, manager: tf.train.CheckpointManager, position, steps_per_epoch: int,
                 every_steps: int = 0, state_fn: Optional[Callable] = None, first_step: int = 0,
                 metric_values: Optional[List] = None):
        super().__init__()
        self.manager = manager
        self.epoch_variable, self.step_variable = position
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.state_fn = state_fn
        self.first_step = first_step
        self.metric_values = metric_values  # [(variable, value)] for the first resumed epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        for variable, value in self.metric_values or ():
            variable.assign(value)
        self.metric_values = None

    def on_train_batch_end(self, batch, logs=None):
        step = self.first_step + batch + 1
        if self.every_steps and step % self.every_steps == 0 and step < self.steps_per_epoch:
            self._save(self.epoch, step, logs, epoch_end=False)

    def on_epoch_end(self, epoch, logs=None):
        self.first_step = 0
        self._save(epoch + 1, 0, logs, epoch_end=True)

    def _save(self, epoch, step, logs, epoch_end):
        self.epoch_variable.assign(epoch)
        self.step_variable.assign(step)
        if self.state_fn is not None:
            self.state_fn(epoch, logs or {}, epoch_end)
        path = self.manager.save(checkpoint_number=epoch * self.steps_per_epoch + step)
        logging.info("checkpoint %s (epoch %d, step %d)", path, epoch, step)


class DivergenceError(LbtError):
    """A run diverged; the message names the likely flag. Nothing after the last good epoch is
    saved."""


class DivergenceGuard(keras.callbacks.Callback):
    """Stops a diverging run with a DivergenceError (exit 2 from main) instead of a result:
    - a loss above `growth` x its first finite value (a rate too large),
    - a loss that is not finite where no step-skipping protects the weights (`skips_fn` None),
    - more than `max_skip_fraction` of an epoch's steps skipped as non-finite, once at least
      `min_steps_for_fraction` ran (`skips_fn()`: the run's count of skipped steps so far),
    - an architecture softmax saturated (a row's top probability > 1 - `saturation`, where its
      gradient vanishes) within the first `saturation_steps` steps that update it.
    `loss_flags`: log key -> (flag, value) of the learning rate that drives it; `arch_values_fn`
    gives the arch variables' values while `arch_active_fn()` says they are being updated.
    Put it before the callbacks that save, so a diverged epoch saves nothing."""

    def __init__(self, loss_flags: Dict[str, tuple], growth: float = 100.0,
                 skips_fn: Optional[Callable] = None, max_skip_fraction: float = 0.5,
                 arch_values_fn: Optional[Callable] = None, arch_active_fn=lambda: True,
                 arch_flag: tuple = ("arch_lr", None), saturation: float = 1e-6,
                 saturation_steps: int = 20, min_steps_for_fraction: int = 10):
        super().__init__()
        self.loss_flags = loss_flags
        self.growth = growth
        self.skips_fn = skips_fn
        self.max_skip_fraction = max_skip_fraction
        self.arch_values_fn = arch_values_fn
        self.arch_active_fn = arch_active_fn
        self.arch_flag = arch_flag
        self.saturation = saturation
        self.saturation_steps = saturation_steps
        self.min_steps_for_fraction = min_steps_for_fraction
        self.reference: Dict[str, float] = {}
        self.arch_steps = 0
        self.epoch = 0
        self.steps_in_epoch = 0
        self.skips_at_epoch_begin = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.steps_in_epoch = epoch, 0
        self.skips_at_epoch_begin = self.skips_fn() if self.skips_fn is not None else 0

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self.steps_in_epoch += 1
        self._check_losses(logs, f"epoch {self.epoch + 1} step {batch + 1}")
        self._check_skips(f"epoch {self.epoch + 1}")
        if self.arch_values_fn is not None and self.arch_active_fn():
            self.arch_steps += 1
            if self.arch_steps <= self.saturation_steps:
                self._check_saturation(f"epoch {self.epoch + 1} step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self._check_losses(logs, f"epoch {epoch + 1}")
        self._check_skips(f"epoch {epoch + 1}")

    def _fail(self, where, what, flag):
        name, value = flag
        raise DivergenceError(f"the run diverged at {where}: {what}; the likely cause is "
                              f"--{name}" + ("" if value is None else f"={value:g}") +
                              " (lower it)")

    def _check_losses(self, logs, where):
        for key, flag in self.loss_flags.items():
            if key not in logs:
                continue
            value = float(logs[key])
            if not np.isfinite(value):
                if self.skips_fn is None:  # nothing protected the weights from this step
                    self._fail(where, f"{key} is {value}", flag)
                continue  # skipped steps are judged by their fraction
            first = self.reference.setdefault(key, value)
            if first > 0 and value > self.growth * first:
                self._fail(where, f"{key} {value:.4g} is {value / first:.3g}x its first value "
                                  f"{first:.4g} (limit {self.growth:g}x)", flag)

    def _check_skips(self, where):
        # Judged over enough steps: lbt's fallback to lpt after `max_skipped_steps` (5) skips in
        # a row must not read as divergence in a short epoch.
        if self.skips_fn is None or self.steps_in_epoch < self.min_steps_for_fraction:
            return
        skipped = self.skips_fn() - self.skips_at_epoch_begin
        fraction = skipped / self.steps_in_epoch
        if fraction > self.max_skip_fraction:
            flags = " or ".join(f"--{name}" for name, _ in self.loss_flags.values())
            raise DivergenceError(
                f"the run diverged at {where}: {int(skipped)} of {self.steps_in_epoch} steps "
                f"were non-finite and skipped (limit {self.max_skip_fraction:.0%}); the likely "
                f"cause is a too large {flags} or --arch_lr (lower them)")

    def _check_saturation(self, where):
        for name, value in self.arch_values_fn().items():
            logits = np.asarray(value, np.float64)
            logits = logits.reshape(-1, logits.shape[-1])
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            top = (probs / probs.sum(-1, keepdims=True)).max(-1)
            if logits.shape[-1] > 1 and (not np.all(np.isfinite(logits))
                                         or top.max() > 1.0 - self.saturation):
                self._fail(where, f"the softmax of {name} saturated after {self.arch_steps} "
                                  f"architecture step(s) (max |logit| "
                                  f"{np.nanmax(np.abs(logits)):.3g}; its gradient vanishes)",
                           self.arch_flag)


class PhaseProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress line showing only the logs the current phase updates
    (`LBTSearch.progress_keys`) and the val metrics; the other callbacks (TensorBoard, the
    history) still get every log."""

    def _shown(self, logs):
        keys = self.model.progress_keys()
        return {k: v for k, v in (logs or {}).items() if k in keys or k.startswith("val_")}

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, self._shown(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self._shown(logs))
