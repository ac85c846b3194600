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
import math
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol

import numpy as np

from backends.ops import Ops

NAMES = ("torch", "jax")


class Rule(NamedTuple):
    """How to run an algorithm, told to a backend that knows no algorithm.

    ``coefficients`` and ``schedule`` are scalar arithmetic written against a ``math``
    namespace (see :class:`HostMath`), so a backend may run them on the host with Python
    floats, as torch.optim does, or traced inside a compiled step.
    """

    switches: Callable  # switches(group) -> dict of bool/str/None: the rule's branches, decided on the host
    coefficients: Callable  # coefficients(math, numbers) -> dict: scalars from the group's numeric values
    schedule: Callable  # schedule(math, h, counters) -> (dict of per-parameter scalars, advanced counters)
    initial_state: Callable  # initial_state(ops, param, h) -> dict of arrays before the first step
    update: Callable  # update(ops, param, grad, state, h) -> (param, state)
    counters: tuple[str, ...]  # names of the scalar state schedule advances; update never sees it
    initial_counters: tuple[Any, ...]  # their values before the first step (see counter_array)
    real_view: bool  # complex parameters and their state go through update as (real, imag) pairs
    state_dtype: str | None = None  # "float32": narrower real parameters step and keep state in it
    bucket_view: bool = False  # fused: parameters and gradients live in the flat buckets, as views
    # step_scalars(ops, math, groups: list[GroupStep]) -> dict of numbers from every group's
    # parameters, gradients and state, before any parameter moves; or None
    step_scalars: Callable | None = None
    group_counters: tuple[str, ...] = ()  # numbers kept per param group, advanced once per step
    # advance_group(math, numbers) -> the group counters after this step (numbers include step_scalars')
    advance_group: Callable[..., dict] = lambda math, numbers: {}


#: In a state of fixed structure (the functional form's), the per-parameter flag that its
#: lazily created entries hold values; until it is set they hold zeros a rule must not read.
INITIALIZED = "initialized"


def lazy_entry(ops: Any, state: Mapping[str, Any], key: str, h: Any, first: Callable, later: Callable) -> Any:
    """A state entry torch.optim creates at a parameter's first step (SGD's momentum buffer).

    ``first()`` while ``state`` has no ``key``, ``later(state[key])`` once it has.  Where the
    state's structure is fixed the entry exists from the start and ``h`` carries the
    parameter's :data:`INITIALIZED` flag: both are computed and one is selected per
    parameter, here, so what the rule computes from the entry is computed once, from the
    selected value.  (Selecting the rule's outputs instead makes the parameter's update
    re-read the old entry after the new one overwrote it in place, and XLA copies it.)
    """
    held = state.get(key)
    if held is None:
        return first()
    initialized = getattr(h, INITIALIZED, None)
    if initialized is None:
        return later(held)
    return _select(ops, initialized, later(held), first())


def _select(ops: Any, condition: Any, if_true: Any, if_false: Any) -> Any:
    if isinstance(if_true, (tuple, list)):  # a tuple of entries; a list of arrays (SOAP's bases)
        return type(if_true)(_select(ops, condition, t, f) for t, f in zip(if_true, if_false, strict=True))
    return ops.where(condition, if_true, if_false)


class GroupStep(NamedTuple):
    """What :attr:`Rule.step_scalars` sees of one param group: its ``h`` and, for each parameter
    that steps, its value, gradient and state (empty lists for a group without gradients)."""

    h: Any
    params: list
    grads: list
    states: list


class HostMath:
    """Scalar arithmetic on the host, in Python floats: torch.optim's own scalar arithmetic."""

    @staticmethod
    def float(value: Any) -> float:
        """A count or a 0-d tensor as a float64 number."""
        return float(value)

    @staticmethod
    def where(condition: Any, if_true: Any, if_false: Any) -> Any:
        return if_true if condition else if_false

    @staticmethod
    def sqrt(value: Any) -> Any:
        """``math.sqrt``: correctly rounded, unlike ``value ** 0.5``."""
        return math.sqrt(value)

    @staticmethod
    def log(value: Any) -> Any:
        return math.log(value)

    @staticmethod
    def cast_like(value: Any, like: Any) -> Any:
        """``value`` in the dtype of the counter ``like`` (NumPy scalars keep float32 rounding)."""
        return np.asarray(value, dtype=np.asarray(like).dtype)[()]


