"""Resilient backpropagation: a per-element step size steered by the gradient's sign alone."""

from __future__ import annotations

from typing import Any

from .optimizer import Optimizer, signature_arguments
from .terms import count_step
from .validation import check_array_lr, check_nonnegative

__all__ = ["Rprop"]


class Rprop(Optimizer):
    r"""Rprop (Riedmiller & Braun), in torch.optim.Rprop's form (no weight backtracking).

    .. math::
        s_t &= \operatorname{sign}(g_t\, g_{t-1}), \qquad
        \Delta_t = \operatorname{clip}\bigl(\Delta_{t-1} \cdot
            \{\eta_+ \text{ if } s_t > 0;\ \eta_- \text{ if } s_t < 0;\ 1 \text{ if } s_t = 0\},
            \ \Delta_{\min}, \Delta_{\max}\bigr) \\
        g_t &\leftarrow 0 \text{ where } s_t < 0, \qquad
        \theta_t = \theta_{t-1} - \operatorname{sign}(g_t)\,\Delta_t

    with etas :math:`(\eta_-, \eta_+)`, step_sizes :math:`(\Delta_{\min}, \Delta_{\max})`
    and :math:`\Delta_0` = lr.  A gradient whose sign flipped is zeroed and
    remembered as zero, so the next step neither moves that element nor shrinks
    its step again.

    State: ``step``, ``prev`` (the remembered gradient :math:`g_{t-1}`) and
    ``step_size`` (:math:`\Delta`).  Only signs matter: a gradient an ulp either
    side of zero gives a whole step of difference, so two frameworks computing
    the same gradient differently can part ways here.
    """

    counters = {"step": 0.0}
    sparse_gradients_error = "Rprop does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        check_array_lr(lr)
        check_nonnegative(lr, "learning rate")
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(f"Invalid eta values: {etas[0]}, {etas[1]}")
        super().__init__(**signature_arguments(Rprop.__init__, locals()))

    @staticmethod
    def switches(group):
        return dict(maximize=bool(group["maximize"]))

    @staticmethod
    def coefficients(math, numbers):
        (shrink, grow), (smallest, largest) = numbers["etas"], numbers["step_sizes"]
        return dict(lr=numbers["lr"], shrink=shrink, grow=grow, smallest=smallest, largest=largest)

    schedule = staticmethod(count_step)

    @staticmethod
    def initial_state(ops, param, h):
        return {"prev": ops.zeros_like(param), "step_size": ops.full_like(param, h.lr)}

    @staticmethod
    def update(ops, param, grad, state, h):
        if h.maximize:
            grad = -grad
        agreement = ops.sign(grad * state["prev"])  # 0 for NaN, as torch's sign
        # The innermost branch is an array so that torch keeps the parameter's dtype: a where
        # between two Python floats would be float32.
        unchanged = ops.full_like(agreement, 1.0)
        factor = ops.where(agreement > 0, h.grow, ops.where(agreement < 0, h.shrink, unchanged))
        step_size = ops.clamp(state["step_size"] * factor, h.smallest, h.largest)
        grad = ops.where(agreement < 0, 0.0, grad)
        return ops.addcmul(param, ops.sign(grad), step_size, value=-1), {"prev": grad, "step_size": step_size}
