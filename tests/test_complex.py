"""Complex parameters: stepped as torch.optim steps them, on both backends."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from optimizers import testing
from tests import harness
from tests.harness import REPORT, relative_error
from tests.registry import REGISTRY

# The tests give each parameter a dense gradient and step without a closure.
ENTRIES = [entry for entry in REGISTRY.values() if entry.steps_on_given_gradients]
CASES = [
    (entry, weight_decay)
    for entry in ENTRIES
    if entry.complex
    for weight_decay in ([0.0, 0.1] if entry.weight_decay else [0.0])
]


@pytest.mark.parametrize("entry, weight_decay", CASES, ids=[f"{entry.name}-{decay}" for entry, decay in CASES])
def test_complex_parameters_step_as_in_torch_optim(entry, weight_decay):
    rng = np.random.default_rng(0)

    def normal():
        return rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))

    problem = testing.given_gradients([normal()], [[normal()] for _ in range(8)])
    kwargs = dict(entry.options, **({"weight_decay": weight_decay} if entry.weight_decay else {}))
    ours, theirs, on_jax = (harness.Run(entry, backend, problem, kwargs) for backend in ("torch", "torch.optim", "jax"))
    expected = theirs.trajectory()
    exact = weight_decay == 0.0 or not entry.decay_before_real_view
    REPORT.compare(
        entry.name, "complex torch vs torch.optim", "complex128", ours.trajectory(), expected, 0 if exact else 1e-14
    )
    REPORT.compare(entry.name, "complex jax vs torch.optim", "complex128", on_jax.trajectory(), expected, 1e-12)
    mine, reference = ours.state()[0], theirs.state()[0]
    assert mine.keys() == reference.keys()
    for key, value in reference.items():
        assert mine[key].dtype == value.dtype and mine[key].shape == value.shape
        if exact:
            np.testing.assert_array_equal(mine[key], value, err_msg=key)
        else:
            assert relative_error(mine[key], value) <= 1e-14, key


@pytest.mark.parametrize("entry", [entry for entry in ENTRIES if not entry.complex], ids=repr)
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_rules_without_complex_support_raise_torch_optims_error_and_change_nothing(entry, backend):
    start = torch.randn(2, 3, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    reference = start.clone().requires_grad_()
    reference.grad = torch.ones_like(start)
    with pytest.raises(RuntimeError) as expected:
        entry.reference([reference]).step()
    real = torch.zeros(2, 3, requires_grad=True)
    if backend == "torch":
        params = [real, start.clone().requires_grad_()]
        optimizer = entry.ours(params)
        for param in params:
            param.grad = torch.ones_like(param)
        step = optimizer.step
    else:
        params = [jnp.zeros((2, 3)), jnp.asarray(start.numpy())]
        optimizer = entry.ours(params)
        step = lambda: optimizer.step([jnp.ones((2, 3)), jnp.ones((2, 3), jnp.complex64)])  # noqa: E731
    with pytest.raises(RuntimeError, match=f"^{expected.value}$"):
        step()
    # The real parameter before it was not stepped either.
    assert not optimizer.state and np.array_equal(harness.to_numpy(optimizer.params[0]), np.zeros((2, 3)))
