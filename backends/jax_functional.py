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

from backends import INITIALIZED, GroupStep, Rule, Scalars, initial_state, jax_buckets, numbers, run_update, widened
from backends.jax_backend import BACKEND
from backends.jax_ops import JaxOps, TracedMath

__all__ = ["FlatFunctional", "Functional", "INITIALIZED", "functional", "hyperparameters", "ravel", "static", "step"]


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


def _leaf_step(rule: Rule, shared: dict, scheduled: dict, value, grad, arrays: dict):
    """One parameter's step inside a trace: the rule, with its schedule's scalars."""
    if INITIALIZED in arrays:
        # A functional state has a fixed structure, so lazily created entries exist from the
        # start; the rule reads them through lazy_entry, which selects between the first step's
        # value and the later steps' by this flag (computing both fuses into one pass; a
        # lax.cond would keep XLA from updating the donated buffers in place: measured, SGD
        # with momentum 5x slower).
        held = {k: v for k, v in arrays.items() if k != INITIALIZED}
        flagged = {**shared, INITIALIZED: arrays[INITIALIZED]}
        new_value, new_arrays = _leaf_step(rule, flagged, scheduled, value, grad, held)
        return new_value, {**new_arrays, INITIALIZED: jnp.ones((), bool)}
    work, work_grad = widened(BACKEND, rule, value, value), widened(BACKEND, rule, grad, value)
    precision = jnp.promote_types(jnp.finfo(work.dtype).dtype, jnp.float32)
    h = Scalars(_own_copies({k: _in_precision(v, precision) for k, v in {**shared, **scheduled}.items()}))
    new_value, stepped = run_update(BACKEND, rule, work, work_grad, arrays, h)
    new_arrays = {}
    for key, new in stepped.items():  # an entry may be a list of arrays (SOAP's statistics)
        if key in arrays:
            new_arrays[key] = jax.tree_util.tree_map(lambda n, old: n.astype(old.dtype), new, arrays[key])
        else:
            new_arrays[key] = jax.tree_util.tree_map(lambda n: n.astype(work.dtype), new)
    return new_value.astype(value.dtype), new_arrays


def _schedule(rule: Rule, shared: dict, counters: dict) -> tuple[dict, dict]:
    """A schedule's scalars from a parameter's counters, and the counters advanced (in their dtypes)."""
    scheduled, advanced = rule.schedule(TracedMath, Scalars(shared), counters)
    return scheduled, {k: jnp.asarray(v).astype(counters[k].dtype) for k, v in advanced.items()}


def _own_copies(scalars: dict) -> dict:
    """``scalars`` as values of one parameter's (or one bucket's) step alone.

    XLA's simplifier rewrites an array's arithmetic with a scalar by how many users that
    scalar has: ``A / b`` becomes ``A * (1 / b)``, ``A / pow(c, 0.5)`` becomes
    ``A * pow(c, -0.5)``, only where ``b`` or the ``pow`` has one user.  A schedule shared by
    many parameters would then round otherwise than one parameter's, or a bucket's (by an ulp
    against torch.optim's division, either way).  Behind a barrier each step sees scalars of its
    own, computed as written: one parameter steps the same program however it is laid out.
    """
    traced = {k: v for k, v in scalars.items() if isinstance(v, jax.Array)}
    return {**scalars, **jax.lax.optimization_barrier(traced)} if traced else scalars


def _traced_step(rule, layout, numbers, values, grads, arrays, counters, flats):
    """A whole step, traced: every group's coefficients, each set of counters' schedule, then
    every parameter's rule.

    ``layout`` is static: per group, its switches, which set of counters each parameter has
    (``counters[g]`` holds group ``g``'s distinct sets: parameters that count alike share a
    schedule, computed and passed once), and its buckets, each a tuple of the indices of
    parameters whose values and state are flat (:mod:`backends.jax_buckets`): ``flats[g]``
    holds a (values, state) pair per bucket.  ``values[g]`` and ``arrays[g]`` hold the other
    parameters' values and state, in order; ``grads[g]`` every parameter's gradient.  A bucket
    steps as one vector, its members' gradients concatenated.  Returns every parameter's new
    value (a bucket's split out), the new state of the others, the advanced sets and the
    buckets' new pairs.
    """
    new_values, new_arrays, new_counters, new_flats = [], [], [], []
    for (group_switches, group_sharing, group_buckets), group_numbers, *group in zip(
        layout, numbers, values, grads, arrays, counters, flats
    ):
        group_values, group_grads, group_arrays, group_counters, group_flats = group
        shared = _shared(rule, group_switches, group_numbers)
        schedules = [_schedule(rule, shared, held) for held in group_counters]
        stepped_values, stepped_arrays = {}, []
        loose = jax_buckets.loose(len(group_grads), group_buckets)
        for i, value, leaf_arrays in zip(loose, group_values, group_arrays):
            scheduled = schedules[group_sharing[i]][0]
            stepped_values[i], leaf_arrays = _leaf_step(rule, shared, scheduled, value, group_grads[i], leaf_arrays)
            stepped_arrays.append(leaf_arrays)
        stepped_flats = []
        for members, (value, flat) in zip(group_buckets, group_flats):
            scheduled = schedules[group_sharing[members[0]]][0]
            grad = concatenated([group_grads[i] for i in members])
            value, flat = _leaf_step(rule, shared, scheduled, value, grad, flat)
            stepped_flats.append((value, flat))
            pieces = split_into(value, [group_grads[i].shape for i in members])
            stepped_values.update(zip(members, pieces))
        new_values.append([stepped_values[i] for i in range(len(group_grads))])
        new_arrays.append(stepped_arrays)
        new_counters.append([advanced for _, advanced in schedules])
        new_flats.append(stepped_flats)
    return new_values, new_arrays, new_counters, new_flats


