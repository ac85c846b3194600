"""Muon: momentum whose update is orthogonalized by a Newton-Schulz iteration, for 2-D parameters."""

from __future__ import annotations

from math import sqrt
from typing import Any

from .optimizer import Optimizer, signature_arguments
from .validation import check_array_lr

__all__ = ["Muon"]

#: torch.optim's defaults: the quintic iteration's coefficients, tuned for slope at zero.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
ADJUST_LR_FNS = ("original", "match_rms_adamw")


class Muon(Optimizer):
    r"""Muon (Jordan et al.), in torch.optim.Muon's form.

    .. math::
        B_t &= \mu B_{t-1} + (1-\mu) G_t, \qquad
        \tilde B_t = (1-\mu) G_t + \mu B_t \ \text{(nesterov)} \ \text{or}\ B_t \\
        X_0 &= \tilde B_t / \max(\lVert \tilde B_t \rVert_F, \epsilon), \qquad
        X_{k+1} = a X_k + (b A_k + c A_k^2) X_k, \quad A_k = X_k X_k^\top \\
        \theta_t &= \theta_{t-1}(1 - \eta\lambda) - \eta\, r(A, B)\, X_K

    :math:`X_K` (K = ns_steps, coefficients :math:`(a, b, c)`) approximates
    :math:`UV^\top` of :math:`\tilde B_t = U S V^\top`, computed in bfloat16 (the
    wide side transposed to keep :math:`A_k` small).  :math:`r(A, B)` for an
    A x B parameter is :math:`\sqrt{\max(1, A/B)}` ("original", the default) or
    :math:`0.2\sqrt{\max(A, B)}` ("match_rms_adamw", so AdamW's lr and weight
    decay carry over).

    State: ``momentum_buffer`` (:math:`B`).  Only 2-D parameters: embeddings,
    biases and norms belong with another optimizer in a second one.  The
    momentum is the "EMA" form torch uses (the original Muon adds the gradient
    undamped).  Across backends the iteration agrees to bfloat16 precision: both
    accumulate its products in float32 and round once, in their own order.

    One deliberate difference: with bfloat16 parameters and ``nesterov=False``,
    torch.optim.Muon divides its momentum buffer by its norm in place (the
    bfloat16 "copy" it orthogonalizes is the buffer itself); here the buffer
    keeps the momentum.
    """

    complex_parameters_error = "Muon does not support complex parameters"
    sparse_gradients_error = "Muon does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = None,
        *,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        check_array_lr(lr)
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 <= momentum:
            raise ValueError(f"momentum should be >= 0 but is: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight decay should be >= 0 but is: {weight_decay}")
        if adjust_lr_fn is not None and adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
        super().__init__(**signature_arguments(Muon.__init__, locals()))
        for group in self.param_groups:
            for param in group["params"]:
                shape = self._backend.value(param).shape
                if len(shape) != 2:
                    raise ValueError(
                        f"Muon only supports 2D parameters whereas we found a parameter with size: {shape}"
                    )

    def _check_step(self, stepping):
        super()._check_step(stepping)
        for group, params in stepping:
            for param in params:
                shape = tuple(self._backend.value(param).shape)
                if len(shape) != 2:  # a group added after construction
                    raise ValueError("Param gradient must be a 2D matrix")
                if shape[1] == 0 and group["adjust_lr_fn"] != "match_rms_adamw":
                    # torch.optim raises this too, from the lr adjustment rows / cols.
                    raise ZeroDivisionError(f"division by zero: Muon scales lr by rows / columns of a {shape} matrix")
                if group["ns_steps"] >= 100:
                    raise ValueError("Number of steps must be less than 100 for computational efficiency")
                if len(group["ns_coefficients"]) != 3:
                    raise ValueError("Coefficients must be a tuple of exactly 3 values")

    @staticmethod
    def switches(group):
        # ns_steps is a loop count: it shapes the compiled program rather than feeding it.
        return dict(
            nesterov=bool(group["nesterov"]), ns_steps=int(group["ns_steps"]), adjust_lr_fn=group["adjust_lr_fn"]
        )

    @staticmethod
    def coefficients(math, numbers):
        lr, momentum = numbers["lr"], numbers["momentum"]
        return dict(
            lr=lr,
            momentum=momentum,
            one_minus_momentum=1 - momentum,
            decay_factor=1 - lr * numbers["weight_decay"],
            ns_coefficients=numbers["ns_coefficients"],
            eps=numbers["eps"],
        )

    @staticmethod
    def initial_state(ops, param, h):
        return {"momentum_buffer": ops.zeros_like(param)}

    @staticmethod
    def update(ops, param, grad, state, h):
        buffer = ops.lerp(state["momentum_buffer"], grad, h.one_minus_momentum)
        direction = ops.lerp(grad, buffer, h.momentum) if h.nesterov else buffer
        orthogonal = orthogonalize(ops, direction, h.ns_coefficients, h.ns_steps, h.eps)
        rows, cols = param.shape
        if h.adjust_lr_fn == "match_rms_adamw":
            ratio = 0.2 * sqrt(max(rows, cols))
        else:
            ratio = sqrt(max(1, rows / cols))
        return ops.add(param * h.decay_factor, orthogonal, alpha=-(h.lr * ratio)), {"momentum_buffer": buffer}


def orthogonalize(ops, matrix, coefficients, steps: int, eps):
    """The Newton-Schulz iteration :math:`X \\leftarrow aX + (bA + cA^2)X`, in bfloat16."""
    a, b, c = coefficients
    x = ops.bfloat16(matrix)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / ops.clamp(ops.norm(x), eps)
    for _ in range(steps):
        gram = ops.matmul(x, x.T)
        x = ops.addmm(x, ops.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x
