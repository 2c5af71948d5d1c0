"""User-facing errors: `main` prints their message (which names the file or flag) and exits 2,
instead of a stack trace."""


class LbtError(Exception):
    """Base of every error caused by the user's input (flags, files, requests)."""


class DataError(LbtError, ValueError):
    """A dataset directory, image or label file is missing, corrupt or inconsistent."""


class ArchitectureError(LbtError, ValueError):
    """An architecture JSON is malformed or does not fit the configured search space."""


class WeightsError(LbtError, ValueError):
    """A weights file is missing, unreadable or does not fit the model; the message names it."""


# Raised inside tf.data graphs (tf.debugging.Assert) where no Python exception can be; `main`
# recognises this marker in a TF InvalidArgumentError and reports it like a DataError.
LABEL_OUT_OF_TABLE_MESSAGE = "label ids outside the Cityscapes table in"
# Same, for an image or label file whose bytes are not a whole PNG/JPEG (--validate_files=none).
NOT_AN_IMAGE_MESSAGE = "not a whole PNG/JPEG file (truncated or corrupt):"
GRAPH_DATA_MESSAGES = (LABEL_OUT_OF_TABLE_MESSAGE, NOT_AN_IMAGE_MESSAGE)
