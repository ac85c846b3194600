"""Terms many update rules share, written once: the gradient's direction and weight decay."""

from __future__ import annotations

from typing import Any


def decay_switches(group: dict[str, Any], decoupled: bool = False) -> dict[str, Any]:
    """The branches of :func:`direction` and :func:`decoupled_decay` for ``group``."""
    decays = group["weight_decay"] != 0
    return dict(maximize=bool(group["maximize"]), l2=decays and not decoupled, decoupled_decay=decays and decoupled)


def decay_coefficients(numbers: dict[str, Any]) -> dict[str, Any]:
    """The scalars of :func:`direction` and :func:`decoupled_decay`."""
    lr, weight_decay = numbers["lr"], numbers["weight_decay"]
    return dict(lr=lr, weight_decay=weight_decay, decay_factor=1 - lr * weight_decay)


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


def count_step(math, h, counters):
    """For rules that count steps (torch.optim's state has ``step``) without using the count."""
    return {}, {"step": counters["step"] + 1}
