"""``differentiable=True``: a step autograd can differentiate, as torch.optim's.

As torch's own ``TestDifferentiableOptimizer`` does, a step is a function of the parameter, its
gradient and its state (here realistic state: after three ordinary steps, scaled apart
elementwise), checked with ``torch.autograd.gradcheck``, and against torch.optim's
differentiable step: the same outputs and the same vector-Jacobian products, bit for bit.  Such
a step runs the rule parameter by parameter (``TorchBackend._step_each``) on copies of the
parameter and state it reads, so autograd keeps what its backward needs (amsgrad's old maximum)
while the results are written in place, as torch.optim writes them.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.autograd import gradcheck

from .registry import REGISTRY

DIFFERENTIABLE = [
    entry for entry in REGISTRY.values() if "differentiable" in inspect.signature(entry.reference.__init__).parameters
]
# Adadelta's acc_delta (about 3e-6 here) sits under a square root: gradcheck's default 1e-6
# perturbation is of its size, and the finite difference is not a derivative (torch.optim's own
# step fails it too); 1e-8 is small enough.
GRADCHECK_EPS = {"Adadelta": 1e-8}
# Rprop's step is piecewise (the sign of g * g_prev picks the step size, then a clamp): on these
# inputs torch.optim's own differentiable step fails gradcheck at any perturbation, as ours does;
# the comparison with torch.optim's derivatives below still runs.
GRADCHECK_FAILS_FOR_TORCH_OPTIM_TOO = {"Rprop"}


def warm_state(cls, options: dict) -> dict:
    """The state after three ordinary steps, each entry a tensor of its own.

    Entries are scaled apart elementwise so that no maximum (amsgrad's) sits at a tie, where it
    has no derivative.  Counters become float64: with torch's float32 ``step``, torch.optim's
    differentiable Adam, AdamW and NAdam compute their bias corrections in float32 tensor
    arithmetic (their capturable formulas; 7.8e-7 relative apart from the float64 host
    arithmetic of their default path, which ours follows in both modes).
    """
    generator = torch.Generator().manual_seed(0)
    param = torch.rand(5, dtype=torch.float64, generator=generator).requires_grad_()
    optimizer = cls([param], **options)
    for _ in range(3):
        param.grad = torch.randn(5, dtype=torch.float64, generator=generator) * 10
        optimizer.step()
    return {
        k: v.detach() * (1 + 0.1 * torch.rand(v.shape, dtype=v.dtype, generator=generator))
        if v.dim()
        else v.to(torch.float64)
        for k, v in optimizer.state[param].items()
    }


def step_function(cls, options: dict, state: dict):
    """The step as a function of (param, grad, *state entries shaped like the parameter); 0-d
    counters are not differentiated, as in torch's tests."""
    keys = [k for k, v in state.items() if v.dim() > 0]

    def stepped(param, grad, *values):
        param = param.clone()
        param.grad = grad
        optimizer = cls([param], **options, differentiable=True)
        held = {k: v.clone() for k, v in state.items()}
        held.update({k: v.clone() for k, v in zip(keys, values)})
        optimizer.state[param].update(held)
        optimizer.step()
        return (param, *(optimizer.state[param][k] for k in keys))

    generator = torch.Generator().manual_seed(1)
    param, grad = (torch.rand(5, dtype=torch.float64, generator=generator) - 0.5 for _ in range(2))
    arguments = tuple(t.requires_grad_() for t in (param, grad, *(state[k].clone() for k in keys)))
    return stepped, arguments


@pytest.mark.parametrize("entry", DIFFERENTIABLE, ids=repr)
def test_a_differentiable_step_differentiates_as_torch_optims(entry):
    state = warm_state(entry.reference, dict(entry.options))
    ours, arguments = step_function(entry.ours, dict(entry.options), state)
    theirs, _ = step_function(entry.reference, dict(entry.options), state)
    if entry.name not in GRADCHECK_FAILS_FOR_TORCH_OPTIM_TOO:
        assert gradcheck(ours, arguments, eps=GRADCHECK_EPS.get(entry.name, 1e-6))
    got, expected = ours(*arguments), theirs(*arguments)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    generator = torch.Generator().manual_seed(2)
    cotangents = [torch.rand(t.shape, dtype=t.dtype, generator=generator) for t in got]
    ours_grads = torch.autograd.grad(got, arguments, cotangents, allow_unused=True)
    their_grads = torch.autograd.grad(expected, arguments, cotangents, allow_unused=True)
    for a, b in zip(ours_grads, their_grads):
        assert (a is None and b is None) or torch.equal(a, b)
