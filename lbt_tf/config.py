"""The one configuration object of lbt_tf.

`lbt_tf.flags.build_config` turns the absl flags into a frozen `Config`; every other module takes
a `Config` (or one of its sections) as an argument and never reads flags itself. Tests build
configs directly with `Config()` / `dataclasses.replace`.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Tuple

from lbt_tf import names
from lbt_tf.errors import LbtError
from lbt_tf.models.fasterseg.space import WIDTH_MULT_LIST


PREDICTION_FORMATS = ("color", "cityscapes")


class ConfigError(LbtError, ValueError):
    """A flag or config value is invalid; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"            # synthetic | cityscapes | tfds_cityscapes
    data_dir: Optional[str] = None        # Cityscapes root (leftImg8bit/, gtFine/)
    tfds_manual_dir: Optional[str] = None  # tfds manual_dir holding the Cityscapes zips
    tfds_data_dir: Optional[str] = None
    # Checks of Cityscapes/folder files when listing: none | header (image headers, sizes, label
    # files decoded and their ids checked) | full (images decoded too; slow on the full dataset).
    validate_files: str = "header"
    num_classes: int = 19
    ignore_label: int = 255
    # Size every image is brought to after decoding (Cityscapes: 1024x2048 down-sampled x2).
    image_height: int = 128
    image_width: int = 256
    # Random training crops (FasterSeg search: 224x448 from 512x1024).
    crop_height: int = 64
    crop_width: int = 128
    scale_min: float = 0.75
    scale_max: float = 1.25
    random_flip: bool = True
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    # Synthetic street scenes: number of images per split.
    synthetic_train_size: int = 64
    synthetic_val_size: int = 16
    synthetic_test_size: int = 32
    # LBT splits of the labeled train split (the seed halves for teacher/student, then halves
    # each again for train/val).
    teacher_fraction: float = 0.5
    teacher_train_fraction: float = 0.5
    student_train_fraction: float = 0.5
    unlabeled_source: str = "test"        # test | folder
    unlabeled_dir: Optional[str] = None
    # |D_u used| : |D_s^tr| (the seed's open question).
    pseudo_label_ratio: float = 1.0
    batch_size: int = 2
    eval_batch_size: int = 2
    shuffle_buffer: int = 256
    deterministic: bool = False


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """FasterSeg supernet (search) / derived network (retrain)."""
    layers: int = 16
    base_width: int = 12                  # FasterSeg's Fch
    width_mult_list: Tuple[float, ...] = WIDTH_MULT_LIST
    search_widths: bool = True            # False: teacher at full width only (FasterSeg arch_0)
    stem_head_width: Tuple[float, float] = (1.0, 1.0)
    gumbel_temperature: float = 1.0
    # Output strides of the two branches kept by derivation ("objective_acc_lat" picks by default).
    branch_selection: str = "acc_lat"     # acc_lat | strides_8_32 | strides_16_32
    latency_table: Optional[str] = None   # measured table (JSON); measured & cached when missing
    reference_latency_table: Optional[str] = None  # FasterSeg's 1080Ti table, for comparison
    latency_runtime: str = "tf"           # tf | xla | tflite: how this device's table is timed
    latency_compat: str = "faithful"      # faithful | fasterseg (its conv_2x_downup key slip)
    latency_clock: str = "wall"           # wall | cpu (process CPU time: robust on a shared CPU)
    latency_calibration_networks: int = 8  # whole networks fitting table sum -> ms (0: off)
    cell_tracing: str = "shared"          # names.CELL_TRACINGS: MixedOps in a traced step


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """DeepLabV3 with a ResNet backbone (ResNet-50 by default)."""
    blocks_per_stage: Tuple[int, int, int, int] = (3, 4, 6, 3)
    base_width: int = 64                  # ResNet stem width; stage widths 1x,2x,4x,8x (x4 out)
    aspp_channels: int = 256
    output_stride: int = 8                # 8 | 16
    aux_head: bool = True
    pretrained_weights: Optional[str] = None  # Keras ResNet50 notop .h5 or our .weights.h5


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    mode: str = "lbt"                     # fasterseg | lpt | lbt
    hypergrad: str = "exact"              # names.HYPERGRADS: exact | hvp | finite_difference
    arch_product: str = "whole"           # names.ARCH_PRODUCTS: exact's / FD's teacher product
    epochs: int = 30
    warmup_epochs: int = 20
    steps_per_epoch: Optional[int] = None  # None: one pass over D_t^tr
    teacher_lr: float = 0.01
    student_lr: float = 0.01
    lr_decay: float = 0.97                # per-epoch exponential decay of the weight lrs
    momentum: float = 0.9
    weight_decay: float = 5e-4
    weight_grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_beta_1: float = 0.5
    arch_beta_2: float = 0.999
    arch_weight_decay: float = 0.0
    arch_grad_clip: float = 5.0
    latency_weight: float = 0.01
    adaptive_latency: bool = True
    latency_target_min_ms: float = 0.0
    latency_target_max_ms: float = 0.0   # 0: no target band, the weight stays fixed
    latency_target_of: str = "derived"   # names.LATENCY_TARGETS
    pseudo_label_weight: float = 1.0
    student_val_weight: float = 1.0
    student_aux_weight: float = 0.4       # student's auxiliary-head CE in its training losses
    pseudo_labels: str = "soft"           # soft | hard (for the real student step)
    finite_difference_scale: float = 1e-3  # measured: bench/finite_difference_eps.py
    reuse_step_gradients: bool = True     # lbt: weight steps reuse the arch step's gradients
    # lbt with reuse: the teacher's gradient at (T, A_t) kept from the virtual step for the real
    # one (alive through the whole hypergradient: 1 GB at the paper's size), or recomputed
    # there at the same (T, A_t) (one more teacher pass; the same values).
    keep_step_gradients: bool = True
    arch_signal_every: int = 10           # lbt: split ||grad_A|| into its terms every N arch steps
    # The arch step's val batches (D_t^val, D_s^val) hold k x batch_size images: grad_A is the
    # mean over k batches' worth (one batch of 2 is mostly noise: successive cosine ~0.06,
    # docs/results/search_quality_v3.md). 1: FasterSeg's (val batch = train batch).
    arch_grad_batches: int = 1
    # names.ARCH_SELECTIONS: the op of each alpha row at the end, by argmax or by the supernet's
    # val loss with that row one-hot (search/selection.py), over selection_batches val batches.
    arch_selection: str = "argmax"
    selection_batches: int = 4
    # (a split step costs ~40% more: bench/arch_signals.py)
    max_skipped_steps: int = 5            # in a row, then lbt falls back to lpt
    log_every: int = 10
    # Checkpoint also every N steps within an epoch (a kill loses at most N steps; 0: at epoch
    # ends only; a paper-size search step takes ~16 s on CPU, README).
    checkpoint_every_steps: int = 100
    distribute: bool = False              # MirroredStrategy over the available devices
    jit_compile: bool = False             # XLA-compile the search step (GPU)
    # Each model's forward traced once per step (Learner); None: on for lbt exact and
    # finite_difference (their 5 teacher and 5 student passes; FD at the demo: 3.3 vs 6.0 GB),
    # off otherwise (lbt_model.resolve_trace_once, README).
    trace_once: Optional[bool] = None
    # lbt: the val passes at T' (L_t^val and P) keep no activations, each one's backward redoes
    # its forward, one pass after the other (darts.recomputed_val_gradient). None: on for lbt.
    recompute_activations: Optional[bool] = None
    mixed_precision: str = "float32"      # names.SEARCH_PRECISIONS: the models' dtype policy


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Retraining of a derived architecture (`--mode=train`)."""
    arch: Optional[str] = None            # architecture JSON
    epochs: int = 10
    steps_per_epoch: Optional[int] = None
    lr: float = 0.01
    lr_power: float = 0.9                 # poly decay, as FasterSeg's retraining
    momentum: float = 0.9
    weight_decay: float = 5e-4
    aux_weight: float = 0.4
    distill_from: Optional[str] = None    # teacher network weights for distillation
    distill_arch: Optional[str] = None
    distill_weight: float = 0.0
    distill_temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    split: str = "val"
    mode: str = "whole"                   # whole | sliding
    latency_runs: int = 10
    latency_warmup: int = 3
    compare_student: bool = True
    grid_images: int = 4


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    export_dir: Optional[str] = None
    tflite: bool = True
    int8: bool = True
    calibration_images: int = 8
    tflite_eval_images: int = 8           # val images the float/int8 TFLite models are scored on
    serving_probabilities: bool = True    # serving signature also returns softmax probabilities
    input: Optional[str] = None           # predict: image or folder
    output: Optional[str] = None          # predict: output folder
    # predict: color (palette PNG + overlay) | cityscapes (label-id PNGs for the official scorer)
    prediction_format: str = "color"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    pipeline_root: Optional[str] = None
    serving_dir: Optional[str] = None
    bless_min_miou: float = 0.0
    bless_max_latency_ms: float = 1e9
    pipeline_yaml: Optional[str] = None
    # --mode=pipeline reuses the tasks an earlier run of the same config finished (kfp's local
    # cache); off: every task runs again (the search and training still resume, not redo).
    pipeline_cache: bool = True
    # Container image with lbt_tf installed that every component runs in on Kubeflow / Vertex.
    component_image: str = "lbt-tf:latest"
    compare_modes: Tuple[str, ...] = names.SEARCH_MODES
    tuner_algorithm: str = "grid"          # grid | bayesian (keras-tuner oracles)
    tuner_max_trials: int = 6
    tuner_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    tuner_pseudo_label_weights: Tuple[float, ...] = (0.5, 1.0)
    tuner_student_val_weights: Tuple[float, ...] = (0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class Config:
    mode: str = "demo"
    run_dir: str = "runs/demo"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False               # replace a run of another config in run_dir
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    search: SearchConfig = SearchConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    pipeline: PipelineConfig = PipelineConfig()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(values: dict) -> "Config":
        kwargs = {}
        for key, value in values.items():
            section_cls = _SECTIONS.get(key)
            if section_cls is not None:
                kwargs[key] = section_cls(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in value.items()})
            else:
                kwargs[key] = value
        return Config(**kwargs)


_SECTIONS = {"data": DataConfig, "teacher": TeacherConfig, "student": StudentConfig,
             "search": SearchConfig, "train": TrainConfig, "eval": EvalConfig,
             "export": ExportConfig, "pipeline": PipelineConfig}


def replace(config, **changes):
    """`dataclasses.replace` that also takes dotted section keys: replace(c, **{"data.batch_size": 4})."""
    nested = {}
    flat = {}
    for key, value in changes.items():
        if "." in key:
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        else:
            flat[key] = value
    for section, values in nested.items():
        flat[section] = dataclasses.replace(getattr(config, section), **values)
    return dataclasses.replace(config, **flat)


def validate(config: Config) -> Config:
    """Checks values that no flag parser can; raises ConfigError naming the flag."""
    d = config.data
    for name in ("image_height", "image_width", "crop_height", "crop_width", "batch_size",
                 "eval_batch_size", "num_classes"):
        if getattr(d, name) <= 0:
            raise ConfigError(f"--{name} must be positive, got {getattr(d, name)}")
    if not 0 < d.num_classes < 255 or d.ignore_label < d.num_classes:
        raise ConfigError(f"--num_classes={d.num_classes} and --ignore_label={d.ignore_label}: "
                          "need 0 < num_classes <= ignore_label")
    for name in ("crop_height", "crop_width", "image_height", "image_width"):
        if getattr(d, name) % 32:
            raise ConfigError(f"--{name}={getattr(d, name)} must be divisible by 32 "
                              "(the networks downsample by 32)")
    for name in ("teacher_fraction", "teacher_train_fraction", "student_train_fraction"):
        v = getattr(d, name)
        if not 0.0 < v < 1.0:
            raise ConfigError(f"--{name} must be in (0, 1), got {v}")
    if not 0 < d.scale_min <= d.scale_max:
        raise ConfigError(f"--scale_min={d.scale_min} / --scale_max={d.scale_max}: need "
                          "0 < scale_min <= scale_max")
    if d.source not in ("synthetic", "cityscapes", "tfds_cityscapes"):
        raise ConfigError(f"--data_source={d.source!r}: expected synthetic, cityscapes or "
                          "tfds_cityscapes")
    from lbt_tf.data.labels import TRAIN_ID_NAMES  # the synthetic scenes' label space
    if d.source == "synthetic" and d.num_classes != len(TRAIN_ID_NAMES):
        raise ConfigError(f"--num_classes={d.num_classes}: the synthetic scenes are labeled "
                          f"with the {len(TRAIN_ID_NAMES)} Cityscapes train ids; use "
                          f"--num_classes={len(TRAIN_ID_NAMES)}")
    if d.source == "cityscapes" and not d.data_dir:
        raise ConfigError("--data_source=cityscapes needs --data_dir (the Cityscapes root)")
    if d.source == "tfds_cityscapes" and not d.tfds_manual_dir:
        raise ConfigError("--data_source=tfds_cityscapes needs --tfds_manual_dir")
    if d.unlabeled_source == "folder" and not d.unlabeled_dir:
        raise ConfigError("--unlabeled_source=folder needs --unlabeled_dir")
    s = config.search
    for flag, value, allowed in (("search_mode", s.mode, names.SEARCH_MODES),
                                 ("hypergrad", s.hypergrad, names.HYPERGRADS),
                                 ("arch_product", s.arch_product, names.ARCH_PRODUCTS),
                                 ("arch_selection", s.arch_selection, names.ARCH_SELECTIONS),
                                 ("pseudo_labels", s.pseudo_labels, names.PSEUDO_LABELS),
                                 ("latency_target_of", s.latency_target_of,
                                  names.LATENCY_TARGETS),
                                 ("mixed_precision", s.mixed_precision,
                                  names.SEARCH_PRECISIONS),
                                 ("cell_tracing", config.teacher.cell_tracing,
                                  names.CELL_TRACINGS)):
        if value not in allowed:
            raise ConfigError(f"--{flag}={value!r}: expected one of {', '.join(allowed)}")
    if config.student.output_stride not in (8, 16):
        raise ConfigError(f"--student_output_stride={config.student.output_stride}: "
                          "expected 8 or 16")
    if config.teacher.layers < 3:
        raise ConfigError(f"--layers={config.teacher.layers}: need at least 3 cells")
    if config.teacher.latency_runtime not in ("tf", "xla", "tflite"):
        raise ConfigError(f"--latency_runtime={config.teacher.latency_runtime!r}: expected tf, "
                          "xla or tflite")
    if config.teacher.latency_calibration_networks < 0 or \
            config.teacher.latency_calibration_networks in (1, 2):
        raise ConfigError(f"--latency_calibration_networks="
                          f"{config.teacher.latency_calibration_networks}: need 0 (off) or >= 3")
    if config.teacher.latency_clock not in ("wall", "cpu"):
        raise ConfigError(f"--latency_clock={config.teacher.latency_clock!r}: expected wall or cpu")
    if config.teacher.latency_compat not in ("faithful", "fasterseg"):
        raise ConfigError(f"--latency_compat={config.teacher.latency_compat!r}: expected "
                          "faithful or fasterseg")
    if config.eval.mode not in ("whole", "sliding"):
        raise ConfigError(f"--eval_mode={config.eval.mode!r}: expected whole or sliding")
    if config.export.prediction_format not in PREDICTION_FORMATS:
        raise ConfigError(f"--prediction_format={config.export.prediction_format!r}: expected "
                          f"one of {', '.join(PREDICTION_FORMATS)}")
    for flag, value, bounds in _ranges(config):
        check_range(flag, value, bounds)
    if s.recompute_activations and s.mode != "lbt":
        raise ConfigError("--recompute_activations applies to --search_mode=lbt (the val passes "
                          f"at T'); got --search_mode={s.mode}")
    if s.latency_target_max_ms and s.latency_target_max_ms < s.latency_target_min_ms:
        raise ConfigError(f"--latency_target_max_ms={s.latency_target_max_ms} is below "
                          f"--latency_target_min_ms={s.latency_target_min_ms}")
    return config


# Allowed ranges of the numeric flags: (low, high), "(" / ")" meaning open ends. The bounds
# reject what is certainly a typo (negative rates, --arch_lr=1e6): FasterSeg uses lr 0.01-0.02
# (SGD) and 3e-4 (Adam on A); SGD above 1 or Adam above 0.1 on logits diverges at once.
POSITIVE, NON_NEGATIVE, UNIT_HALF = "(0, inf)", "[0, inf)", "[0, 1)"
WEIGHT_LR, ARCH_LR, DECAY, LOSS_WEIGHT = "(0, 1]", "(0, 0.1]", "[0, 0.1]", "[0, 100]"
EPOCHS, STEPS = "[0, 100000]", "[1, 10000000]"


def _ranges(config):
    """(flag, value, range) of every range-checked numeric flag."""
    d, t, s, r, e, x = (config.data, config.teacher, config.search, config.train, config.eval,
                        config.export)
    optional_steps = [(flag, value, STEPS) for flag, value in (
        ("search_steps_per_epoch", s.steps_per_epoch),
        ("train_steps_per_epoch", r.steps_per_epoch)) if value is not None]
    return [
        ("teacher_lr", s.teacher_lr, WEIGHT_LR), ("student_lr", s.student_lr, WEIGHT_LR),
        ("train_lr", r.lr, WEIGHT_LR), ("arch_lr", s.arch_lr, ARCH_LR),
        ("lr_decay", s.lr_decay, "(0, 1]"), ("momentum", s.momentum, UNIT_HALF),
        ("weight_decay", s.weight_decay, DECAY), ("arch_weight_decay", s.arch_weight_decay, DECAY),
        ("weight_grad_clip", s.weight_grad_clip, POSITIVE),
        ("arch_grad_clip", s.arch_grad_clip, POSITIVE),
        ("arch_beta_1", s.arch_beta_1, UNIT_HALF), ("arch_beta_2", s.arch_beta_2, UNIT_HALF),
        ("latency_weight", s.latency_weight, LOSS_WEIGHT),
        ("latency_target_min_ms", s.latency_target_min_ms, NON_NEGATIVE),
        ("latency_target_max_ms", s.latency_target_max_ms, NON_NEGATIVE),
        ("pseudo_label_weight", s.pseudo_label_weight, LOSS_WEIGHT),
        ("student_val_weight", s.student_val_weight, LOSS_WEIGHT),
        ("search_student_aux_weight", s.student_aux_weight, LOSS_WEIGHT),
        ("finite_difference_scale", s.finite_difference_scale, "(0, 1]"),
        ("max_skipped_steps", s.max_skipped_steps, NON_NEGATIVE),
        ("arch_signal_every", s.arch_signal_every, NON_NEGATIVE),
        ("arch_grad_batches", s.arch_grad_batches, "[1, 1024]"),
        ("selection_batches", s.selection_batches, "[1, 1024]"),
        ("checkpoint_every_steps", s.checkpoint_every_steps, "[0, 10000000]"),
        ("search_epochs", s.epochs, EPOCHS), ("warmup_epochs", s.warmup_epochs, EPOCHS),
        ("train_epochs", r.epochs, "[1, 100000]"), ("train_lr_power", r.lr_power, "[0, 10]"),
        ("aux_weight", r.aux_weight, LOSS_WEIGHT), ("distill_weight", r.distill_weight,
                                                    LOSS_WEIGHT),
        ("distill_temperature", r.distill_temperature, "(0, 100]"),
        ("pseudo_label_ratio", d.pseudo_label_ratio, "[0, 100]"),
        ("synthetic_train_size", d.synthetic_train_size, "[4, 1000000]"),
        ("synthetic_val_size", d.synthetic_val_size, "[1, 1000000]"),
        ("synthetic_test_size", d.synthetic_test_size, "[0, 1000000]"),
        ("gumbel_temperature", t.gumbel_temperature, POSITIVE),
        ("base_width", t.base_width, "[1, 1024]"),
        ("latency_runs", e.latency_runs, "[1, 100000]"),
        ("latency_warmup", e.latency_warmup, NON_NEGATIVE),
        ("calibration_images", x.calibration_images, "[1, 100000]"),
        ("tflite_eval_images", x.tflite_eval_images, NON_NEGATIVE),
        *[("width_mult_list", w, "(0, 1]") for w in t.width_mult_list],
        *[("stem_head_width", w, "(0, 1]") for w in t.stem_head_width],
    ] + optional_steps


def check_range(flag, value, bounds):
    """Raises ConfigError "--flag=value: outside the allowed range [low, high]" (bounds as
    "(0, 1]", parentheses for open ends); a NaN is outside every range."""
    low, high = (float(part) for part in bounds[1:-1].split(","))
    above = value > low if bounds[0] == "(" else value >= low
    below = value < high if bounds[-1] == ")" else value <= high
    if not (above and below):
        raise ConfigError(f"--{flag}={value}: outside the allowed range {bounds}")


# Modes that read the dataset (its root must exist before anything is built).
DATA_MODES = ("demo", "sample_grid", "splits", "search", "train", "evaluate", "export",
              "pipeline", "compare", "ratio_study")


def check_inputs(config: Config) -> Config:
    """Checks, in milliseconds, every input path the mode will read (before any model is built
    or latency table measured); raises ConfigError naming the flag. Files inside the dataset are
    checked by the data listing (`--validate_files`), which runs before the models are built."""
    import os
    d, mode = config.data, config.mode

    def need(flag, path, kind="file"):
        exists = os.path.isdir(path) if kind == "directory" else os.path.isfile(path)
        if not exists:
            raise ConfigError(f"--{flag}={path}: no such {kind}")

    if mode in DATA_MODES:
        if d.source == "cityscapes":
            need("data_dir", d.data_dir, "directory")
        if d.source == "tfds_cityscapes":
            need("tfds_manual_dir", d.tfds_manual_dir, "directory")
        if d.unlabeled_source == "folder" and mode != "evaluate":
            need("unlabeled_dir", d.unlabeled_dir, "directory")
    for flag, path in (("student_weights", config.student.pretrained_weights),
                       ("reference_latency_table", config.teacher.reference_latency_table),
                       ("arch", config.train.arch), ("distill_arch", config.train.distill_arch)):
        if path:
            need(flag, path)
    if config.train.distill_weight > 0 and mode in ("train", "demo", "pipeline"):
        if not config.train.distill_from:
            raise ConfigError("--distill_weight > 0 needs --distill_from (teacher weights)")
        need("distill_from", config.train.distill_from)
    if mode == "train" and not config.train.arch:
        raise ConfigError("--mode=train needs --arch (the architecture JSON to train)")
    if mode == "describe_arch" and not config.train.arch:
        raise ConfigError("--mode=describe_arch needs --arch (the architecture JSON)")
    if mode == "predict":
        if not config.export.input:
            raise ConfigError("--mode=predict needs --input (an image file or a folder)")
        if not os.path.exists(config.export.input):
            raise ConfigError(f"--input={config.export.input}: no such file or folder")
    return config
