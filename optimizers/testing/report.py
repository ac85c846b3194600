"""How two trajectories differ: per step and parameter, errors, ulps and bitwise equality."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

# Default relative tolerances by float width: what rounding differences between frameworks
# (operation order, fused multiply-adds, sqrt rounding) grow to over some tens of steps.
DEFAULT_RTOL = {8: 1e-10, 4: 1e-5, 2: 1e-2}


def default_rtol(dtype: np.dtype) -> float:
    """The default ``rtol`` for ``dtype``: 1e-10 for float64, 1e-5 for float32, 1e-2 for float16."""
    dtype = np.dtype(dtype)
    width = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
    return DEFAULT_RTOL.get(width, 1e-5)


@dataclass(frozen=True)
class Difference:
    """How one parameter differs between the two runs after one step.

    ``error`` is ``absolute / scale``, the scale being the largest magnitude the parameter has
    had so far in either run: each value is a sum of terms that large, so an ulp in one of them
    is an error of that size.  Measuring against the current value alone would call
    cancellation a disagreement (a parameter passing from -0.45 to 0.004 by a rounding of 6e-8
    is 1e-5 of its final value and 1e-7 of its scale).
    """

    step: int  # counted from 1: the values after that many steps
    parameter: int
    shape: tuple[int, ...]
    size: int
    absolute: float  # max |a - b| over the elements finite on both sides
    scale: float
    equal_bits: int  # elements with the same bit pattern on both sides
    worst: tuple[int, ...] = ()  # the element where |a - b| is largest
    mismatch: str = ""  # what makes the two incomparable: dtype, shape, or non-finite placement
    a: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    b: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    @property
    def values(self) -> tuple[complex | float, complex | float]:
        """a and b at the worst element."""
        if not self.worst and self.a.ndim:
            return (0.0, 0.0)
        return self.a[self.worst].item(), self.b[self.worst].item()

    @cached_property
    def ulp_distances(self) -> np.ndarray:
        """Per element, how many ulps apart a and b are (0 where either is not finite)."""
        if self.mismatch or self.equal_bits == self.size:
            return np.zeros(self.b.shape)
        finite = np.isfinite(self.a) & np.isfinite(self.b)
        return np.where(finite, ulp_distance(self.a, self.b).reshape(self.a.shape + (-1,)).max(axis=-1), 0.0)

    @property
    def ulps(self) -> float:
        """The most units in the last place between two elements."""
        if self.mismatch:
            return float("inf")
        return float(self.ulp_distances.max(initial=0.0))

    @property
    def worst_ulps(self) -> float:
        """How many ulps apart a and b are at the worst element."""
        return float(self.ulp_distances[self.worst]) if self.size else 0.0

    @property
    def error(self) -> float:
        if self.mismatch:
            return float("inf")
        if self.absolute == 0:
            return 0.0
        return self.absolute / self.scale if self.scale > 0 else float("inf")

    def diverges(self, rtol: float = 0.0, atol: float = 0.0) -> bool:
        """Whether the difference exceeds ``atol + rtol * scale``; with both 0, whether any bit differs."""
        if self.mismatch:
            return True
        if rtol == 0 and atol == 0:
            return self.equal_bits < self.size
        return self.absolute > atol + rtol * self.scale


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise distance in units in the last place (real and imaginary parts apart)."""
    if np.iscomplexobj(a):
        a, b = a.view(a.real.dtype), b.view(b.real.dtype)
    signed = np.dtype(f"i{a.dtype.itemsize}")
    # Map the bit patterns onto integers ordered as the floats are (negatives mirrored).
    ordered = []
    for x in (a, b):
        bits = x.view(signed).astype(np.int64)
        ordered.append(np.where(bits < 0, np.iinfo(signed).min - bits, bits))
    same_side = (ordered[0] >= 0) == (ordered[1] >= 0)
    near = np.abs(np.where(same_side, ordered[0] - ordered[1], 0)).astype(np.float64)
    far = np.abs(ordered[0].astype(np.float64)) + np.abs(ordered[1].astype(np.float64))
    return np.where(same_side, near, far)


