"""Every algorithm the tests know, with the facts the tests need about it: one entry each.

An entry holds a strategy of valid hyperparameters (for the property tests), one example
setting (for the tests that train a model or compare a single run), and what the algorithm
supports: the gradient layouts its step takes, whether it needs a closure or takes several
param groups, fused kernels, maximize, weight decay, complex parameters, ``state_dtype``, and
the optax transformations it can be compared with.  Tests choose the entries a property
applies to by these capabilities, so a new algorithm joins every property that applies to
it -- backend agreement, torch.optim parity, maximize, checkpoints, grouping, missing
gradients, complex parameters, fused and planned steps, drop-in use, bad input -- by adding
one entry here.  ``tests/test_torch_contract.py`` checks the option flags against the
signatures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lion_pytorch
import prodigyopt
import pytorch_optimizer
import schedulefree
import torch
from hypothesis import strategies as st

import optimizers
from tests.references.adan_official import Adan as OfficialAdan
from tests.references.ademamix_apple import AdEMAMix as AppleAdEMAMix
from tests.references.timm_optim.lamb import Lamb as TimmLamb
from tests.references.timm_optim.lars import Lars as TimmLars
from tests.strategies import MAGNITUDES, SHAPES, small_floats


@dataclass(frozen=True)
class OptaxCounterpart:
    """An optax transformation to compare the algorithm with, through ``optimizers.as_optax``."""

    options: dict  # our optimizer's
    transformation: str  # the optax function's name, e.g. "adam"
    arguments: dict  # what that function is given
    # Whether the two define the same algorithm (then they agree to rounding); where not, the
    # adapter must still compute torch's rule, away from optax's.
    same: bool


def same_in_optax(options: dict, transformation: str, **arguments) -> OptaxCounterpart:
    return OptaxCounterpart(options, transformation, arguments, same=True)


def unlike_optax(options: dict, transformation: str, **arguments) -> OptaxCounterpart:
    return OptaxCounterpart(options, transformation, arguments, same=False)


@dataclass(frozen=True)
class Entry:
    name: str
    # Valid hyperparameters; each option of torch.optim's signature leaves its default in some case.
    hyperparameters: st.SearchStrategy[dict]
    # One valid setting away from the defaults, so that an example run takes the branches of the
    # rule (nesterov, amsgrad, centered, decoupled decay, an initial accumulator, a line search).
    options: dict
    # Changes to ``options`` for bfloat16 and float16 parameters.
    low_precision_options: dict = field(default_factory=dict)

    # -- what it takes -----------------------------------------------------------------------------
    # The gradient layouts accepted: "dense", "sparse" (torch sparse COO, JAX BCOO), or both.
    gradients: tuple[str, ...] = ("dense",)
    # step() needs a closure, which it evaluates many times (LBFGS): the properties that feed
    # one given gradient per step do not apply.
    closure_required: bool = False
    param_groups: bool = True  # takes several param groups (torch.optim's LBFGS takes one)
    matrices_only: bool = False  # takes 2-D parameters only (Muon)
    # Complex parameters step as torch.optim steps them; where not, torch.optim refuses them.
    complex: bool = True
    # The rule is elementwise per parameter, so the torch backend runs it as a plan
    # (tests/test_plan.py); norms, matrix products, gathers and dot products over all
    # parameters are not.
    elementwise: bool = True

    # -- its options: the first three as in torch.optim's signature --------------------------------
    fused: bool = False
    maximize: bool = True
    weight_decay: bool = True
    # Ours, float32 state for low-precision parameters (LBFGS keeps no per-parameter state).
    state_dtype: bool = True

    # -- comparing it with torch.optim and optax ---------------------------------------------------
    # torch.optim's deep copies and unpickled copies can step (its LBFGS keeps its parameter
    # list, ``_params``, outside what it copies: its copies raise AttributeError).
    reference_copies_step: bool = True
    # torch.optim adds L2 weight decay to a complex gradient before viewing it as real pairs (a
    # complex multiply-add, rounded twice); we view first (rounded once), as its NAdam and RAdam
    # do.  The difference is an ulp of the decayed gradient.
    decay_before_real_view: bool = False
    # Relative error allowed between frameworks, where the algorithm's own precision
    # sets it (None: the contract's ACROSS_FRAMEWORKS).
    across_frameworks: dict[str, float] | None = None
    optax: tuple[OptaxCounterpart, ...] = ()
    # The reference beyond torch.optim (None: torch.optim's class of the same name), and the
    # options of its signature that are never generated (a CUDA kernel switch, a flag we refuse).
    reference_class: type | None = None
    fixed_options: tuple[str, ...] = ()

    # -- the problems the properties generate ------------------------------------------------------
    tensor_lr: bool = True  # torch.optim accepts a one-element tensor lr
    # The parameter shapes the algorithm takes (None: SHAPES, or MATRIX_SHAPES if matrices only).
    shapes: st.SearchStrategy[tuple] | None = None
    # Sign-based rules (Rprop): a gradient at or near zero -- 0, or a product of two tiny
    # ones that float32 holds only as a subnormal, which XLA's CPU code flushes to zero
    # and torch keeps -- turns the comparison of two frameworks into a comparison of
    # their handling of zero.  Their problems keep gradients at ordinary magnitudes.
    magnitudes: tuple[str, ...] = tuple(MAGNITUDES)
    # Parameters per generated problem.  A rule that sees one parameter at a time needs two to
    # show groups, missing gradients and independence; SOAP's each add eigendecompositions to
    # every compiled program (CI time).
    max_params: int = 4

    @property
    def problem_options(self) -> dict:
        if self.shapes is not None:
            shapes = self.shapes
        else:
            shapes = MATRIX_SHAPES if self.matrices_only else SHAPES
        return dict(shapes=shapes, magnitudes=self.magnitudes, max_params=self.max_params)

    @property
    def steps_on_given_gradients(self) -> bool:
        """Whether ``step()`` takes one dense gradient per parameter, as the generated problems give."""
        return "dense" in self.gradients and not self.closure_required

    @property
    def ours(self) -> type:
        return getattr(optimizers, self.name)

    @property
    def reference(self) -> type:
        return self.reference_class or getattr(torch.optim, self.name)

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


@st.composite
def sparse_adam_hyperparameters(draw) -> dict:
    # lr stays positive: torch.optim.SparseAdam refuses 0.
    return dict(
        lr=draw(small_floats(1e-4, 0.1)), betas=(draw(BETA1), draw(BETA2)), eps=draw(EPS), maximize=draw(st.booleans())
    )


@st.composite
def lbfgs_hyperparameters(draw) -> dict:
    kwargs = dict(
        lr=draw(st.sampled_from([1.0, 0.5, 0.1])),
        max_iter=draw(st.integers(1, 12)),
        tolerance_grad=draw(st.sampled_from([1e-7, 1e-5])),
        tolerance_change=draw(st.sampled_from([1e-9, 1e-6])),
        history_size=draw(st.integers(1, 8)),
        line_search_fn=draw(st.sampled_from([None, "strong_wolfe"])),
    )
    if draw(st.booleans()):
        kwargs["max_eval"] = draw(st.integers(1, 20))
    return kwargs


# Adafactor divides by sqrt(numel): torch.optim raises ZeroDivisionError on an empty parameter.
NONEMPTY_SHAPES = st.sampled_from([shape for shape in SHAPES if 0 not in shape])
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
        Entry(
            "SGD",
            sgd_hyperparameters(),
            dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
            gradients=("dense", "sparse"),
            fused=True,
            optax=(
                same_in_optax(
                    dict(lr=0.05, momentum=0.9, nesterov=True), "sgd", learning_rate=0.05, momentum=0.9, nesterov=True
                ),
            ),
        ),
        Entry(
            "Adam",
            adam_hyperparameters(),
            dict(lr=0.01, amsgrad=True, weight_decay=0.01),
            fused=True,
            decay_before_real_view=True,
            optax=(
                same_in_optax(
                    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6), "adam", learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-6
                ),
            ),
        ),
        Entry(
            "AdamW",
            adam_hyperparameters(decoupled_option=False),
            dict(lr=0.01),
            fused=True,
            decay_before_real_view=True,
            optax=(same_in_optax(dict(lr=0.01, weight_decay=0.1), "adamw", learning_rate=0.01, weight_decay=0.1),),
        ),
        Entry("Adamax", adamax_hyperparameters(), dict(lr=0.01), decay_before_real_view=True),
        Entry(
            "NAdam",
            nadam_hyperparameters(),
            dict(lr=0.01, decoupled_weight_decay=True, weight_decay=0.01),
            # optax's NAdam keeps beta1 constant; torch's follows its momentum schedule.
            optax=(unlike_optax(dict(lr=0.01), "nadam", learning_rate=0.01),),
        ),
        Entry("RAdam", radam_hyperparameters(), dict(lr=0.01)),
        Entry(
            "Adagrad",
            adagrad_hyperparameters(),
            dict(lr=0.05, lr_decay=0.01, initial_accumulator_value=0.1),
            gradients=("dense", "sparse"),
            fused=True,
            decay_before_real_view=True,
            # optax adds eps inside the square root and starts the accumulator at 0.1.
            optax=(unlike_optax(dict(lr=0.1), "adagrad", learning_rate=0.1),),
        ),
        Entry(
            "RMSprop",
            rmsprop_hyperparameters(),
            dict(lr=0.01, momentum=0.5, centered=True),
            decay_before_real_view=True,
            optax=(
                same_in_optax(
                    dict(lr=0.01, alpha=0.9), "rmsprop", learning_rate=0.01, decay=0.9, eps=1e-8, eps_in_sqrt=False
                ),
                # By default optax adds eps inside the square root, torch after it.
                unlike_optax(dict(lr=0.01, alpha=0.9, eps=1e-2), "rmsprop", learning_rate=0.01, decay=0.9, eps=1e-2),
            ),
        ),
        Entry("Adadelta", adadelta_hyperparameters(), dict(lr=0.5), decay_before_real_view=True),
        Entry("ASGD", asgd_hyperparameters(), dict(lr=0.05, t0=2, lambd=0.01, weight_decay=0.01)),
        Entry(
            "Rprop",
            rprop_hyperparameters(),
            dict(lr=0.01, etas=(0.4, 1.3), step_sizes=(1e-5, 1.0)),
            weight_decay=False,
            magnitudes=("ordinary", "large"),
        ),
        Entry(
            "Adafactor",
            adafactor_hyperparameters(),
            dict(lr=0.05, weight_decay=0.01, eps=(1e-20, 1e-3)),
            # The default eps1, the dtype's machine epsilon: 1e-20 is 0 in float16.
            low_precision_options=dict(eps=(None, 1e-3)),
            complex=False,
            elementwise=False,
            shapes=NONEMPTY_SHAPES,
        ),
        Entry(
            "Muon",
            muon_hyperparameters(),
            dict(lr=0.02, nesterov=False, adjust_lr_fn="match_rms_adamw"),
            # torch.optim.Muon without Nesterov orthogonalizes a bfloat16 momentum buffer in place
            # (its .bfloat16() copy is the buffer itself), so its buffer ends up normalized; with
            # Nesterov the update is a fresh tensor and both libraries agree.
            low_precision_options=dict(nesterov=True),
            matrices_only=True,
            complex=False,
            elementwise=False,
            maximize=False,
            across_frameworks=MUON_ACROSS_FRAMEWORKS,
        ),
        Entry(
            "SparseAdam",
            sparse_adam_hyperparameters(),
            dict(lr=0.01, betas=(0.8, 0.99), maximize=True),
            # Its constructor refuses complex parameters, as torch.optim's does (a ValueError).
            gradients=("sparse",),
            complex=False,
            elementwise=False,
            weight_decay=False,
        ),
        Entry(
            "LBFGS",
            lbfgs_hyperparameters(),
            dict(lr=0.5, max_iter=5, history_size=3, line_search_fn="strong_wolfe"),
            # Sparse gradients enter its flat gradient as their dense form, as in torch.optim.
            gradients=("dense", "sparse"),
            closure_required=True,
            param_groups=False,
            elementwise=False,
            maximize=False,
            weight_decay=False,
            state_dtype=False,
            reference_copies_step=False,
        ),
    ]
}


# -- beyond torch.optim: each against the torch reference its issue names --------------------------


@st.composite
def lion_hyperparameters(draw) -> dict:
    return dict(
        lr=draw(small_floats(1e-5, 0.1)),
        betas=(draw(small_floats(0.0, 0.99)), draw(small_floats(0.0, 0.999))),
        weight_decay=draw(optional(small_floats(0.0, 1.0))),
        decoupled_weight_decay=draw(st.booleans()),
    )


@st.composite
def ademamix_hyperparameters(draw) -> dict:
    return dict(
        lr=draw(small_floats(0.0, 0.1)),
        betas=(draw(small_floats(0.0, 0.99)), draw(small_floats(0.0, 0.999)), draw(small_floats(0.0, 0.9999))),
        alpha=draw(small_floats(0.0, 10.0)),
        beta3_warmup=draw(st.one_of(st.none(), st.integers(1, 30))),
        alpha_warmup=draw(st.one_of(st.none(), st.integers(1, 30))),
        eps=draw(EPS),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
    )


@st.composite
def adan_hyperparameters(draw) -> dict:
    return dict(
        lr=draw(small_floats(0.0, 0.1)),
        betas=tuple(draw(small_floats(0.0, 0.99)) for _ in range(3)),
        eps=draw(EPS),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        max_grad_norm=draw(optional(small_floats(0.1, 10.0))),
        no_prox=draw(st.booleans()),
    )


@st.composite
def schedule_free_hyperparameters(draw, adam: bool) -> dict:
    options = dict(
        lr=draw(small_floats(0.0, 0.5)),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        warmup_steps=draw(st.one_of(st.just(0), st.integers(1, 10))),
        r=draw(optional(small_floats(0.0, 1.0))),
        weight_lr_power=draw(small_floats(0.0, 4.0)),
    )
    if adam:
        betas = (draw(small_floats(0.05, 0.99)), draw(small_floats(0.0, 0.999)))
        return dict(options, lr=options["lr"] / 10, betas=betas, eps=draw(EPS))
    return dict(options, momentum=draw(small_floats(0.05, 0.99)))


@st.composite
def lamb_hyperparameters(draw) -> dict:
    return dict(
        # positive: a corrected decay divides by the constructor's lr
        lr=draw(small_floats(1e-4, 0.1)),
        bias_correction=draw(st.booleans()),
        betas=(draw(BETA1), draw(BETA2)),
        eps=draw(EPS),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        grad_averaging=draw(st.booleans()),
        max_grad_norm=draw(st.one_of(st.none(), small_floats(0.1, 10.0))),
        trust_clip=draw(st.booleans()),
        always_adapt=draw(st.booleans()),
        caution=draw(st.booleans()),
        decoupled_decay=draw(st.booleans()),
        corrected_weight_decay=draw(st.booleans()),
    )


@st.composite
def lars_hyperparameters(draw) -> dict:
    momentum = draw(optional(small_floats(0.0, 0.99)))
    nesterov = momentum > 0 and draw(st.booleans())
    return dict(
        # positive: trust_clip divides the ratio by lr
        lr=draw(small_floats(1e-3, 1.0)),
        momentum=momentum,
        dampening=0.0 if nesterov else draw(optional(small_floats(0.0, 1.0))),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        nesterov=nesterov,
        trust_coeff=draw(small_floats(1e-4, 0.1)),
        eps=draw(EPS),
        trust_clip=draw(st.booleans()),
        always_adapt=draw(st.booleans()),
    )


@st.composite
def prodigy_hyperparameters(draw) -> dict:
    return dict(
        lr=draw(small_floats(0.1, 2.0)),
        betas=(draw(optional(BETA1)), draw(BETA2)),
        beta3=draw(st.one_of(st.none(), small_floats(0.0, 0.999))),
        eps=draw(EPS),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        decouple=draw(st.booleans()),
        use_bias_correction=draw(st.booleans()),
        safeguard_warmup=draw(st.booleans()),
        d0=draw(small_floats(1e-8, 1e-3)),
        d_coef=draw(small_floats(0.1, 2.0)),
        growth_rate=draw(st.one_of(st.just(float("inf")), small_floats(1.0, 1.5))),
        slice_p=draw(st.integers(1, 3)),
    )


@st.composite
def soap_hyperparameters(draw) -> dict:
    # The reference's merge_dims raises for a tensor that merges into one dimension (see SOAP's
    # docstring); with max_precondition_dim=1 no shape of SOAP_SHAPES does.
    merge_dims = draw(st.booleans())
    return dict(
        lr=draw(small_floats(0.0, 0.1)),
        betas=(draw(BETA1), draw(BETA2)),
        shampoo_beta=draw(st.one_of(st.none(), small_floats(0.0, 0.99))),
        weight_decay=draw(optional(small_floats(0.0, 0.1))),
        precondition_frequency=draw(st.integers(1, 4)),
        max_precondition_dim=1 if merge_dims else draw(st.sampled_from([10000, 3, 1])),
        merge_dims=merge_dims,
        precondition_1d=draw(st.booleans()),
        correct_bias=draw(st.booleans()),
        normalize_gradient=draw(st.booleans()),
        data_format=draw(st.sampled_from(["channels_first", "channels_last"])),
        eps=draw(EPS),
        maximize=draw(st.booleans()),
    )


# SOAP's bases are eigenvectors, which LAPACK builds choose differently within a repeated
# eigenvalue's eigenspace, and the update depends on that choice (see SOAP's docstring).  A
# statistic starts from one gradient, so a dimension of size d has d - rank zero eigenvalues:
# these shapes keep it to one (a 1-D statistic, from precondition_1d, has rank 1: size 2 at most).
# (0,) is left out: merged, it is one of the reference's crashing tensors.
SOAP_SHAPES = st.sampled_from([(), (1,), (2,), (3, 4), (4, 3), (2, 1, 3), (4, 0)])

# Their own files: tests/test_beyond_torch_optim.py (and, for these, REGISTRY's properties through
# tests/test_properties.py).  Each takes real, dense parameters; none takes a tensor lr in its
# reference's every path.
BEYOND_TORCH_OPTIM = {
    entry.name: entry
    for entry in [
        Entry(
            "Lion",
            lion_hyperparameters(),
            dict(lr=1e-2, weight_decay=0.1),
            complex=False,
            fused=True,
            tensor_lr=False,
            magnitudes=("ordinary", "large"),  # a sign of a momentum: its zeros differ between frameworks
            reference_class=lion_pytorch.Lion,
            fixed_options=("use_triton",),
        ),
        Entry(
            "AdEMAMix",
            ademamix_hyperparameters(),
            dict(lr=1e-2, alpha_warmup=5, beta3_warmup=5),
            complex=False,
            fused=True,
            tensor_lr=False,
            reference_class=AppleAdEMAMix,
        ),
        Entry(
            "Adan",
            adan_hyperparameters(),
            dict(lr=1e-2, max_grad_norm=1.0, weight_decay=0.02),
            complex=False,
            fused=True,
            elementwise=False,
            tensor_lr=False,
            # The clip factor is a float32 sum of squares, summed in each framework's order.
            across_frameworks={"float64": 1e-6, "float32": 1e-5},
            reference_class=OfficialAdan,
        ),
        Entry(
            "ScheduleFreeAdamW",
            schedule_free_hyperparameters(adam=True),
            dict(lr=1e-2, warmup_steps=3, weight_decay=0.1),
            complex=False,
            fused=True,
            tensor_lr=False,
            reference_class=schedulefree.AdamWScheduleFree,
        ),
        Entry(
            "ScheduleFreeSGD",
            schedule_free_hyperparameters(adam=False),
            dict(lr=0.1, warmup_steps=3, r=0.5),
            fused=True,
            tensor_lr=False,
            reference_class=schedulefree.SGDScheduleFree,
        ),
        Entry(
            "Lamb",
            lamb_hyperparameters(),
            dict(lr=1e-2, weight_decay=0.02, caution=True),
            complex=False,
            fused=True,
            elementwise=False,
            tensor_lr=False,
            # caution keeps u where u * g > 0: for float32 gradients near 1e-20 that product is
            # subnormal, which XLA's CPU code flushes to zero and torch keeps (as Lion's signs).
            magnitudes=("ordinary", "large"),
            reference_class=TimmLamb,
        ),
        Entry(
            "Lars",
            lars_hyperparameters(),
            dict(lr=0.5, momentum=0.9, weight_decay=1e-3, trust_clip=True),
            complex=False,
            fused=True,
            elementwise=False,
            tensor_lr=False,
            # A trust ratio is 1 where a norm is 0: float32 gradients near 1e-20 have subnormal
            # squares, which XLA's CPU code flushes to zero and torch keeps (as Lion's signs).
            magnitudes=("ordinary", "large"),
            reference_class=TimmLars,
        ),
        Entry(
            "Prodigy",
            prodigy_hyperparameters(),
            dict(lr=1.0, weight_decay=0.01, use_bias_correction=True, slice_p=2),
            complex=False,
            elementwise=False,
            tensor_lr=False,
            # Tiny gradients make sum |s| tiny and d = r / sum |s| explode until d^2 overflows
            # float32: the reference raises there (addcmul's value), XLA computes inf.
            magnitudes=("ordinary", "large"),
            # d is set from <g, p0 - p>, and early on p0 - p is the difference of two nearly equal
            # numbers: an ulp of p (two frameworks round a step differently) becomes a large
            # relative error in d, and d scales every later step (measured in float32: 1.1e-4 at
            # worst over 150 generated cases, 8e-5 of it from an ulp at the first step).
            across_frameworks={"float64": 1e-10, "float32": 1e-3},
            reference_class=prodigyopt.Prodigy,
            fixed_options=("fsdp_in_use",),
        ),
        Entry(
            "SOAP",
            soap_hyperparameters(),
            dict(lr=1e-2, precondition_frequency=3, precondition_1d=True, normalize_gradient=True),
            complex=False,
            elementwise=False,
            # The reference multiplies a tensor lr in place by the bias correction at every step.
            tensor_lr=False,
            shapes=SOAP_SHAPES,
            max_params=2,
            # Gradients near 1e-20 have float32 products that XLA's CPU code flushes to zero: a
            # statistic of zeros, whose eigenvectors are any basis.
            magnitudes=("zeros", "ordinary", "large"),
            # The basis refresh's QR runs in float32 (as the reference runs it), where two LAPACKs
            # differ by an ulp: float64 agrees to float32's precision from the first refresh on
            # (measured over 150 generated cases: 9.4e-7 in float64, 7.4e-7 in float32).
            across_frameworks={"float64": 1e-5, "float32": 1e-5},
            reference_class=pytorch_optimizer.SOAP,
        ),
    ]
}
