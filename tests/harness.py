"""Run one optimizer over a Problem on a backend, and measure how two runs agree.

Backends: ``"torch.optim"`` (the reference), ``"torch"`` and ``"jax"`` (ours), and
``"functional"``: the JAX optimizer's pure form (``init``/``update``) on all leaves at once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
import torch

from tests.registry import Entry
from tests.strategies import Problem

BACKENDS = ("torch.optim", "torch", "jax")


def to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().numpy().copy()
    return np.array(value)


class Run:
    """An optimizer on one backend, fed a Problem's gradients step by step."""

    def __init__(self, entry: Entry, backend: str, problem: Problem, kwargs: dict, lr_array: bool = False):
        """``backend``: "torch", "jax", "functional" (ours), "torch.optim"; "torch fused" and
        "torch.optim fused" are the first and last with ``fused=True``."""
        kwargs = dict(kwargs)
        if backend.endswith(" fused"):
            backend, kwargs["fused"] = backend.removesuffix(" fused"), True
        self.backend, self.problem = backend, problem
        if lr_array:  # a one-element float32 array, as users write torch.tensor(0.01)
            lr = kwargs["lr"]
            jax_side = backend in ("jax", "functional")
            kwargs["lr"] = jnp.asarray(lr, jnp.float32) if jax_side else torch.tensor(lr, dtype=torch.float32)
        if backend == "jax":
            groups = [{"params": [jnp.asarray(problem.params[i]) for i in g]} for g in problem.groups]
            self.optimizer = entry.ours(groups, **kwargs)
        elif backend == "functional":
            self.leaves = [jnp.asarray(value) for value in problem.params]
            self.form = entry.ours(self.leaves, **kwargs).functional()
            self.functional_state = self.form.init(self.leaves)
        else:
            self.tensors = [torch.tensor(p, requires_grad=True) for p in problem.params]
            groups = [{"params": [self.tensors[i] for i in g]} for g in problem.groups]
            self.optimizer = (entry.reference if backend == "torch.optim" else entry.ours)(groups, **kwargs)
        assert backend in ("torch.optim", "functional") or self.optimizer.backend == backend

    def step(self, grads: list[np.ndarray | None]) -> None:
        if self.backend == "functional":
            self.leaves, self.functional_state = self.form.update(grads, self.functional_state, self.leaves)
        elif self.backend == "jax":
            self.optimizer.step([[grads[i] for i in g] for g in self.problem.groups])
        else:
            for tensor, grad in zip(self.tensors, grads):
                tensor.grad = None if grad is None else torch.tensor(grad)
            self.optimizer.step()

    def values(self) -> list[np.ndarray]:
        if self.backend == "functional":
            return [to_numpy(v) for v in self.leaves]
        if self.backend == "jax":
            return [to_numpy(v) for group in self.optimizer.params for v in group]
        return [to_numpy(t) for t in self.tensors]

    def state(self) -> dict[int, dict[str, np.ndarray]]:
        """Per-leaf state as NumPy arrays (state_dict indices are leaf indices: groups are contiguous)."""
        return {
            index: {key: to_numpy(value) for key, value in entry.items()}
            for index, entry in self.optimizer.state_dict()["state"].items()
        }

    def trajectory(self, grads: list[list[np.ndarray | None]]) -> list[list[np.ndarray]]:
        result = []
        for row in grads:
            self.step(row)
            result.append(self.values())
        return result

    def checkpoint(self) -> dict:
        """The state dict as it comes back from disk (torch.save/torch.load for torch tensors)."""
        state_dict = self.optimizer.state_dict()
        if self.backend == "jax":
            return {
                "state": {k: {n: np.array(v) for n, v in s.items()} for k, s in state_dict["state"].items()},
                "param_groups": [dict(g) for g in state_dict["param_groups"]],
            }
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)


def trajectory(entry: Entry, backend: str, problem: Problem, kwargs: dict, lr_array: bool = False):
    return Run(entry, backend, problem, kwargs, lr_array).trajectory(problem.grads)


def training_step(entry: Entry, optimizer, loss) -> None:
    """One torch step on ``loss()``: as a training loop writes it, or through a closure where the
    algorithm needs one (LBFGS evaluates it several times a step)."""

    def closure():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    if entry.closure_required:
        optimizer.step(closure)
    else:
        closure()
        optimizer.step()


