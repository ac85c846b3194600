"""Terms many update rules share, written once: the gradient's direction, weight decay, trust ratios."""

from __future__ import annotations

from typing import Any

from backends import lazy_entry


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


def momentum_step(ops, param, grad, state, h):
    """torch's SGD step on ``grad``: heavy-ball momentum (the first buffer is the gradient itself),
    Nesterov's look-ahead, then ``param - lr * direction``.  State: ``momentum_buffer``."""
    if h.has_momentum:

        def continued(held):
            return ops.add(held * h.momentum, grad, alpha=h.undamped)

        buffer = lazy_entry(ops, state, "momentum_buffer", h, lambda: grad, continued)
        state = {**state, "momentum_buffer": buffer}
        grad = ops.add(grad, buffer, alpha=h.momentum) if h.nesterov else buffer
    return ops.add(param, grad, alpha=-h.lr), state


def decoupled_decay(param, h):
    """AdamW's decay: the parameter shrinks by ``1 - lr * weight_decay`` before the step."""
    return param * h.decay_factor if h.decoupled_decay else param


def count_step(math, h, counters):
    """For rules that count steps (torch.optim's state has ``step``) without using the count."""
    return {}, {"step": counters["step"] + 1}


def trust_ratio(ops, weight_norm, update_norm, ratio):
    """A layer-wise trust ratio (LARS, LAMB): ``ratio`` where both norms are positive, else 1.

    A zero weight (a fresh bias) or a zero update keeps the plain step, as timm and apex do.
    """
    return ops.where(weight_norm > 0, ops.where(update_norm > 0, ratio, 1.0), 1.0)
