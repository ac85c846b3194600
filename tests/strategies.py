"""Hypothesis strategies for optimizer problems: parameter lists, gradient sequences, groupings.

Array values come from a NumPy generator seeded by Hypothesis (drawing every
float through Hypothesis would be slow and shrink no better); the structure --
shapes, magnitudes, which leaves miss a gradient on which step, groupings --
is drawn by Hypothesis so it shrinks to a small failing case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

SHAPES = st.sampled_from([(), (1,), (5,), (0,), (3, 4), (2, 1, 3), (4, 0)])

# Gradient magnitudes: zeros, tiny (far below the parameters' ulp), ordinary, and large.
MAGNITUDES = {"zeros": 0.0, "tiny": 1e-20, "ordinary": 1.0, "large": 1e5}


@dataclass(frozen=True)
class Problem:
    """Initial parameters, one gradient list per step (None: no gradient), and a grouping."""

    params: list[np.ndarray]
    grads: list[list[np.ndarray | None]]
    groups: list[list[int]]  # leaf indices per param group, in order

    @property
    def steps(self) -> int:
        return len(self.grads)

    def negated(self) -> Problem:
        return Problem(self.params, [[None if g is None else -g for g in gs] for gs in self.grads], self.groups)

    def regrouped(self, groups: list[list[int]]) -> Problem:
        return Problem(self.params, self.grads, groups)


@st.composite
def groupings(draw, leaves: int) -> list[list[int]]:
    """A split of leaf indices 0..leaves-1 into ordered, non-empty, contiguous groups."""
    cuts = draw(st.sets(st.integers(1, leaves - 1), max_size=leaves - 1)) if leaves > 1 else set()
    bounds = [0, *sorted(cuts), leaves]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


@st.composite
def problems(
    draw,
    dtype: str,
    *,
    max_steps: int = 20,
    min_steps: int = 1,
    missing_grads: bool = True,
    shapes: st.SearchStrategy[tuple] = SHAPES,
    magnitudes: tuple[str, ...] = tuple(MAGNITUDES),
) -> Problem:
    shapes = draw(st.lists(shapes, min_size=1, max_size=4))
    steps = draw(st.integers(min_steps, max_steps))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    grads = []
    for _ in range(steps):
        row = []
        for shape in shapes:
            if missing_grads and draw(st.integers(0, 5)) == 0:
                row.append(None)
            else:
                scale = MAGNITUDES[draw(st.sampled_from(sorted(magnitudes)))]
                row.append((scale * rng.standard_normal(shape)).astype(dtype))
        grads.append(row)
    return Problem(params, grads, draw(groupings(len(shapes))))


def small_floats(low: float, high: float) -> st.SearchStrategy[float]:
    """Floats in [low, high], with the endpoints and round values drawn often."""
    return st.one_of(st.sampled_from([low, high]), st.floats(low, high, allow_nan=False, allow_subnormal=False))
