"""LBFGS: closure-driven on both backends, against torch.optim.LBFGS on smooth problems."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optimizers
from tests.harness import REPORT
from tests.registry import REGISTRY

PROBLEMS = ("quadratic", "rosenbrock")


def objective(kind, numpy, curvature, target):
    """The loss of a flat parameter vector, written once for torch and jax.numpy."""
    if kind == "quadratic":
        return lambda x: 0.5 * numpy.sum(curvature * (x - target) ** 2)
    return lambda x: numpy.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


@st.composite
def lbfgs_cases(draw):
    size = draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kwargs = draw(REGISTRY["LBFGS"].hyperparameters)
    problem = dict(
        kind=draw(st.sampled_from(PROBLEMS)),
        start=rng.uniform(-1.5, 1.5, size),
        curvature=rng.uniform(0.1, 10.0, size),
        target=rng.standard_normal(size),
        split=draw(st.integers(1, size - 1)),  # the vector is two parameters
        steps=draw(st.integers(1, 3)),
    )
    return problem, kwargs


def run(backend, problem, kwargs, dtype="float64"):
    """Per step: the parameters, the loss returned, and the evaluation and iteration counts."""
    start = problem["start"].astype(dtype)
    pieces = [start[: problem["split"]], start[problem["split"] :]]
    history = []
    if backend == "jax":
        loss = objective(problem["kind"], jnp, problem["curvature"], problem["target"])
        optimizer = optimizers.LBFGS([jnp.asarray(p) for p in pieces], **kwargs)
        value_and_grad = jax.value_and_grad(lambda params: loss(jnp.concatenate(params)))
        for _ in range(problem["steps"]):
            returned = optimizer.step(value_and_grad)
            history.append(([np.asarray(p) for p in optimizer.params], float(returned)))
        state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    else:
        loss = objective(
            problem["kind"], torch, torch.from_numpy(problem["curvature"]), torch.from_numpy(problem["target"])
        )
        params = [torch.tensor(p, requires_grad=True) for p in pieces]
        optimizer = (torch.optim.LBFGS if backend == "torch.optim" else optimizers.LBFGS)(params, **kwargs)

        def closure():
            optimizer.zero_grad()
            value = loss(torch.cat(params))
            value.backward()
            return value

        for _ in range(problem["steps"]):
            returned = optimizer.step(closure)
            history.append(([p.detach().numpy().copy() for p in params], float(returned)))
        state = optimizer.state[params[0]]
    return history, (state["func_evals"], state["n_iter"])


@settings(max_examples=max(10, settings.default.max_examples // 2))
@given(case=lbfgs_cases())
def test_lbfgs_takes_torch_optims_iterates_and_evaluations_on_both_backends(case):
    problem, kwargs = case
    reference, reference_counts = run("torch.optim", problem, kwargs)
    ours, counts = run("torch", problem, kwargs)
    jax_run, jax_counts = run("jax", problem, kwargs)
    assert counts == reference_counts and jax_counts == reference_counts
    assert [loss for _, loss in ours] == [loss for _, loss in reference]
    REPORT.compare("LBFGS", "torch vs torch.optim", "float64", [v for v, _ in ours], [v for v, _ in reference], 0.0)
    REPORT.compare("LBFGS", "jax vs torch", "float64", [v for v, _ in jax_run], [v for v, _ in ours], 1e-10)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_float32_on_the_torch_backend_is_torch_optims_bit_for_bit(line_search_fn):
    problem = dict(
        kind="rosenbrock", start=np.array([-1.2, 1.0, -0.5]), curvature=np.ones(3), target=np.zeros(3), split=1, steps=3
    )
    kwargs = dict(line_search_fn=line_search_fn, history_size=4)
    (ours, counts), (reference, reference_counts) = (
        run(b, problem, kwargs, "float32") for b in ("torch", "torch.optim")
    )
    assert counts == reference_counts
    for (values, loss), (expected_values, expected_loss) in zip(ours, reference, strict=True):
        assert loss == expected_loss and all(a.tobytes() == b.tobytes() for a, b in zip(values, expected_values))


def test_complex_parameters_and_a_resumed_checkpoint_follow_torch_optim():
    generator = torch.Generator().manual_seed(0)
    start, target = (torch.randn(3, dtype=torch.complex128, generator=generator) for _ in range(2))

    def train(cls, steps, state_dict=None, value=start):
        param = value.clone().requires_grad_()
        optimizer = cls([param], line_search_fn="strong_wolfe", max_iter=4)
        if state_dict is not None:
            optimizer.load_state_dict(state_dict)

        def closure():
            optimizer.zero_grad()
            value = ((param - target).abs() ** 2).sum()
            value.backward()
            return value

        for _ in range(steps):
            optimizer.step(closure)
        return param.detach(), optimizer.state_dict()

    reference, reference_state = train(torch.optim.LBFGS, 4)
    ours, _ = train(optimizers.LBFGS, 4)
    assert torch.equal(ours, reference)
    halfway, saved = train(torch.optim.LBFGS, 2)
    resumed, _ = train(optimizers.LBFGS, 2, saved, halfway)
    assert torch.equal(resumed, reference)


def test_errors_match_torch_optim():
    params = [torch.zeros(2, requires_grad=True)]
    for call in (
        lambda cls, p: cls([{"params": p[:1]}, {"params": [torch.zeros(1, requires_grad=True)]}]),
        lambda cls, p: cls(p, lr=-1.0),
        lambda cls, p: cls(p, lr=torch.tensor([1.0, 2.0])),
    ):
        with pytest.raises(ValueError) as expected:
            call(torch.optim.LBFGS, params)
        with pytest.raises(ValueError, match=f"^{re.escape(str(expected.value))}$"):
            call(optimizers.LBFGS, params)
    optimizer = optimizers.LBFGS(jnp.zeros(2), line_search_fn="wolfe")
    with pytest.raises(RuntimeError, match="only 'strong_wolfe' is supported"):
        optimizer.step(jax.value_and_grad(lambda x: jnp.sum(x**2)))
    with pytest.raises(TypeError, match=r"must return \(loss, grads\)"):
        optimizers.LBFGS(jnp.zeros(2)).step(lambda x: jnp.sum(x**2))
