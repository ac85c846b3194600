"""Property testing for optimizers: does one optimizer do what another does?

Point it at any two optimizers -- ours, torch.optim's, a third-party torch optimizer, an
optax transformation -- and it runs both on the same problem, feeding each the gradients
of one NumPy function at its own current values, and reports how their trajectories
differ, step by step and parameter by parameter::

    from optimizers import testing
    testing.assert_agree(
        testing.torch(lambda ps: torch.optim.Adam(ps, lr=1e-2)),
        testing.optax(optax.adam(1e-2)),
        rtol=1e-12,
    )
    report = testing.compare(a, b, steps=50, dtype="float32")
    print(report)  # per step and parameter: errors, ulps, bitwise-equal elements

Contenders: :func:`torch` (any torch.optim-style optimizer, closures and sparse gradients
included), :func:`jax` (ours on the JAX backend), :func:`optax` (a GradientTransformation),
or a :class:`Contender` of your own.  Problems: :func:`quadratic` (the default),
:func:`given_gradients`, any :class:`Problem`, and the Hypothesis strategy :func:`problems`.
The errors are relative to each parameter's scale so far (see :class:`Difference`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optimizers.testing.contenders import Contender, Run, jax, optax, torch
from optimizers.testing.problems import (
    MAGNITUDES,
    SHAPES,
    GivenGradients,
    Problem,
    given_gradients,
    groupings,
    problems,
    quadratic,
)
from optimizers.testing.report import Difference, Report, default_rtol

__all__ = [
    "MAGNITUDES",
    "SHAPES",
    "Contender",
    "Difference",
    "GivenGradients",
    "Problem",
    "Report",
    "Run",
    "assert_agree",
    "compare",
    "default_rtol",
    "given_gradients",
    "groupings",
    "jax",
    "optax",
    "problems",
    "quadratic",
    "torch",
    "trajectory",
]


DEFAULT_STEPS = 20


def trajectory(contender: Contender, problem: Problem, steps: int | None = None) -> list[list[np.ndarray]]:
    """``contender``'s values after each of ``steps`` steps of ``problem`` (default: all it defines)."""
    steps = problem.steps if steps is None else steps
    if steps is None:
        raise ValueError(f"{problem.name!r} defines no step count: say how many steps to run")
    run = contender.start([np.array(p) for p in problem.params])
    values = []
    for step in range(steps):
        try:
            run.step(problem, step)
        except Exception as error:
            error.add_note(f"raised by {contender.name} at step {step + 1} of {problem.name!r}")
            raise
        values.append(run.values())
    return values


def compare(
    a: Contender,
    b: Contender,
    *,
    steps: int | None = None,
    dtype: Any = "float64",
    problem: Problem | None = None,
    seed: int = 0,
) -> Report:
    """Run ``a`` and ``b`` for ``steps`` steps of ``problem`` in ``dtype`` and report how they differ.

    ``problem`` defaults to ``quadratic(seed=seed)``: a noisy quadratic over a (4, 3) matrix and
    a (5,) vector.  A given problem carries its own values, so ``seed`` is for the default only.
    ``steps`` defaults to 20, or to every step of a problem that defines how many it has.
    """
    for contender in (a, b):
        if not isinstance(contender, Contender):
            raise TypeError(f"contenders are made by testing.torch, testing.jax or testing.optax, got {contender!r}")
    if problem is None:
        problem = quadratic(seed=seed)
    elif seed != 0:
        raise ValueError("seed chooses the default problem's values; a given problem carries its own")
    if steps is None:
        steps = DEFAULT_STEPS if problem.steps is None else problem.steps
    elif problem.steps is not None and steps > problem.steps:
        raise ValueError(f"{problem.name!r} defines {problem.steps} steps, fewer than the {steps} asked")
    dtype = np.dtype(dtype)
    cast = problem.astype(dtype)
    first, second = trajectory(a, cast, steps), trajectory(b, cast, steps)
    return Report.of(first, second, (a.name, b.name), dtype.name, problem.name)


def assert_agree(
    a: Contender,
    b: Contender,
    *,
    steps: int | None = None,
    dtype: Any = "float64",
    rtol: float | None = None,
    atol: float = 0.0,
    problem: Problem | None = None,
    seed: int = 0,
) -> Report:
    """Raise AssertionError unless ``a`` and ``b`` agree within ``atol + rtol * scale`` at every step.

    ``rtol`` defaults to :func:`default_rtol` of ``dtype`` (1e-10 for float64, 1e-5 for float32);
    with ``rtol=atol=0`` the check is bitwise.  The message names the first step and parameter
    that diverged, the values on both sides and how many ulps apart they are, followed by the
    report's table.  Returns the report when they agree.
    """
    report = compare(a, b, steps=steps, dtype=dtype, problem=problem, seed=seed)
    rtol = default_rtol(np.dtype(dtype)) if rtol is None else rtol
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol and atol must be at least 0, got rtol={rtol}, atol={atol}")
    found = report.first_divergence(rtol, atol)
    if found is not None:
        raise AssertionError(report.explain(found, rtol, atol) + "\n\n" + report.table())
    return report
