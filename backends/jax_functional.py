"""The JAX step, traced: what the object-oriented ``step()`` compiles, and the functional form.

The rule for every leaf of every group is traced into one program, scalar arithmetic
included (coefficients, and schedules from each parameter's counters).  The switches
a rule branches on (bools, strings, None) are compiled in; every numeric
hyperparameter enters as a weakly-typed scalar argument, so changing a learning rate
never recompiles and never changes a parameter's dtype.  The same traced step is the
optimizer's functional form (:class:`Functional`), for a training step the user
compiles.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.lax.lax import _convert_element_type  # the one way to make a traced value weakly typed
from jax.experimental import sparse

from backends import INITIALIZED, GroupStep, Rule, Scalars, initial_state, numbers, run_update, widened
from backends.jax_backend import BACKEND
from backends.jax_ops import JaxOps, TracedMath

__all__ = ["Functional", "INITIALIZED", "functional", "hyperparameters", "static", "step"]


def hyperparameters(group: Mapping[str, Any], switches: Mapping[str, Any]) -> dict[str, Any]:
    """A group's numeric hyperparameters as the compiled step's data.

    Python numbers stay Python floats, which jit takes as weakly typed scalars (without a
    dispatch per number per step), so they round as torch's Python scalars do against a
    tensor's dtype; arrays (a tensor-like lr) keep their dtype.
    """

    def convert(value: Any) -> float | jax.Array:
        if not hasattr(value, "shape"):
            return float(value)
        if isinstance(value, jax.Array) and value.shape == ():
            return value
        return jnp.reshape(value if isinstance(value, jax.Array) else jnp.asarray(np.asarray(value)), ())

    return numbers(group, convert, switches)


def static(switches: Mapping[str, Any]) -> tuple:
    return tuple(sorted(switches.items()))


def _in_precision(value: Any, precision: Any) -> Any:
    # Coefficients round to the parameter's precision, as torch casts a Python scalar;
    # low-precision parameters compute in float32, as torch's kernels do.  A narrower
    # array (a float32 tensor-like lr beside float64 parameters) keeps its dtype: torch's
    # scalar arithmetic on such a tensor (Adafactor's step size) stays in float32 too.
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.floating):
        if value.weak_type:  # a Python number: it stays one, in the parameter's precision
            return _convert_element_type(value, precision, weak_type=True)
        if jnp.finfo(value.dtype).bits > jnp.finfo(precision).bits:
            return value.astype(precision)
    return value


def _leaf_step(rule: Rule, shared: dict, value, grad, param_state: dict):
    """One parameter's step inside a trace: its schedule from its own counters, then the rule."""
    if INITIALIZED in param_state:
        # A functional state has a fixed structure, so lazily created entries exist from the
        # start; the rule reads them through lazy_entry, which selects between the first step's
        # value and the later steps' by this flag (computing both fuses into one pass; a
        # lax.cond would keep XLA from updating the donated buffers in place: measured, SGD
        # with momentum 5x slower).
        held = {k: v for k, v in param_state.items() if k != INITIALIZED}
        new_value, new_state = _leaf_step(rule, {**shared, INITIALIZED: param_state[INITIALIZED]}, value, grad, held)
        return new_value, {**new_state, INITIALIZED: jnp.ones((), bool)}
    counters = {k: param_state[k] for k in rule.counters}
    arrays = {k: v for k, v in param_state.items() if k not in rule.counters}
    scheduled, advanced = rule.schedule(TracedMath, Scalars(shared), counters)
    work, work_grad = widened(BACKEND, rule, value, value), widened(BACKEND, rule, grad, value)
    precision = jnp.promote_types(jnp.finfo(work.dtype).dtype, jnp.float32)
    h = Scalars({k: _in_precision(v, precision) for k, v in {**shared, **scheduled}.items()})
    new_value, new_arrays = run_update(BACKEND, rule, work, work_grad, arrays, h)
    new_state = {k: jnp.asarray(v).astype(counters[k].dtype) for k, v in advanced.items()}
    for key, new in new_arrays.items():  # an entry may be a list of arrays (SOAP's statistics)
        if key in arrays:
            new_state[key] = jax.tree_util.tree_map(lambda n, old: n.astype(old.dtype), new, arrays[key])
        else:
            new_state[key] = jax.tree_util.tree_map(lambda n: n.astype(work.dtype), new)
    return new_value.astype(value.dtype), new_state


