"""Any optimizer of this library as an ``optax.GradientTransformation``.

    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optimizers.as_optax(optimizers.AdamW(params, weight_decay=0.05),
                                         lr=optax.cosine_decay_schedule(1e-3, 10_000)))
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)

The transformation runs the optimizer's functional form (:meth:`Optimizer.functional`),
so it computes torch.optim's rule, not optax's namesake: where the two define an
algorithm differently (eps placement, first momentum buffer, initial accumulator), this
gives torch's result.  optax wants updates, not new parameters: the update is
``new - params``, which ``optax.apply_updates`` adds back exactly whenever the step is
less than the parameter's magnitude (Sterbenz); a parameter crossing zero may land an
ulp away from the object-oriented step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import backends

from .optimizer import Optimizer


class AdapterState(NamedTuple):
    count: Any  # steps taken, the argument of hyperparameter schedules
    # torch.optim's state entries laid out as optax lays out its own (``mu``, ``nu``): one
    # tree shaped like the parameters per entry, ``{"exp_avg": tree, "step": tree}``; a
    # list entry's matrices are ``GG.0``, ``GG.1``; where a leaf has no such entry, an empty
    # placeholder array.  Arrays, never dicts, sit where the parameters' leaves are, so
    # frameworks that wrap those places (Flax nnx's variables) store the state back
    # unchanged and the step compiles once.
    inner: Any


def as_optax(optimizer: Optimizer | type[Optimizer], **hyperparameters: Any) -> Any:
    """``optimizer`` as an ``optax.GradientTransformation`` (``params`` are required by ``update``).

    ``optimizer`` is one of this library's optimizers, or a class, as optax users write
    ``optax.adamw(lr)``: ``as_optax(optimizers.AdamW, lr=1e-3, weight_decay=0.05)``.
    Keyword arguments override numeric hyperparameters (``lr=``, ``betas=``, ...) with a
    value or an optax schedule, a function of the step count; they enter the compiled
    step as data, so a schedule never recompiles.  Given a class, the other keywords
    (``amsgrad=True``, ``nesterov=True``) go to its constructor.
    """
    backends.require("optax", extra="optax", feature="as_optax")
    import jax
    import jax.numpy as jnp
    import optax

    if isinstance(optimizer, type):
        # Numbers go to the constructor, which validates them; schedules and arrays (what
        # optax.inject_hyperparams passes, traced inside the user's jit) are data.
        constructor = {k: v for k, v in hyperparameters.items() if not (callable(v) or isinstance(v, jax.Array))}
        hyperparameters = {k: v for k, v in hyperparameters.items() if k not in constructor}
        form = optimizer.functional(**constructor)
    else:
        form = optimizer.functional()
    name = optimizer.__name__ if isinstance(optimizer, type) else type(optimizer).__name__
    unknown = sorted(set(hyperparameters) - set(form.hyperparams))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for {name}: "
            f"choose from {', '.join(sorted(form.hyperparams))}"
        )

    layouts: dict[tuple, list] = {}

    def init(params: Any) -> AdapterState:
        structure = jax.tree_util.tree_structure(params)
        return AdapterState(jnp.zeros([], jnp.int32), _by_entry(structure, form.init(params)))

    def update(updates: Any, state: AdapterState, params: Any = None) -> tuple[Any, AdapterState]:
        if params is None:
            raise ValueError(f"{name} through as_optax needs params: call update(grads, state, params)")
        values = {k: v(state.count) if callable(v) else v for k, v in hyperparameters.items()}
        values = {k: form.number(v) if isinstance(v, jax.Array) else v for k, v in values.items()}
        structure: Any = jax.tree_util.tree_structure(params)
        shapes = (structure, tuple((leaf.shape, leaf.dtype) for leaf in jax.tree_util.tree_leaves(params)))
        if shapes not in layouts:  # each leaf's entries, as the functional form lays them out
            layouts[shapes] = structure.flatten_up_to(jax.eval_shape(form.init, params))
        new_params, inner = form.update(updates, _by_leaf(structure, layouts[shapes], state.inner), params, values)
        steps = jax.tree_util.tree_map(lambda new, old: new - old, new_params, params)
        return steps, AdapterState(optax.safe_increment(state.count), _by_entry(structure, inner))

    return optax.GradientTransformation(init, update)


def _entry_name(path: tuple) -> str:
    return ".".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)


def _by_entry(structure: Any, state: Any) -> dict[str, Any]:
    """The functional form's state (a dict of entries per leaf) as one tree per entry."""
    import jax
    import jax.numpy as jnp

    leaves = [
        {_entry_name(path): array for path, array in jax.tree_util.tree_flatten_with_path(leaf_state)[0]}
        for leaf_state in structure.flatten_up_to(state)
    ]
    names = sorted({name for entries in leaves for name in entries})
    # A placeholder per place, never one shared array: a donated state may not hold one buffer twice.
    return {name: structure.unflatten([entries.get(name, jnp.zeros((0,))) for entries in leaves]) for name in names}


def _by_leaf(structure: Any, layout: list, inner: Any) -> Any:
    """:func:`_by_entry` undone: each leaf's entries as the functional form lays them out (``layout``)."""
    import jax

    try:
        columns = {name: structure.flatten_up_to(inner[name]) for name in inner}
    except (ValueError, TypeError) as error:
        raise ValueError(f"the as_optax state does not match the parameters' tree: {error}") from None
    leaves = []
    for i, leaf_layout in enumerate(layout):
        paths, leaf_structure = jax.tree_util.tree_flatten_with_path(leaf_layout)
        missing = sorted({_entry_name(path) for path, _ in paths} - set(columns))
        if missing:
            raise ValueError(f"the as_optax state has no entry {', '.join(map(repr, missing))}")
        leaves.append(
            jax.tree_util.tree_unflatten(leaf_structure, [columns[_entry_name(path)][i] for path, _ in paths])
        )
    return structure.unflatten(leaves)
