"""Terms many update rules share, written once: the gradient's direction and weight decay."""

from __future__ import annotations

from typing import Any

from .optimizer import scalar


def decay_scalars(group: dict[str, Any], decoupled: bool = False) -> dict[str, Any]:
    """The host-side scalars of :func:`direction` and :func:`decoupled_decay` for ``group``."""
    weight_decay, lr = float(group["weight_decay"]), scalar(group["lr"])
    return dict(
        maximize=bool(group["maximize"]),
        l2=weight_decay != 0 and not decoupled,
        decoupled_decay=weight_decay != 0 and decoupled,
        weight_decay=weight_decay,
        decay_factor=1 - lr * weight_decay,
        lr=lr,
    )


def direction(ops, param, grad, h):
    """The gradient to follow: negated to maximize, plus torch's L2 ``weight_decay * param``."""
    if h.maximize:
        grad = -grad
    if h.l2:
        grad = ops.add(grad, param, alpha=h.weight_decay)
    return grad


def decoupled_decay(param, h):
    """AdamW's decay: the parameter shrinks by ``1 - lr * weight_decay`` before the step."""
    return param * h.decay_factor if h.decoupled_decay else param
