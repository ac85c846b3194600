"""LARS: SGD whose step is scaled per tensor by a trust ratio, for large-batch training (timm's Lars)."""

from __future__ import annotations

from typing import Any

from .optimizer import Optimizer, signature_arguments
from .terms import momentum_step, trust_ratio
from .validation import check_fused, check_sgd_options

__all__ = ["Lars"]


class Lars(Optimizer):
    r"""LARS (You et al., 2017) with LARC's clipping, as ``timm.optim.Lars`` computes it.

    .. math::
        r_t &= \frac{\tau\,\lVert\theta_{t-1}\rVert}
            {\lVert g_t\rVert + \lambda\lVert\theta_{t-1}\rVert + \epsilon}
            \ (1 \text{ if either norm is } 0;\ \min(r_t/\eta, 1) \text{ with trust_clip}), \qquad
        \hat g_t = r_t\,(g_t + \lambda\theta_{t-1}) \\
        b_t &= \mu b_{t-1} + (1-\delta)\hat g_t \ (b_1 = \hat g_1), \qquad
        \theta_t = \theta_{t-1} - \eta\,(\hat g_t + \mu b_t \text{ (nesterov) or } b_t)

    (:math:`\tau` = trust_coeff, :math:`\mu` = momentum, :math:`\delta` = dampening.)  The trust
    ratio and the decay apply where :math:`\lambda \ne 0` or ``always_adapt``; otherwise this
    is torch.optim's SGD.  State: ``momentum_buffer`` (:math:`b`), where :math:`\mu \ne 0`.

    Where definitions differ:

    * ``optax.lars`` scales :math:`g + \lambda\theta` by
      :math:`\tau\lVert\theta\rVert / (\lVert g + \lambda\theta\rVert + \epsilon)`, the norm of
      the decayed gradient, on every leaf its mask selects (its default ``eps`` is 0).  With
      :math:`\lambda = 0` and ``eps=0`` it is this rule bit for bit, with or without momentum;
      with decay the two ratios differ (measured in the README).  Other references (the
      paper's, LARC's) exclude 1-D parameters (biases, norms) from the ratio and the decay:
      here, as in timm, put them in a group with ``weight_decay=0`` and ``always_adapt=False``.
    """

    sparse_gradients_error = "Lars does not support sparse gradients"
    complex_parameters_error = "Lars does not support complex parameters"

    def __init__(
        self,
        params: Any,
        lr: Any = 1.0,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        trust_coeff: float = 0.001,
        eps: float = 1e-8,
        trust_clip: bool = False,
        always_adapt: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        *,
        maximize: bool = False,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
        bucket_view: bool = False,
    ) -> None:
        check_sgd_options(lr, momentum, dampening, weight_decay, nesterov)
        check_fused(fused, foreach, False)
        super().__init__(**signature_arguments(Lars.__init__, locals()))

    @staticmethod
    def switches(group):
        return dict(
            maximize=bool(group["maximize"]),
            adapts=group["weight_decay"] != 0 or bool(group["always_adapt"]),
            trust_clip=bool(group["trust_clip"]),
            has_momentum=group["momentum"] != 0,
            nesterov=bool(group["nesterov"]),
        )

    @staticmethod
    def coefficients(math, numbers):
        return dict(
            lr=numbers["lr"],
            weight_decay=numbers["weight_decay"],
            trust_coeff=numbers["trust_coeff"],
            eps=numbers["eps"],
            momentum=numbers["momentum"],
            undamped=1.0 - numbers["dampening"],
        )

    @staticmethod
    def update(ops, param, grad, state, h):
        if h.maximize:
            grad = -grad
        if h.adapts:
            weight_norm, grad_norm = ops.norm(param), ops.norm(grad)
            ratio = h.trust_coeff * weight_norm / (grad_norm + weight_norm * h.weight_decay + h.eps)
            ratio = trust_ratio(ops, weight_norm, grad_norm, ratio)
            if h.trust_clip:
                ratio = ops.clamp(ratio / h.lr, high=1.0)
            grad = ops.add(grad, param, alpha=h.weight_decay) * ratio
        return momentum_step(ops, param, grad, state, h)
