"""What the unrolled update works on: the models as pure functions of weight values (`Learner`),
their losses, one step's batches, and the supernet interface the search relies on.

Every forward pass is `stateless_call` on weight *values*; the real variables are never assigned
here, and the BatchNorm statistics a pass returns are kept only where a real step applies them.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Dict, List, NamedTuple, Optional, Protocol, Sequence, runtime_checkable

import keras
import tensorflow as tf

from lbt_tf import names
from lbt_tf.errors import LbtError
from lbt_tf.ops import losses
from lbt_tf.ops.resize import resize_bilinear


class HypergradientError(LbtError, RuntimeError):
    """A gradient on the LBT path is None: some op broke the (second-order) path."""


@runtime_checkable
class SearchableSupernet(Protocol):
    """What the search needs of a teacher supernet (FasterSegSupernet, the tests' stand-in)."""
    arch_variables: list       # A: the arch variables, trainable variables of the model
    latency_table: object      # None until a table is set
    sample_widths: bool        # Gumbel sampling of widths in training passes

    def set_latency_table(self, table) -> None: ...

    def expected_latency(self, arch_values=None) -> tf.Tensor: ...

    def arch_inputs(self, width_mode=None):
        """The arch variables' values as the stages take them (softmax rows, width weights)."""

    def stages(self) -> list:
        """The forward as a chain of `x = stage(x, arch_inputs, training)`, images to outputs."""


def checked_gradients(grads, variable_names: Sequence[str], what: str):
    """Raises naming the first variable whose gradient is None."""
    for grad, name in zip(grads, variable_names):
        if grad is None:
            raise HypergradientError(
                f"{what}: gradient w.r.t. {name} is None (an op on the path has no "
                "(second-order) gradient; see shared/notes/second-order-tf.md)")
    return list(grads)


def axpy(alpha, xs, ys):
    """ys + alpha * xs, elementwise over two lists of tensors."""
    return [y + alpha * x for x, y in zip(xs, ys)]


def add_scaled(grads, scale, others):
    """grads + scale * others, where an entry of `others` may be None (no path to that weight:
    the student's aux head has none to the pseudo-label loss)."""
    return [g if o is None else g + scale * o for g, o in zip(grads, others)]


def after(*tensors):
    """Context: the ops created inside run only once `tensors` (nested, None skipped) exist.
    In a graph the executor runs every op whose inputs are ready, so without it the stages of
    the unrolled step (each with its own ~1 GB copy of the supernet's weights at the paper's
    size: T', T + eps v, T - eps v, ...) can all be alive at once. Values are unchanged."""
    deps = [t for t in tf.nest.flatten(tensors) if t is not None]
    if tf.executing_eagerly() or not deps:
        return contextlib.nullcontext()  # eager ops run in program order anyway
    # One NoOp carries the dependencies: each op made inside gets one control edge, not one per
    # tensor (a list of ~1600 weights would add ~1600 edges to every op of a forward pass).
    return tf.control_dependencies([tf.group(*deps)])


def backward_together(first, second):
    """(first, second) unchanged; in a backward pass, first's incoming gradient is passed on
    only once second's exists. Where two passes share weights (L_t^val and P at T'), the pass
    whose gradient is ready early would otherwise run its backward at once and hold its whole
    gradient w.r.t. the shared weights (1 GB at the paper's size) until the other's arrives to
    be summed with; instead its activations wait. Measured on the exact mode
    (docs/paper_scale_log.md): 1.1 GB fewer tensors with the paper's weights at 64x128, no change at
    224x448 (activations larger there)."""
    @tf.custom_gradient
    def identity(a, b):
        def grad(da, db):
            with tf.control_dependencies([db]):
                return tf.identity(da), db
        return (tf.identity(a), tf.identity(b)), grad

    return identity(first, second)


def global_norm(tensors):
    return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors]))


