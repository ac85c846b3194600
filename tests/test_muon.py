"""Muon: its bfloat16 Newton-Schulz iteration, and the errors torch.optim.Muon raises during a step."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import optimizers
from backends.jax_ops import JaxOps
from backends.torch_backend import TorchOps
from optimizers.muon import NS_COEFFICIENTS


@pytest.mark.parametrize("shape", [(3, 5), (16, 40), (64, 32)])
def test_each_newton_schulz_iteration_rounds_as_torchs(shape):
    """Given the same bfloat16 input, one iteration on JAX equals torch's but for rare 1-ulp ties.

    Both accumulate the products in float32 and round once; their summation orders differ,
    so a sum near a bfloat16 rounding boundary can round the other way.
    """
    a, b, c = NS_COEFFICIENTS
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).bfloat16()
    x = x / x.norm()
    for _ in range(5):
        xj = jnp.asarray(x.float().numpy()).astype(jnp.bfloat16)
        gram, gram_j = TorchOps.matmul(x, x.T), JaxOps.matmul(xj, xj.T)
        step = TorchOps.addmm(x, TorchOps.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        step_j = JaxOps.addmm(xj, JaxOps.addmm(gram_j, gram_j, gram_j, beta=b, alpha=c), xj, beta=a)
        ours, theirs = np.asarray(step_j.astype(jnp.float32)), step.float().numpy()
        assert np.mean(ours == theirs) >= 0.99
        # A tie rounded the other way inside the iteration (A or bA + cA^2) moves an entry of
        # the result by up to one bfloat16 ulp at the matrix's scale.
        assert np.max(np.abs(ours - theirs)) <= 2.0**-7 * np.max(np.abs(theirs))
        x = step


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize(
    "change, error",
    [
        (dict(ns_steps=100), "Number of steps must be less than 100 for computational efficiency"),
        (dict(ns_coefficients=(1.0, 2.0)), "Coefficients must be a tuple of exactly 3 values"),
    ],
)
def test_step_time_errors_match_torch_optim_and_change_nothing(backend, change, error):
    reference = torch.zeros(2, 3, requires_grad=True)
    reference.grad = torch.ones(2, 3)
    with pytest.raises(ValueError, match=f"^{error}$"):
        torch.optim.Muon([reference], **change).step()
    if backend == "torch":
        param = torch.zeros(2, 3, requires_grad=True)
        optimizer = optimizers.Muon([param], **change)
        param.grad = torch.ones(2, 3)
        step = optimizer.step
    else:
        optimizer = optimizers.Muon(jnp.zeros((2, 3)), **change)
        step = lambda: optimizer.step(jnp.ones((2, 3)))  # noqa: E731
    with pytest.raises(ValueError, match=f"^{error}$"):
        step()
    assert not optimizer.state


def test_only_matrices_are_accepted_as_in_torch_optim():
    for cls in (torch.optim.Muon, optimizers.Muon):
        with pytest.raises(ValueError, match=r"^Muon only supports 2D parameters .* torch.Size\(\[3\]\)$"):
            cls([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match=r"^Muon only supports 2D parameters .* \(3,\)$"):
        optimizers.Muon(jnp.zeros(3))
    # A group added later is not checked by the constructor; its step refuses it, before any change.
    matrix, vector = torch.zeros(2, 2, requires_grad=True), torch.zeros(3, requires_grad=True)
    optimizer = optimizers.Muon([matrix])
    optimizer.add_param_group({"params": [vector]})
    matrix.grad, vector.grad = torch.ones(2, 2), torch.ones(3)
    with pytest.raises(ValueError, match="^Param gradient must be a 2D matrix$"):
        optimizer.step()
    assert not optimizer.state and torch.equal(matrix, torch.zeros(2, 2))
