"""Kubeflow Pipelines v2 components of lbt_tf, in TFX's shape:

example_gen -> search -> trainer -> evaluator -> pusher

Each module holds one plain Python function with typed artifacts; `build_components(image)`
turns them into KFP lightweight components running in `image` (a container with lbt_tf
installed: `pip install .` of this repository). The functions only rebuild the `Config` from
its JSON parameter and call `lbt_tf.pipeline_steps`; they hold no logic of their own.
"""

from typing import NamedTuple

from kfp import dsl

from components.evaluator import evaluator
from components.example_gen import example_gen
from components.pusher import pusher
from components.search import search
from components.trainer import trainer


class Components(NamedTuple):
    example_gen: object
    search: object
    trainer: object
    evaluator: object
    pusher: object


def build_components(image: str) -> Components:
    """The five components, each running in the container `image` (config.pipeline
    .component_image). Under kfp's local SubprocessRunner the image is not used."""
    # The image has lbt_tf installed, and lbt_tf depends on kfp: no pip install at start-up.
    return Components(*(dsl.component(function, base_image=image, install_kfp_package=False)
                        for function in (example_gen, search, trainer, evaluator, pusher)))
