"""``differentiable=True``: a step autograd can differentiate, as torch.optim's.

As torch's own ``TestDifferentiableOptimizer`` does, a step is a function of the parameter, its
gradient and its state (here realistic state: after three ordinary steps, scaled apart
elementwise), checked with ``torch.autograd.gradcheck``, and against torch.optim's
differentiable step: the same outputs and the same vector-Jacobian products, bit for bit.  Such
a step runs the rule parameter by parameter (``TorchBackend._step_each``) on copies of the
parameter and state it reads, so autograd keeps what its backward needs (amsgrad's old maximum)
while the results are written in place, as torch.optim writes them.  Hyperparameter tensors
that require grad (lr, weight_decay, betas) and counters that do (NAdam's mu_product) stay in
autograd's graph, as in torch's tests of them; with plain numbers the step computes as an
ordinary one.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.autograd import gradcheck

import optimizers

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


def step_function(cls, options: dict, state: dict, names: tuple = ()):
    """The step as a function of (the hyperparameters ``names``, param, grad, *state entries
    shaped like the parameter); 0-d counters are not differentiated, as in torch's tests."""
    keys = [k for k, v in state.items() if v.dim() > 0]

    def stepped(*inputs):
        hyper = dict(zip(names, (t.clone() for t in inputs[: len(names)])))
        param, grad, *values = inputs[len(names) :]
        if "beta1" in hyper:
            hyper["betas"] = (hyper.pop("beta1"), hyper.pop("beta2"))
        param = param.clone()
        param.grad = grad.clone()  # torch.optim's differentiable SGD adds the decay to it in place
        optimizer = cls([param], **options, **hyper, differentiable=True)
        held = {k: v.clone() for k, v in state.items()}
        held.update({k: v.clone() for k, v in zip(keys, values)})
        optimizer.state[param].update(held)
        optimizer.step()
        return (param, *(optimizer.state[param][k] for k in keys))

    generator = torch.Generator().manual_seed(1)
    param, grad = (torch.rand(5, dtype=torch.float64, generator=generator) - 0.5 for _ in range(2))
    hyper = (torch.tensor(HYPERPARAMETER_VALUES[name], dtype=torch.float64) for name in names)
    arguments = tuple(t.requires_grad_() for t in (*hyper, param, grad, *(state[k].clone() for k in keys)))
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


# Hyperparameter tensors that require grad, as torch's TestDifferentiableOptimizer passes them
# (its *_differentiable_{lr,weight_decay,betas,all_hyperparams}): the step's derivatives reach
# them.  torch.optim's differentiable step computes some terms with other formulas than its
# default step, which ours follows in both modes, so results differ by roundings.  Measured on
# these inputs, elementwise relative differences:
# * SGD: one output element 1 ulp (1.9e-16) apart, every derivative equal.  torch.optim writes
#   ``grad + weight_decay * param`` and ``param - lr * buffer`` with a tensor that requires grad
#   as ``addcmul``, whose CPU kernel fuses the multiply-add (one rounding); ours multiplies, then
#   adds (KernelOps.add with a tensor alpha).
# * Adam, AdamW: the parameter equal; exp_avg, exp_avg_sq, max_exp_avg_sq up to 1 ulp (1.9e-16):
#   torch.optim's ``exp_avg.lerp(grad, 1 - beta1)`` with a tensor weight is ATen's lerp kernel
#   (a fused multiply-add), ours KernelOps.lerp's two roundings, and for a beta2 that requires
#   grad torch.optim writes ``beta2 * v + (1 - beta2) * g * g`` as ``v.lerp(g * g, 1 - beta2)``.
#   Derivatives with respect to lr up to 1.9e-15 apart, beta2 2.3e-15, grad 1.5e-16, the others
#   equal: besides those forms, torch.optim's differentiable Adam takes its capturable formula
#   (``exp_avg / (sqrt(v) / (sqrt(bc2) * -step_size) + eps / -step_size)``, see warm_state).
ULP = torch.finfo(torch.float64).eps
HYPERPARAMETER_CASES = {
    "SGD": (dict(momentum=0.9, nesterov=True), ("lr", "weight_decay"), None),
    "Adam": (dict(amsgrad=True), ("lr", "weight_decay", "beta1", "beta2"), 1e-14),
    "AdamW": (dict(), ("lr", "weight_decay", "beta1", "beta2"), 1e-14),
}
HYPERPARAMETER_VALUES = {"lr": 0.01, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.999}