def bits(x: np.ndarray) -> np.ndarray:
    """Each element's bit pattern as unsigned integers, on a last axis (two for complex numbers)."""
    real = x.view(x.real.dtype) if np.iscomplexobj(x) else x
    return real.view(np.dtype(f"u{real.dtype.itemsize}")).reshape(x.shape + (-1,))


def difference(step: int, parameter: int, a: np.ndarray, b: np.ndarray, scale: float) -> Difference:
    """``a`` against ``b`` for one parameter after one step; ``scale`` as in :class:`Difference`."""
    a, b = np.asarray(a), np.asarray(b)
    same = Difference(step, parameter, tuple(b.shape), b.size, 0.0, scale, b.size, a=a, b=b)
    if a.dtype != b.dtype or a.shape != b.shape:
        what = f"dtype {a.dtype} vs {b.dtype}" if a.dtype != b.dtype else f"shape {a.shape} vs {b.shape}"
        return replace(same, absolute=np.inf, equal_bits=0, mismatch=what)
    if a.size == 0 or a.tobytes() == b.tobytes():
        return same
    equal_bits = int(np.count_nonzero(np.all(bits(a) == bits(b), axis=-1)))
    wide = np.complex128 if np.iscomplexobj(a) else np.float64
    gaps = np.abs(a.astype(wide) - b.astype(wide))
    if np.isfinite(gaps).all():  # no NaN or infinity on either side
        largest = np.unravel_index(int(np.argmax(gaps)), a.shape)
        return replace(same, absolute=float(gaps.max()), equal_bits=equal_bits, worst=tuple(int(i) for i in largest))
    mismatch = ""
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        mismatch = "NaN in one run only"
    elif not np.array_equal(a[np.isinf(a) | np.isinf(b)], b[np.isinf(a) | np.isinf(b)]):
        mismatch = "an infinity in one run only"
    finite = np.isfinite(a) & np.isfinite(b)
    gaps = np.where(finite, gaps, 0.0)
    worst = first_mismatch(a, b) if mismatch else tuple(np.unravel_index(int(np.argmax(gaps)), a.shape))
    return replace(
        same,
        absolute=float(gaps.max()),
        equal_bits=equal_bits,
        worst=tuple(int(i) for i in worst),
        mismatch=mismatch,
    )


def first_mismatch(a: np.ndarray, b: np.ndarray) -> tuple[int, ...]:
    """The first element where NaN or infinity is placed differently."""
    differs = (np.isnan(a) != np.isnan(b)) | ((np.isinf(a) | np.isinf(b)) & (a != b) & ~np.isnan(a))
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(differs)), a.shape))