class Scalars:
    """A rule's ``h``: its switches and numbers as attributes.

    A plain class rather than ``types.SimpleNamespace``, which torch.compile cannot trace.
    """

    def __init__(self, items: Mapping[str, Any]) -> None:
        for name, value in items.items():
            setattr(self, name, value)


def dtype_name(dtype: Any) -> str:
    """A dtype of any framework by its name: "float32", "bfloat16", "bool", "complex64"."""
    try:
        return np.dtype(dtype).name
    except TypeError:  # torch.float32 and other frameworks' dtype objects: "torch.float32"
        return str(dtype).rpartition(".")[2]


def is_numeric(dtype: Any) -> bool:
    """Whether arrays of ``dtype`` (of any framework) hold numbers: not bool, object or text."""
    return not dtype_name(dtype).startswith(("bool", "object", "str", "bytes"))


def is_switch(value: Any) -> bool:
    """Bools, strings and None select branches of a rule; everything else in a group is a number."""
    return value is None or isinstance(value, (bool, str))


def numbers(group: Mapping[str, Any], convert: Callable[[Any], Any], switches: Mapping[str, Any]) -> dict[str, Any]:
    """The numeric hyperparameters of ``group`` (tuples such as betas kept as tuples), each converted.

    A number the rule's ``switches`` return under its own name (Muon's ``ns_steps``, a
    loop count) shapes the program and is a switch, not data.
    """
    found = {}
    for key, value in group.items():
        if key in ("params", "param_names") or key in switches or is_switch(value):
            continue
        if isinstance(value, (tuple, list)):  # None in a tuple (Adafactor's eps) means "derive it"
            found[key] = tuple(None if v is None else convert(v) for v in value)
        else:
            found[key] = convert(value)
    return found


