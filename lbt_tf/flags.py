"""Every absl flag of lbt_tf, and `build_config`, the one place flags become a `Config`.

Each flag maps onto one field of `lbt_tf.config.Config`; its default is that field's default, so
the dataclasses stay the single source of defaults. No other module reads `FLAGS`.
"""
from __future__ import annotations

import dataclasses

from absl import flags

from lbt_tf import config as config_lib
from lbt_tf import names

MODES = ("demo", "sample_grid", "splits", "describe_arch", "measure_latency", "search",
         "train", "evaluate", "export", "predict", "pipeline", "compile_pipeline", "compare",
         "ratio_study")

# flag name -> (section or None for top level, field name, help)
FLAG_TABLE = {
    # top level
    "run_dir": (None, "run_dir", "Directory for every output of this run."),
    "seed": (None, "seed", "Global random seed (data order, init)."),
    "resume": (None, "resume", "Continue an unrecorded run in --run_dir (a recorded run of "
               "the same config is always resumed)."),
    "overwrite": (None, "overwrite", "Replace a run of another config in --run_dir."),
    # data
    "data_source": ("data", "source", "synthetic | cityscapes | tfds_cityscapes."),
    "data_dir": ("data", "data_dir", "Cityscapes root with leftImg8bit/ and gtFine/."),
    "tfds_manual_dir": ("data", "tfds_manual_dir", "tfds manual_dir holding Cityscapes zips."),
    "tfds_data_dir": ("data", "tfds_data_dir", "tfds data_dir for prepared datasets."),
    "validate_files": ("data", "validate_files",
                       "none | header | full: checks of image/label files when listing, before "
                       "any model is built (header: image headers, label files decoded and "
                       "their ids checked; full: images decoded too)."),
    "num_classes": ("data", "num_classes", "Number of classes (Cityscapes train ids: 19)."),
    "ignore_label": ("data", "ignore_label", "Label value ignored by losses and metrics."),
    "image_height": ("data", "image_height", "Height images are resized to after decoding."),
    "image_width": ("data", "image_width", "Width images are resized to after decoding."),
    "crop_height": ("data", "crop_height", "Training crop height (divisible by 32)."),
    "crop_width": ("data", "crop_width", "Training crop width (divisible by 32)."),
    "scale_min": ("data", "scale_min", "Smallest random scale of training images."),
    "scale_max": ("data", "scale_max", "Largest random scale of training images."),
    "random_flip": ("data", "random_flip", "Random horizontal flips in training."),
    "synthetic_train_size": ("data", "synthetic_train_size", "Synthetic train images."),
    "synthetic_val_size": ("data", "synthetic_val_size", "Synthetic val images."),
    "synthetic_test_size": ("data", "synthetic_test_size", "Synthetic (unlabeled) test images."),
    "teacher_fraction": ("data", "teacher_fraction",
                         "Share of the labeled train split given to the teacher."),
    "teacher_train_fraction": ("data", "teacher_train_fraction",
                               "Share of the teacher's data used for D_t^tr (rest: D_t^val)."),
    "student_train_fraction": ("data", "student_train_fraction",
                               "Share of the student's data used for D_s^tr (rest: D_s^val)."),
    "unlabeled_source": ("data", "unlabeled_source", "test | folder: where D_u comes from."),
    "unlabeled_dir": ("data", "unlabeled_dir", "Folder of unlabeled images for D_u."),
    "pseudo_label_ratio": ("data", "pseudo_label_ratio",
                           "|D_u used| : |D_s^tr|, pseudo-labeled to student-train images."),
    "batch_size": ("data", "batch_size", "Training batch size (per split)."),
    "eval_batch_size": ("data", "eval_batch_size", "Evaluation batch size."),
    "deterministic": ("data", "deterministic",
                      "Deterministic input pipeline and TF ops (op determinism): a resumed run "
                      "equals the uninterrupted one bit for bit."),
    # teacher
    "layers": ("teacher", "layers", "Cells of the FasterSeg supernet."),
    "base_width": ("teacher", "base_width", "FasterSeg's Fch: channels are 8F/16F/32F."),
    "width_mult_list": ("teacher", "width_mult_list", "Width ratios searched by gamma."),
    "search_widths": ("teacher", "search_widths", "Search widths (False: full width only)."),
    "stem_head_width": ("teacher", "stem_head_width", "Width ratios of stem and head."),
    "gumbel_temperature": ("teacher", "gumbel_temperature", "Gumbel-softmax temperature."),
    "branch_selection": ("teacher", "branch_selection",
                         "acc_lat | strides_8_32 | strides_16_32: the kept branch pair."),
    "latency_table": ("teacher", "latency_table", "Latency lookup table JSON of this device."),
    "reference_latency_table": ("teacher", "reference_latency_table",
                                "FasterSeg's 1080Ti table JSON, for comparison."),
    "latency_runtime": ("teacher", "latency_runtime",
                        "tf | xla | tflite: runtime this device's latency table is timed in."),
    "latency_clock": ("teacher", "latency_clock",
                      "wall | cpu: clock of this device's table and measured networks (cpu: "
                      "process CPU time, not counting other processes' slices on a shared CPU)."),
    "latency_calibration_networks": ("teacher", "latency_calibration_networks",
                                     "Random derived networks timed whole to fit this device's "
                                     "table sum -> network ms (offset + scale); 0: off."),
    "latency_compat": ("teacher", "latency_compat",
                       "faithful | fasterseg: fasterseg reads conv_2x_downup under FasterSeg's "
                       "conv_2x key, as its forward_latency does."),
    "cell_tracing": ("teacher", "cell_tracing",
                     " | ".join(names.CELL_TRACINGS) + ": how the supernet's MixedOps enter a "
                     "traced step (shared: one tf.function per distinct cell, traced once; "
                     "per_cell: every MixedOp traced where it runs)."),
    # student
    "student_blocks": ("student", "blocks_per_stage", "ResNet blocks per stage."),
    "student_base_width": ("student", "base_width", "ResNet stem width (64 for ResNet-50)."),
    "aspp_channels": ("student", "aspp_channels", "ASPP channels (256)."),
    "student_output_stride": ("student", "output_stride", "8 | 16."),
    "student_aux_head": ("student", "aux_head", "Auxiliary FCN head on stage-3 features."),
    "student_weights": ("student", "pretrained_weights",
                        "Local ResNet50 ImageNet notop .h5 or a .weights.h5 of ours."),
    # search
    "search_mode": ("search", "mode", " | ".join(names.SEARCH_MODES) + "."),
    "hypergrad": ("search", "hypergrad", " | ".join(names.HYPERGRADS) + " (lbt only)."),
    "arch_product": ("search", "arch_product",
                     " | ".join(names.ARCH_PRODUCTS) + ": --hypergrad=exact's teacher product "
                     "(finite_difference's perturbed passes) over the whole pass, or one supernet "
                     "stage at a time (recomputed: less memory, more time; README)."),
    "search_epochs": ("search", "epochs", "Architecture-search epochs after warm-up."),
    "warmup_epochs": ("search", "warmup_epochs", "Epochs of weight training with A frozen."),
    "search_steps_per_epoch": ("search", "steps_per_epoch", "Steps per search epoch."),
    "teacher_lr": ("search", "teacher_lr", "Teacher weight SGD learning rate."),
    "student_lr": ("search", "student_lr", "Student weight SGD learning rate."),
    "lr_decay": ("search", "lr_decay", "Per-epoch decay factor of the weight lrs."),
    "momentum": ("search", "momentum", "SGD momentum of the weights."),
    "weight_decay": ("search", "weight_decay", "Weight decay of the weights."),
    "weight_grad_clip": ("search", "weight_grad_clip", "Global-norm clip of weight grads."),
    "arch_lr": ("search", "arch_lr", "Adam learning rate of the architecture."),
    "arch_beta_1": ("search", "arch_beta_1", "Adam beta_1 of the architecture."),
    "arch_beta_2": ("search", "arch_beta_2", "Adam beta_2 of the architecture."),
    "arch_weight_decay": ("search", "arch_weight_decay", "Weight decay of the architecture."),
    "arch_grad_clip": ("search", "arch_grad_clip", "Global-norm clip of the arch gradient."),
    "latency_weight": ("search", "latency_weight", "lambda_lat of the latency loss."),
    "adaptive_latency": ("search", "adaptive_latency",
                         "Halve/double latency_weight to keep latency in the target band."),
    "latency_target_min_ms": ("search", "latency_target_min_ms", "Lower end of the band."),
    "latency_target_max_ms": ("search", "latency_target_max_ms",
                              "Upper end of the band (0: no band)."),
    "latency_target_of": ("search", "latency_target_of",
                          "derived | supernet: the latency the band steers (the derived "
                          "network's prediction, or the supernet's expectation as FasterSeg)."),
    "pseudo_label_weight": ("search", "pseudo_label_weight",
                            "Weight of the pseudo-label loss of the student."),
    "student_val_weight": ("search", "student_val_weight",
                           "Weight of the student's val loss in the arch objective."),
    "pseudo_labels": ("search", "pseudo_labels",
                      " | ".join(names.PSEUDO_LABELS) + " pseudo-labels in the real step."),
    "search_student_aux_weight": ("search", "student_aux_weight",
                                  "Weight of the student's auxiliary-head loss in the search."),
    "finite_difference_scale": ("search", "finite_difference_scale",
                                "DARTS epsilon numerator: eps = scale / ||v||."),
    "reuse_step_gradients": ("search", "reuse_step_gradients",
                             "lbt: the real weight steps reuse the unrolled step's gradients "
                             "at (T, A_t) and P(T', A_t) instead of recomputing at A_t+1."),
    "keep_step_gradients": ("search", "keep_step_gradients",
                            "lbt with --reuse_step_gradients: keep the virtual step's teacher "
                            "gradient for the real step (1 GB at the paper's size, alive through "
                            "the hypergradient) instead of recomputing it at the same (T, A_t)."),
    "arch_signal_every": ("search", "arch_signal_every",
                          "lbt: log ||grad_A|| split into teacher/student val terms every N arch "
                          "steps (one more backward on those steps; 0: never)."),
    "arch_grad_batches": ("search", "arch_grad_batches",
                          "The arch step's val batches (D_t^val, D_s^val) hold this many times "
                          "--batch_size images: grad_A averaged over k batches' worth (1: as "
                          "FasterSeg). Costs k x the val passes of an arch step."),
    "arch_selection": ("search", "arch_selection",
                       " | ".join(names.ARCH_SELECTIONS) + ": each cell's op at the end of the "
                       "search: the largest alpha, or the op whose one-hot alpha row gives the "
                       "searched supernet's lowest val loss (paths and widths: argmax)."),
    "selection_batches": ("search", "selection_batches",
                          "--arch_selection=perturbation: val batches (of the arch step's size) "
                          "each candidate's loss is averaged over."),
    "max_skipped_steps": ("search", "max_skipped_steps",
                          "Non-finite steps in a row before lbt falls back to lpt."),
    "log_every": ("search", "log_every", "Steps between log lines."),
    "checkpoint_every_steps": ("search", "checkpoint_every_steps",
                               "Also checkpoint every N steps within a search epoch (a kill "
                               "loses at most N steps; 0: at epoch ends only)."),
    "distribute": ("search", "distribute", "Run under MirroredStrategy on all devices."),
    "jit_compile": ("search", "jit_compile", "XLA-compile the search step (for GPUs)."),
    "trace_once": ("search", "trace_once",
                   "Trace each model's forward once per step (one tf.function, not inlined) "
                   "instead of once per pass: smaller graph, faster first step. Default: "
                   "on for --search_mode=lbt with --hypergrad=exact or finite_difference."),
    "recompute_activations": ("search", "recompute_activations",
                              "lbt: the val passes at T' keep no activations, each one's "
                              "backward redoes its forward, one pass after the other (fewer "
                              "tensors, one more pair of teacher forwards: README). Default: "
                              "on for --search_mode=lbt."),
    "mixed_precision": ("search", "mixed_precision",
                        "float32 | mixed_bfloat16: the student computes in bfloat16 (float32 "
                        "variables, losses, hypergradient; the supernet stays float32)."),
    # retrain
    "arch": ("train", "arch", "Architecture JSON (derived or imported)."),
    "train_epochs": ("train", "epochs", "Retraining epochs."),
    "train_steps_per_epoch": ("train", "steps_per_epoch", "Retraining steps per epoch."),
    "train_lr": ("train", "lr", "Retraining SGD learning rate."),
    "train_lr_power": ("train", "lr_power", "Poly decay power of retraining."),
    "aux_weight": ("train", "aux_weight", "Weight of the auxiliary-head losses."),
    "distill_from": ("train", "distill_from", "Teacher network weights for distillation."),
    "distill_arch": ("train", "distill_arch", "Architecture JSON of the distilling teacher."),
    "distill_weight": ("train", "distill_weight", "Weight of the distillation KL loss."),
    "distill_temperature": ("train", "distill_temperature", "Softening temperature."),
    # evaluate
    "eval_split": ("eval", "split", "Split to evaluate (val | train | test)."),
    "eval_mode": ("eval", "mode", "whole | sliding."),
    "latency_runs": ("eval", "latency_runs", "Timed runs for latency (median)."),
    "latency_warmup": ("eval", "latency_warmup", "Untimed warm-up runs."),
    "compare_student": ("eval", "compare_student", "Also time DeepLabV3 at the same size."),
    "grid_images": ("eval", "grid_images", "Images in the prediction grid."),
    # export / predict
    "export_dir": ("export", "export_dir", "SavedModel directory (default: run_dir/export)."),
    "tflite": ("export", "tflite", "Also write TFLite models."),
    "int8": ("export", "int8", "Also write an int8 post-training-quantised TFLite model."),
    "calibration_images": ("export", "calibration_images", "Representative images for int8."),
    "tflite_eval_images": ("export", "tflite_eval_images",
                           "Val images the float and int8 TFLite models are scored on."),
    "serving_probabilities": ("export", "serving_probabilities",
                              "Serving signature also returns per-class probabilities."),
    "input": ("export", "input", "predict: an image file or a folder of images."),
    "output": ("export", "output", "predict: output folder."),
    "prediction_format": ("export", "prediction_format",
                          "predict: color (palette + overlay PNGs) | cityscapes (label-id PNGs "
                          "named for the official Cityscapes scorer)."),
    # pipeline / experiments
    "pipeline_root": ("pipeline", "pipeline_root", "Root of the pipeline's artifacts."),
    "serving_dir": ("pipeline", "serving_dir", "Where the pusher copies a blessed model."),
    "pipeline_cache": ("pipeline", "pipeline_cache",
                       "--mode=pipeline reuses the tasks an earlier run of the same config "
                       "finished (kfp's local cache); --nopipeline_cache runs every task again "
                       "(the search and retraining still resume from their checkpoints)."),
    "bless_min_miou": ("pipeline", "bless_min_miou", "Blessing: minimum mIoU."),
    "bless_max_latency_ms": ("pipeline", "bless_max_latency_ms", "Blessing: latency budget."),
    "pipeline_yaml": ("pipeline", "pipeline_yaml", "Output path of the compiled pipeline."),
    "component_image": ("pipeline", "component_image",
                        "Container image (lbt_tf installed) of the pipeline components."),
    "compare_modes": ("pipeline", "compare_modes", "Search modes in --mode=compare."),
    "tuner_algorithm": ("pipeline", "tuner_algorithm",
                        "grid | bayesian: keras-tuner oracle of the ratio study."),
    "tuner_max_trials": ("pipeline", "tuner_max_trials", "Trials of the ratio study."),
    "tuner_ratios": ("pipeline", "tuner_ratios", "Pseudo-label ratios of the ratio study."),
    "tuner_pseudo_label_weights": ("pipeline", "tuner_pseudo_label_weights",
                                   "pseudo_label_weight values of the ratio study."),
    "tuner_student_val_weights": ("pipeline", "tuner_student_val_weights",
                                  "student_val_weight values of the ratio study."),
}