class Learner:
    """A Keras model seen as a pure function of (weight values, arch values, x).

    `arch_variables` (the supernet's alpha/beta/gamma) are split out of
    `model.trainable_variables` by identity so that A and T can be differentiated separately.
    `trace_once`: every forward goes through one `tf.function` per `training` value, called (not
    inlined) wherever the step runs the model, so the step's graph holds the model's forward and
    backward once instead of once per pass (the unrolled step makes 3-7 passes per model); the
    gradients of any order are TensorFlow's gradients of that function, the same values.
    """

    def __init__(self, model, arch_variables: Sequence = (), trace_once: bool = False):
        self.model = model
        self.trace_once = trace_once
        self._traced = {}
        arch_ids = {id(v) for v in arch_variables}
        trainable = list(model.trainable_variables)
        self.arch_positions = [i for i, v in enumerate(trainable) if id(v) in arch_ids]
        self.weight_positions = [i for i, v in enumerate(trainable) if id(v) not in arch_ids]
        if len(self.arch_positions) != len(arch_ids):
            raise HypergradientError("some arch variables are not trainable variables of "
                                     f"{model.name}")
        self.arch_variables = [trainable[i] for i in self.arch_positions]
        self.weight_variables = [trainable[i] for i in self.weight_positions]
        self.non_trainable_variables = list(model.non_trainable_variables)
        self.arch_names = [v.path for v in self.arch_variables]
        self.weight_names = [v.path for v in self.weight_variables]

    def weight_values(self):
        return [tf.convert_to_tensor(v.value) for v in self.weight_variables]

    def arch_values(self):
        return [tf.convert_to_tensor(v.value) for v in self.arch_variables]

    def non_trainable_values(self):
        return [tf.convert_to_tensor(v.value) for v in self.non_trainable_variables]

    def forward(self, weights, arch, x, training=True, non_trainable=None, inline=False):
        """(outputs, new non-trainable values) of the model at the given values. `inline`: not
        through the traced forward even with trace_once (inside a `traced` function)."""
        if non_trainable is None:
            non_trainable = self.non_trainable_values()
        if not self.trace_once or inline:
            return self._stateless_forward(weights, arch, x, training, non_trainable)
        forward = self.traced(("forward", training), lambda w, a, n, images: (
            self._stateless_forward(w, a, images, training, n)))
        return forward(list(weights), list(arch), list(non_trainable), x)

    def traced(self, key, fn):
        """`fn`, or with trace_once one non-inlined tf.function of it per key (traced once,
        called wherever the step needs it)."""
        if not self.trace_once:
            return fn
        if key not in self._traced:
            self._traced[key] = tf.function(fn, autograph=False,
                                            experimental_attributes={"_noinline": True})
        return self._traced[key]

    def stateless_scope(self, weights, arch, non_trainable=None, weight_transform=None):
        """Context: the model's variables read as these values (what `stateless_call` does
        around `call`), for running parts of the model (its `stages`). `weight_transform(i,
        value)`: weight i is read as that instead, made when the model first reads it (a stage
        then makes only its own, e.g. T + eps v one stage at a time)."""
        if non_trainable is None:
            non_trainable = self.non_trainable_values()
        mapping = (list(zip(self.weight_variables, weights)) + list(zip(self.arch_variables, arch))
                   + list(zip(self.non_trainable_variables, non_trainable)))
        if weight_transform is None:
            return keras.StatelessScope(state_mapping=mapping)
        return TransformedWeightsScope(mapping, self.weight_variables, weight_transform)

    def _stateless_forward(self, weights, arch, x, training, non_trainable):
        values = [None] * (len(self.weight_positions) + len(self.arch_positions))
        for pos, value in zip(self.weight_positions, weights):
            values[pos] = value
        for pos, value in zip(self.arch_positions, arch):
            values[pos] = value
        return self.model.stateless_call(values, non_trainable, x, training=training)



