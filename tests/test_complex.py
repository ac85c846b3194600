"""Complex parameters: stepped as torch.optim steps them, on both backends."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import optimizers
from tests.harness import relative_error
from tests.registry import REGISTRY

# torch.optim adds weight decay to the complex gradient before viewing it as real pairs in
# these rules (a complex multiply-add, rounded twice); we view first (rounded once), as its
# NAdam and RAdam do.  The difference is an ulp of the decayed gradient.
DECAY_BEFORE_REAL_VIEW = {"Adam", "AdamW", "Adamax", "Adagrad", "RMSprop", "Adadelta"}

OPTIONS = {
    "SGD": dict(lr=0.1, momentum=0.9),
    "Adagrad": dict(initial_accumulator_value=0.3),  # starts at (0.3, 0.3), as torch.optim
    "RMSprop": dict(centered=True, momentum=0.5),
}


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_complex_parameters_step_as_in_torch_optim(name, weight_decay):
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(2, 3, dtype=torch.complex128, generator=generator)
    grads = [torch.randn(2, 3, dtype=torch.complex128, generator=generator) for _ in range(8)]
    kwargs = dict(OPTIONS.get(name, {}), weight_decay=weight_decay)

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
