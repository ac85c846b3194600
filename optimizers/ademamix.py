"""AdEMAMix: Adam with a second, slow momentum mixed into the numerator."""

from __future__ import annotations

import math as _math
from typing import Any

from .optimizer import Optimizer, signature_arguments
from .validation import check_array_lr, check_betas, check_fused, check_nonnegative

__all__ = ["AdEMAMix"]

# The reference's half-life map adds this inside the logarithm.
_HALF_LIFE_EPS = 1e-8


def _half_life(math: Any, beta: Any) -> Any:
    """The number of steps an EMA of rate ``beta`` takes to halve a contribution, minus one."""
    return _math.log(0.5) / math.log(beta + _HALF_LIFE_EPS) - 1


class AdEMAMix(Optimizer):
    r"""AdEMAMix (Pagliardini, Ablin & Grangier, 2024): the authors' reference (apple/ml-ademamix).

    .. math::
        m^{(1)}_t &= \beta_1 m^{(1)}_{t-1} + (1-\beta_1) g_t, \qquad
        m^{(2)}_t = \beta_3(t)\, m^{(2)}_{t-1} + (1-\beta_3(t))\, g_t \\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        u_t &= \frac{m^{(1)}_t / (1-\beta_1^t) + \alpha(t)\, m^{(2)}_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}
            + \lambda\theta_{t-1}, \qquad
        \theta_t = \theta_{t-1} - \eta\, u_t

    The slow momentum :math:`m^{(2)}` is not bias-corrected.  With ``alpha_warmup`` :math:`T_\alpha`,
    :math:`\alpha(t) = \alpha\, t / T_\alpha` for :math:`t < T_\alpha`; with ``beta3_warmup``
    :math:`T_\beta`, :math:`\beta_3(t)` interpolates the half-life
    :math:`f(\beta) = \ln 0.5 / \ln(\beta + 10^{-8}) - 1` linearly from :math:`\beta_1`'s to
    :math:`\beta_3`'s: :math:`\beta_3(t) = 0.5^{1/((1-t/T_\beta) f(\beta_1) + (t/T_\beta) f(\beta_3) + 1)}`.
    Steps count from 1, per parameter.  State: ``step``, ``exp_avg_fast`` (:math:`m^{(1)}`, not
    kept when :math:`\beta_1 = 0`: the gradient stands in), ``exp_avg_slow``, ``exp_avg_sq``.

    Where definitions differ (measured over 30 float64 steps in the test suite and README):

    * ``pytorch_optimizer.AdEMAMix(weight_decouple=True)`` computes the same with ``lerp`` and
      ``addcdiv`` (ulps apart) and one warmup for both schedules, without the :math:`10^{-8}` in
      the half-life (about 1e-6 apart after 30 steps with warmups); its default
      ``weight_decouple=False`` is coupled L2 decay, another algorithm.  Its alpha defaults to 5.
    * ``optax.contrib.ademamix`` evaluates schedules at a 0-based count (the reference at 1), so
      its warmups run one step behind; without warmups it is the same definition.
    * The decay is AdamW's, scaled by the learning rate: :math:`\theta - \eta\lambda\theta`.
    """

    counters = {"step": 0}
    sparse_gradients_error = "AdEMAMix does not support sparse gradients."
    unused_state_as_none = ("exp_avg_fast",)
    complex_parameters_error = "AdEMAMix does not support complex parameters"

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 2.0,
        beta3_warmup: int | None = None,
        alpha_warmup: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
        bucket_view: bool = False,
    ) -> None:
        check_array_lr(lr)
        check_nonnegative(lr, "learning rate")
        check_nonnegative(eps, "epsilon value")
        check_betas(betas)
        check_nonnegative(weight_decay, "weight_decay value")
        check_nonnegative(alpha, "alpha value")
        check_fused(fused, foreach, False)
        super().__init__(**signature_arguments(AdEMAMix.__init__, locals()))

    @staticmethod
    def switches(group):
        return dict(
            maximize=bool(group["maximize"]),
            fast=group["betas"][0] != 0.0,
            alpha_warms_up=group["alpha_warmup"] is not None,
            beta3_warms_up=group["beta3_warmup"] is not None,
        )

    @staticmethod
    def coefficients(math, numbers):
        beta1, beta2, beta3 = numbers["betas"]
        return dict(
            beta1=beta1,
            beta2=beta2,
            beta3=beta3,
            one_minus_beta1=1 - beta1,
            one_minus_beta2=1 - beta2,
            alpha=numbers["alpha"],
            alpha_warmup=numbers.get("alpha_warmup"),
            beta3_warmup=numbers.get("beta3_warmup"),
            eps=numbers["eps"],
            weight_decay=numbers["weight_decay"],
            neg_lr=-numbers["lr"],
        )

    @staticmethod
    def schedule(math, h, counters):
        step = counters["step"] + 1
        t = math.float(step)
        alpha, beta3 = h.alpha, h.beta3
        if h.alpha_warms_up:
            alpha = math.where(t < h.alpha_warmup, t / h.alpha_warmup * h.alpha, h.alpha)
        if h.beta3_warms_up:
            fraction = t / h.beta3_warmup
            half_life = (1.0 - fraction) * _half_life(math, h.beta1) + fraction * _half_life(math, h.beta3)
            beta3 = math.where(t < h.beta3_warmup, 0.5 ** (1 / (half_life + 1)), h.beta3)
        return dict(
            bias_correction1=1 - h.beta1**t,
            bias_correction2_sqrt=math.sqrt(1 - h.beta2**t),
            mixing=alpha,
            beta3_now=beta3,
            one_minus_beta3_now=1 - beta3,
        ), {"step": step}

    @staticmethod
    def initial_state(ops, param, h):
        keys = ("exp_avg_fast", "exp_avg_slow", "exp_avg_sq") if h.fast else ("exp_avg_slow", "exp_avg_sq")
        return {key: ops.zeros_like(param) for key in keys}

    @staticmethod
    def update(ops, param, grad, state, h):
        if h.maximize:
            grad = -grad
        new_state = {}
        fast = grad
        if h.fast:
            fast = new_state["exp_avg_fast"] = ops.add(state["exp_avg_fast"] * h.beta1, grad, alpha=h.one_minus_beta1)
        slow = new_state["exp_avg_slow"] = ops.add(
            state["exp_avg_slow"] * h.beta3_now, grad, alpha=h.one_minus_beta3_now
        )
        exp_avg_sq = new_state["exp_avg_sq"] = ops.addcmul(
            state["exp_avg_sq"] * h.beta2, grad, grad, value=h.one_minus_beta2
        )
        denom = ops.sqrt(exp_avg_sq) / h.bias_correction2_sqrt + h.eps
        direction = ops.add((fast / h.bias_correction1 + slow * h.mixing) / denom, param, alpha=h.weight_decay)
        return param + direction * h.neg_lr, new_state
