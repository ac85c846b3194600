"""The suite's problems: the kit's, with fixed gradient sequences, in one dtype.

A fixed sequence isolates each rule's arithmetic: two implementations get the same gradient
at every step however their values differ, so a rounding difference does not feed back.
"""

from __future__ import annotations

from hypothesis import strategies as st

from optimizers import testing
from optimizers.testing import MAGNITUDES, SHAPES

__all__ = ["MAGNITUDES", "SHAPES", "problems", "small_floats"]


def problems(dtype: str, *, missing_grads: bool = True, **options) -> st.SearchStrategy[testing.Problem]:
    """``testing.problems`` of given gradients (``shapes``, ``magnitudes``, ``min_steps``,
    ``max_steps`` as there), cast to ``dtype``."""
    return testing.problems(feedback=False, missing_gradients=missing_grads, **options).map(
        lambda problem: problem.astype(dtype)
    )


def small_floats(low: float, high: float) -> st.SearchStrategy[float]:
    """Floats in [low, high], with the endpoints and round values drawn often."""
    return st.one_of(st.sampled_from([low, high]), st.floats(low, high, allow_nan=False, allow_subnormal=False))