def split_counters(rule: Rule, state: dict) -> tuple[dict, dict]:
    """A parameter's state as (its counters, its arrays): ``state`` itself where the rule counts nothing."""
    if not rule.counters:
        return _NO_COUNTERS, state
    arrays = dict(state)
    return {k: arrays.pop(k) for k in rule.counters if k in arrays}, arrays


_NO_COUNTERS: dict = {}


def _traced_step_scalars(rule, switches, numbers, values, grads, states):
    """The rule's ``step_scalars`` over every group, traced."""
    groups = [
        GroupStep(Scalars(_shared(rule, group_switches, group_numbers)), *arrays)
        for group_switches, group_numbers, *arrays in zip(switches, numbers, values, grads, states)
    ]
    return rule.step_scalars(JaxOps, TracedMath, groups)


#: The object-oriented step's ``step_scalars``: one program per step's shapes.
step_scalars = jax.jit(_traced_step_scalars, static_argnums=(0, 1))

#: The object-oriented step: one program for the whole step (switches, counter sharing and
#: buckets compiled in).  It donates the parameters and state arrays it replaces, so XLA writes
#: the new ones in their place; not the counters, which many parameters' states hold as one array.
step = jax.jit(_traced_step, static_argnums=(0, 1), donate_argnums=(3, 5, 7))


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


