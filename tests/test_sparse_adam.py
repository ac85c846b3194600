"""SparseAdam: sparse gradients on both backends (torch sparse COO, JAX BCOO), against torch.optim."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from jax.experimental import sparse

import optimizers
from tests.harness import REPORT, to_numpy
from tests.registry import REGISTRY
from tests.test_properties import ACROSS_FRAMEWORKS


@st.composite
def sparse_problems(draw, dtype):
    """An embedding-like table and, per step, gradients for a random subset of its rows.

    Rows may repeat within a step (torch sums them: the rule sees their sum) and a step
    may touch no row at all.
    """
    rows, columns = draw(st.integers(1, 8)), draw(st.sampled_from([1, 3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    steps = []
    for _ in range(draw(st.integers(1, 15))):
        touched = draw(st.lists(st.integers(0, rows - 1), max_size=2 * rows))
        steps.append((np.array(touched, np.int64), rng.standard_normal((len(touched), columns)).astype(dtype)))
    return rng.standard_normal((rows, columns)).astype(dtype), steps


def torch_gradient(shape, rows, values):
    return torch.sparse_coo_tensor(torch.from_numpy(rows)[None], torch.from_numpy(values), shape)


def jax_gradient(shape, rows, values):
    return sparse.BCOO((jnp.asarray(values), jnp.asarray(rows)[:, None]), shape=shape)


def run(backend, start, steps, kwargs):
    """Per step: the parameter and both moments, as NumPy arrays."""
    if backend == "jax":
        optimizer = optimizers.SparseAdam(jnp.asarray(start), **kwargs)
        param = optimizer.param_groups[0]["params"][0]
    else:
        param = torch.tensor(start, requires_grad=True)
        optimizer = (torch.optim.SparseAdam if backend == "torch.optim" else optimizers.SparseAdam)([param], **kwargs)
    history = []
    for rows, values in steps:
        if backend == "jax":
            optimizer.step(jax_gradient(start.shape, rows, values))
        else:
            param.grad = torch_gradient(start.shape, rows, values)
            optimizer.step()
        state = optimizer.state[param]
        value = optimizer.params if backend == "jax" else param
        history.append([to_numpy(v) for v in (value, state["exp_avg"], state["exp_avg_sq"])])
    return history


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@given(data=st.data())
def test_sparse_adam_matches_torch_optim_and_touches_only_the_gradients_rows(dtype, data):
    start, steps = data.draw(sparse_problems(dtype), label="problem")
    kwargs = data.draw(REGISTRY["SparseAdam"].hyperparameters, label="hyperparameters")
    reference = run("torch.optim", start, steps, kwargs)
    ours = run("torch", start, steps, kwargs)
    jax_run = run("jax", start, steps, kwargs)
    REPORT.compare("SparseAdam", "torch vs torch.optim", dtype, ours, reference, 0.0)
    REPORT.compare("SparseAdam", "jax vs torch", dtype, jax_run, ours, ACROSS_FRAMEWORKS[dtype])
    before = [start, np.zeros_like(start), np.zeros_like(start)]
    for (rows, _), after in zip(steps, jax_run):
        untouched = np.setdiff1d(np.arange(start.shape[0]), rows)
        for old, new in zip(before, after):
            assert new[untouched].tobytes() == old[untouched].tobytes()
        before = after


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_dense_gradient_is_refused_with_torch_optims_error_and_nothing_changes(backend):
    with pytest.raises(RuntimeError) as expected:
        param = torch.zeros(3, 2, requires_grad=True)
        param.grad = torch.ones(3, 2)
        torch.optim.SparseAdam([param]).step()
    if backend == "torch":
        first, second = torch.zeros(3, 2, requires_grad=True), torch.zeros(3, 2, requires_grad=True)
        optimizer = optimizers.SparseAdam([first, second])
        first.grad = torch_gradient((3, 2), np.array([1]), np.ones((1, 2), np.float32))
        second.grad = torch.ones(3, 2)
        step = optimizer.step
    else:
        optimizer = optimizers.SparseAdam([jnp.zeros((3, 2)), jnp.zeros((3, 2))])
        step = lambda: optimizer.step([jax_gradient((3, 2), np.array([1]), np.ones((1, 2))), jnp.ones((3, 2))])  # noqa: E731
    with pytest.raises(RuntimeError, match=f"^{expected.value}$"):
        step()
    assert not optimizer.state  # the sparse gradient before it was not applied either


def test_constructor_errors_match_torch_optim():
    cases = [
        dict(lr=0.0),
        dict(eps=0.0),
        dict(betas=(1.0, 0.5)),
        dict(betas=(0.5, -0.1)),
        dict(lr=torch.tensor([0.1, 0.2])),
    ]
    for kwargs in cases:
        for params in ([torch.zeros(2, requires_grad=True)], [jnp.zeros(2)]):
            with pytest.raises(ValueError) as expected:
                torch.optim.SparseAdam([torch.zeros(2, requires_grad=True)], **kwargs)
            with pytest.raises(ValueError, match=f"^{expected.value}"):
                optimizers.SparseAdam(params, **kwargs)
    complex_params = [torch.zeros(2, requires_grad=True), torch.zeros(2, dtype=torch.complex64, requires_grad=True)]
    with pytest.raises(ValueError) as expected:
        torch.optim.SparseAdam(complex_params)
    assert str(expected.value) == "Complex params at indices [[0, 1]]: SparseAdam does not support complex parameters"
    for params in (complex_params, [jnp.zeros(2), jnp.zeros(2, jnp.complex64)]):
        with pytest.raises(ValueError, match=r"^Complex params at indices \[\[0, 1\]\]"):
            optimizers.SparseAdam(params)


# torch.optim's load_state_dict takes torch tensors only: a JAX checkpoint reaches it through ours.
@pytest.mark.parametrize("route", ["torch.optim->jax", "jax->torch"])
def test_a_checkpoint_moves_between_torch_optim_and_jax_with_an_integer_step(route):
    start, steps = np.random.default_rng(0).standard_normal((5, 2)), []
    rng = np.random.default_rng(1)
    for _ in range(6):
        rows = rng.integers(0, 5, 3)
        steps.append((rows, rng.standard_normal((3, 2))))
    source, target = route.split("->")
    expected = run("torch.optim", start, steps, dict(lr=0.05))[-1][0]

    def build(backend, value):
        if backend == "jax":
            optimizer = optimizers.SparseAdam(jnp.asarray(value), lr=0.05)
            return optimizer, lambda rows, values: optimizer.step(jax_gradient(value.shape, rows, values))
        param = torch.tensor(value, requires_grad=True)
        optimizer = (torch.optim.SparseAdam if backend == "torch.optim" else optimizers.SparseAdam)([param], lr=0.05)

        def step(rows, values):
            param.grad = torch_gradient(value.shape, rows, values)
            optimizer.step()

        return optimizer, step

    first, step = build(source, start)
    for rows, values in steps[:3]:
        step(rows, values)
    saved = first.state_dict()
    assert isinstance(saved["state"][0]["step"], int) or saved["state"][0]["step"].dtype.kind == "i"
    middle = to_numpy(first.params if source == "jax" else first.param_groups[0]["params"][0])
    second, step = build(target, middle)
    second.load_state_dict(saved)
    for rows, values in steps[3:]:
        step(rows, values)
    assert isinstance(second.state_dict()["state"][0]["step"], int) or target == "jax"  # as torch.optim keeps it
    final = to_numpy(second.params if target == "jax" else second.param_groups[0]["params"][0])
    np.testing.assert_allclose(final, expected, rtol=1e-12, atol=1e-14)


def test_the_functional_form_takes_bcoo_gradients_under_jit():
    start = np.random.default_rng(0).standard_normal((4, 3))
    gradient = jax_gradient((4, 3), np.array([0, 2, 2]), np.ones((3, 3)))
    optimizer = optimizers.SparseAdam(jnp.asarray(start), lr=0.1)
    form = optimizer.functional()
    params, state = jax.jit(form.update)(gradient, form.init(jnp.asarray(start)), jnp.asarray(start))
    optimizer.step(gradient)
    np.testing.assert_array_equal(np.asarray(params), np.asarray(optimizer.params))
    assert np.array_equal(np.asarray(params)[[1, 3]], start[[1, 3]])