def _traced_step(rule, switches, numbers, values, grads, states):
    """A whole step, traced: every group's coefficients, then every parameter's rule."""
    new_values, new_states = [], []
    for group_switches, group_numbers, group_values, group_grads, group_states in zip(
        switches, numbers, values, grads, states
    ):
        shared = _shared(rule, group_switches, group_numbers)
        stepped = [_leaf_step(rule, shared, *leaf) for leaf in zip(group_values, group_grads, group_states)]
        new_values.append([value for value, _ in stepped])
        new_states.append([param_state for _, param_state in stepped])
    return new_values, new_states


def _traced_step_scalars(rule, switches, numbers, values, grads, states):
    """The rule's ``step_scalars`` over every group, traced."""
    groups = [
        GroupStep(Scalars(_shared(rule, group_switches, group_numbers)), *arrays)
        for group_switches, group_numbers, *arrays in zip(switches, numbers, values, grads, states)
    ]
    return rule.step_scalars(JaxOps, TracedMath, groups)


#: The object-oriented step's ``step_scalars``: one program per step's shapes.
step_scalars = jax.jit(_traced_step_scalars, static_argnums=(0, 1))

#: The object-oriented step: one program for the whole step (switches compiled in).  It
#: donates the parameters and state it replaces, so XLA writes the new ones in their place.
step = jax.jit(_traced_step, static_argnums=(0, 1), donate_argnums=(3, 5))