class Report:
    """How the trajectories of two contenders differ: one :class:`Difference` per step and parameter."""

    def __init__(self, names: tuple[str, str], dtype: str, problem: str, differences: Sequence[Difference]):
        self.names, self.dtype, self.problem = names, dtype, problem
        self.differences = list(differences)

    @classmethod
    def of(
        cls,
        a: Sequence[Sequence[np.ndarray]],
        b: Sequence[Sequence[np.ndarray]],
        names: tuple[str, str] = ("a", "b"),
        dtype: str = "",
        problem: str = "",
    ) -> Report:
        """The report of two trajectories: the values of every parameter after each step."""
        if len(a) != len(b):
            raise ValueError(f"the trajectories have {len(a)} and {len(b)} steps")
        scales: dict[int, float] = {}
        differences = []
        for step, (a_values, b_values) in enumerate(zip(a, b), start=1):
            if len(a_values) != len(b_values):
                raise ValueError(f"step {step}: {len(a_values)} parameters against {len(b_values)}")
            for parameter, (x, y) in enumerate(zip(a_values, b_values)):
                x, y = np.asarray(x), np.asarray(y)
                largest = largest_finite(y) if x.tobytes() == y.tobytes() else max(largest_finite(x), largest_finite(y))
                scales[parameter] = max(scales.get(parameter, 0.0), largest)
                differences.append(difference(step, parameter, x, y, scales[parameter]))
        return cls(names, dtype, problem, differences)

    @property
    def steps(self) -> int:
        return max((d.step for d in self.differences), default=0)

    @property
    def max_error(self) -> float:
        """The largest error relative to each parameter's scale so far (inf where incomparable)."""
        return max((d.error for d in self.differences), default=0.0)

    @property
    def max_ulps(self) -> float:
        return max((d.ulps for d in self.differences), default=0.0)

    @property
    def bitwise_equal(self) -> bool:
        return self.first_divergence() is None

    def first_divergence(self, rtol: float = 0.0, atol: float = 0.0) -> Difference | None:
        """The first difference beyond ``atol + rtol * scale`` (with both 0: any bit), or None."""
        return next((d for d in self.differences if d.diverges(rtol, atol)), None)

    def first_divergent_step(self, rtol: float = 0.0, atol: float = 0.0) -> int | None:
        """The first step (counted from 1) after which the runs differ beyond the tolerance, or None."""
        found = self.first_divergence(rtol, atol)
        return None if found is None else found.step

    def explain(self, found: Difference, rtol: float, atol: float) -> str:
        a, b = self.names
        where = f"step {found.step}, parameter {found.parameter} (shape {found.shape})"
        if found.mismatch and found.mismatch.startswith(("dtype", "shape")):
            return f"{a} and {b} disagree at {where}: {found.mismatch}"
        allowed = "bit for bit" if rtol == atol == 0 else f"within atol={atol:g} + rtol={rtol:g} * scale"
        detail = found.mismatch or (
            f"{found.worst_ulps:.0f} ulps apart; |a - b| = {found.absolute:.3g}, "
            f"{found.error:.3g} of the parameter's scale {found.scale:.3g}"
        )
        return (
            f"{a} and {b} diverge at {where}, element {found.worst}: "
            f"{found.values[0]!r} vs {found.values[1]!r} ({detail}); asked to agree {allowed}"
        )

    def table(self, limit: int = 60) -> str:
        """Per step and parameter: largest difference, error, ulps and bitwise-equal elements."""
        a, b = self.names
        lines = [
            f"{a} vs {b}: {self.dtype}, {self.steps} steps on {self.problem}",
            f"{'step':>5} {'param':>5} {'shape':<12} {'max |a-b|':>10} {'rel error':>10} {'ulps':>8} "
            f"{'bitwise':>11}  worst element: a vs b",
        ]
        rows = self.differences
        for d in rows[:limit]:
            equal = f"{d.equal_bits}/{d.size}"
            values = f"{d.worst}: {d.values[0]:.17g} vs {d.values[1]:.17g}" if d.size and d.equal_bits < d.size else ""
            note = f"  [{d.mismatch}]" if d.mismatch else ""
            lines.append(
                f"{d.step:>5} {d.parameter:>5} {str(d.shape):<12} {d.absolute:>10.3g} {d.error:>10.3g} "
                f"{d.ulps:>8.3g} {equal:>11}  {values}{note}"
            )
        if len(rows) > limit:
            lines.append(f"... {len(rows) - limit} more rows")
        first = self.first_divergence()
        lines.append(
            "bit for bit equal"
            if first is None
            else f"first bitwise difference: step {first.step}, parameter {first.parameter}; "
            f"max relative error {self.max_error:.3g}, max {self.max_ulps:.3g} ulps"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"<Report {self.names[0]} vs {self.names[1]}: {self.steps} steps, max error {self.max_error:.3g}>"


def largest_finite(x: np.ndarray) -> float:
    finite = np.abs(x[np.isfinite(x)])
    return float(finite.max()) if finite.size else 0.0
