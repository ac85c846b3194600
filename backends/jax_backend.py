"""The JAX backend: parameters are pytrees of JAX arrays; a whole step is one jit-compiled function.

Each leaf of a parameter pytree becomes a :class:`Param`, a handle with an
identity, so torch.optim's bookkeeping (``state`` keyed by parameter,
``param_groups``, ``state_dict``) applies unchanged.  A step runs every
group's rule as one compiled program: see :mod:`backends.jax_functional`.
The operations rules use are in :mod:`backends.jax_ops`.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from backends import Rule, jax_buckets
from backends.jax_ops import JaxOps, owned_copy


class Param:
    """One leaf of a parameter pytree: its current value, its gradient, and where it sits."""

    __slots__ = ("value", "grad", "path")

    def __init__(self, value: jax.Array, path: str):
        self.value = value
        self.grad = None
        self.path = path

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    def __repr__(self) -> str:
        return f"Param({self.path}, shape={tuple(self.shape)}, dtype={self.dtype})"


class JaxBackend:
    name = "jax"
    ops = JaxOps
    # A whole step is one compiled program on every platform: fused already.
    fused_devices = ("cpu", "gpu", "tpu")

    def __init__(self) -> None:
        self._counters: OrderedDict[tuple, jax.Array] = OrderedDict()

    def host_number(self, value: Any) -> Any:
        """A hyperparameter on the host (initial state, checkpoint checks): a float, or a 0-d NumPy array.

        The step itself computes coefficients traced (:class:`backends.jax_ops.TracedMath`).
        """
        return np.asarray(value).reshape(()) if hasattr(value, "shape") else float(value)

    def counter_dtype(self) -> type:
        """torch.optim's dtype for a new step count, so checkpoints move between the backends unchanged."""
        torch = sys.modules.get("torch")
        return np.float64 if torch is not None and torch.get_default_dtype() == torch.float64 else np.float32

    def device_type(self, array: jax.Array) -> str:
        return next(iter(array.devices())).platform

    def param_groups(self, params: Any) -> tuple[list[dict], bool]:
        # A list of per-layer dicts is a common pytree; only dicts with "params" are groups.
        if isinstance(params, (list, tuple)) and params and isinstance(params[0], Mapping) and "params" in params[0]:
            return list(params), True
        if not jax.tree_util.tree_leaves(params):
            raise ValueError("optimizer got an empty parameter list")
        return [{"params": params}], False

    def collect_params(self, params: Any, *, allow_non_leaf: bool) -> tuple[list, None, Any]:
        if isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but "
                "the ordering of arrays in sets will change between runs. Please use a list instead."
            )
        leaves, structure = jax.tree_util.tree_flatten_with_path(params)
        handles = []
        for path, leaf in leaves:
            where = _where(path)
            if not isinstance(leaf, (jax.Array, np.ndarray)):
                raise TypeError(
                    f"optimizer can only optimize JAX arrays, but the parameter at {where} is "
                    f"{type(leaf).__module__}.{type(leaf).__qualname__}"
                )
            if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                raise TypeError(
                    f"optimizer can only optimize floating-point or complex arrays, but the parameter "
                    f"at {where} has dtype {leaf.dtype}"
                )
            # The optimizer owns its copy: each step consumes (donates) the arrays it holds.
            handles.append(Param(jnp.array(leaf, copy=True), where))
        return handles, None, structure

    def value(self, param: Param) -> jax.Array:
        return param.value

    def value_for_state(self, param: Param, *, differentiable: bool) -> jax.Array:
        return param.value

    def write(self, param: Param, value: jax.Array) -> None:
        param.value = value

    def assemble(self, structure: Any, values: list) -> Any:
        return jax.tree_util.tree_unflatten(structure, values)

    def profiled(self, name: str) -> jax.profiler.TraceAnnotation:
        return jax.profiler.TraceAnnotation(name)  # shown in jax.profiler's traces

    def run_closure(self, closure: Callable, params: Any) -> tuple[Any, Any]:
        result = closure(params)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                "a closure on the JAX backend must return (loss, grads), as jax.value_and_grad(loss_fn) "
                f"does, but it returned {type(result).__name__}"
            )
        return result

    def match_gradients(self, grads: Any, structure: Any, params: list) -> list:
        leaves, found_structure = jax.tree_util.tree_flatten(grads)
        if found_structure != structure:  # a None gradient is a leaf here, and a sparse one
            leaves, found_structure = jax.tree_util.tree_flatten(grads, is_leaf=_is_gradient_leaf)
        if found_structure == structure:
            return [_checked_gradient(grad, param) for grad, param in zip(leaves, params)]
        # Only a mismatch needs the paths (slower to collect), to name what is missing or extra.
        found, _ = jax.tree_util.tree_flatten_with_path(grads, is_leaf=_is_gradient_leaf)
        expected = [p.path for p in params]
        given = [_where(path) for path, _ in found]
        missing = [w for w in expected if w not in given]
        unexpected = [w for w in given if w not in expected]
        detail = (
            "; ".join(
                part
                for part in (
                    f"no gradient at {', '.join(missing)}" if missing else "",
                    f"unexpected gradient at {', '.join(unexpected)}" if unexpected else "",
                )
                if part
            )
            or f"expected the structure {structure}, got {found_structure}"
        )
        raise ValueError(f"gradients do not match the parameters' tree: {detail}")

    def zero_grad(self, param: Param, set_to_none: bool) -> None:
        if param.grad is not None:
            param.grad = None if set_to_none else jnp.zeros_like(param.grad)

    def store_counter(self, value: np.ndarray) -> jax.Array:
        """Equal counts are one array (it is never donated): parameters that count alike
        share it, and a step schedules them once (see :func:`backends.jax_functional.step`)."""
        key = (value.dtype.str, value.item())
        stored = self._counters.get(key)
        if stored is None:
            stored = self._counters[key] = jnp.array(value)
            if len(self._counters) > 4096:  # the least recently stored count goes; never the one in use
                self._counters.popitem(last=False)
        else:
            self._counters.move_to_end(key)
        return stored

    def is_sparse(self, array: Any) -> bool:
        return isinstance(array, sparse.BCOO)

    def floating_bits(self, array: Any) -> int | None:
        return jnp.finfo(array.dtype).bits if jnp.issubdtype(array.dtype, jnp.floating) else None

    def cast(self, array: Any, dtype: str) -> Any:
        return array.astype(dtype)

    def all_finite(self, grads: list) -> bool:
        return bool(_all_finite([g.data if isinstance(g, sparse.BCOO) else g for g in grads]))

    def is_complex(self, array: jax.Array) -> bool:
        return jnp.iscomplexobj(array)

    def as_real(self, array: jax.Array) -> jax.Array:
        return jnp.stack([array.real, array.imag], axis=-1)

    def as_complex(self, array: jax.Array) -> jax.Array:
        return jax.lax.complex(array[..., 0], array[..., 1])

    def foreach(self, group: dict[str, Any], params: list) -> bool:
        return False  # one compiled program per step: torch.optim's single-tensor formulas

    def step_scalars(self, rule: Rule, groups: list, state: dict, host_h: Callable[[dict], Any]) -> dict[str, Any]:
        """Traced into one compiled program per step's shapes, as the functional form computes them."""
        from backends.jax_functional import hyperparameters, static, step_scalars

        switches = [rule.switches(group) for group, _ in groups]
        return step_scalars(
            rule,
            tuple(map(static, switches)),
            [hyperparameters(group, s) for (group, _), s in zip(groups, switches)],
            [[p.value for p in params] for _, params in groups],
            [[p.grad for p in params] for _, params in groups],
            [[state.get(p, {}) for p in params] for _, params in groups],
        )

    def apply(self, rule: Rule, work: list, state: dict, memory: dict, host_h: Callable[..., Any]) -> None:
        from backends.jax_functional import hyperparameters, static, step  # it traces with this backend

        # host_h goes unused: the coefficients are computed inside the compiled step, from numbers.
        layouts, layout, numbers, values, grads, arrays, counters, flats = [], [], [], [], [], [], [], []
        for group, params in work:
            group_switches = rule.switches(group)
            group_numbers = hyperparameters(group, group_switches)
            found = jax_buckets.layout(rule, static(group_switches), group_numbers, params, state, memory)
            group_sharing, group_arrays, group_counters = _counter_sets(rule, params, state, found)
            layouts.append(found)
            layout.append((found.switches, group_sharing, tuple(bucket.members for bucket in found.buckets)))
            numbers.append(group_numbers)
            values.append([params[i].value for i in found.loose])
            grads.append([p.grad for p in params])
            arrays.append(group_arrays)
            counters.append(group_counters)
            flats.append([bucket.flat for bucket in found.buckets])
        # The step consumes the parameters and state arrays: a gradient that is one of those
        # (opt.step(opt.params) for the loss |p|^2 / 2) must survive the call as its own copy.
        consumed = {id(a) for group in values for a in group}
        consumed.update(map(id, jax.tree_util.tree_leaves(arrays)))
        grads = [[jnp.copy(g) if id(g) in consumed else g for g in group_grads] for group_grads in grads]
        new_values, new_arrays, new_counters, new_flats = step(
            rule, tuple(layout), numbers, values, grads, arrays, counters, flats
        )
        for (_, params), found, (_, group_sharing, *_), *stepped in zip(
            work, layouts, layout, new_values, new_arrays, new_counters, new_flats
        ):
            group_values, group_arrays, group_counters, group_flats = stepped
            for param, value in zip(params, group_values):
                param.value = value
            for i, param_arrays in zip(found.loose, group_arrays):
                # In place, as torch.optim updates its state (and a new dict per parameter per
                # step would be garbage for Python's collector, whose passes cost more than this).
                advanced = group_counters[group_sharing[i]]
                if advanced or param_arrays:
                    param_state = state[params[i]]
                    param_state.update(advanced)
                    param_state.update(param_arrays)
            jax_buckets.stepped(found, group_values, group_flats, group_counters, group_sharing)

    def settle(self, memory: dict) -> None:
        jax_buckets.settle(memory)

    def load_state_value(self, value: Any, param: Param, dtype: str | None = None) -> jax.Array:
        array = owned_copy(value)  # never another optimizer's array: a step consumes its state
        return array.astype(dtype or param.dtype) if jnp.issubdtype(param.dtype, jnp.inexact) else array


