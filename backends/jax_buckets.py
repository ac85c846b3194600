"""Flat buckets: the state of many small parameters kept as one array per entry between JAX steps.

XLA:CPU spends a few microseconds on every array a compiled call takes or returns, whatever
its size: over 1000 small parameters, passing Adam's 3000 parameter and state arrays in and
out costs more than their arithmetic.  A rule that is elementwise steps a flat vector as it
steps each leaf, so the state of a group's small parameters that share a dtype, a set of
counters and a device is kept as one flat array per entry, beside one of their values: a
*bucket*.  The step concatenates the members' gradients inside its program, steps the
vectors, and splits the new values out for the caller, who differentiates with respect to
each parameter's own array (a parameter given a new value is concatenated again).  Large
parameters, for which a concatenation would add a pass over memory, and parameters placed on
several devices step on their own.

The per-parameter state is split out of the buckets when it is read: the optimizer's
``state`` (so ``opt.state[p]``, ``state_dict()``, pickling) *settles* them first.  Arrays
written into that state are taken at the next step: a bucket whose members' state is no
longer what settling wrote is rebuilt from it.
"""

from __future__ import annotations

import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from backends import Rule

#: Parameters of this many elements or more step on their own.
SMALL = 1 << 15

_LAYOUTS = "jax layouts"


class Bucket:
    """Parameters of one group (``members``: indices into its stepping parameters) whose state is flat."""

    __slots__ = ("members", "states", "shapes", "entries", "flat", "values", "counters", "settled")

    def __init__(self, members: tuple[int, ...], params: list, states: list[dict], entries: tuple, counters: dict):
        self.members = members
        self.states = states  # the members' state dicts, the optimizer's own objects
        self.shapes = tuple(param.value.shape for param in params)
        self.entries = entries  # the state entries and dtypes the rule was found elementwise with
        self.values = [param.value for param in params]  # the arrays the members were last given
        # (values, state): the state is the truth while ``settled`` is None
        self.flat = _concatenated(self.values, [{key: held[key] for key, _ in entries} for held in states])
        self.counters = counters  # the members' counters (one set), current
        self.settled: list[dict] | None = None  # what settling last wrote into each member's state

    def settle(self) -> None:
        if self.settled is not None:
            return
        self.settled = []
        for held, pieces in zip(self.states, _split(self.flat[1], self.shapes)):
            written = {**self.counters, **pieces}
            held.update(written)
            self.settled.append(written)

    def holds(self, params: list, state: dict) -> bool:
        """Whether the members' values are those the last step gave them, their state still what
        settling wrote (trivially, if not settled since), with the entries the rule was found
        elementwise with (a step may create entries)."""
        if _entries(self.flat[1]) != self.entries:
            return False
        if not all(map(operator.is_, [params[i].value for i in self.members], self.values)):
            return False
        if self.settled is None:
            return True
        for i, held, written in zip(self.members, self.states, self.settled):
            found = state.get(params[i])
            if found is not held or len(found) != len(written):
                return False
            if any(found.get(key) is not array for key, array in written.items()):
                return False
        return True


class Layout:
    """A group's stepping parameters as buckets and loose parameters (which step on their own)."""

    __slots__ = ("params", "switches", "buckets", "loose")

    def __init__(self, params: list, switches: tuple, buckets: list[Bucket]):
        self.params = params
        self.switches = switches
        self.buckets = buckets
        self.loose = loose(len(params), [bucket.members for bucket in buckets])

    def holds(self, params: list, switches: tuple, state: dict) -> bool:
        """Whether the next step over ``params`` can step as this layout says."""
        return (
            self.params == params
            and self.switches == switches
            and all(bucket.holds(params, state) for bucket in self.buckets)
            and not any(isinstance(params[i].grad, sparse.BCOO) for bucket in self.buckets for i in bucket.members)
        )


def loose(count: int, buckets: list[tuple[int, ...]]) -> list[int]:
    """The indices, of ``count`` parameters, in none of ``buckets`` (each a tuple of members)."""
    bucketed = {i for members in buckets for i in members}
    return [i for i in range(count) if i not in bucketed]


def layout(rule: Rule, switches: tuple, numbers: dict, params: list, state: dict, memory: dict) -> Layout:
    """The layout of a group's step over ``params`` (each with a gradient and a state)."""
    layouts = memory.setdefault(_LAYOUTS, {})
    key = id(params[0])
    found = layouts.get(key)
    if found is not None and found.holds(params, switches, state):
        return found
    settle(memory)  # the state of every bucket to its parameters before any is formed again
    layouts[key] = _build(rule, switches, numbers, params, state)
    return layouts[key]