def raised(call) -> tuple[type, str] | None:
    """The exception ``call()`` raises, as (type, message), or None."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the type and message are what is compared
        return type(error), str(error)
    return None


def relative_error(a: np.ndarray, b: np.ndarray, scale: float | None = None) -> float:
    """max|a - b| / scale, the scale being max|b| unless given (0 when there is no difference)."""
    if a.size == 0:
        return 0.0
    scale = np.max(np.abs(b)) if scale is None else scale
    wide = np.complex128 if np.iscomplexobj(a) or np.iscomplexobj(b) else np.float64
    difference = np.max(np.abs(a.astype(wide) - b.astype(wide)))
    if difference == 0:
        return 0.0
    return float(difference / scale) if scale > 0 else float("inf")


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> int:
    """How many elements of a and b have the same bit pattern."""
    unsigned = f"u{a.dtype.itemsize}"
    return int(np.count_nonzero(a.view(unsigned) == b.view(unsigned)))


@dataclass
class Agreement:
    """Running totals for one comparison (e.g. torch vs jax in float32), for the session report."""

    examples: int = 0
    elements: int = 0
    bitwise: int = 0
    max_relative_error: float = 0.0


@dataclass
class AgreementReport:
    rows: dict[tuple[str, str, str], Agreement] = field(default_factory=dict)

    def compare(self, optimizer: str, pair: str, dtype: str, got, expected, tolerance: float) -> None:
        """Assert two trajectories agree within ``tolerance`` and record the figures.

        The error of a parameter at a step is relative to the largest magnitude it has
        had so far in the expected run: each step's value is a sum of terms that large,
        so an ulp of difference in one of them is an error of that size.  Measuring
        against the current value alone would call cancellation a disagreement: in a
        float32 Adagrad run, torch's CPU sqrt (1 ulp off the correctly rounded one)
        moved a parameter passing from -0.453 to 0.0043 by 6e-8, which is 1.4e-5 of
        its final value and 1.3e-7 of its scale.
        """
        row = self.rows.setdefault((optimizer, pair, dtype), Agreement())
        row.examples += 1
        scales: dict[int, float] = {}
        for step, (got_values, expected_values) in enumerate(zip(got, expected, strict=True)):
            for leaf, (a, b) in enumerate(zip(got_values, expected_values, strict=True)):
                assert a.dtype == b.dtype and a.shape == b.shape, (step, leaf, a.dtype, b.dtype, a.shape, b.shape)
                scales[leaf] = max(scales.get(leaf, 0.0), float(np.max(np.abs(b))) if b.size else 0.0)
                error = relative_error(a, b, scales[leaf])
                row.elements += a.size
                row.bitwise += bitwise_equal(a, b)
                row.max_relative_error = max(row.max_relative_error, error)
                assert error <= tolerance, (
                    f"{pair} {dtype}: step {step}, leaf {leaf}: relative error {error:.3g} > {tolerance:g}"
                )

    def rows_as_data(self) -> list:
        """The rows as plain data (to cross from a pytest-xdist worker to the controller)."""
        return [
            [list(key), [row.examples, row.elements, row.bitwise, row.max_relative_error]]
            for key, row in self.rows.items()
        ]

    def merge_data(self, data: list) -> None:
        for key, (examples, elements, bitwise, error) in data:
            row = self.rows.setdefault(tuple(key), Agreement())
            row.examples += examples
            row.elements += elements
            row.bitwise += bitwise
            row.max_relative_error = max(row.max_relative_error, error)


REPORT = AgreementReport()


@dataclass
class BadInputTally:
    """The distinct bad inputs the bad-input suite tried, per kind, for the session report."""

    tried: dict[str, set[str]] = field(default_factory=dict)

    def add(self, kind: str, bad_input: str) -> None:
        self.tried.setdefault(kind, set()).add(bad_input)

    def as_data(self) -> dict:
        return {kind: sorted(inputs) for kind, inputs in self.tried.items()}

    def merge_data(self, data: dict) -> None:
        for kind, inputs in data.items():
            self.tried.setdefault(kind, set()).update(inputs)


BAD_INPUTS = BadInputTally()
