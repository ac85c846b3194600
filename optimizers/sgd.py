"""Stochastic gradient descent, with momentum, dampening and Nesterov momentum."""

from __future__ import annotations

from typing import Any

from .optimizer import Optimizer, check_array_lr, check_fused
from .terms import decay_coefficients, decay_switches, direction

__all__ = ["SGD"]


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with momentum: torch.optim.SGD on either backend.

    The notebook's two rules.  Plain SGD steps against the gradient of the
    mini-batch loss:

    .. math:: w_{t+1} = w_t - \eta \cdot \nabla L

    Momentum makes the weights move like a heavy ball rolling downhill, so a
    noisy mini-batch gradient hardly turns it; ``gamma`` weighs the previous
    updates against the new gradient:

    .. math::
        v_t = \gamma v_{t-1} + \nabla L, \qquad w_{t+1} = w_t - \eta v_t

    In full, with torch.optim's options (lr :math:`\eta`, momentum :math:`\mu`,
    dampening :math:`\tau`, weight_decay :math:`\lambda`):

    .. math::
        g_t &= \pm\nabla L(w_{t-1}) + \lambda w_{t-1}  \qquad (- \text{ with maximize}) \\
        b_1 &= g_1, \qquad b_t = \mu b_{t-1} + (1 - \tau) g_t \\
        w_t &= w_{t-1} - \eta \, (g_t + \mu b_t) \ \text{(nesterov)} \quad\text{or}\quad w_{t-1} - \eta \, b_t

    State: ``momentum_buffer`` (:math:`b_t`), created at a parameter's first
    step with a gradient, only when momentum is non-zero.

    Where other definitions differ:

    * The first buffer is the gradient itself, not zeros, so dampening starts at
      the second step; optax's ``trace`` starts from zeros and has no dampening.
    * The learning rate multiplies the buffer, not the gradient entering it
      (Sutskever et al. and some frameworks use :math:`v_t = \mu v_{t-1} + \eta g_t`);
      the two agree for a constant lr and differ under a schedule.
    * Nesterov is :math:`g_t + \mu b_t`, torch's form.
    * ``foreach``, ``fused`` and ``differentiable`` are accepted and validated as in
      torch.optim; the step itself is always this rule, run by the backend.

    Args:
        params: tensors, ``named_parameters()``, or param-group dicts (torch); a
            pytree of arrays or a list of param-group dicts with pytrees (JAX).
        lr: learning rate :math:`\eta` (a float, or a one-element array).
        momentum: :math:`\mu`. dampening: :math:`\tau`. weight_decay: :math:`\lambda` (L2 penalty).
        nesterov: use Nesterov momentum (needs momentum > 0 and zero dampening).
        maximize: maximize the objective instead of minimizing it.
        backend: ``"torch"`` or ``"jax"``; inferred from ``params`` when None.
    """

    complex_as_real = False  # linear in the gradient: torch.optim.SGD steps complex tensors directly

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: Any = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
    ) -> None:
        check_array_lr(lr)
        if lr < 0.0:  # not `0 <= lr`: torch's SGD accepts a NaN learning rate
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        check_fused(fused, foreach, differentiable)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
        super().__init__(params, defaults, backend=backend)

    @staticmethod
    def switches(group: dict[str, Any]) -> dict[str, Any]:
        return dict(decay_switches(group), nesterov=bool(group["nesterov"]), has_momentum=group["momentum"] != 0)

    @staticmethod
    def coefficients(math: Any, numbers: dict[str, Any]) -> dict[str, Any]:
        return dict(decay_coefficients(numbers), momentum=numbers["momentum"], undamped=1.0 - numbers["dampening"])

    @staticmethod
    def update(ops, param, grad, state, h):
        grad = direction(ops, param, grad, h)
        if h.has_momentum:
            buffer = state.get("momentum_buffer")
            buffer = grad if buffer is None else ops.add(buffer * h.momentum, grad, alpha=h.undamped)
            state = {**state, "momentum_buffer": buffer}
            grad = ops.add(grad, buffer, alpha=h.momentum) if h.nesterov else buffer
        return ops.add(param, grad, alpha=-h.lr), state
