"""The one configuration object of lbt_tf.

`lbt_tf.flags.build_config` turns the absl flags into a frozen `Config`; every other module takes
a `Config` (or one of its sections) as an argument and never reads flags itself. Tests build
configs directly with `Config()` / `dataclasses.replace`.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Tuple

from lbt_tf.errors import LbtError
from lbt_tf.models.fasterseg.space import WIDTH_MULT_LIST


class ConfigError(LbtError, ValueError):
    """A flag or config value is invalid; the message names the flag."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"            # synthetic | cityscapes | tfds_cityscapes
    data_dir: Optional[str] = None        # Cityscapes root (leftImg8bit/, gtFine/)
    tfds_manual_dir: Optional[str] = None  # tfds manual_dir holding the Cityscapes zips
    tfds_data_dir: Optional[str] = None
    # Checks of Cityscapes/folder files when listing: none | header (PNG header, sizes) | full
    # (decodes every file and checks label ids; slow on the full dataset).
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
    hypergrad: str = "exact"              # exact | finite_difference
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
    pseudo_label_weight: float = 1.0
    student_val_weight: float = 1.0
    student_aux_weight: float = 0.4       # student's auxiliary-head CE in its training losses
    pseudo_labels: str = "soft"           # soft | hard (for the real student step)
    finite_difference_scale: float = 0.01
    reuse_step_gradients: bool = True     # lbt: weight steps reuse the arch step's gradients
    max_skipped_steps: int = 5            # in a row, then lbt falls back to lpt
    log_every: int = 10
    distribute: bool = False              # MirroredStrategy over the available devices


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


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    pipeline_root: Optional[str] = None
    serving_dir: Optional[str] = None
    bless_min_miou: float = 0.0
    bless_max_latency_ms: float = 1e9
    pipeline_yaml: Optional[str] = None
    # Container image with lbt_tf installed that every component runs in on Kubeflow / Vertex.
    component_image: str = "lbt-tf:latest"
    compare_modes: Tuple[str, ...] = ("fasterseg", "lpt", "lbt")
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
    if d.pseudo_label_ratio < 0:
        raise ConfigError(f"--pseudo_label_ratio must be >= 0, got {d.pseudo_label_ratio}")
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
    if s.mode not in ("fasterseg", "lpt", "lbt"):
        raise ConfigError(f"--search_mode={s.mode!r}: expected fasterseg, lpt or lbt")
    if s.hypergrad not in ("exact", "finite_difference"):
        raise ConfigError(f"--hypergrad={s.hypergrad!r}: expected exact or finite_difference")
    if s.pseudo_labels not in ("soft", "hard"):
        raise ConfigError(f"--pseudo_labels={s.pseudo_labels!r}: expected soft or hard")
    if s.epochs < 0 or s.warmup_epochs < 0:
        raise ConfigError("--search_epochs and --warmup_epochs must be >= 0")
    if config.student.output_stride not in (8, 16):
        raise ConfigError(f"--student_output_stride={config.student.output_stride}: "
                          "expected 8 or 16")
    if config.teacher.layers < 3:
        raise ConfigError(f"--layers={config.teacher.layers}: need at least 3 cells")
    if config.teacher.latency_runtime not in ("tf", "xla", "tflite"):
        raise ConfigError(f"--latency_runtime={config.teacher.latency_runtime!r}: expected tf, "
                          "xla or tflite")
    if config.teacher.latency_compat not in ("faithful", "fasterseg"):
        raise ConfigError(f"--latency_compat={config.teacher.latency_compat!r}: expected "
                          "faithful or fasterseg")
    if config.eval.mode not in ("whole", "sliding"):
        raise ConfigError(f"--eval_mode={config.eval.mode!r}: expected whole or sliding")
    return config
