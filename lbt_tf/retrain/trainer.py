"""`--mode=train`: retrain a derived architecture from scratch (FasterSeg's retraining).

loss = CE(logits) + aux_weight * sum CE(aux_logits)
       [+ distill_weight * KL(teacher || network) on temperature-softened logits]
SGD with momentum, weight decay and poly learning-rate decay (config.train; Keras' SGD decays
weights decoupled, w -= lr * wd * w, where FasterSeg's torch SGD adds wd * w to the gradient
before momentum: the same at momentum 0, close otherwise), driven by
`keras.Model.fit`: progress bar, TensorBoard, `BackupAndRestore` (a rerun of the same config
resumes; another config in the same --run_dir is refused, lbt_tf.run_record). The network's
weights go to `<run_dir>/train/model.weights.h5` after every epoch, its architecture JSON beside.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import keras
import tensorflow as tf

from lbt_tf import run_record
from lbt_tf.config import Config, ConfigError
from lbt_tf.ops import losses
from lbt_tf.retrain import network as network_lib
from lbt_tf.search.callbacks import DivergenceGuard

BACKUP_NAME = "backup"
# What a retraining writes in <run_dir>/train (removed by --overwrite).
OUTPUTS = (BACKUP_NAME, network_lib.WEIGHTS_NAME, network_lib.ARCH_NAME, "tensorboard")


class RetrainModel(keras.Model):
    """Wraps the derived network (and an optional frozen teacher) with the retraining loss."""

    def __init__(self, network, ignore_label: int, aux_weight: float, teacher=None,
                 distill_weight: float = 0.0, distill_temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.ignore_label = ignore_label
        self.aux_weight = aux_weight
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in ("loss", "ce", "aux_ce", "distill_kl")}

    def call(self, images, training=False):
        return self.network(images, training=training)

    def compute_losses(self, outputs, labels, images):
        """Each term of the loss; `loss` is their weighted sum."""
        logits = network_lib.logits_of(outputs)
        ce = losses.segmentation_ce(logits, labels, self.ignore_label)
        aux_logits = list(outputs.get("aux_logits") or []) if isinstance(outputs, dict) else []
        aux_ce = tf.add_n([losses.segmentation_ce(a, labels, self.ignore_label)
                           for a in aux_logits]) if aux_logits else tf.zeros_like(ce)
        total = ce + self.aux_weight * aux_ce
        distill = tf.zeros_like(ce)
        if self.teacher is not None and self.distill_weight > 0:
            teacher_logits = tf.stop_gradient(
                network_lib.logits_of(self.teacher(images, training=False)))
            distill = losses.distillation_kl(logits, teacher_logits, self.distill_temperature)
            total = total + self.distill_weight * distill
        return {"loss": total, "ce": ce, "aux_ce": aux_ce, "distill_kl": distill}

    def train_step(self, data):
        images, labels = data
        variables = self.network.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.network(images, training=True)
            terms = self.compute_losses(outputs, labels, images)
        gradients = tape.gradient(terms["loss"], variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_trackers(terms)

    def test_step(self, data):
        images, labels = data
        terms = self.compute_losses(self.network(images, training=False), labels, images)
        return self._update_trackers(terms)

    def _update_trackers(self, terms):
        for name, tracker in self.trackers.items():
            tracker.update_state(terms[name])
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    @property
    def metrics(self):
        return list(self.trackers.values())


class SaveNetworkWeights(keras.callbacks.Callback):
    """Writes the bare network's weights (no optimizer, no teacher) after every epoch."""

    def __init__(self, network, path):
        super().__init__()
        self.network = network
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        self.network.save_weights(self.path)

    def on_train_end(self, logs=None):
        self.network.save_weights(self.path)


def tensorboard_available() -> bool:
    """Keras' TensorBoard callback writes through the `tensorboard` package's summary ops."""
    return importlib.util.find_spec("tensorboard") is not None


def make_optimizer(train_config, total_steps: int):
    """SGD + momentum + weight decay, lr decayed by (1 - step/total)^power (FasterSeg's poly)."""
    schedule = keras.optimizers.schedules.PolynomialDecay(
        train_config.lr, decay_steps=max(total_steps, 1), end_learning_rate=0.0,
        power=train_config.lr_power)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=train_config.momentum,
                                weight_decay=train_config.weight_decay)


