"""The optimizers under property test: one entry each, with a strategy of valid hyperparameters.

A new algorithm joins every property (backend agreement, torch.optim parity,
maximize, checkpoints, grouping, missing gradients) by adding one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

import optimizers
from tests.strategies import small_floats


@dataclass(frozen=True)
class Entry:
    name: str
    hyperparameters: st.SearchStrategy[dict]
    tensor_lr: bool = True  # torch.optim accepts a one-element tensor lr

    @property
    def ours(self) -> type:
        return getattr(optimizers, self.name)

    @property
    def reference(self) -> type:
        return getattr(torch.optim, self.name)

    def __repr__(self) -> str:
        return self.name


def optional(strategy: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    """Zero (which switches a term off) or a value from ``strategy``."""
    return st.one_of(st.just(0.0), strategy)


@st.composite
def sgd_hyperparameters(draw) -> dict:
    momentum = draw(optional(small_floats(0.0, 0.99)))
    nesterov = momentum > 0 and draw(st.booleans())
    return dict(
        lr=draw(small_floats(0.0, 1.0)),
        momentum=momentum,
        dampening=0.0 if nesterov else draw(optional(small_floats(0.0, 1.0))),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        nesterov=nesterov,
        maximize=draw(st.booleans()),
    )


# eps stays positive: with eps = 0 a zero gradient makes 0/0, a NaN whose propagation
# differs between frameworks and says nothing about agreement.
EPS = small_floats(1e-10, 1e-3)
BETA1, BETA2 = small_floats(0.0, 0.99), small_floats(0.0, 0.9999)


@st.composite
def adam_hyperparameters(draw, decoupled_option: bool = True) -> dict:
    kwargs = dict(
        lr=draw(small_floats(0.0, 0.1)),
        betas=(draw(BETA1), draw(BETA2)),
        eps=draw(EPS),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        amsgrad=draw(st.booleans()),
        maximize=draw(st.booleans()),
    )
    if decoupled_option:
        kwargs["decoupled_weight_decay"] = draw(st.booleans())
    return kwargs


@st.composite
def adamax_hyperparameters(draw) -> dict:
    return dict(
        lr=draw(small_floats(0.0, 0.1)),
        betas=(draw(BETA1), draw(BETA2)),
        eps=draw(EPS),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        maximize=draw(st.booleans()),
    )


@st.composite
def nadam_hyperparameters(draw) -> dict:
    return dict(
        draw(adamax_hyperparameters()),
        momentum_decay=draw(optional(small_floats(0.0, 0.01))),
        decoupled_weight_decay=draw(st.booleans()),
    )


@st.composite
def radam_hyperparameters(draw) -> dict:
    return dict(draw(adamax_hyperparameters()), decoupled_weight_decay=draw(st.booleans()))


@st.composite
def adagrad_hyperparameters(draw) -> dict:
    return dict(
        lr=draw(small_floats(0.0, 0.5)),
        lr_decay=draw(optional(small_floats(0.0, 0.1))),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        initial_accumulator_value=draw(optional(small_floats(0.0, 1.0))),
        eps=draw(EPS),
        maximize=draw(st.booleans()),
    )


@st.composite
def rmsprop_hyperparameters(draw) -> dict:
    centered = draw(st.booleans())
    # Centered, v - mean(g)^2 is a variance that rounding can push below zero when it is
    # nearly zero; alpha >= 0.5 keeps it clear of zero after the first steps (with alpha = 0
    # it is exactly g^2 - g^2), where NaN-from-sqrt would compare frameworks' rounding only.
    return dict(
        lr=draw(small_floats(0.0, 0.1)),
        alpha=draw(small_floats(0.5 if centered else 0.0, 0.999)),
        eps=draw(EPS),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        momentum=draw(optional(small_floats(0.0, 0.99))),
        centered=centered,
        maximize=draw(st.booleans()),
    )


@st.composite
def adadelta_hyperparameters(draw) -> dict:
    return dict(
        lr=draw(small_floats(0.0, 1.0)),
        rho=draw(small_floats(0.0, 1.0)),
        eps=draw(EPS),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        maximize=draw(st.booleans()),
    )


REGISTRY = {
    entry.name: entry
    for entry in [
        Entry("SGD", sgd_hyperparameters()),
        Entry("Adam", adam_hyperparameters()),
        Entry("AdamW", adam_hyperparameters(decoupled_option=False)),
        Entry("Adamax", adamax_hyperparameters()),
        Entry("NAdam", nadam_hyperparameters()),
        Entry("RAdam", radam_hyperparameters()),
        Entry("Adagrad", adagrad_hyperparameters()),
        Entry("RMSprop", rmsprop_hyperparameters()),
        Entry("Adadelta", adadelta_hyperparameters()),
    ]
}
