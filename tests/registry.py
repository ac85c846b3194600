"""The optimizers under property test: one entry each, with a strategy of valid hyperparameters.

A new algorithm joins every property (backend agreement, torch.optim parity,
maximize, checkpoints, grouping, missing gradients) by adding one entry here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

import optimizers
from tests.strategies import MAGNITUDES, SHAPES, small_floats


@dataclass(frozen=True)
class Entry:
    name: str
    hyperparameters: st.SearchStrategy[dict]
    tensor_lr: bool = True  # torch.optim accepts a one-element tensor lr
    shapes: st.SearchStrategy[tuple] = SHAPES  # the parameter shapes the algorithm takes
    # Sign-based rules (Rprop): a gradient at or near zero -- 0, or a product of two tiny
    # ones that float32 holds only as a subnormal, which XLA's CPU code flushes to zero
    # and torch keeps -- turns the comparison of two frameworks into a comparison of
    # their handling of zero.  Their problems keep gradients at ordinary magnitudes.
    magnitudes: tuple[str, ...] = tuple(MAGNITUDES)
    # Relative error allowed between frameworks, where the algorithm's own precision
    # sets it (None: the contract's ACROSS_FRAMEWORKS).
    across_frameworks: dict[str, float] | None = None

    @property
    def problem_options(self) -> dict:
        return dict(shapes=self.shapes, magnitudes=self.magnitudes)

    @property
    def has_maximize(self) -> bool:
        return "maximize" in inspect.signature(self.reference.__init__).parameters

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


@st.composite
def asgd_hyperparameters(draw) -> dict:
    return dict(
        lr=draw(small_floats(0.0, 0.1)),
        lambd=draw(optional(small_floats(0.0, 0.1))),
        alpha=draw(small_floats(0.0, 1.0)),
        # Averaging starts after t0 steps: within a generated run, or (the default) never.
        t0=draw(st.one_of(st.just(1e6), st.integers(0, 15).map(float))),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        maximize=draw(st.booleans()),
    )


@st.composite
def rprop_hyperparameters(draw) -> dict:
    smallest = draw(small_floats(1e-8, 1e-3))
    return dict(
        lr=draw(small_floats(0.0, 0.1)),
        etas=(draw(small_floats(0.1, 0.9)), draw(small_floats(1.1, 2.0))),
        step_sizes=(smallest, draw(small_floats(0.01, 50.0))),
        maximize=draw(st.booleans()),
    )


@st.composite
def adafactor_hyperparameters(draw) -> dict:
    return dict(
        lr=draw(small_floats(0.0, 0.1)),
        beta2_decay=draw(small_floats(-1.0, 0.0)),
        # eps1 = 0 would take rsqrt(0) of an all-zero gradient's estimate: inf * 0.
        eps=(draw(st.one_of(st.none(), EPS)), draw(small_floats(0.0, 1e-2))),
        d=draw(small_floats(1.0, 3.0)),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        maximize=draw(st.booleans()),
    )


@st.composite
def muon_hyperparameters(draw) -> dict:
    a, b, c = optimizers.muon.NS_COEFFICIENTS
    return dict(
        lr=draw(small_floats(0.0, 0.1)),
        weight_decay=draw(optional(small_floats(0.0, 0.2))),
        momentum=draw(small_floats(0.0, 0.99)),
        nesterov=draw(st.booleans()),
        ns_coefficients=draw(st.one_of(st.just((a, b, c)), st.just((2.0, -1.5, 0.5)), st.just((1.5, -0.5, 0.0)))),
        eps=draw(small_floats(1e-10, 1e-3)),
        # Each count unrolls into its own program; tests/test_muon.py checks every iteration.
        ns_steps=draw(st.sampled_from([0, 1, 2, 5])),
        adjust_lr_fn=draw(st.sampled_from([None, "original", "match_rms_adamw"])),
    )


# Adafactor divides by sqrt(numel): torch.optim raises ZeroDivisionError on an empty parameter.
NONEMPTY_SHAPES = SHAPES.filter(lambda shape: 0 not in shape)
# An empty matrix with rows only: torch.optim divides by the column count (ZeroDivisionError).
MATRIX_SHAPES = st.sampled_from([(1, 1), (3, 4), (5, 2), (2, 7), (0, 3)])

# Muon's Newton-Schulz iteration runs in bfloat16.  Each framework accumulates its matrix
# products in float32 and rounds once (tests/test_muon.py checks each iteration separately),
# but in its own summation order, so results differ by bfloat16 ulps, which the iteration
# amplifies: the orthogonalized update agrees to a few percent, and a parameter to
# lr * that, per step (measured in the CI profile: up to 3e-3 of the parameters' scale).
MUON_ACROSS_FRAMEWORKS = {"float64": 5e-2, "float32": 5e-2}

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
        Entry("ASGD", asgd_hyperparameters()),
        Entry("Rprop", rprop_hyperparameters(), magnitudes=("ordinary", "large")),
        Entry("Adafactor", adafactor_hyperparameters(), shapes=NONEMPTY_SHAPES),
        Entry("Muon", muon_hyperparameters(), shapes=MATRIX_SHAPES, across_frameworks=MUON_ACROSS_FRAMEWORKS),
    ]
}