flags.DEFINE_enum("mode", "demo", MODES, "What to run.")


def _field_default(section, name):
    owner = config_lib.Config if section is None else type(getattr(config_lib.Config(), section))
    for f in dataclasses.fields(owner):
        if f.name == name:
            return f.default, f.type
    raise KeyError(f"{section}.{name}")


def _define_all():
    for flag_name, (section, field, help_text) in FLAG_TABLE.items():
        default, type_name = _field_default(section, field)
        type_name = str(type_name)
        if isinstance(default, bool):
            flags.DEFINE_bool(flag_name, default, help_text)
        elif isinstance(default, tuple) or "Tuple" in type_name:
            flags.DEFINE_list(flag_name, [str(v) for v in (default or ())], help_text)
        elif isinstance(default, int) and "float" not in type_name:
            flags.DEFINE_integer(flag_name, default, help_text)
        elif isinstance(default, float):
            flags.DEFINE_float(flag_name, default, help_text)
        elif "bool" in type_name:  # Optional[bool]: None unless --flag / --noflag
            flags.DEFINE_bool(flag_name, default, help_text)
        elif "int" in type_name:  # Optional[int]
            flags.DEFINE_integer(flag_name, default, help_text)
        else:
            flags.DEFINE_string(flag_name, default, help_text)


