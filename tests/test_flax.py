"""Flax: nnx models and linen's ``TrainState`` train with this library's optimizers as with optax's.

Each case runs the same training twice, once with ``optimizers.as_optax(optimizers.AdamW)``
and once with ``optax.adamw`` (which defines AdamW as torch does, so the two agree to
float32 rounding), or against this library's own object step where the result must be exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import optimizers

LR, WEIGHT_DECAY, STEPS = 0.01, 0.1, 5
#: float32 AdamW computed by two libraries' arithmetic, relative to the weights' scale
#: (measured: at most 2.3e-7 over these runs).
ACROSS_LIBRARIES = 2e-6


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.out = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden(x)))


def batches(count: int = STEPS) -> list[tuple[jax.Array, jax.Array]]:
    rng = np.random.default_rng(0)
    return [
        (jnp.asarray(rng.normal(size=(16, 4)), jnp.float32), jnp.asarray(rng.normal(size=(16, 2)), jnp.float32))
        for _ in range(count)
    ]


def loss(model: MLP, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    return jnp.mean((model(inputs) - targets) ** 2)


def ours(lr=LR) -> optax.GradientTransformation:
    return optimizers.as_optax(optimizers.AdamW, lr=lr, weight_decay=WEIGHT_DECAY)


def theirs() -> optax.GradientTransformation:
    return optax.adamw(LR, weight_decay=WEIGHT_DECAY)


def weights(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))]


def assert_close(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    scale = max(float(np.max(np.abs(x))) for x in b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=ACROSS_LIBRARIES * scale)


def train_nnx(tx: optax.GradientTransformation, data=None) -> tuple[MLP, nnx.Optimizer, list[int]]:
    """``STEPS`` steps of nnx's own training loop; also how many times the step was traced."""
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    traces: list[int] = []

    @nnx.jit
    def train_step(model, optimizer, inputs, targets):
        traces.append(1)
        grads = nnx.grad(loss)(model, inputs, targets)
        optimizer.update(model, grads)

    for inputs, targets in data or batches():
        train_step(model, optimizer, inputs, targets)
    return model, optimizer, traces


@pytest.mark.parametrize("where", ["nnx.state", "nnx.split"])
def test_an_optimizer_built_from_nnx_params_runs_on_jax_and_trains_the_model(where):
    model = MLP(nnx.Rngs(0))
    params = nnx.state(model, nnx.Param) if where == "nnx.state" else nnx.split(model, nnx.Param, ...)[1]
    optimizer = optimizers.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    assert optimizer.backend == "jax"
    for inputs, targets in batches():
        optimizer.step(nnx.grad(loss)(model, inputs, targets))
        nnx.update(model, optimizer.params)

    reference, _, _ = train_nnx(theirs())
    assert_close(weights(model), weights(reference))


def test_nnx_optimizer_with_as_optax_traces_once_and_equals_the_object_step():
    trained, _, traces = train_nnx(ours())
    assert len(traces) == 1, "the state's structure changed between steps, so nnx.jit traced again"

    model = MLP(nnx.Rngs(0))
    optimizer = optimizers.AdamW(nnx.state(model, nnx.Param), lr=LR, weight_decay=WEIGHT_DECAY)
    for inputs, targets in batches():
        optimizer.step(nnx.grad(loss)(model, inputs, targets))
        nnx.update(model, optimizer.params)
    # optax wants updates, so as_optax returns ``new - old`` and apply_updates adds it back:
    # exact where the two are within a factor of 2 (Sterbenz), else rounded at the step's
    # scale, about lr (the biases start at 0 and move by ~lr a step).
    at_the_step_scale = 2 * STEPS * np.finfo(np.float32).eps * LR
    for a, b in zip(weights(trained), weights(model), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=at_the_step_scale)
        assert np.array_equal(a, b) or np.max(np.abs(b)) < 8 * LR


def test_multi_steps_accumulates_as_with_optax():
    data = batches(2 * STEPS)
    trained, optimizer, traces = train_nnx(optax.MultiSteps(ours(), every_k_schedule=2), data)
    reference, _, _ = train_nnx(optax.MultiSteps(theirs(), every_k_schedule=2), data)
    assert len(traces) == 1
    assert int(optimizer.opt_state.gradient_step[...]) == STEPS
    assert_close(weights(trained), weights(reference))


def test_apply_if_finite_skips_a_non_finite_step_and_keeps_the_state():
    data = batches()
    poisoned = [*data[:2], (data[2][0].at[0, 0].set(jnp.inf), data[2][1]), *data[3:]]
    trained, optimizer, traces = train_nnx(optax.apply_if_finite(ours(), max_consecutive_errors=3), poisoned)
    reference, _, _ = train_nnx(optax.apply_if_finite(theirs(), max_consecutive_errors=3), poisoned)
    assert len(traces) == 1
    assert int(optimizer.opt_state.total_notfinite[...]) == 1
    steps = jax.tree_util.tree_leaves(optimizer.opt_state.inner_state.inner["step"])
    assert all(int(step) == STEPS - 1 for step in steps)
    assert_close(weights(trained), weights(reference))


def test_inject_hyperparams_changes_the_learning_rate_without_recompiling():
    def run(factory):
        model = MLP(nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, optax.inject_hyperparams(factory)(learning_rate=LR), wrt=nnx.Param)
        traces: list[int] = []

        @nnx.jit
        def train_step(model, optimizer, inputs, targets):
            traces.append(1)
            optimizer.update(model, nnx.grad(loss)(model, inputs, targets))

        for i, (inputs, targets) in enumerate(batches()):
            optimizer.opt_state.hyperparams["learning_rate"][...] = LR / (i + 1)
            train_step(model, optimizer, inputs, targets)
        return model, traces

    trained, traces = run(lambda learning_rate: ours(lr=learning_rate))
    reference, _ = run(lambda learning_rate: optax.adamw(learning_rate, weight_decay=WEIGHT_DECAY))
    assert len(traces) == 1
    assert_close(weights(trained), weights(reference))


def test_linen_train_state_applies_gradients_as_with_optax():
    import flax.linen as nn

    class Linen(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(jnp.tanh(nn.Dense(8)(x)))

    network = Linen()
    params = network.init(jax.random.key(0), jnp.zeros((1, 4)))

    @jax.jit
    def train_step(state, inputs, targets):
        def objective(params):
            return jnp.mean((state.apply_fn(params, inputs) - targets) ** 2)

        return state.apply_gradients(grads=jax.grad(objective)(state.params))

    def run(tx):
        state = train_state.TrainState.create(apply_fn=network.apply, params=params, tx=tx)
        for inputs, targets in batches():
            state = train_step(state, inputs, targets)
        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(state.params)]

    assert_close(run(ours()), run(theirs()))
