"""Adan: Nesterov-accelerated adaptive moments, estimated from gradient differences."""

from __future__ import annotations

from typing import Any

from backends import lazy_entry

from .optimizer import Optimizer, signature_arguments
from .validation import check_array_lr, check_betas, check_fused, check_nonnegative

__all__ = ["Adan"]


def _clip_factor(ops: Any, math: Any, groups: list) -> dict[str, Any]:
    """The official global clip: ``min(max_grad_norm / (||g|| + eps), 1)`` over every gradient.

    As sail-sg/Adan computes it: each gradient's sum of squares in its own dtype, accumulated in
    float32, the factor a float32 value read back to the host.  The options are the last group's.
    """
    h, grads = groups[-1].h, [grad for group in groups for grad in group.grads]
    if not h.clips or not grads:
        return {"clip": 1.0}
    total = None
    for grad in grads:
        squares = ops.astype(ops.sum(grad * grad), "float32")
        total = squares if total is None else total + squares
    norm = ops.sqrt(total)
    factor = ops.clamp(ops.full_like(norm, h.max_grad_norm) / (norm + h.eps), high=1.0)
    return {"clip": ops.scalar(factor)}


class Adan(Optimizer):
    r"""Adan (Xie et al., 2022): the official implementation's definition (sail-sg/Adan).

    .. math::
        \hat g_t &= c\, g_t, \qquad c = \min\bigl(1, \tfrac{M}{\lVert g\rVert + \epsilon}\bigr)
            \ \text{(max_grad_norm } M > 0\text{, over every gradient)}, \qquad
            \Delta_t = \hat g_t - \hat g_{t-1} \ (0 \text{ at the first step}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\hat g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\Delta_t, \qquad
        n_t = \beta_3 n_{t-1} + (1-\beta_3)(\hat g_t + \beta_2\Delta_t)^2 \\
        \theta_t &= \Bigl(\theta_{t-1} - \frac{\eta}{1-\beta_1^t}\frac{m_t}{d_t}
            - \frac{\eta\beta_2}{1-\beta_2^t}\frac{v_t}{d_t}\Bigr) \Big/ (1 + \eta\lambda),
        \qquad d_t = \frac{\sqrt{n_t}}{\sqrt{1-\beta_3^t}} + \epsilon

    The decay is proximal (the paper's): a division after the step.  With ``no_prox=True`` it is
    AdamW's, :math:`\theta_{t-1}(1-\eta\lambda)` before the step.  State: ``exp_avg``
    (:math:`m`), ``exp_avg_sq`` (:math:`n`), ``exp_avg_diff`` (:math:`v`), ``neg_pre_grad``
    (:math:`-\hat g_{t-1}`); the step count :math:`t` is the param group's ``step``, as the
    official code keeps it (advanced for every group at every step, with gradients or not).

    Where definitions differ:

    * The official clip scales ``p.grad`` in place (it stays clipped after ``step()``); here
      gradients are not written.  It reads ``max_grad_norm`` from the constructor's defaults;
      here from the last param group (the same unless groups override it).
    * ``optax.adan`` uses :math:`1-\beta_2` where the official code uses :math:`\beta_2` (in
      :math:`n_t` and in the step; optax PR #1715), and has neither the proximal decay nor the
      clip: a different algorithm, measured in the README.
    * ``pytorch_optimizer.Adan`` computes the same with ``lerp`` and another clip rounding:
      ulps apart without clipping, about 1e-8 with.
    """

    group_counters = {"step": 0}
    sparse_gradients_error = "Adan does not support sparse gradients"
    complex_parameters_error = "Adan does not support complex parameters"
    step_scalars = staticmethod(_clip_factor)

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        no_prox: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        *,
        maximize: bool = False,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
        bucket_view: bool = False,
    ) -> None:
        if not 0.0 <= max_grad_norm:
            raise ValueError(f"Invalid Max grad norm: {max_grad_norm}")
        check_array_lr(lr)
        check_nonnegative(lr, "learning rate")
        check_nonnegative(eps, "epsilon value")
        check_betas(betas)
        check_fused(fused, foreach, False)
        super().__init__(**signature_arguments(Adan.__init__, locals()))

    @staticmethod
    def switches(group):
        return dict(maximize=bool(group["maximize"]), proximal=not group["no_prox"], clips=group["max_grad_norm"] > 0)

    @staticmethod
    def coefficients(math, numbers):
        beta1, beta2, beta3 = numbers["betas"]
        lr, weight_decay = numbers["lr"], numbers["weight_decay"]
        # Read before a group's first step too (initial state, checkpoint checks): as if at step 1.
        t = math.where(numbers["step"] > 0, numbers["step"], 1.0)
        return dict(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            beta3=beta3,
            one_minus_beta1=1 - beta1,
            one_minus_beta2=1 - beta2,
            one_minus_beta3=1 - beta3,
            eps=numbers["eps"],
            max_grad_norm=numbers["max_grad_norm"],
            # the step's global clip, from step_scalars; 1 outside a step
            clip=numbers.get("clip", 1.0),
            decay_factor=1 - lr * weight_decay,
            proximal_divisor=1 + lr * weight_decay,
            step_size=lr / (1.0 - beta1**t),
            step_size_diff=lr * beta2 / (1.0 - beta2**t),
            bias_correction3_sqrt=math.sqrt(1.0 - beta3**t),
        )

    @staticmethod
    def advance_group(math, numbers):
        return {"step": numbers["step"] + 1}

    @staticmethod
    def initial_state(ops, param, h):
        return {key: ops.zeros_like(param) for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff")}

    @staticmethod
    def update(ops, param, grad, state, h):
        if h.maximize:
            grad = -grad
        grad = grad * h.clip
        # At a parameter's first step the difference is exactly zero (NaN for an infinite gradient).
        previous = lazy_entry(ops, state, "neg_pre_grad", h, lambda: -grad, lambda held: held)
        difference = previous + grad
        exp_avg = ops.add(state["exp_avg"] * h.beta1, grad, alpha=h.one_minus_beta1)
        exp_avg_diff = ops.add(state["exp_avg_diff"] * h.beta2, difference, alpha=h.one_minus_beta2)
        nesterov = difference * h.beta2 + grad
        exp_avg_sq = ops.addcmul(state["exp_avg_sq"] * h.beta3, nesterov, nesterov, value=h.one_minus_beta3)
        denom = ops.sqrt(exp_avg_sq) / h.bias_correction3_sqrt + h.eps
        if not h.proximal:
            param = param * h.decay_factor
        param = ops.addcdiv(param, exp_avg, denom, value=-h.step_size)
        param = ops.addcdiv(param, exp_avg_diff, denom, value=-h.step_size_diff)
        if h.proximal:
            param = param / h.proximal_divisor
        new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "exp_avg_diff": exp_avg_diff}
        return param, {**new_state, "neg_pre_grad": 0.0 - grad}
