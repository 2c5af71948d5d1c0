"""lbt / finite_difference: grad_A F of unrolled.py's (3) with DARTS' central differences in
place of the Hessian-vector products (no second-order graph).

With u = w_sv grad_{S'} L(S'; D_s^val), eps_s = c / ||u||, c = search.finite_difference_scale:
    g_soft(theta) = [grad_theta L_soft(S + eps_s u; P(theta)) - grad_theta L_soft(S - eps_s u;
                     P(theta))] / (2 eps_s),     theta = (T', A)       (~ d2 L_soft/dtheta dS . u)
    v             = grad_{T'} L(T', A; D_t^val) - xi_s lambda g_soft(T')
    h_A(v)        = [grad_A L(T + eps_t v, A; D_t^tr) - grad_A L(T - eps_t v, A; D_t^tr)]
                    / (2 eps_t),   eps_t = c / ||v||                   (~ d2 L/dA dT . v)
    grad_A F     ~= grad_A L(T', A; D_t^val) - xi_s lambda g_soft(A) - xi_t h_A(v)
                    + lambda_lat grad_A Lat(A)
A zero ||u|| or ||v|| means that second-order term is exactly zero: it is skipped (no 0/0).
c = 1e-3 (not DARTS' 0.01) is the most accurate in float32 at the demo config with a smooth
activation (bench/finite_difference_eps.py). With ReLU the quotients also count the kinks that
T +- eps v crosses, which the exact (autodiff) Hessian-vector product leaves out: the two agree
only for eps below every kink (float64, c = 1e-6), out of float32's reach.
Where `diagnose` is true the teacher term alone, grad_A L(T', A; D_t^val) - xi_t h_A(v_teacher),
costs two more teacher passes.
"""
from __future__ import annotations

import tensorflow as tf

from lbt_tf.search import learner as lrn
from lbt_tf.search.learner import ArchGradient, Batches, checked_gradients


def hessian_arch_product(problem, teacher_weights, arch, v, batch):
    """h_A(v): central difference of grad_A L(T, A; batch) along v (zero when v is zero)."""
    dtype = arch[0].dtype
    v_norm = lrn.global_norm(v)
    eps = tf.cast(problem.finite_difference_scale, dtype) / tf.maximum(v_norm,
                                                                       tf.constant(1e-30, dtype))

    def arch_grad_at(weights):
        with tf.GradientTape() as tape:
            tape.watch(arch)
            loss = problem.teacher_loss(weights, arch, batch)
        return checked_gradients(tape.gradient(loss, arch), problem.teacher.arch_names,
                                 "FD: grad_A L_t^tr(T +- eps v)")

    plus = arch_grad_at(lrn.axpy(eps, v, teacher_weights))
    minus = arch_grad_at(lrn.axpy(-eps, v, teacher_weights))
    coeff = tf.where(v_norm > 0, 1.0 / (2 * eps), tf.zeros((), dtype))
    return [coeff * (p - m) for p, m in zip(plus, minus)]


def finite_difference_hypergradient(problem, teacher_weights, arch, student_weights, xi_t, xi_s,
                                    latency_weight, batches: Batches,
                                    diagnose=None) -> ArchGradient:
    """Passes: the virtual steps, one backward of L_t^val and one of P (to (T', A) each), two
    student forwards at S +- eps u, two teacher passes at T +- eps v."""
    new_teacher, reuse = problem.virtual_teacher_step(teacher_weights, arch, xi_t,
                                                      batches.teacher_train)
    dtype = reuse.teacher_loss.dtype
    num_t = len(new_teacher)
    teacher_and_arch = new_teacher + list(arch)
    names = problem.teacher.weight_names + problem.teacher.arch_names
    with tf.GradientTape() as val_tape:
        val_tape.watch(teacher_and_arch)
        teacher_val = problem.teacher_loss(new_teacher, arch, batches.teacher_val)
    # One backward gives v's first term (w.r.t. T') and the direct grad_A.
    val_grads = checked_gradients(val_tape.gradient(teacher_val, teacher_and_arch), names,
                                  "FD: grad_(T', A) L_t^val")
    v_teacher, direct = val_grads[:num_t], val_grads[num_t:]
    v, grads = v_teacher, direct
    student_val = None
    if problem.student is not None:
        with tf.GradientTape() as probs_tape:
            probs_tape.watch(teacher_and_arch)
            probs = problem.teacher_probs(new_teacher, arch, batches.unlabeled)
        new_student = problem.virtual_student_step(student_weights, tf.stop_gradient(probs),
                                                   xi_s, batches, reuse)
        with tf.GradientTape() as student_tape:
            student_tape.watch(new_student)
            student_val = problem.student_loss(new_student, batches.student_val)
        u = checked_gradients(student_tape.gradient(student_val, new_student),
                              problem.student.weight_names, "FD: grad_S' L_s^val")
        u = [problem.student_val_weight * g for g in u]
        u_norm = lrn.global_norm(u)
        eps_s = (tf.cast(problem.finite_difference_scale, dtype)
                 / tf.maximum(u_norm, tf.constant(1e-30, dtype)))

        def pseudo_loss(weights):
            outputs, _ = problem.student.forward(weights, [], batches.unlabeled)
            return lrn.pseudo_label_loss(lrn.student_logits(outputs), probs, False,
                                         problem.ignore_label)

        # d/dP of the difference quotient: two student forwards; the tape records only the
        # loss ops after the logits.
        with tf.GradientTape() as soft_tape:
            soft_tape.watch(probs)
            soft_diff = (pseudo_loss(lrn.axpy(eps_s, u, student_weights))
                         - pseudo_loss(lrn.axpy(-eps_s, u, student_weights))) / (2 * eps_s)
        # ... pulled back through the teacher's probabilities: g_soft(T'), g_soft(A).
        g_soft = checked_gradients(
            probs_tape.gradient(probs, teacher_and_arch,
                                output_gradients=soft_tape.gradient(soft_diff, probs)),
            names, "FD: d P / d(T', A)")
        coeff = tf.where(u_norm > 0, -tf.cast(xi_s, dtype) * problem.pseudo_label_weight,
                         tf.zeros((), dtype))
        v = lrn.axpy(coeff, g_soft[:num_t], v_teacher)
        grads = lrn.axpy(coeff, g_soft[num_t:], direct)

    xi_t = tf.cast(xi_t, dtype)
    grads = lrn.axpy(-xi_t, hessian_arch_product(problem, teacher_weights, arch, v,
                                                 batches.teacher_train), grads)
    teacher_grads = None
    if diagnose is not None:
        teacher_grads = tf.cond(
            diagnose,
            lambda: lrn.axpy(-xi_t, hessian_arch_product(problem, teacher_weights, arch,
                                                         v_teacher, batches.teacher_train),
                             direct),
            lambda: [tf.zeros_like(a) for a in arch])
    latency, lat_grads = problem.latency_gradient(arch, latency_weight)
    return problem.result(grads, teacher_grads, teacher_val, student_val, latency, lat_grads,
                          reuse)
