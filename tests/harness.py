"""Run one registered optimizer over a problem on a backend, through ``optimizers.testing``.

Backends: ``"torch.optim"`` (the reference), ``"torch"`` and ``"jax"`` (ours), and
``"functional"``: the JAX optimizer's pure form (``init``/``update``) on all leaves at once.
Each is a contender of the public test kit, so the suite compares trajectories as the kit's
users do; the session's agreement table collects the kit's reports.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import torch

from optimizers import testing
from optimizers.testing.report import difference, largest_finite
from tests.registry import Entry

BACKENDS = ("torch.optim", "torch", "jax")


def to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().numpy().copy()
    return np.array(value)


def _flat_entries(key: str, value):
    if isinstance(value, list):
        for position, item in enumerate(value):
            yield from _flat_entries(f"{key}[{position}]", item)
    else:
        yield key, to_numpy(value)


class FunctionalRun(testing.Run):
    def __init__(self, form, params: Sequence[np.ndarray]):
        self.leaves = [jnp.asarray(value) for value in params]
        self.optimizer = self.form = form(self.leaves)
        self.functional_state = self.form.init(self.leaves)

    def step(self, problem: testing.Problem, step: int) -> None:
        grads = problem.gradients(step, self.values)
        self.leaves, self.functional_state = self.form.update(grads, self.functional_state, self.leaves)

    def values(self) -> list[np.ndarray]:
        return [to_numpy(v) for v in self.leaves]


class Functional(testing.Contender):
    """Our optimizer's pure JAX form (``init``, ``update(grads, state, params) -> (params, state)``),
    ``form(leaves)`` making it: a contender the kit does not ship."""

    def __init__(self, form):
        self.form, self.name = form, "functional"

    def start(self, params: Sequence[np.ndarray]) -> testing.Run:
        return FunctionalRun(self.form, params)


def contender(entry: Entry, backend: str, problem: testing.Problem, kwargs: dict, lr_array: bool = False):
    """``entry``'s optimizer with ``kwargs`` on ``backend`` ("torch", "jax", "functional",
    "torch.optim"; "torch fused" and "torch.optim fused" are the first and last with
    ``fused=True``), its parameters in ``problem``'s groups."""
    kwargs = dict(kwargs)
    if backend.endswith(" fused"):
        backend, kwargs["fused"] = backend.removesuffix(" fused"), True
    if lr_array:  # a one-element float32 array, as users write torch.tensor(0.01)
        lr = kwargs["lr"]
        jax_side = backend in ("jax", "functional")
        kwargs["lr"] = jnp.asarray(lr, jnp.float32) if jax_side else torch.tensor(lr, dtype=torch.float32)
    groups = problem.groups or [list(range(len(problem.params)))]

    def grouped(leaves):
        return [{"params": [leaves[i] for i in group]} for group in groups]

    if backend == "functional":
        return Functional(lambda leaves: entry.ours(leaves, **kwargs).functional())
    if backend == "jax":
        return testing.jax(lambda leaves: entry.ours(grouped(leaves), **kwargs), name="jax")
    cls = entry.reference if backend == "torch.optim" else entry.ours
    return testing.torch(lambda tensors: cls(grouped(tensors), **kwargs), name=backend)


class Run:
    """An optimizer on one backend, stepped through a problem one step at a time."""

    def __init__(self, entry: Entry, backend: str, problem: testing.Problem, kwargs: dict, lr_array: bool = False):
        self.problem, self.taken = problem, 0
        self.run = contender(entry, backend, problem, kwargs, lr_array).start(list(problem.params))
        self.optimizer = self.run.optimizer
        self.backend = backend.removesuffix(" fused")
        assert self.backend not in ("torch", "jax") or self.optimizer.backend == self.backend

    def step(self) -> None:
        self.run.step(self.problem, self.taken)
        self.taken += 1

    def values(self) -> list[np.ndarray]:
        return self.run.values()

    def state(self) -> dict[int, dict[str, np.ndarray]]:
        """Per-leaf state as NumPy arrays (state_dict indices are leaf indices: groups are contiguous);
        an entry that is a list of arrays (SOAP's ``GG``) as one entry per array (``GG[0]``, ...)."""
        return {
            index: dict(item for key, value in entry.items() for item in _flat_entries(key, value))
            for index, entry in self.optimizer.state_dict()["state"].items()
        }

    def trajectory(self, steps: int | None = None) -> list[list[np.ndarray]]:
        """The values after each of the next ``steps`` steps (default: to the problem's end)."""
        result = []
        for _ in range(self.problem.steps - self.taken if steps is None else steps):
            self.step()
            result.append(self.values())
        return result

    def checkpoint(self) -> dict:
        """The state dict as it comes back from disk (torch.save/torch.load for torch tensors)."""
        state_dict = self.optimizer.state_dict()
        if self.backend == "jax":
            return {
                # None: an entry the reference writes as None (AdEMAMix's unused exp_avg_fast),
                # kept so by tree_map, as lists of arrays (SOAP's statistics) are kept lists.
                "state": {k: jax.tree_util.tree_map(np.array, s) for k, s in state_dict["state"].items()},
                "param_groups": [dict(g) for g in state_dict["param_groups"]],
            }
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)


def trajectory(entry: Entry, backend: str, problem: testing.Problem, kwargs: dict, lr_array: bool = False):
    return testing.trajectory(contender(entry, backend, problem, kwargs, lr_array), problem)


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


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_bitwise(ours, reference):
    for a, b in zip(ours, reference, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), (a - b).abs().max()


def equal_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (same dtype and shape assumed); a NaN's sign and payload are not part of the contract."""
    a, b = a.detach(), b.detach()
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a[~nan].view(bits), b[~nan].view(bits))


def raised(call) -> tuple[type, str] | None:
    """The exception ``call()`` raises, as (type, message), or None."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the type and message are what is compared
        return type(error), str(error)
    return None


def relative_error(a: np.ndarray, b: np.ndarray, scale: float | None = None) -> float:
    """The kit's error of ``a`` against ``b``: max|a - b| relative to ``scale`` (default: the
    largest finite magnitude of either)."""
    a, b = np.asarray(a), np.asarray(b)
    if scale is None:
        scale = max(largest_finite(a), largest_finite(b))
    return difference(1, 0, a, b, scale).error


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
        """Assert two trajectories agree within ``tolerance`` relative to each parameter's scale
        (bit for bit at 0), as ``testing.assert_agree`` does, and record the figures."""
        first, second = pair.split(" vs ") if " vs " in pair else (pair, "expected")
        report = testing.Report.of(got, expected, (first, second), dtype)
        row = self.rows.setdefault((optimizer, pair, dtype), Agreement())
        row.examples += 1
        for found in report.differences:
            row.elements += found.size
            row.bitwise += found.equal_bits
        row.max_relative_error = max(row.max_relative_error, report.max_error)
        found = report.first_divergence(rtol=tolerance)
        assert found is None, f"{optimizer}, {dtype}: " + report.explain(found, tolerance, 0.0)

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
