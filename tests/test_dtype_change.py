"""A model's dtype changed after the optimizer has state (``model.to(dtype)`` mid-training).

``model.to(dtype)`` converts in place: each parameter keeps its identity and its ``.data``
changes dtype, while the optimizer's state keeps the tensors it has.  torch.optim then goes on
with them as its kernels allow: the for-loop path updates a state tensor in place, so each
in-place operation rounds its result to the state's dtype (SGD's float32 momentum buffer stays
float32 and steps a float64 parameter) or refuses operands of mixed dtypes (``lerp_``); the
multi-tensor path groups by the parameters' dtype and its in-place ``_foreach_*_`` operations
round (or refuse) likewise; the fused kernels refuse state of another dtype ("expected scalar
type Double but found Float").

Every case trains a tiny model with ours and with torch.optim from the same start, converts
both models, and steps on.  torch.optim's behaviour is the expected one: at every step both
raise the same exception (type and message) or both go on, with parameters and state of the
same dtypes, equal bit for bit (``fused=True``: to rounding, as ``tests/test_fused.py`` holds
it).  A failure says what each did (:func:`compare`).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from tests.harness import equal_bits, raised
from tests.registry import REGISTRY, Entry

# Each with a torch.optim class of the same name (the registry's algorithms beyond torch.optim
# are elsewhere).
ALGORITHMS = list(REGISTRY.values())
DIRECTIONS = {
    "float32-to-float64": (torch.float32, torch.float64),
    "float64-to-float32": (torch.float64, torch.float32),
    "float32-to-bfloat16": (torch.float32, torch.bfloat16),
}
STEPS_BEFORE, STEPS_AFTER = 3, 3
# fused=True is torch.optim's fused kernels to rounding, not bit for bit (tests/test_fused.py):
# relative to each tensor's scale, at most this apart (the dtypes still equal).  So that the
# steps after the change are held to their own dtype's rounding, ours takes torch.optim's
# parameters and state at the change (in place: the tensors stay those it holds).
FUSED_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}
# Ours runs torch.optim's for-loop formula with foreach=True too (README; tests/test_plan.py):
# there torch.optim's for-loop is the reference.
FOREACH_FORMULA_NOT_FOLLOWED = {"ASGD"}


def paths(entry: Entry) -> list[str]:
    """The execution paths torch.optim's class offers: its default (the for-loop on the CPU),
    ``foreach=True`` and ``fused=True`` where its signature has them."""
    signature = inspect.signature(entry.reference.__init__).parameters
    return ["default"] + [path for path in ("foreach", "fused") if path in signature]


# Each fused case compiles its rule for the dtype training starts in (seconds each on a cold
# Inductor cache): fused steps start in float32 only, whose kernels the two directions share
# (float64 -> float32 meets the same check: state in the parameter's dtype).
FUSED_DIRECTIONS = ("float32-to-float64", "float32-to-bfloat16")
CASES = [
    pytest.param(entry, path, direction, id=f"{entry.name}-{path}-{direction}")
    for entry in ALGORITHMS
    for path in paths(entry)
    for direction in DIRECTIONS
    if path != "fused" or direction in FUSED_DIRECTIONS
]


def make_model(entry: Entry) -> torch.nn.Module:
    """A tiny float32 model of parameters the algorithm takes (matrices only for Muon, an
    embedding with sparse gradients for SparseAdam), the same at every call."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if "dense" in entry.gradients:
            bias = not entry.matrices_only
            return torch.nn.Sequential(
                torch.nn.Linear(3, 4, bias=bias), torch.nn.Tanh(), torch.nn.Linear(4, 2, bias=bias)
            )
        return torch.nn.Embedding(6, 3, sparse=True)


INPUTS = torch.linspace(-1.0, 1.0, 15).reshape(5, 3)
INDICES = torch.tensor([0, 2, 2, 5])


def loss_of(model: torch.nn.Module) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    out = model(INDICES) if isinstance(model, torch.nn.Embedding) else model(INPUTS.to(dtype))
    return (out - 0.5).square().mean()


@dataclass
class Side:
    """One implementation's model and optimizer."""

    model: torch.nn.Module
    optimizer: Any
    closure_required: bool

    def step(self) -> None:
        def closure():
            self.optimizer.zero_grad()
            loss = loss_of(self.model)
            loss.backward()
            return loss

        if self.closure_required:
            self.optimizer.step(closure)
        else:
            closure()
            self.optimizer.step()


def describe(outcome: tuple[type, str] | None) -> str:
    return "continues" if outcome is None else f"raises {outcome[0].__name__}: {outcome[1]}"


def largest_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).nan_to_num(0.0).abs().max()) if a.numel() else 0.0


