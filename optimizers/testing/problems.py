"""Problems: the starting values and the one gradient function that drive both contenders.

A problem's gradients are computed by NumPy from each contender's own current values, so
two contenders see the same function and the frameworks' autograd never enters the
comparison.  ``given_gradients`` replays a fixed sequence (the rule's arithmetic alone),
``quadratic`` is a noisy quadratic bowl (the gradient follows the parameters, as in
training), and ``problems()`` is a Hypothesis strategy of both kinds over the shapes and
magnitudes where implementations part: 0-d and empty parameters, zero, tiny and large
gradients, parameters without a gradient on some steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

Values = list[np.ndarray]
Gradient = Callable[[int, Values], Sequence[np.ndarray | None]]
Loss = Callable[[int, Values], float]

SHAPES = ((), (1,), (5,), (0,), (3, 4), (2, 1, 3), (4, 0))
# Gradient scales: zeros, tiny (far below a parameter's ulp), ordinary and large.
MAGNITUDES = {"zeros": 0.0, "tiny": 1e-20, "ordinary": 1.0, "large": 1e5}


@dataclass(frozen=True)
class Problem:
    """What two contenders are run on.

    Attributes:
        params: the starting values; a comparison casts them to the dtype it runs in.
        gradient: ``gradient(step, values)``, the gradients at ``step`` (counted from 0) for a
            contender's current ``values`` (NumPy arrays in the comparison's dtype); ``None``
            for a parameter that gets no gradient on that step.
        loss: ``loss(step, values)``, the loss whose gradient ``gradient`` is, for optimizers
            that step with a closure (LBFGS); None where the problem has none.
        steps: how many steps the problem defines (None: as many as asked).
        groups: a split of the parameter indices into contiguous param groups, for factories
            that build groups (``factory`` receives the flat list either way).
        name: what reports call it.
    """

    params: tuple[np.ndarray, ...]
    gradient: Gradient
    loss: Loss | None = None
    steps: int | None = None
    groups: tuple[tuple[int, ...], ...] | None = None
    name: str = "problem"

    def __post_init__(self) -> None:
        params = tuple(np.asarray(p) for p in self.params)
        object.__setattr__(self, "params", params)
        if not params:
            raise ValueError("a problem needs at least one parameter")
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"a problem's steps must be at least 0, got {self.steps}")
        if self.groups is not None:
            groups = tuple(tuple(group) for group in self.groups)
            flat = [index for group in groups for index in group]
            if flat != list(range(len(params))) or not all(groups):
                raise ValueError(
                    f"groups must split the parameter indices 0..{len(params) - 1} into non-empty "
                    f"contiguous runs in order, got {groups}"
                )
            object.__setattr__(self, "groups", groups)

    def gradients(self, step: int, current: Callable[[], Values]) -> list[np.ndarray | None]:
        """``gradient(step, current())``, checked against the parameters and cast to their dtypes.

        ``current()`` gives a contender's values (of the starting values' shapes and dtypes); a
        fixed sequence does not ask for them, which spares a copy from the device each step.
        """
        values = None if isinstance(self.gradient, GivenGradients) else current()
        grads = list(self.gradient(step, values))  # type: ignore[arg-type]
        if len(grads) != len(self.params):
            raise ValueError(f"{self.name}: step {step} gave {len(grads)} gradients for {len(self.params)} parameters")
        checked = []
        for index, (grad, value) in enumerate(zip(grads, self.params)):
            if grad is not None:
                grad = np.asarray(grad)
                if grad.shape != value.shape:
                    raise ValueError(
                        f"{self.name}: step {step} gave parameter {index} of shape {value.shape} "
                        f"a gradient of shape {grad.shape}"
                    )
                grad = grad.astype(value.dtype, copy=False)
            checked.append(grad)
        return checked

    @property
    def rows(self) -> list[list[np.ndarray | None]]:
        """A given-gradients problem's gradients, one list per step, in the parameters' dtypes."""
        if not isinstance(self.gradient, GivenGradients):
            raise TypeError(f"{self.name!r} computes its gradients from the parameters: it has no fixed rows")
        return [
            [None if g is None else g.astype(p.dtype, copy=False) for g, p in zip(row, self.params)]
            for row in self.gradient.rows[: self.steps]
        ]

    def astype(self, dtype: Any) -> Problem:
        """The problem with its starting values in ``dtype`` (gradients follow the values' dtype)."""
        return replace(self, params=tuple(p.astype(dtype) for p in self.params))

    def negated(self) -> Problem:
        """The problem of the negated loss: what ``maximize=True`` must make of it."""
        gradient, loss = self.gradient, self.loss
        negated: Gradient
        if isinstance(gradient, GivenGradients):
            negated = GivenGradients(tuple(tuple(None if g is None else -g for g in row) for row in gradient.rows))
        else:
            negated = lambda step, values: [None if g is None else -np.asarray(g) for g in gradient(step, values)]  # noqa: E731
        return replace(
            self,
            gradient=negated,
            loss=None if loss is None else lambda step, values: -loss(step, values),
            name=f"{self.name}, negated",
        )

    def after(self, steps: int, values: Values) -> Problem:
        """The rest of the problem after ``steps`` steps, from ``values`` (to continue a run)."""
        if steps < 0 or (self.steps is not None and steps > self.steps):
            raise ValueError(f"{self.name} defines {self.steps} steps, not {steps}")
        gradient, loss = self.gradient, self.loss
        rest: Gradient
        if isinstance(gradient, GivenGradients):
            rest = GivenGradients(gradient.rows[steps:])
        else:
            rest = lambda step, now: gradient(step + steps, now)  # noqa: E731
        return replace(
            self,
            params=tuple(values),
            gradient=rest,
            loss=None if loss is None else lambda step, now: loss(step + steps, now),
            steps=None if self.steps is None else self.steps - steps,
        )


@dataclass(frozen=True)
class GivenGradients:
    """A fixed gradient per step and parameter, whatever the values (``rows[step][index]``)."""

    rows: tuple[tuple[np.ndarray | None, ...], ...]

    def __call__(self, step: int, values: Values | None) -> tuple[np.ndarray | None, ...]:
        return self.rows[step]


def given_gradients(
    params: Sequence[Any],
    rows: Sequence[Sequence[Any]],
    groups: Sequence[Sequence[int]] | None = None,
    name: str = "given gradients",
) -> Problem:
    """A problem that replays ``rows``: one list of gradients (or None) per step."""
    fixed = tuple(tuple(None if g is None else np.asarray(g) for g in row) for row in rows)
    split = None if groups is None else tuple(tuple(group) for group in groups)
    problem = Problem(tuple(params), GivenGradients(fixed), steps=len(fixed), groups=split, name=name)
    for step, row in enumerate(fixed):
        if len(row) != len(problem.params):
            raise ValueError(f"{name}: step {step} has {len(row)} gradients for {len(problem.params)} parameters")
    return problem


def quadratic(
    shapes: Sequence[tuple[int, ...]] = ((4, 3), (5,)),
    *,
    seed: int = 0,
    noise: float = 0.1,
    offsets: Sequence[Sequence[np.ndarray | None]] | None = None,
    name: str | None = None,
) -> Problem:
    """A noisy quadratic bowl: at step k, ``loss = sum(c * (p - t)**2) / 2 + sum(z_k * p)``.

    Curvatures ``c`` (in [0.1, 2]), targets ``t`` and starting values come from ``seed``; the
    per-step gradient offsets ``z_k`` are ``noise`` times standard normal draws seeded by
    ``(seed, k)``, unless ``offsets`` gives them (one list per step; None entries: no gradient
    for that parameter on that step).  The loss and its gradient are exact NumPy, so a closure
    (LBFGS) sees one consistent function per step.
    """
    rng = np.random.default_rng(seed)
    shapes = [tuple(shape) for shape in shapes]
    start = [rng.standard_normal(shape) for shape in shapes]
    targets = [rng.standard_normal(shape) for shape in shapes]
    curvatures = [rng.uniform(0.1, 2.0, shape) for shape in shapes]

    def offset(step: int) -> list[np.ndarray | None]:
        if offsets is not None:
            return [None if z is None else np.asarray(z) for z in offsets[step]]
        draws = np.random.default_rng([seed, step])
        return [noise * draws.standard_normal(shape) for shape in shapes]

    def gradient(step: int, values: Values) -> list[np.ndarray | None]:
        return [None if z is None else c * (v - t) + z for v, t, c, z in zip(values, targets, curvatures, offset(step))]

    def loss(step: int, values: Values) -> float:
        total = 0.0
        for v, t, c, z in zip(values, targets, curvatures, offset(step)):
            if z is None:
                raise ValueError(f"{name or 'quadratic'}: a closure needs every parameter's gradient")
            total += float(np.sum(0.5 * c * (v - t) ** 2 + z * v).real)
        return total

    steps = None if offsets is None else len(offsets)
    return Problem(tuple(start), gradient, loss, steps=steps, name=name or f"quadratic {shapes}, seed {seed}")


def problems(
    *,
    min_steps: int = 1,
    max_steps: int = 20,
    shapes: Sequence[tuple[int, ...]] | Any = SHAPES,
    magnitudes: Sequence[str] = tuple(MAGNITUDES),
    max_params: int = 4,
    missing_gradients: bool = True,
    feedback: bool | None = None,
    groups: bool = True,
) -> Any:
    """A Hypothesis strategy of problems.

    Hypothesis draws the structure -- shapes, step count, each gradient's magnitude, which
    parameters miss a gradient on which step, a split into groups -- so a failure shrinks to a
    small case; the values come from a NumPy generator it seeds.

    Args:
        shapes: parameter shapes to draw from (or a strategy of shapes).
        magnitudes: names from ``MAGNITUDES``; sign-based rules (Rprop, Lion) compare
            implementations best away from zero gradients.
        missing_gradients: whether a parameter may get no gradient on a step.
        feedback: whether gradients follow the parameters (``quadratic``) or are a fixed
            sequence (``given_gradients``); None draws both.  A fixed sequence isolates the
            rule's arithmetic: with feedback, a rounding difference changes later gradients too.
        groups: whether to draw a split into param groups (else one group).
    """
    from hypothesis import strategies as st

    unknown = set(magnitudes) - set(MAGNITUDES)
    if unknown:
        raise ValueError(f"unknown magnitudes {sorted(unknown)}: choose from {sorted(MAGNITUDES)}")
    shape_strategy = shapes if isinstance(shapes, st.SearchStrategy) else st.sampled_from(list(shapes))

    @st.composite
    def draw_problem(draw: Any) -> Problem:
        drawn_shapes = draw(st.lists(shape_strategy, min_size=1, max_size=max_params), label="shapes")
        steps = draw(st.integers(min_steps, max_steps), label="steps")
        seed = draw(st.integers(0, 2**32 - 1), label="seed")
        follows = draw(st.booleans(), label="feedback") if feedback is None else feedback
        rng = np.random.default_rng(seed)
        params = [rng.standard_normal(shape) for shape in drawn_shapes]
        rows = []
        for _ in range(steps):
            row: list[np.ndarray | None] = []
            for shape in drawn_shapes:
                if missing_gradients and draw(st.integers(0, 5)) == 0:
                    row.append(None)
                else:
                    scale = MAGNITUDES[draw(st.sampled_from(sorted(magnitudes)))]
                    row.append(scale * rng.standard_normal(shape))
            rows.append(row)
        split = draw(groupings(len(drawn_shapes))) if groups else [list(range(len(drawn_shapes)))]
        if not follows:
            return given_gradients(params, rows, split, name=f"given gradients, seed {seed}")
        bowl = quadratic(drawn_shapes, seed=seed, offsets=rows, name=f"quadratic, seed {seed}")
        return replace(bowl, params=tuple(params), groups=tuple(map(tuple, split)))

    return draw_problem()


def groupings(leaves: int) -> Any:
    """A Hypothesis strategy: splits of 0..leaves-1 into ordered, non-empty, contiguous groups."""
    from hypothesis import strategies as st

    @st.composite
    def draw_split(draw: Any) -> list[list[int]]:
        cuts = draw(st.sets(st.integers(1, leaves - 1), max_size=leaves - 1)) if leaves > 1 else set()
        bounds = [0, *sorted(cuts), leaves]
        return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]

    return draw_split()
