"""lbt / hvp: darts.py's two mixed products as forward-over-reverse Hessian-vector products:
a `tf.autodiff.ForwardAccumulator` pushes the direction (v through T, u through S) forward
through a first-order backward pass and returns the directional derivative of its gradient,
    arch_product: d/deps grad_A L(T + eps v, A; D_t^tr) at eps = 0 = d2 L/dA dT . v
    soft_product: d/deps grad_P L_soft(S + eps u; P) at eps = 0   = d2 L_soft/dP dS . u
exact to rounding (no eps, no kinks counted: the same values as reverse_over_reverse.py's and
unrolled.py's nested tapes). The cost is in the graph: TF 2.21 computes forward mode per op, each
op's jvp a small traced function (the double-backward trick), so tracing and the graph grow with
the op count (demo config: the step peaks at 8.4 GB RSS and 2.9x lpt's step time, the whole-step
nested tapes at 5.9 GB; README). `tf.recompute_grad` raises under the accumulator (it cannot
transpose its gradient). A None jvp (no path, or an op without a forward-mode rule) is an error,
never a zero.
"""
from __future__ import annotations

import tensorflow as tf

from lbt_tf.search import darts
from lbt_tf.search.learner import checked_gradients


class ForwardOverReverse:
    what = "HVP"

    def arch_product(self, problem, teacher_weights, arch, v, batch):
        names = problem.teacher.arch_names
        with tf.autodiff.ForwardAccumulator(teacher_weights, v) as acc:
            with tf.GradientTape() as tape:
                tape.watch(arch)
                loss = problem.teacher_loss(teacher_weights, arch, batch)
            grads = checked_gradients(tape.gradient(loss, arch), names,
                                      "HVP: grad_A L_t^tr")
        return checked_gradients(acc.jvp(grads), names, "HVP: d/dT grad_A L_t^tr . v")

    def soft_product(self, problem, student_weights, u, probs, images):
        # The tape watches only P, so it records the loss ops after the logits; the
        # accumulator carries u through the student's forward (one forward-mode pass), op by
        # op: through the traced forward (trace_once) TF takes the jvp of the whole function
        # call as the transpose of its backward, i.e. a full backward and its backward
        # (paper setting, this product alone: +4.7 GB of tensors and 17 s per call, inline
        # +0.9 GB and 5.5 s; the same values; docs/paper_scale_log.md, "Thirteenth session").
        with tf.autodiff.ForwardAccumulator(student_weights, u) as acc:
            with tf.GradientTape() as tape:
                tape.watch(probs)
                loss = darts.soft_loss(problem, student_weights, images, probs, inline=True)
            grad = checked_gradients([tape.gradient(loss, probs)], ["P"],
                                     f"{self.what}: grad_P L_soft")
        return checked_gradients([acc.jvp(grad[0])], ["P"],
                                 f"{self.what}: d/dS grad_P L_soft . u")[0]


def hvp_hypergradient(problem, *args, **kwargs):
    """darts.darts_hypergradient with forward-over-reverse products (arguments as there)."""
    return darts.darts_hypergradient(ForwardOverReverse(), problem, *args, **kwargs)
