"""`run_search(config)`: warm-up + architecture search (fasterseg | lpt | lbt) under `fit`.

Outputs under `config.run_dir`: `tensorboard/` (losses of both learners, val mIoU of teacher and
student, expected latency, skipped steps), `arch/arch_epoch_NNN.json` (derived after every
epoch), `arch.json` (the found architecture, written when the run ends without diverging),
`arch_evolution.png`, `checkpoints/` (`tf.train.CheckpointManager`: at every epoch end and every
--checkpoint_every_steps steps, `ckpt-N` after N steps) and `search_state.json` (history, mode
after a fallback). A rerun of the same config continues from the last checkpoint, mid-epoch
included, exactly where it was (the data at the same element, the same RNG and optimizer
states); another config in the same --run_dir is refused (lbt_tf.run_record).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
from typing import Dict, List, Optional

import keras
import tensorflow as tf
from absl import logging

from lbt_tf import names
from lbt_tf import run_record
from lbt_tf.errors import DataError
from lbt_tf.json_files import write_json
from lbt_tf.models.fasterseg import build_supernet, derive_architecture, save_architecture
from lbt_tf.models.fasterseg.latency import derived_latency
from lbt_tf.search import callbacks as search_callbacks
from lbt_tf.search import learner as lrn
from lbt_tf.search import selection
from lbt_tf.search.lbt_model import LBTSearch

STATE_FILE = "search_state.json"
# What a search writes in its run_dir (removed by --overwrite).
OUTPUTS = ("checkpoints", STATE_FILE, "arch", "arch.json", "arch_evolution.png", "tensorboard")


@dataclasses.dataclass
class SearchResult:
    architecture: Dict
    arch_path: str
    teacher_miou: float
    student_miou: Optional[float]
    history: List[Dict]              # one dict per epoch (losses, val mIoUs, latency, skips)
    skipped_steps: int
    expected_latency_ms: Optional[float]
    checkpoint_dir: str
    mode: str                        # the mode at the end (lpt after a fallback from lbt)
    arch_history_plot: Optional[str] = None


def make_strategy(search_config):
    """MirroredStrategy over the available devices when --distribute, else the default."""
    if search_config.distribute:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def make_search_input(config, mode: str, seed: int, splits=None):
    """The zipped training input (dict of the five sources, the smaller ones repeated), the
    val dataset (whole images) and the steps per epoch (one pass over D_t^tr by default).
    `splits`: the LBT splits when already listed (`make_splits` lists and checks every file)."""
    from lbt_tf.data.pipeline import make_dataset, make_unlabeled_dataset
    from lbt_tf.data.splits import make_splits

    d = config.data
    splits = splits or make_splits(d, config.seed)
    sources = names.SEARCH_SOURCES if mode != "fasterseg" else names.TEACHER_SOURCES
    if "unlabeled" in sources and len(splits.unlabeled) < d.batch_size:
        raise DataError(f"D_u has {len(splits.unlabeled)} images, fewer than --batch_size="
                        f"{d.batch_size}; raise --pseudo_label_ratio or add unlabeled images")
    # The arch step's val batches: --arch_grad_batches x --batch_size images.
    k = config.search.arch_grad_batches
    arch_data = dataclasses.replace(d, batch_size=d.batch_size * k)
    datasets = {}
    for offset, name in enumerate(sources):
        source = getattr(splits, name)
        if name == "unlabeled":
            datasets[name] = make_unlabeled_dataset(d, source, seed=seed + offset, repeat=True)
            continue
        data = arch_data if name in names.ARCH_VAL_SOURCES else d
        if k > 1 and name in names.ARCH_VAL_SOURCES and len(source) < data.batch_size:
            raise DataError(f"--arch_grad_batches={k}: {name} has {len(source)} images, fewer "
                            f"than {k} x --batch_size={d.batch_size}")
        datasets[name] = make_dataset(data, source, training=True, seed=seed + offset,
                                      repeat=True)
    train = tf.data.Dataset.zip(datasets)
    steps = config.search.steps_per_epoch or max(len(splits.teacher_train) // d.batch_size, 1)
    val = make_dataset(d, splits.val, training=False).map(
        lambda images, labels: _to_crop_size(images, labels, d.crop_height, d.crop_width))
    return train, val, steps


def _to_crop_size(images, labels, height, width):
    """Search-time validation runs at the training crop size (the networks are built with static
    shapes): whole val images resized (bilinear), labels nearest. Input pipeline only."""
    images = tf.image.resize(images, (height, width), method="bilinear")
    labels = tf.image.resize(labels[..., None], (height, width), method="nearest")[..., 0]
    return tf.ensure_shape(images, (None, height, width, 3)), tf.cast(labels, tf.int32)


def build_search_model(config, mode: Optional[str] = None):
    """Supernet, student (None for fasterseg) and the compiled LBTSearch (inside the current
    strategy scope)."""
    mode = mode or config.search.mode
    d = config.data
    # The supernet stays float32 under --mixed_precision: its second-order path (A through the
    # virtual teacher step) in bfloat16 points elsewhere (cosine 0.49 to float32 on the demo
    # config; the student in bfloat16: 0.9998); see tests/search/test_mixed_precision.py.
    supernet = build_supernet(config)
    student = None
    if mode != "fasterseg":
        from lbt_tf.models.deeplab import build_student_from_config
        with dtype_policy(config.search.mixed_precision):  # layers keep the policy built with
            student = build_student_from_config(config)  # crop-sized input, pretrained if set
    if supernet.latency_table is None:
        from lbt_tf.models.fasterseg.latency import table_for_config
        table, path = table_for_config(config)  # this device's table, measured once and cached
        logging.info("latency table: %s", path)
        supernet.set_latency_table(table)
    # FasterSeg's teacher (arch_0: full width only) searches without the latency term.
    latency_weight = config.search.latency_weight if config.teacher.search_widths else 0.0
    model = LBTSearch(supernet, student, config.search, ignore_label=d.ignore_label,
                      num_classes=d.num_classes, latency_fn=supernet.expected_latency,
                      latency_weight=latency_weight, mode=mode)
    model.compile(jit_compile=config.search.jit_compile)
    return model


def divergence_guard(model, cfg):
    """Stops the search when a loss explodes, most steps are non-finite or the architecture
    softmax saturates in its first steps, naming the learning rate to lower."""
    flags = {"teacher_loss": ("teacher_lr", cfg.teacher_lr)}
    if model.student is not None:
        flags.update(student_loss=("student_lr", cfg.student_lr),
                     pseudo_loss=("student_lr", cfg.student_lr))
    return search_callbacks.DivergenceGuard(
        flags, skips_fn=lambda: int(model.skipped_steps.numpy()),
        arch_values_fn=lambda: {v.name: v.numpy() for v in model.teacher_learner.arch_variables},
        arch_active_fn=lambda: model.phase == names.PHASES[1],
        arch_flag=("arch_lr", cfg.arch_lr))


def model_variables(model):
    """Every variable of a Keras model as a list: weights, architecture, BatchNorm statistics
    and `keras.random.SeedGenerator` states (Gumbel width sampling, dropout). Named in the
    checkpoint explicitly: a tf.train.Checkpoint of these Keras 3 models saves only what the
    optimizers reference (the trainable weights), not the statistics or RNG states."""
    return [v.value for v in model.variables]


@contextlib.contextmanager
def dtype_policy(name):
    """Keras' global dtype policy set to `name` (mixed_bfloat16: bfloat16 compute, float32
    variables) while models are built, restored afterwards; "float32" keeps the current one."""
    if name == "float32":
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def metric_variables(model):
    """The running means of the current epoch (its logged values), for a mid-epoch resume."""
    return [v.value for metric in model.metrics for v in metric.variables]


def _checkpoint(model, position):
    epoch_variable, step_variable = position
    items = dict(supernet=model_variables(model.supernet),
                 teacher_optimizer=model.teacher_optimizer,
                 arch_optimizer=model.arch_optimizer, epoch=epoch_variable,
                 step=step_variable, metrics=metric_variables(model),
                 diagnostics=[model.arch_steps.value] + [v.value for v in
                                                         model.previous_arch_grads],
                 latency_weight=model.latency_weight.value,
                 skipped_steps=model.skipped_steps.value,
                 consecutive_skips=model.consecutive_skips.value)
    if model.student is not None:
        items.update(student=model_variables(model.student),
                     student_optimizer=model.student_optimizer)
    return tf.train.Checkpoint(**items)


def _load_state(run_dir):
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _to_python(logs):
    return {k: float(v) for k, v in (logs or {}).items()}


@contextlib.contextmanager
def fast_graph_compilation():
    """Grappler's meta-optimizer spends ~4x the step time of a whole CPU demo on the large
    second-order graph of the unrolled step (measured: first call 21 s -> 5 s, step time not
    worse); it is switched off for the search only and restored afterwards."""
    previous = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(
            dict(previous, disable_meta_optimizer=previous.get("disable_meta_optimizer", False)))


def run_search(config) -> SearchResult:
    """Warm-up (A frozen) then search, resumable; prints the architecture and the mIoUs."""
    with fast_graph_compilation():
        return _run_search(config)


def _run_search(config) -> SearchResult:
    cfg = config.search
    run_dir = config.run_dir
    plan = run_record.check(config, "search", run_dir, OUTPUTS)  # refuses before any work
    state = _load_state(run_dir) if plan.resume else {}
    mode = state.get("mode", cfg.mode)
    keras.utils.set_random_seed(config.seed)  # before the data: its shuffles use the global seed
    # The data (every file listed and checked) before any model is built or table measured.
    from lbt_tf.data.splits import make_splits
    splits = make_splits(config.data, config.seed)
    _, val, steps = make_search_input(config, mode, config.seed, splits)
    # A new training dataset for every `fit`: each iterator of one dataset object continues
    # its shuffles' seed generator, so a second `fit` of the same object would see other orders.
    make_train = lambda: make_search_input(config, mode, config.seed, splits)[0]  # noqa: E731
    os.makedirs(run_dir, exist_ok=True)
    resume = plan.apply()
    strategy = make_strategy(cfg)
    with strategy.scope():
        model = build_search_model(config, mode)
        # Where the checkpointed run continues: epoch, and step within it (0: its start).
        position = (tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch"),
                    tf.Variable(0, dtype=tf.int64, trainable=False, name="step"))
        checkpoint = _checkpoint(model, position)
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
    initial_epoch = initial_step = 0
    if resume and manager.latest_checkpoint:
        try:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        except (AssertionError, ValueError) as err:  # another model, or an older lbt_tf's
            # checkpoint (ValueError: other shapes, e.g. the per-layer supernet variables)
            raise DataError(f"{manager.latest_checkpoint} does not fit this search's models "
                            f"({str(err).splitlines()[0][:200]}); use another --run_dir or "
                            "--overwrite") from None
        initial_epoch, initial_step = (int(v.numpy()) for v in position)
        print(f"search: resumed from {manager.latest_checkpoint} at epoch {initial_epoch} "
              f"step {initial_step} (mode {mode})")
    history: List[Dict] = [h for h in state.get("history", []) if h["epoch"] <= initial_epoch]
    arch_history = [h for h in state.get("arch_history", []) if h["epoch"] <= initial_epoch]
    total_epochs = cfg.warmup_epochs + cfg.epochs

    latency_fn = model.problem.latency_fn
    arch_log = search_callbacks.ArchitectureLog(
        run_dir, lambda: derive_architecture(model.supernet, config.teacher), save_architecture,
        history=arch_history)
    fallback = search_callbacks.NonFiniteFallback(cfg.max_skipped_steps)

    def save_state(epoch, logs, epoch_end):
        if epoch_end:  # a mid-epoch checkpoint records the mode (a fallback) only
            history.append(dict(_to_python(logs), epoch=epoch, mode=model.mode,
                                skipped_steps=int(model.skipped_steps.numpy())))
        write_json(os.path.join(run_dir, STATE_FILE),
                   {"mode": model.mode, "history": history, "arch_history": arch_log.history},
                   indent=1)

    callbacks = [
        divergence_guard(model, cfg),  # first: a diverged epoch saves nothing
        search_callbacks.EpochSchedule(cfg, latency_fn, derived_latency_fn(model, config)),
        fallback,
        arch_log,
        search_callbacks.PeriodicCheckpoint(
            manager, position, steps, cfg.checkpoint_every_steps, save_state,
            first_step=initial_step,
            metric_values=(list(zip(metric_variables(model),
                                    [v.numpy() for v in metric_variables(model)]))
                           if initial_step else None)),
        search_callbacks.PhaseProgbar(),
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard"),
                                                     update_freq="epoch"))
    else:  # tf.summary needs the tensorboard package; the scalars stay in search_state.json
        logging.warning("the tensorboard package is not installed: no TensorBoard scalars "
                        "(every scalar is also in %s)", os.path.join(run_dir, STATE_FILE))
    if initial_epoch < total_epochs:
        try:
            _fit(model, make_train, val, steps, (initial_epoch, initial_step), total_epochs,
                 callbacks, verbose=2 if cfg.log_every <= 0 else "auto")
        except search_callbacks.DivergenceError as err:
            kept = manager.latest_checkpoint or "none (no epoch finished)"
            raise search_callbacks.DivergenceError(
                f"{err}. Last good checkpoint: {kept}; no architecture was written "
                f"({os.path.join(run_dir, 'arch.json')})") from None
    if not history:
        raise DataError("the search ran no epoch: set --warmup_epochs/--search_epochs")

    architecture = derive_architecture(select_ops(model, config, make_train), config.teacher)
    arch_path = os.path.join(run_dir, "arch.json")
    save_architecture(architecture, arch_path)
    last = history[-1]
    latency = (float(latency_fn(model.teacher_learner.arch_values()))
               if latency_fn is not None else None)
    result = SearchResult(
        architecture=architecture, arch_path=arch_path,
        teacher_miou=float(last.get("val_teacher_miou", float("nan"))),
        student_miou=(float(last["val_student_miou"]) if "val_student_miou" in last else None),
        history=history, skipped_steps=int(model.skipped_steps.numpy()),
        expected_latency_ms=latency, checkpoint_dir=checkpoint_dir, mode=model.mode,
        arch_history_plot=os.path.join(run_dir, "arch_evolution.png"))
    _print_result(result, config)
    return result


def select_ops(model, config, make_train):
    """What the search's end derives from: the supernet's arch values (--arch_selection=argmax),
    or those with every alpha row one-hot on the op whose row alone gives the searched
    supernet's lowest val loss (perturbation; search/selection.py), on the first
    --selection_batches arch-step val batches of `make_train()`; each row's losses are written to
    <run_dir>/selection.json."""
    cfg = config.search
    if cfg.arch_selection == "argmax":
        return model.supernet
    teacher, problem = model.teacher_learner, model.problem
    loss = tf.function(lambda batch, arch: problem.teacher_loss(teacher.weight_values(), arch,
                                                                batch))
    batches = [lrn.Batches.from_dict(b).teacher_val
               for b in make_train().take(cfg.selection_batches)]
    arch_names = [name.split("/")[-1] for name in teacher.arch_names]   # alpha_0, ... as derived
    chosen, rows = selection.perturbation_selection(loss, teacher.arch_values(), arch_names,
                                                    batches)
    write_json(os.path.join(config.run_dir, "selection.json"),
               {"arch_selection": cfg.arch_selection, "batches": len(batches), "rows": rows},
               indent=1)
    changed = sum(r["chosen"] != r["argmax"] for r in rows)
    print(f"search: --arch_selection=perturbation chose {changed} of {len(rows)} alpha rows "
          f"differently from their argmax ({os.path.join(config.run_dir, 'selection.json')})")
    return chosen


def _fit(model, make_train, val, steps, start, total_epochs, callbacks, verbose):
    """`fit` from `start` = (epoch, step) to the end. The data where the checkpointed run left
    it: a new dataset (`make_train()`) is a function of the seed and the element index (seeded
    shuffles, stateless augmentation), so skipping the batches already done puts it where the
    uninterrupted run's iterator is. A run stopped mid-epoch first finishes that epoch (a `fit`
    of its remaining steps: same schedule, validation and epoch-end callbacks)."""
    epoch, step = start
    fit = functools.partial(model.fit, validation_data=val, callbacks=callbacks,
                            shuffle=False,  # the tf.data pipeline shuffles (seeded)
                            verbose=verbose)
    if step:
        print(f"search: finishing epoch {epoch + 1} from step {step + 1} of {steps}", flush=True)
        fit(make_train().skip(epoch * steps + step), initial_epoch=epoch, epochs=epoch + 1,
            steps_per_epoch=steps - step)
        epoch += 1
    if epoch < total_epochs:
        fit(make_train().skip(epoch * steps), initial_epoch=epoch, epochs=total_epochs,
            steps_per_epoch=steps)


def derived_latency_fn(model, config):
    """() -> the table-predicted latency (ms) of the network the search would return now (the
    number `--mode=measure_latency` predicts for it); None without a latency table."""
    table = model.supernet.latency_table
    if model.problem.latency_fn is None or table is None:
        return None
    d = config.data
    return lambda: derived_latency(derive_architecture(model.supernet, config.teacher), table,
                                   d.num_classes, d.image_height, d.image_width)["total"]


def _print_result(result: SearchResult, config):
    from lbt_tf.models.fasterseg import describe, latency as latency_lib
    print("\n=== found architecture ===")
    table = latency_lib.table_for_config(config, measure=False)[0]   # as --mode=measure_latency
    for line in describe.describe_lines(result.architecture, config, table):
        print(line)
    print(f"architecture JSON: {result.arch_path}")
    student = "n/a" if result.student_miou is None else f"{result.student_miou:.4f}"
    latency = ("n/a" if result.expected_latency_ms is None
               else f"{result.expected_latency_ms:.3f} ms")
    print(f"val mIoU: teacher {result.teacher_miou:.4f}  student {student}  "
          f"expected latency {latency}  skipped steps {result.skipped_steps}  "
          f"mode {result.mode}")
    logging.info("search finished: %s", result.arch_path)