@pytest.mark.parametrize("name", HYPERPARAMETER_CASES)
def test_derivatives_reach_hyperparameter_tensors_as_in_torch_optim(name):
    options, names, derivatives_rtol = HYPERPARAMETER_CASES[name]
    entry = REGISTRY[name]
    state = warm_state(entry.reference, options)  # SGD's momentum buffer exists: not the gradient
    ours, arguments = step_function(entry.ours, options, state, names)
    theirs, _ = step_function(entry.reference, options, state, names)
    assert gradcheck(ours, arguments)
    got, expected = ours(*arguments), theirs(*arguments)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=ULP, atol=0)
    generator = torch.Generator().manual_seed(2)
    cotangents = [torch.rand(t.shape, dtype=t.dtype, generator=generator) for t in got]
    ours_grads = torch.autograd.grad(got, arguments, cotangents)
    their_grads = torch.autograd.grad(expected, arguments, cotangents)
    for a, b in zip(ours_grads, their_grads):
        if derivatives_rtol is None:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=derivatives_rtol, atol=0)


@pytest.mark.parametrize("decoupled", [False, True], ids=["l2", "decoupled"])
def test_nadam_keeps_mu_product_in_the_graph_as_torch_optim(decoupled):
    """torch.optim's differentiable NAdam updates ``mu_product`` in autograd's graph (torch's
    ``test_nadam`` differentiates through it), so ours does: the same results, bit for bit, and
    the same derivatives up to roundings (measured: 4.5e-16 relative with L2 decay, equal with
    decoupled decay).  torch.optim scales the gradient and the momentum by their tensor
    coefficients, then ``addcdiv`` divides; ours is ``addcdiv`` with a tensor value
    (KernelOps.addcdiv: ``value * t1 / t2``), the same roundings forward, not backward."""
    options = dict(lr=0.9, weight_decay=0.1, decoupled_weight_decay=decoupled)
    state = warm_state(torch.optim.NAdam, options)
    keys = ("mu_product", "exp_avg", "exp_avg_sq")

    def step_function(cls):
        def stepped(param, grad, *values):
            param = param.clone()
            param.grad = grad
            optimizer = cls([param], **options, differentiable=True)
            optimizer.state[param].update(step=state["step"].clone(), **{k: v.clone() for k, v in zip(keys, values)})
            optimizer.step()
            return param, *(optimizer.state[param][k] for k in keys)

        return stepped

    generator = torch.Generator().manual_seed(1)
    param, grad = (torch.rand(5, dtype=torch.float64, generator=generator) - 0.5 for _ in range(2))
    arguments = tuple(t.clone().requires_grad_() for t in (param, grad, *(state[k] for k in keys)))
    ours, theirs = step_function(optimizers.NAdam), step_function(torch.optim.NAdam)
    assert gradcheck(ours, arguments)
    got, expected = ours(*arguments), theirs(*arguments)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    cotangents = [torch.rand(t.shape, dtype=t.dtype, generator=generator) for t in got]
    ours_grads = torch.autograd.grad(got, arguments, cotangents)
    their_grads = torch.autograd.grad(expected, arguments, cotangents)
    for a, b in zip(ours_grads, their_grads):
        torch.testing.assert_close(a, b, rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_a_step_count_that_requires_grad_is_refused_as_by_torch_optim(name):
    """torch.optim's Adam and AdamW refuse it in differentiable mode, before anything moves."""
    for cls in (getattr(optimizers, name), getattr(torch.optim, name)):
        param = torch.rand(3, dtype=torch.float64, requires_grad=True).clone()
        param.grad = torch.rand(3, dtype=torch.float64)
        optimizer = cls([param], differentiable=True)
        optimizer.step()
        optimizer.state[param]["step"] = torch.tensor(1.0, requires_grad=True).clone()
        before = param.detach().clone()
        with pytest.raises(RuntimeError, match="`requires_grad` is not supported for `step` in differentiable mode"):
            optimizer.step()
        assert torch.equal(param.detach(), before)


@pytest.mark.parametrize("entry", DIFFERENTIABLE, ids=repr)
def test_a_differentiable_step_with_plain_numbers_computes_as_an_ordinary_one(entry):
    """Without a hyperparameter or counter that requires grad, the scalars stay Python numbers,
    as torch.optim's differentiable step reads them (``.item()``, ``alpha=`` a float): the
    results are the ordinary step's, bit for bit, in float32 over a few steps (0-d tensor
    scalars would round ``add`` with ``alpha`` apart, ASGD's)."""
    results = []
    for differentiable in (False, True):
        generator = torch.Generator().manual_seed(0)
        param = torch.rand(64, generator=generator).requires_grad_()
        param = param.clone() if differentiable else param  # in place on a leaf: autograd refuses
        optimizer = entry.ours([param], **entry.options, differentiable=differentiable)
        for _ in range(4):
            param.grad = torch.randn(64, generator=generator)
            optimizer.step()
        results.append([param.detach(), *(v.detach() for v in optimizer.state[param].values())])
    for a, b in zip(*results):
        assert torch.equal(a, b)