class Backend(Protocol):
    """What the :class:`optimizers.Optimizer` base class needs from a backend."""

    name: str

    @property
    def ops(self) -> Ops:
        """The array operations the update rules are written with."""

    @property
    def fused_devices(self) -> tuple[str, ...]:
        """The device types where ``fused=True`` is supported."""

    def host_number(self, value: Any) -> Any:
        """A numeric hyperparameter as host-side coefficients see it (a float, or a 0-d array)."""

    def counter_dtype(self) -> type:
        """The NumPy dtype of a new floating counter (``step``)."""

    def device_type(self, array: Any) -> str:
        """The kind of device an array lives on ("cpu", "cuda", "gpu", ...)."""

    def profiled(self, name: str) -> AbstractContextManager:
        """A range named ``name`` in this backend's profiler, around each step."""

    def param_groups(self, params: Any) -> tuple[list[dict], bool]:
        """The constructor's ``params`` -> (param-group dicts, whether they were given as groups)."""

    def collect_params(self, params: Any, *, allow_non_leaf: bool) -> tuple[list, list[str] | None, Any]:
        """A group's ``"params"`` entry -> (parameter objects, names or None, structure)."""

    def value(self, param: Any) -> Any:
        """The current array of a parameter object."""

    def value_for_state(self, param: Any, *, differentiable: bool) -> Any:
        """The parameter's array to build its initial state from: outside autograd's graph
        unless the step is differentiable, as torch.optim creates state under no_grad."""

    def write(self, param: Any, value: Any) -> None:
        """Set a parameter's value (in place on torch, keeping the tensor's identity)."""

    def assemble(self, structure: Any, values: list) -> Any:
        """Rebuild a group's parameters, in the structure the user gave them."""

    def run_closure(self, closure: Callable, params: Any) -> tuple[Any, Any]:
        """Evaluate a step closure -> (loss, gradients or None when they are already on ``.grad``)."""

    def match_gradients(self, grads: Any, structure: Any, params: list) -> list:
        """Gradients given to ``step`` -> one per parameter (None: no gradient), validated."""

    def zero_grad(self, param: Any, set_to_none: bool) -> None:
        """Clear a parameter's gradient."""

    def store_counter(self, value: np.ndarray) -> Any:
        """A counter (0-d NumPy array) in the form this backend stores it."""

    def is_sparse(self, array: Any) -> bool:
        """Whether ``array`` is a sparse array (torch sparse COO, JAX ``BCOO``)."""

    def is_complex(self, array: Any) -> bool:
        """Whether ``array`` holds complex numbers."""

    def as_real(self, array: Any) -> Any:
        """A complex array as (real, imag) pairs along a new last axis."""

    def as_complex(self, array: Any) -> Any:
        """The inverse of :meth:`as_real`."""

    def foreach(self, group: dict[str, Any], params: list) -> bool:
        """Whether ``group``'s step runs as multi-tensor operations (torch.optim's ``foreach``)."""

    def step_scalars(self, rule: Rule, groups: list, state: dict, host_h: Callable[[dict], Any]) -> dict[str, Any]:
        """``rule.step_scalars`` for this step.  ``groups`` holds ``(group, params with a
        gradient)`` for every param group; ``host_h(group)`` is the group's ``h`` on the host."""

    def apply(self, rule: Rule, work: list, state: dict, memory: dict, host_h: Callable[..., Any]) -> None:
        """Run ``rule`` for every parameter and write the new parameters and state.

        ``work`` holds, per group, ``(group, params)``.  ``host_h(group, foreach=...)`` is the
        group's switches and coefficients evaluated on the host, for a backend that runs the
        rule there (``foreach``: whether the group steps as multi-tensor operations); a backend
        that computes them inside its compiled step need not call it.  Every parameter in
        ``work`` has a gradient and an initialized state.  ``memory`` is the optimizer's dict
        for what the backend keeps between steps (the torch backend's fused buckets, the JAX
        backend's flat buckets); the optimizer empties it whenever its parameters or state are
        replaced.
        """

    def settle(self, memory: dict) -> None:
        """Write what ``memory`` holds of the state (the JAX backend's flat buckets) into the
        per-parameter state dicts, before anyone reads them."""

    def floating_bits(self, array: Any) -> int | None:
        """The width of a real floating array's dtype in bits; None for other dtypes."""

    def cast(self, array: Any, dtype: str) -> Any:
        """``array`` in the dtype named ``dtype`` ("float32"), dense or sparse."""

    def all_finite(self, grads: list) -> bool:
        """Whether every element of every gradient (dense or sparse) is finite."""

    def load_state_value(self, value: Any, param: Any, dtype: str | None = None) -> Any:
        """One saved state array (of any framework) as this backend's array, cast like torch.optim does.

        Floating state takes the parameter's dtype, or ``dtype`` if given (a ``state_dtype``).
        """


def run_update(
    backend: Backend, rule: Rule, param: Any, grad: Any, state: dict, h: Any, ops: Any = None
) -> tuple[Any, dict]:
    """``rule.update`` for one parameter, through the (real, imag) view where the rule asks for it.

    ``ops`` defaults to the backend's.
    """
    ops = backend.ops if ops is None else ops
    if not (rule.real_view and backend.is_complex(param)):
        return rule.update(ops, param, grad, state, h)
    real_state = {k: backend.as_real(v) for k, v in state.items()}
    new_param, new_state = rule.update(ops, backend.as_real(param), backend.as_real(grad), real_state, h)
    return backend.as_complex(new_param), {k: backend.as_complex(v) for k, v in new_state.items()}


def counter_array(initial: Any, value: Any, counter_dtype: type) -> np.ndarray:
    """A counter's ``value`` as a 0-d NumPy array of the kind its ``initial`` value declares.

    An ``int`` initial value declares an integer counter (SparseAdam's ``step``, a Python
    int in torch.optim); anything else a floating one, in ``counter_dtype`` unless
    ``value`` is an array with a dtype of its own (a saved float64 ``step`` stays float64).
    """
    if isinstance(initial, int):
        return np.asarray(value, np.int64)
    return np.asarray(value) if hasattr(value, "dtype") else np.asarray(value, counter_dtype)


