"""FasterSeg's search space in Keras 3: supernet, latency tables, derivation, derived network."""
from lbt_tf.models.fasterseg.derived import build_derived_network
from lbt_tf.models.fasterseg.genotype import (derive_architecture, import_fasterseg,
                                              load_architecture, save_architecture)
from lbt_tf.models.fasterseg.latency import LatencyTable
from lbt_tf.models.fasterseg.supernet import FasterSegSupernet, build_supernet

__all__ = ["build_supernet", "FasterSegSupernet", "build_derived_network", "derive_architecture",
           "save_architecture", "load_architecture", "import_fasterseg", "LatencyTable"]