class TransformedWeightsScope(keras.StatelessScope):
    """A StatelessScope whose given weights are read as `transform(i, value)`, made on their
    first read (Keras reads a variable in a stateless scope through `get_current_value`)."""

    def __init__(self, mapping, weight_variables, transform):
        super().__init__(state_mapping=mapping)
        self.pending = {id(v): i for i, v in enumerate(weight_variables)}
        self.transform = transform

    def get_current_value(self, variable):
        index = self.pending.pop(id(variable), None)
        if index is not None:
            self.state_mapping[id(variable)] = self.transform(index,
                                                              self.state_mapping[id(variable)])
        return super().get_current_value(variable)


def teacher_seg_loss(outputs, labels, ignore_label):
    """FasterSeg's search loss: sum of 1/8-resolution CEs over the supernet's output list."""
    return tf.add_n([losses.segmentation_ce(logits, labels, ignore_label) for logits in outputs])


def teacher_probabilities(outputs, size):
    """Soft pseudo-labels: softmax of the mean logits, up-sampled (twice differentiable)."""
    mean_logits = losses.at_least_float32(tf.add_n(list(outputs)) / float(len(outputs)))
    return resize_bilinear(tf.nn.softmax(mean_logits, axis=-1), size)


def student_logits(outputs):
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def student_seg_loss(outputs, labels, ignore_label, aux_weight=0.0):
    """CE of the student's logits, plus aux_weight x the auxiliary head's CE when it has one
    (its weights would otherwise get a None gradient)."""
    loss = losses.segmentation_ce(student_logits(outputs), labels, ignore_label)
    aux = outputs.get("aux_logits") if isinstance(outputs, dict) else None
    if aux is not None and aux_weight:
        loss = loss + aux_weight * losses.segmentation_ce(aux, labels, ignore_label)
    return loss


def pseudo_label_loss(logits, probs, hard, ignore_label):
    """The student's loss on the teacher's pseudo-labels: soft CE against the probabilities
    (second-order safe: the unrolled step differentiates through `probs`), or with `hard`
    the CE of their argmax (no gradient to the teacher)."""
    if hard:
        labels = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return losses.segmentation_ce(logits, labels, ignore_label)
    return losses.soft_ce(logits, probs)


@dataclasses.dataclass
class Batches:
    """One element of the zipped search input (names.SEARCH_SOURCES; fasterseg has only the
    teacher's)."""
    teacher_train: tuple
    teacher_val: tuple
    student_train: Optional[tuple] = None
    student_val: Optional[tuple] = None
    unlabeled: Optional[tf.Tensor] = None

    @staticmethod
    def from_dict(data: Dict) -> "Batches":
        return Batches(**{k: data.get(k) for k in names.SEARCH_SOURCES})


@dataclasses.dataclass
class StepGradients:
    """First-order pieces of the unrolled step at (T, A, S), reusable by the real weight steps."""
    teacher_loss: Optional[tf.Tensor] = None         # L(T, A; D_t^tr)
    teacher_grads: Optional[List[tf.Tensor]] = None  # its gradient w.r.t. T
    teacher_stats: Optional[List[tf.Tensor]] = None  # the teacher's BatchNorm statistics
    student_loss: Optional[tf.Tensor] = None         # L(S; D_s^tr)
    student_grads: Optional[List] = None             # its gradient w.r.t. S
    student_stats: Optional[List[tf.Tensor]] = None  # the student's statistics of that pass
    pseudo_probs: Optional[tf.Tensor] = None         # P(T', A; D_u)
    pseudo_loss: Optional[tf.Tensor] = None          # L_soft(S; P(T', A; D_u))
    pseudo_grads: Optional[List] = None              # its gradient w.r.t. S (None: no path)


class ArchGradient(NamedTuple):
    grads: List[tf.Tensor]           # grad_A F
    objective: tf.Tensor             # F (lpt: without the student term, which is only logged)
    parts: Dict[str, tf.Tensor]      # the loss terms of F
    terms: Dict[str, List]           # teacher_val / student_val / latency parts of grad_A F
    reuse: Optional[StepGradients] = None