class FlatFunctional(NamedTuple):
    """:class:`Functional` over flat parameters: one vector per dtype instead of a pytree.

    ``flat, unravel = ravel(params)`` makes the flat parameters (a dict from dtype name to a
    1-D array) and the function that gives the pytree back; ``init`` and ``update`` are
    :class:`Functional`'s, on that dict.  Differentiating the loss with respect to ``flat``
    (through ``unravel``) gives flat gradients directly.  A step then runs a few long loops
    instead of one short one per leaf, which on many small leaves is most of its cost.
    Only for elementwise rules, which step a flat vector element for element as they step
    each leaf (to XLA's rounding, which may contract a multiply-add in one program and not in
    another; sums over every parameter, as Prodigy's, run in another order).
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]
    hyperparams: dict[str, Any]
    ravel: Callable[[Any], tuple[dict[str, jax.Array], Callable[[Any], Any]]]


def ravel(params: Any) -> tuple[dict[str, jax.Array], Callable[[Any], Any]]:
    """``params`` as one flat vector per dtype (in leaf order), and the function that unravels them.

    Jittable both ways; leaves keep their dtypes (unlike ``jax.flatten_util.ravel_pytree``,
    which promotes every leaf to one dtype).
    """
    leaves, structure = jax.tree_util.tree_flatten(params)
    shapes = [jnp.shape(leaf) for leaf in leaves]
    members: dict[str, list[int]] = {}
    for index, leaf in enumerate(leaves):
        members.setdefault(jnp.result_type(leaf).name, []).append(index)
    flat = {dtype: concatenated([leaves[i] for i in indices]) for dtype, indices in members.items()}

    def unravel(flat: Mapping[str, jax.Array]) -> Any:
        unravelled: list[Any] = [None] * len(shapes)
        for dtype, indices in members.items():
            for i, part in zip(indices, split_into(flat[dtype], [shapes[i] for i in indices])):
                unravelled[i] = part
        return jax.tree_util.tree_unflatten(structure, unravelled)

    return flat, unravel


def concatenated(arrays: list) -> jax.Array:
    """``arrays`` one after another, as one vector."""
    return jnp.concatenate([jnp.ravel(array) for array in arrays])


def split_into(vector: jax.Array, shapes: list) -> list:
    """The inverse of :func:`concatenated`: consecutive slices of ``vector``, shaped as ``shapes``."""
    ends = np.cumsum([int(np.prod(shape)) for shape in shapes])[:-1]
    return [piece.reshape(shape) for piece, shape in zip(jnp.split(vector, ends), shapes)]


#: The primitives of an elementwise rule: each output element depends on the same element of
#: each input and on scalars only (``jit`` only nests others; broadcasts are checked to be of
#: scalars).  A rule made of nothing else steps a flat vector element for element as each leaf.
_ELEMENTWISE = frozenset(
    """abs add sub mul div neg sign sqrt rsqrt pow integer_pow exp exp2 log log1p expm1 tanh logistic
    max min clamp select_n convert_element_type eq ne lt le gt ge and or not is_finite square copy
    copy_p floor ceil round nextafter jit pjit custom_jvp_call broadcast_in_dim optimization_barrier""".split()
)


def _not_elementwise(jaxpr: Any) -> set[str]:
    """The primitives of ``jaxpr`` (and of the programs it nests) that are not elementwise."""
    found = set()
    for equation in jaxpr.eqns:
        name = equation.primitive.name
        if name not in _ELEMENTWISE or (name == "broadcast_in_dim" and equation.invars[0].aval.shape):
            found.add(name)
        for param in equation.params.values():
            for nested in param if isinstance(param, (tuple, list)) else (param,):
                nested = getattr(nested, "jaxpr", nested)  # a ClosedJaxpr's
                if hasattr(nested, "eqns"):
                    found |= _not_elementwise(nested)
    return found


def functional(rule: Rule, group: Mapping[str, Any], h: Any, counter_dtype: type, flat: bool = False) -> Any:
    """The pure form of ``rule`` with ``group``'s switches and (default) hyperparameters.

    ``update`` runs the traced step :func:`step` compiles for the object-oriented
    ``step()``; only its inputs come from the caller instead of the optimizer.  With
    ``flat``, a :class:`FlatFunctional`, if the rule is elementwise.
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
        states = []
        for leaf in leaves:
            value = jnp.asarray(leaf)
            state = jax.tree_util.tree_map(
                lambda v, value=value: _placed_like(v, value), initial_state(BACKEND, rule, value, h, counter_dtype)
            )
            # Entries the rule creates at its first step (SGD's momentum buffer) exist from
            # the start here, as zeros, so the state's structure never changes.
            _, stepped = jax.eval_shape(lambda s, value=value: _first_step(rule, shared, value, s), state)
            lazy = {
                k: jax.tree_util.tree_map(lambda v, value=value: _placed_like(jnp.zeros(v.shape, v.dtype), value), v)
                for k, v in stepped.items()
                if k not in state
            }
            state = {**state, **lazy, INITIALIZED: jnp.zeros((), bool)} if lazy else state
            # Every leaf's arrays are its own, so the state can be donated.
            states.append({**state, **{name: jnp.array(value) for name, value in group_counters.items()}})
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
        split = [split_counters(rule, states[i]) for i in stepping]
        new_values, new_arrays, new_counters, _ = _traced_step(
            rule,
            ((switches[0], tuple(range(len(stepping))), ()),),  # every leaf's counters are its own
            [numbers],
            [[values[i] for i in stepping]],
            [step_grads],
            [[leaf_arrays for _, leaf_arrays in split]],
            [[leaf_counters for leaf_counters, _ in split]],
            [[]],
        )
        values, states = list(values), list(states)
        for i, value, leaf_arrays, leaf_counters in zip(stepping, new_values[0], new_arrays[0], new_counters[0]):
            values[i], states[i] = value, {**states[i], **leaf_counters, **leaf_arrays}
        if held:
            states = [{**leaf_state, **counters} for leaf_state in states]
        return jax.tree_util.tree_unflatten(structure, values), jax.tree_util.tree_unflatten(structure, states)

    plain_defaults = {k: _plain(v) for k, v in defaults.items()}
    if not flat:
        return Functional(init, update, plain_defaults)
    # One parameter's whole step (both branches of its lazily created entries), on a vector.
    vector = jnp.zeros((2,), jnp.float32)
    shared = _shared(rule, switches[0], {**defaults, **group_counters})
    try:
        state = {k: v for k, v in init([vector])[0].items() if k not in group_counters}
        first_step = jax.make_jaxpr(lambda value, state: _first_step(rule, shared, value, state))
        mixing = _not_elementwise(first_step(vector, state).jaxpr)
    except Exception as error:  # a rule for matrices only (Muon)
        raise ValueError(f"this rule does not step a flat vector: {error}") from error
    if mixing:
        raise ValueError(
            f"this rule is not elementwise (it uses {', '.join(sorted(mixing))}), so a flat vector of "
            "parameters would not step as the parameters do: use the per-leaf functional form"
        )
    return FlatFunctional(init, update, plain_defaults, ravel)


def _first_step(rule: Rule, shared: dict, value: Any, state: dict) -> tuple[Any, dict]:
    """A parameter's first step (its gradient: itself), for the state entries it creates."""
    counters, arrays = split_counters(rule, state)
    return _leaf_step(rule, shared, _schedule(rule, shared, counters)[0], value, value, arrays)


def _as_dtype(grad: Any, dtype: Any) -> Any:
    return grad.astype(dtype) if isinstance(grad, sparse.BCOO) else jnp.asarray(grad).astype(dtype)


def _shared(rule: Rule, switches: tuple, numbers: Mapping[str, Any]) -> dict:
    return {**dict(switches), **rule.coefficients(TracedMath, numbers)}


def _placed_like(array: jax.Array, like: jax.Array) -> jax.Array:
    """``array`` with ``like``'s sharding, so state lives where its parameter lives; a copy of its own
    (counters are shared between the object step's parameters, a donated functional state's are not)."""
    sharding = getattr(like, "sharding", None)
    if sharding is not None and array.shape == like.shape:
        return jax.device_put(array, sharding, may_alias=False)
    return jnp.array(array, copy=True)


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