class Functional(NamedTuple):
    """An optimizer as pure functions, for a training step the user compiles.

    ``init(params) -> state`` and ``update(grads, state, params, hyperparams=None) ->
    (new_params, new_state)``.  ``state`` is a pytree shaped like ``params`` with a dict
    of arrays at each leaf (torch.optim's state entries, e.g. ``step``, ``exp_avg``), so
    it can be donated, sharded and checkpointed like any pytree.  ``hyperparams``
    overrides the numeric hyperparameters in :attr:`hyperparams` (``lr``, ``betas``,
    ...) with numbers or arrays, traced or not: changing them never recompiles.  A
    ``None`` gradient leaves its parameter and state as they are.
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]
    hyperparams: dict[str, Any]

    @staticmethod
    def number(value: Any) -> Any:
        """A (traced) value that stands for a number hyperparameter, as a Python float does.

        An array hyperparameter keeps its dtype (a float32 lr computes in float32, as a
        tensor lr does in torch); a schedule's float32 output is a number in disguise.
        """
        return TracedMath.float(value)


def functional(rule: Rule, group: Mapping[str, Any], h: Any, counter_dtype: type) -> Functional:
    """The pure form of ``rule`` with ``group``'s switches and (default) hyperparameters.

    ``update`` runs the traced step :func:`step` compiles for the object-oriented
    ``step()``; only its inputs come from the caller instead of the optimizer.
    """
    group_switches = rule.switches(group)
    switches = (static(group_switches),)
    defaults = hyperparameters(group, group_switches)
    # Counters the object form keeps in the param group ride in every leaf's state here (one
    # copy each, advanced together), so the state stays a pytree shaped like the parameters.
    group_counters = {name: defaults.pop(name) for name in rule.group_counters}

    def init(params: Any) -> Any:
        leaves, structure = jax.tree_util.tree_flatten(params)
        shared = _shared(rule, switches[0], {**defaults, **group_counters})
        counters = {name: jnp.asarray(value) for name, value in group_counters.items()}
        states = []
        for leaf in leaves:
            value = jnp.asarray(leaf)
            state = jax.tree_util.tree_map(
                lambda v, value=value: _placed_like(v, value), initial_state(BACKEND, rule, value, h, counter_dtype)
            )
            # Entries the rule creates at its first step (SGD's momentum buffer) exist from
            # the start here, as zeros, so the state's structure never changes.
            _, stepped = jax.eval_shape(lambda s, value=value: _leaf_step(rule, shared, value, value, s), state)
            lazy = {
                k: jax.tree_util.tree_map(lambda v, value=value: _placed_like(jnp.zeros(v.shape, v.dtype), value), v)
                for k, v in stepped.items()
                if k not in state
            }
            state = {**state, **lazy, INITIALIZED: jnp.zeros((), bool)} if lazy else state
            states.append({**state, **counters})
        return jax.tree_util.tree_unflatten(structure, states)

    @jax.jit
    def update(grads: Any, state: Any, params: Any, hyperparams: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
        values, structure = jax.tree_util.tree_flatten(params)
        grad_leaves = _flatten_like(structure, grads, "gradients")
        states = _flatten_like(structure, state, "state")
        numbers = {**defaults, **_checked_overrides(defaults, hyperparams or {})}
        held = {name: states[0][name] for name in group_counters} if states else {}
        states = [{k: v for k, v in s.items() if k not in held} for s in states]
        stepping = [i for i, grad in enumerate(grad_leaves) if grad is not None]
        step_grads = [_as_dtype(grad_leaves[i], values[i].dtype) for i in stepping]
        if rule.step_scalars is not None:
            h = Scalars(_shared(rule, switches[0], {**numbers, **held}))
            whole = GroupStep(h, [values[i] for i in stepping], step_grads, [states[i] for i in stepping])
            numbers = {**numbers, **rule.step_scalars(JaxOps, TracedMath, [whole])}
        if held:
            advanced = rule.advance_group(TracedMath, {**numbers, **held})
            numbers = {**numbers, **advanced}
            counters = {name: jnp.asarray(advanced[name]).astype(held[name].dtype) for name in group_counters}
        new_values, new_states = _traced_step(
            rule,
            switches,
            [numbers],
            [[values[i] for i in stepping]],
            [step_grads],
            [[states[i] for i in stepping]],
        )
        values, states = list(values), list(states)
        for i, value, leaf_state in zip(stepping, new_values[0], new_states[0]):
            values[i], states[i] = value, leaf_state
        if held:
            states = [{**leaf_state, **counters} for leaf_state in states]
        return jax.tree_util.tree_unflatten(structure, values), jax.tree_util.tree_unflatten(structure, states)

    return Functional(init, update, {k: _plain(v) for k, v in defaults.items()})


def _as_dtype(grad: Any, dtype: Any) -> Any:
    return grad.astype(dtype) if isinstance(grad, sparse.BCOO) else jnp.asarray(grad).astype(dtype)


def _shared(rule: Rule, switches: tuple, numbers: Mapping[str, Any]) -> dict:
    return {**dict(switches), **rule.coefficients(TracedMath, numbers)}


def _placed_like(array: jax.Array, like: jax.Array) -> jax.Array:
    """``array`` with ``like``'s sharding, so state lives where its parameter lives."""
    sharding = getattr(like, "sharding", None)
    return jax.device_put(array, sharding) if sharding is not None and array.shape == like.shape else array


def _flatten_like(structure: Any, tree: Any, what: str) -> list:
    try:
        return structure.flatten_up_to(tree)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{what} do not match the parameters' tree: {error}") from None


def _checked_overrides(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))}: this optimizer's numeric "
            f"hyperparameters are {', '.join(sorted(defaults))}"
        )
    return {k: tuple(overrides[k]) if isinstance(defaults[k], tuple) else overrides[k] for k in overrides}


def _plain(value: Any) -> Any:
    """A default hyperparameter as the user wrote it: a float (or a tuple of floats) unless it was an array."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return float(value) if getattr(value, "weak_type", False) else value
