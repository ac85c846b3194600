"""How arrays are handled.

A backend gives update rules their array operations (``ops``), reads gradients,
writes parameters and state, and decides how a step is executed (a loop of
tensor operations on PyTorch, one jit-compiled function on JAX).  Backends
never know which algorithm they run: they receive its rule as a function.

Both backends implement the same small protocol (see :class:`Backend`).  They
are imported lazily, so a PyTorch user never pays for importing JAX.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Protocol

NAMES = ("torch", "jax")


class Rule(NamedTuple):
    """How to run an algorithm's update, told to a backend that knows no algorithm."""

    update: Callable  # update(ops, param, grad, state, h) -> (param, state)
    counters: tuple[str, ...]  # state kept on the host: never passed to update, written from the plan
    real_view: bool  # complex parameters and their state go through update as (real, imag) pairs


class Backend(Protocol):
    """What the :class:`optimizers.Optimizer` base class needs from a backend."""

    name: str
    ops: Any  # namespace of array operations the update rules are written with

    def param_groups(self, params: Any) -> tuple[list[dict], bool]:
        """The constructor's ``params`` -> (param-group dicts, whether they were given as groups)."""

    def collect_params(self, params: Any, *, allow_non_leaf: bool) -> tuple[list, list[str] | None, Any]:
        """A group's ``"params"`` entry -> (parameter objects, names or None, structure)."""

    def value(self, param: Any) -> Any:
        """The current array of a parameter object."""

    def assemble(self, structure: Any, values: list) -> Any:
        """Rebuild a group's parameters, in the structure the user gave them."""

    def run_closure(self, closure: Callable, params: Any) -> tuple[Any, Any]:
        """Evaluate a step closure -> (loss, gradients or None when they are already on ``.grad``)."""

    def match_gradients(self, grads: Any, structure: Any, params: list) -> list:
        """Gradients given to ``step`` -> one per parameter (None: no gradient), validated."""

    def zero_grad(self, param: Any, set_to_none: bool) -> None:
        """Clear a parameter's gradient."""

    def host_scalar(self, value: Any) -> Any:
        """A counter (0-d NumPy array) in the form this backend stores it."""

    def is_complex(self, array: Any) -> bool:
        """Whether ``array`` holds complex numbers."""

    def as_real(self, array: Any) -> Any:
        """A complex array as (real, imag) pairs along a new last axis."""

    def as_complex(self, array: Any) -> Any:
        """The inverse of :meth:`as_real`."""

    def apply(self, rule: Rule, work: list, state: dict) -> None:
        """Run ``rule.update`` for every parameter and write the results.

        ``work`` holds, per group, ``(group, params, scalars per param, counters per param)``;
        the update sees each parameter's state without the counters, which are
        written from ``work`` instead.
        """

    def load_state_value(self, value: Any, param: Any) -> Any:
        """One saved state array (of any framework) as this backend's array, cast like torch.optim does."""


def run_update(backend: Backend, rule: Rule, param: Any, grad: Any, state: dict, h: Any) -> tuple[Any, dict]:
    """``rule.update`` for one parameter, through the (real, imag) view where the rule asks for it."""
    if not (rule.real_view and backend.is_complex(param)):
        return rule.update(backend.ops, param, grad, state, h)
    real_state = {k: backend.as_real(v) for k, v in state.items()}
    new_param, new_state = rule.update(backend.ops, backend.as_real(param), backend.as_real(grad), real_state, h)
    return backend.as_complex(new_param), {k: backend.as_complex(v) for k, v in new_state.items()}


def get(name: str) -> Backend:
    """The backend called ``name`` ("torch" or "jax")."""
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    return importlib.import_module(f"backends.{name}_backend").BACKEND


def infer(params: Any) -> str | None:
    """The backend the first array found in ``params`` belongs to, or None if there is none.

    A JAX array can only exist once ``jax`` is imported, so inference never imports it.
    """
    for leaf in _leaves(params):
        if "torch" in sys.modules and isinstance(leaf, sys.modules["torch"].Tensor):
            return "torch"
        if "jax" in sys.modules and isinstance(leaf, sys.modules["jax"].Array):
            return "jax"
    return None


def _leaves(tree: Any):
    if isinstance(tree, Mapping):
        # A param-group dict: its parameters decide, not a tensor-valued hyperparameter.
        yield from _leaves(tree["params"] if "params" in tree else list(tree.values()))
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _leaves(item)
    else:
        yield tree