def _counter_sets(rule: Rule, params: list, state: dict, found: jax_buckets.Layout) -> tuple[tuple, list, list]:
    """``params``' states as (which set of counters each has, the arrays of each parameter in no
    bucket, the distinct sets).

    Parameters whose counters are the same arrays share one schedule: store_counter gives equal
    counts one array, and a step advances each set once.  A bucket's members have its counters.
    """
    from backends.jax_functional import split_counters

    sets: dict[tuple, int] = {}
    sharing = [0] * len(params)
    arrays: list[dict] = []
    counters: list[dict] = []

    def which(held: dict) -> int:
        index = sets.setdefault(tuple(map(id, held.values())), len(counters))
        if index == len(counters):
            counters.append(held)
        return index

    for bucket in found.buckets:
        index = which(bucket.counters)
        for i in bucket.members:
            sharing[i] = index
    for i in found.loose:
        held, param_arrays = split_counters(rule, state.get(params[i], {}))
        sharing[i] = which(held)
        arrays.append(param_arrays)
    return tuple(sharing), arrays, counters


def _where(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _is_gradient_leaf(node: Any) -> bool:
    """None (no gradient) and sparse arrays are leaves of a gradient tree, not subtrees."""
    return node is None or isinstance(node, sparse.BCOO)


def _checked_gradient(grad: Any, param: Param) -> jax.Array | None:
    if getattr(grad, "aval", None) == param.value.aval:
        return grad  # the common case, decided by one comparison
    if grad is None:
        return None
    if not isinstance(grad, (jax.Array, sparse.BCOO)):
        try:
            grad = jnp.asarray(grad)
        except TypeError as error:
            raise TypeError(f"gradient at {param.path} is not an array: {error}") from None
    if grad.shape != param.shape:
        raise ValueError(
            f"gradient at {param.path} has shape {tuple(grad.shape)}, but the parameter has shape {tuple(param.shape)}"
        )
    complex_param = jnp.issubdtype(param.dtype, jnp.complexfloating)
    allowed = jnp.inexact if complex_param else jnp.floating
    if not jnp.issubdtype(grad.dtype, allowed):
        raise TypeError(
            f"gradient at {param.path} has dtype {grad.dtype}, but the parameter has dtype {param.dtype}: "
            f"a gradient must be {'floating-point or complex' if complex_param else 'floating-point'}"
        )
    return grad if grad.dtype == param.dtype else grad.astype(param.dtype)


@jax.jit
def _all_finite(arrays: list) -> jax.Array:
    return jnp.array([jnp.isfinite(a).all() for a in arrays]).all()


BACKEND = JaxBackend()