def mismatch(ours: Any, expected: Any, where: str, fused: bool) -> str | None:
    """Where and how ``ours`` differs from torch.optim's ``expected``, or None: tensors of the same
    dtype, equal bit for bit (a NaN's sign and payload aside), or for ``fused`` to rounding."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(ours, torch.Tensor):
            return f"{where}: {type(ours).__name__}, torch.optim a tensor"
        if ours.dtype != expected.dtype or ours.shape != expected.shape:
            return f"{where}: {ours.dtype} {tuple(ours.shape)}, torch.optim {expected.dtype} {tuple(expected.shape)}"
        a, b = ours.detach(), expected.detach()
        nan = a.isnan()
        if not torch.equal(nan, b.isnan()):
            return f"{where}: NaN in other places"
        a, b = a[~nan], b[~nan]
        if fused and a.is_floating_point():
            scale = float(b.double().abs().max()) if b.numel() else 0.0
            if largest_difference(a, b) <= FUSED_TOLERANCE[a.dtype] * max(scale, 1e-30):
                return None
        else:
            if equal_bits(a, b):
                return None
        return f"{where}: differs by up to {largest_difference(a, b):.3g} ({a.dtype})"
    if isinstance(expected, (list, tuple)):
        if not isinstance(ours, (list, tuple)) or len(ours) != len(expected):
            return f"{where}: {ours!r}, torch.optim {expected!r}"
        found = (mismatch(a, b, f"{where}[{i}]", fused) for i, (a, b) in enumerate(zip(ours, expected)))
        return next((problem for problem in found if problem), None)
    if isinstance(ours, torch.Tensor) and ours.dim() == 0 and isinstance(expected, (int, float)):
        ours = ours.item()
    return None if ours == expected else f"{where}: {ours!r}, torch.optim {expected!r}"


def state_mismatch(ours: Side, expected: Side, fused: bool) -> str | None:
    for index, (a, b) in enumerate(zip(ours.model.parameters(), expected.model.parameters())):
        problem = mismatch(a, b, f"parameter {index}", fused)
        if problem:
            return problem
        held, wanted = ours.optimizer.state.get(a, {}), expected.optimizer.state.get(b, {})
        if set(held) != set(wanted):
            return f"parameter {index}: state entries {sorted(held)}, torch.optim {sorted(wanted)}"
        for key, value in wanted.items():
            problem = mismatch(held[key], value, f"parameter {index}, state {key!r}", fused)
            if problem:
                return problem
    return None


def take_values(ours: Side, expected: Side) -> None:
    """Copy torch.optim's parameters and state tensors into ours, in place."""
    with torch.no_grad():
        for a, b in zip(ours.model.parameters(), expected.model.parameters()):
            a.copy_(b)
            held = ours.optimizer.state.get(a, {})
            for key, value in expected.optimizer.state.get(b, {}).items():
                if isinstance(value, torch.Tensor) and isinstance(held.get(key), torch.Tensor):
                    held[key].copy_(value)


@dataclass
class Verdict:
    """What torch.optim and ours did, and the first disagreement (None: none)."""

    reference: str
    ours: str
    failure: str | None


def compare(entry: Entry, path: str, direction: str) -> Verdict:
    """Train with both, change the models' dtype after ``STEPS_BEFORE`` steps, and step on."""
    start, target = DIRECTIONS[direction]
    options = dict(entry.options)
    if torch.bfloat16 in (start, target):
        options.update(entry.low_precision_options)
    if path != "default":
        options[path] = True
    sides = [(entry.ours, options), (entry.reference, options)]
    if path == "foreach" and entry.name in FOREACH_FORMULA_NOT_FOLLOWED:
        sides[1] = (entry.reference, dict(options, foreach=False))
    refusals = [raised(lambda cls=cls, o=o: cls(make_model(entry).parameters(), **o)) for cls, o in sides]
    if any(refusals):  # torch.optim refuses the options (a path it lacks)
        failure = None if refusals[0] == refusals[1] else "the constructors disagree"
        return Verdict(f"constructor {describe(refusals[1])}", f"constructor {describe(refusals[0])}", failure)
    base = make_model(entry).to(start)
    ours, expected = (
        Side(model, cls(model.parameters(), **o), entry.closure_required)
        for (cls, o), model in zip(sides, (base, copy.deepcopy(base)))
    )
    for step in range(STEPS_BEFORE + STEPS_AFTER):
        when = f"step {step - STEPS_BEFORE + 1} after the change" if step >= STEPS_BEFORE else f"step {step + 1}"
        if step == STEPS_BEFORE:
            if path == "fused":
                take_values(ours, expected)
            ours.model.to(target)
            expected.model.to(target)
        outcomes = [raised(side.step) for side in (ours, expected)]
        if any(outcomes):
            failure = None if outcomes[0] == outcomes[1] else f"at {when}"
            return Verdict(f"{describe(outcomes[1])} ({when})", f"{describe(outcomes[0])} ({when})", failure)
        problem = state_mismatch(ours, expected, path == "fused")
        if problem:
            return Verdict("continues", f"continues; {when}, {problem}", f"at {when}, {problem}")
    return Verdict("continues", "continues, equal" if path == "fused" else "continues, bit-equal", None)


@pytest.mark.parametrize("entry, path, direction", CASES)
def test_dtype_change_after_state_exists_is_torch_optims(entry, path, direction):
    verdict = compare(entry, path, direction)
    assert verdict.failure is None, f"torch.optim {verdict.reference}; ours {verdict.ours}"


@pytest.mark.parametrize("path", ["default", "foreach", "fused"])
def test_a_step_without_state_takes_the_new_dtype(path):
    """SGD without momentum keeps no state: after ``model.to`` torch.optim steps the parameters in
    their new dtype on every path (a fused step must not keep buffers of the old one)."""
    entry = dataclasses.replace(REGISTRY["SGD"], options=dict(lr=0.05, weight_decay=0.01))
    verdict = compare(entry, path, "float32-to-float64")
    assert verdict.failure is None, f"torch.optim {verdict.reference}; ours {verdict.ours}"