def compute_dtype(backend: Backend, rule: Rule, param: Any) -> str | None:
    """The dtype a parameter steps in when ``rule.state_dtype`` is wider than it, else None."""
    bits = backend.floating_bits(param)
    if rule.state_dtype is None or bits is None or bits >= np.dtype(rule.state_dtype).itemsize * 8:
        return None
    return rule.state_dtype


def widened(backend: Backend, rule: Rule, array: Any, like: Any) -> Any:
    """``array`` (a parameter or its gradient) in the dtype the parameter ``like`` steps in.

    With a ``state_dtype``, the rule sees a bfloat16 parameter as its float32 copy: its state is
    created, kept and updated in float32, and the parameter is rounded once per step.
    """
    dtype = compute_dtype(backend, rule, like)
    return array if dtype is None else backend.cast(array, dtype)


def initial_state(backend: Backend, rule: Rule, param: Any, h: Any, counter_dtype: type) -> dict[str, Any]:
    """A parameter's state before its first step: counters, then the rule's arrays.

    A counter's initial value is a number, or a function of the group's scalars ``h``
    (ASGD's ``eta`` starts at the learning rate).
    """
    param = widened(backend, rule, param, param)
    counters = {
        k: backend.store_counter(counter_array(v, v(h) if callable(v) else v, counter_dtype))
        for k, v in zip(rule.counters, rule.initial_counters)
    }
    if rule.real_view and backend.is_complex(param):
        # e.g. Adagrad's accumulator starts at (v, v), as in torch.optim
        arrays = rule.initial_state(backend.ops, backend.as_real(param), h)
        return {**counters, **{k: backend.as_complex(v) for k, v in arrays.items()}}
    return {**counters, **rule.initial_state(backend.ops, param, h)}


def get(name: str) -> Backend:
    """The backend called ``name`` ("torch" or "jax")."""
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    if name == "jax":
        require("jax", extra="jax", feature="The JAX backend")
    return importlib.import_module(f"backends.{name}_backend").BACKEND


def functional(rule: Rule, group: Mapping[str, Any], h: Any, flat: bool = False) -> Any:
    """``rule`` with ``group``'s switches as pure JAX functions (:class:`backends.jax_functional.Functional`,
    or with ``flat`` :class:`backends.jax_functional.FlatFunctional`)."""
    counter_dtype = get("jax").counter_dtype()
    return importlib.import_module("backends.jax_functional").functional(rule, group, h, counter_dtype, flat)


def require(module: str, *, extra: str, feature: str) -> None:
    """Import ``module``, or raise an ImportError that names the extra which installs it.

    ``pip install optimizers`` brings PyTorch and NumPy only; JAX and optax come with extras.
    """
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{feature} needs {module}, which is not installed: pip install 'optimizers[{extra}]'"
        ) from error


def infer(params: Any) -> str | None:
    """The backend the first array found in ``params`` belongs to, or None if there is none.

    A JAX array can only exist once ``jax`` is imported, so inference never imports it.
    """
    torch, jax = _imported("torch"), _imported("jax")
    for leaf in _leaves(params, jax):
        if torch is not None and isinstance(leaf, torch.Tensor):
            return "torch"
        if jax is not None and isinstance(leaf, jax.Array):
            return "jax"
    return None


def _imported(module: str) -> Any:
    """The module if it is imported (None if not, or if a test made it unimportable)."""
    return sys.modules.get(module)


def _leaves(tree: Any, jax: Any):
    if isinstance(tree, Mapping):
        # A param-group dict: its parameters decide, not a tensor-valued hyperparameter.
        yield from _leaves(tree["params"] if "params" in tree else list(tree.values()), jax)
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _leaves(item, jax)
    elif jax is not None:
        # Any other registered pytree node (a Flax nnx.Variable, an equinox module, a dataclass
        # registered with JAX) holds its arrays where JAX's own tree utilities find them.
        yield from jax.tree_util.tree_leaves(tree)
    else:
        yield tree
