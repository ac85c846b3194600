"""Complex parameters: stepped as torch.optim steps them, on both backends."""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import optimizers
from tests import harness
from tests.harness import relative_error
from tests.registry import REGISTRY

# torch.optim adds weight decay to the complex gradient before viewing it as real pairs in
# these rules (a complex multiply-add, rounded twice); we view first (rounded once), as its
# NAdam and RAdam do.  The difference is an ulp of the decayed gradient.
DECAY_BEFORE_REAL_VIEW = {"Adam", "AdamW", "Adamax", "Adagrad", "RMSprop", "Adadelta"}

OPTIONS = {
    "SGD": dict(lr=0.1, momentum=0.9),
    "ASGD": dict(t0=3, lambd=0.01),
    "Adagrad": dict(initial_accumulator_value=0.3),  # starts at (0.3, 0.3), as torch.optim
    "RMSprop": dict(centered=True, momentum=0.5),
}


COMPLEX_RULES = sorted(name for name in REGISTRY if getattr(optimizers, name).complex_parameters_error is None)
CASES = [
    (name, weight_decay)
    for name in COMPLEX_RULES
    for weight_decay in ([0.0, 0.1] if "weight_decay" in inspect.signature(getattr(torch.optim, name)).parameters else [0.0])
]


@pytest.mark.parametrize("name, weight_decay", CASES)
def test_complex_parameters_step_as_in_torch_optim(name, weight_decay):
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(2, 3, dtype=torch.complex128, generator=generator)
    grads = [torch.randn(2, 3, dtype=torch.complex128, generator=generator) for _ in range(8)]
    kwargs = dict(OPTIONS.get(name, {}), **({"weight_decay": weight_decay} if weight_decay else {}))

    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    ours_opt = getattr(optimizers, name)([ours], **kwargs)
    theirs_opt = getattr(torch.optim, name)([theirs], **kwargs)
    jax_opt = getattr(optimizers, name)(jnp.asarray(start.numpy()), **kwargs)
    for grad in grads:
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        ours_opt.step()
        theirs_opt.step()
        jax_opt.step(jnp.asarray(grad.numpy()))

    exact = weight_decay == 0.0 or name not in DECAY_BEFORE_REAL_VIEW
    expected = theirs.detach().numpy()
    assert ours.dtype == torch.complex128 and np.asarray(jax_opt.params).dtype == np.complex128
    if exact:
        assert np.array_equal(ours.detach().numpy(), expected)
    else:
        assert relative_error(ours.detach().numpy(), expected) <= 1e-14
    assert relative_error(np.asarray(jax_opt.params), expected) <= 1e-12
    for key, value in theirs_opt.state[theirs].items():
        mine = ours_opt.state[ours][key]
        assert mine.dtype == value.dtype and mine.shape == value.shape
        if exact:
            assert torch.equal(mine, value), key
        else:
            assert relative_error(mine.numpy(), value.numpy()) <= 1e-14, key


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - set(COMPLEX_RULES)))
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_rules_without_complex_support_raise_torch_optims_error_and_change_nothing(name, backend):
    start = torch.randn(2, 3, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    reference = start.clone().requires_grad_()
    reference.grad = torch.ones_like(start)
    with pytest.raises(RuntimeError) as expected:
        getattr(torch.optim, name)([reference]).step()
    real = torch.zeros(2, 3, requires_grad=True)
    if backend == "torch":
        params = [real, start.clone().requires_grad_()]
        optimizer = getattr(optimizers, name)(params)
        for param in params:
            param.grad = torch.ones_like(param)
        step = optimizer.step
    else:
        params = [jnp.zeros((2, 3)), jnp.asarray(start.numpy())]
        optimizer = getattr(optimizers, name)(params)
        step = lambda: optimizer.step([jnp.ones((2, 3)), jnp.ones((2, 3), jnp.complex64)])  # noqa: E731
    with pytest.raises(RuntimeError, match=f"^{expected.value}$"):
        step()
    # The real parameter before it was not stepped either.
    assert not optimizer.state and np.array_equal(harness.to_numpy(optimizer.params[0]), np.zeros((2, 3)))
