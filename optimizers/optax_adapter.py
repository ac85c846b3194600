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
    inner: Any  # the functional form's state: torch.optim's entries per leaf


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
        constructor = {k: v for k, v in hyperparameters.items() if not callable(v)}
        hyperparameters = {k: v for k, v in hyperparameters.items() if callable(v)}
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

    def init(params: Any) -> AdapterState:
        return AdapterState(jnp.zeros([], jnp.int32), form.init(params))

    def update(updates: Any, state: AdapterState, params: Any = None) -> tuple[Any, AdapterState]:
        if params is None:
            raise ValueError(f"{name} through as_optax needs params: call update(grads, state, params)")
        values = {k: form.number(v(state.count)) if callable(v) else v for k, v in hyperparameters.items()}
        new_params, inner = form.update(updates, state.inner, params, values)
        steps = jax.tree_util.tree_map(lambda new, old: new - old, new_params, params)
        return steps, AdapterState(optax.safe_increment(state.count), inner)

    return optax.GradientTransformation(init, update)