def train_source(splits):
    """The whole labeled train split as one `Source`: the four LBT parts (D_t^tr, D_t^val,
    D_s^tr, D_s^val) are disjoint pieces of it with the same reader, so their keys are joined."""
    parts = [splits.teacher_train, splits.teacher_val, splits.student_train, splits.student_val]
    keys = tuple(sorted(k for part in parts for k in part.keys))
    return dataclasses.replace(splits.teacher_train, name="train", keys=keys)


def training_dataset(config: Config):
    """(repeated dataset of random training crops, batches in one pass over the train split)."""
    from lbt_tf import data as data_lib
    source = train_source(data_lib.make_splits(config.data, config.seed))
    dataset = data_lib.make_dataset(config.data, source, training=True, seed=config.seed,
                                    repeat=True)
    return dataset, len(source) // config.data.batch_size


def backed_up_epochs(backup_dir: str) -> int:
    """Epochs finished by the run BackupAndRestore backed up in `backup_dir` (0 if none): the
    "epoch" of its training_metadata.json, the epoch it restarts at."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["epoch"])


def _load_teacher(config: Config, input_hw):
    t = config.train
    if t.distill_weight <= 0:
        return None
    if not t.distill_from:
        raise ConfigError("--distill_weight > 0 needs --distill_from (teacher weights)")
    if not os.path.isfile(t.distill_from):
        raise ConfigError(f"--distill_from={t.distill_from}: no such file")
    arch_path = t.distill_arch or os.path.join(os.path.dirname(t.distill_from),
                                               network_lib.ARCH_NAME)
    arch = network_lib.load_arch(arch_path, flag="--distill_arch")
    teacher = network_lib.build_network(config, arch, input_hw)
    try:
        teacher.load_weights(t.distill_from)
    except ValueError as err:
        raise ConfigError(f"--distill_from={t.distill_from} does not fit --distill_arch="
                          f"{arch_path}: {err}") from None
    return teacher


def run_train(config: Config):
    """Trains the network of `--arch`; returns {"weights", "arch", "history", "model" (the
    RetrainModel, its optimizer's state included)}."""
    t = config.train
    arch = network_lib.load_arch(t.arch)
    out_dir = network_lib.train_dir(config)
    plan = run_record.check(config, "train", out_dir, OUTPUTS)  # refuses before any work
    keras.utils.set_random_seed(config.seed)  # before the data: its shuffles use the global seed
    input_hw = (config.data.crop_height, config.data.crop_width)
    dataset, batches_per_pass = training_dataset(config)  # files checked before writing
    steps = t.steps_per_epoch or batches_per_pass
    os.makedirs(out_dir, exist_ok=True)
    plan.apply()
    arch_copy = network_lib.save_arch_beside_weights(arch, out_dir)
    net = network_lib.build_network(config, arch, input_hw)
    model = RetrainModel(net, config.data.ignore_label, t.aux_weight,
                         teacher=_load_teacher(config, input_hw),
                         distill_weight=t.distill_weight,
                         distill_temperature=t.distill_temperature)
    model.compile(optimizer=make_optimizer(t, t.epochs * steps), jit_compile=False)
    model(tf.zeros((1, *input_hw, 3)))  # BackupAndRestore needs a built model

    backup_dir = os.path.join(out_dir, BACKUP_NAME)  # a fresh run has none (run_record)
    # BackupAndRestore brings back weights, optimizer and epoch, not the input's position: skip
    # the batches of the backed-up epochs (the pipeline is a function of seed and element index).
    dataset = dataset.skip(backed_up_epochs(backup_dir) * steps)
    weights_path = os.path.join(out_dir, network_lib.WEIGHTS_NAME)
    # The guard first: a diverged epoch is neither backed up nor saved.
    guard = DivergenceGuard({"loss": ("train_lr", t.lr)})
    callbacks = [guard, keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False),
                 SaveNetworkWeights(net, weights_path)]
    if tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard")))
    else:
        print("note: the tensorboard package is not installed; no TensorBoard logs")
    history = model.fit(dataset, epochs=t.epochs, steps_per_epoch=steps, callbacks=callbacks,
                        shuffle=False, verbose=1)
    net.save_weights(weights_path)
    print(f"weights={weights_path}")
    return {"weights": weights_path, "arch": arch_copy, "history": history.history,
            "model": model}