def settle(memory: dict) -> None:
    """Write every bucket's state into its members' state dicts."""
    for found in memory.get(_LAYOUTS, {}).values():
        for bucket in found.buckets:
            bucket.settle()


def stepped(found: Layout, values: list, flats: list, counters: list, sharing: tuple) -> None:
    """A step's results for ``found``'s buckets: the members' new values, the flat pairs, the counters."""
    for bucket, flat in zip(found.buckets, flats):
        bucket.flat, bucket.counters, bucket.settled = flat, counters[sharing[bucket.members[0]]], None
        bucket.values = [values[i] for i in bucket.members]


def _build(rule: Rule, switches: tuple, numbers: dict, params: list, state: dict) -> Layout:
    from backends.jax_functional import split_counters

    if rule.step_scalars is not None:  # it reads every parameter's state before the step
        return Layout(params, switches, [])
    candidates: dict[tuple, list[int]] = {}
    held_counters: dict[tuple, dict] = {}
    for i, param in enumerate(params):
        value, grad = param.value, param.grad
        counters, arrays = split_counters(rule, state[param])
        devices = value.sharding.device_set
        if (
            not 2 <= value.size < SMALL  # a scalar has no loop to share (nor a broadcast to rewrite)
            or len(devices) != 1
            or not jnp.issubdtype(value.dtype, jnp.floating)
            or not isinstance(grad, jax.Array)
            or not all(isinstance(a, jax.Array) and a.shape == value.shape for a in arrays.values())
        ):
            continue
        signature = (value.dtype, _entries(arrays), tuple(map(id, counters.values())), next(iter(devices)))
        candidates.setdefault(signature, []).append(i)
        held_counters[signature] = counters
    buckets = []
    for signature, members in candidates.items():
        dtype, entries, _, _ = signature
        counters = held_counters[signature]
        if len(members) > 1 and _is_elementwise(rule, switches, dtype, entries, numbers, counters):
            helds = [state[params[i]] for i in members]
            buckets.append(Bucket(tuple(members), [params[i] for i in members], helds, entries, counters))
    return Layout(params, switches, buckets)


def _entries(arrays: dict) -> tuple:
    return tuple(sorted((key, array.dtype) for key, array in arrays.items()))


def _is_elementwise(rule: Rule, switches: tuple, dtype: Any, entries: tuple, numbers: dict, counters: dict) -> bool:
    key = (
        rule,
        switches,
        np.dtype(dtype).name,
        entries,
        jax.tree_util.tree_structure(numbers),
        tuple((k, jnp.result_type(v)) for k, v in counters.items()),
    )
    found = _elementwise.get(key)
    if found is None:
        found = _elementwise[key] = _traces_elementwise(rule, switches, dtype, entries, numbers, counters)
    return found


_elementwise: dict[tuple, bool] = {}


def _traces_elementwise(rule: Rule, switches: tuple, dtype: Any, entries: tuple, numbers: dict, counters: dict) -> bool:
    """Whether one parameter's step, traced on a vector, is made of elementwise operations only."""
    from backends.jax_functional import _leaf_step, _not_elementwise, _schedule, _shared

    def one_step(numbers, counters, value, grad, arrays):
        shared = _shared(rule, switches, numbers)
        return _leaf_step(rule, shared, _schedule(rule, shared, counters)[0], value, grad, arrays)

    vector = jax.ShapeDtypeStruct((2,), dtype)
    arrays = {k: jax.ShapeDtypeStruct((2,), entry_dtype) for k, entry_dtype in entries}
    try:
        traced = jax.make_jaxpr(one_step)(numbers, counters, vector, vector, arrays)
    except Exception:  # a rule for matrices only
        return False
    return not _not_elementwise(traced.jaxpr)


# Eager, not jitted: they run when a bucket forms and when its state is read, rarely, and each
# set of shapes would be a compilation of its own.
def _concatenated(values: list, states: list[dict]) -> tuple:
    from backends.jax_functional import concatenated

    return concatenated(values), {key: concatenated([held[key] for held in states]) for key in states[0]}


def _split(flat: dict, shapes: tuple) -> list[dict]:
    from backends.jax_functional import split_into

    pieces = {key: split_into(array, list(shapes)) for key, array in flat.items()}
    return [{key: pieces[key][j] for key in flat} for j in range(len(shapes))]
