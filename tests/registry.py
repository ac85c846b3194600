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


REGISTRY = {entry.name: entry for entry in [Entry("SGD", sgd_hyperparameters())]}