_define_all()


def _convert(flag_name, value, default):
    if isinstance(default, tuple) and isinstance(value, list):
        caster = type(default[0]) if default else str
        try:
            return tuple(caster(eval_fraction(v) if caster is float else v) for v in value)
        except ValueError as err:
            raise config_lib.ConfigError(f"--{flag_name}={','.join(value)}: {err}") from None
    return value


def eval_fraction(text):
    """Parses '0.5' or '4/12' (FasterSeg writes widths as fractions)."""
    text = str(text).strip()
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def flag_name(section, field) -> str:
    """The flag of a Config field (section None: top level)."""
    for flag, (flag_section, flag_field, _) in FLAG_TABLE.items():
        if (flag_section, flag_field) == (section, field):
            return flag
    return f"{section}.{field}" if section else field


def build_config(flag_values=flags.FLAGS) -> config_lib.Config:
    """Turns parsed flags into the frozen, validated `Config`."""
    top = {"mode": flag_values.mode}
    sections = {}
    for flag_name, (section, field, _) in FLAG_TABLE.items():
        default, _ = _field_default(section, field)
        value = _convert(flag_name, flag_values[flag_name].value, default)
        if section is None:
            top[field] = value
        else:
            sections.setdefault(section, {})[field] = value
    base = config_lib.Config()
    for section, values in sections.items():
        top[section] = dataclasses.replace(getattr(base, section), **values)
    return config_lib.validate(config_lib.Config(**top))
