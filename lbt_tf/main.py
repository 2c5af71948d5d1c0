"""Entry point: `python -m lbt_tf.main --flagfile=configs/<name>.flags [--mode=...]`.

Flags become one frozen `Config` here (lbt_tf.flags.build_config) and each mode is a function
`run(config)` in the module named below; modules are imported only when their mode runs, so
`--mode=sample_grid` does not build models.
"""
from __future__ import annotations

import importlib
import os
import sys
import tempfile

from absl import app, logging
from absl import flags as absl_flags

from lbt_tf import config as config_lib
from lbt_tf import flags as lbt_flags
from lbt_tf.errors import GRAPH_DATA_MESSAGES, LbtError

# mode -> "module:function"; each function takes the Config.
MODE_HANDLERS = {
    "demo": "lbt_tf.workflows:demo",
    "sample_grid": "lbt_tf.data.visualize:run_sample_grid",
    "splits": "lbt_tf.data.splits:run_print_splits",
    "describe_arch": "lbt_tf.models.fasterseg.describe:run_describe_arch",
    "measure_latency": "lbt_tf.models.fasterseg.latency:run_measure_latency",
    "search": "lbt_tf.search.runner:run_search",
    "train": "lbt_tf.retrain.trainer:run_train",
    "evaluate": "lbt_tf.retrain.evaluate:run_evaluate",
    "export": "lbt_tf.retrain.export:run_export",
    "predict": "lbt_tf.retrain.predict:run_predict",
    "pipeline": "pipelines.lbt_pipeline:run_pipeline",
    "compile_pipeline": "pipelines.lbt_pipeline:run_compile_pipeline",
    "compare": "lbt_tf.experiments.compare:run_compare",
    "ratio_study": "lbt_tf.experiments.ratio_study:run_ratio_study",
}


def dispatch(config):
    module_name, function_name = MODE_HANDLERS[config.mode].split(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    return handler(config)


def quiet_tensorflow(verbosity: int):
    """TensorFlow's C++ INFO/WARNING lines hide the few numbers a user watches: keep ERROR and
    above unless `--verbosity` (absl's -v) asks for more or TF_CPP_MIN_LOG_LEVEL is set.

    TF_CPP_MIN_LOG_LEVEL does not reach the lines TF's static initialisers write before absl's
    logging is set up (oneDNN, CUDA stub), so TensorFlow is imported here with the stderr file
    descriptor captured, and only what is not an INFO/WARNING line is written back."""
    if verbosity > 0 or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith(_PRE_ABSL_NOISE):
                    sys.stderr.write(line)


# Prefixes of the C++ log lines written during `import tensorflow` (severity letter I/W + date).
_PRE_ABSL_NOISE = ("I0000 ", "W0000 ", "WARNING: All log messages before absl::InitializeLog")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    config = None
    try:
        config = config_lib.check_inputs(lbt_flags.build_config())  # before any work
        if not absl_flags.FLAGS["verbosity"].present:
            # absl's INFO lines (checkpoint paths) would cut through Keras' progress bar.
            logging.set_verbosity(logging.WARNING)
        quiet_tensorflow(logging.get_verbosity())
        if config.data.deterministic:
            # Op determinism is process-wide and cannot be switched off: set here, for the whole
            # command (with the seeded data, a resumed run is the uninterrupted one bit for bit).
            import tensorflow as tf  # pylint: disable=import-outside-toplevel
            tf.config.experimental.enable_op_determinism()
        dispatch(config)
    except LbtError as err:
        # The user's input is wrong: one clear line naming the file or flag, no stack trace.
        _exit_with(err)
    except Exception as err:  # pylint: disable=broad-except
        message = _data_error_from_graph(err, config)
        if message is None:
            raise
        _exit_with(message)


def _exit_with(message):
    logging.flush()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# What TF's own decode ops say about a file they cannot decode (they do not name the file).
_DECODE_FAILURES = ("Invalid PNG data", "Unknown image file format", "Invalid JPEG data",
                    "jpeg::Uncompress failed")


def _data_error_from_graph(err, config=None):
    """The one-line message of a data check that failed inside a tf.data graph, else None."""
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(err, tf.errors.InvalidArgumentError):
        return None
    text = str(err)
    for marker in GRAPH_DATA_MESSAGES:
        if marker in text:
            detail = text[text.index(marker):].splitlines()[0]
            return detail.replace("] [", " ").strip("[] ")
    if config is not None and any(failure in text for failure in _DECODE_FAILURES):
        return _find_undecodable_file(config, text)
    return None


def _find_undecodable_file(config, text):
    """A decode op failed on a file it does not name: decode every file of the dataset once
    (as --validate_files=full) to name it."""
    import dataclasses

    from lbt_tf.data.splits import make_splits
    from lbt_tf.errors import DataError
    try:
        make_splits(dataclasses.replace(config.data, validate_files="full"), config.seed)
    except DataError as err:
        return str(err)
    return f"an image or label file could not be decoded ({text.splitlines()[0]})"


def run():
    app.run(main)


if __name__ == "__main__":
    run()
