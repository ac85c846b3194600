"""The library's shape, as users and algorithm authors meet it: the functional form built from
the class (as optax users write ``optax.adamw(lr)``), the op tables' protocol, and the base
class's contract for a subclass."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optimizers
from backends.jax_ops import JaxOps
from backends.ops import Ops
from backends.torch_ops import KernelOps, TorchOps

from .registry import REGISTRY


def tree():
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.standard_normal((3, 2))), "b": jnp.asarray(rng.standard_normal((1, 2)))}


def gradients(count):
    rng = np.random.default_rng(1)
    shapes = {"w": (3, 2), "b": (1, 2)}
    return [{k: jnp.asarray(rng.standard_normal(shape)) for k, shape in shapes.items()} for _ in range(count)]


def run(form, steps=3):
    init, update, _ = form
    params = tree()
    state = init(params)
    for grads in gradients(steps):
        params, state = update(grads, state, params)
    return params


@pytest.mark.parametrize("name", sorted(name for name, entry in REGISTRY.items() if entry.steps_on_given_gradients))
def test_the_class_form_is_the_object_form(name):
    cls = getattr(optimizers, name)
    options = dict(lr=0.02) if name != "Muon" else dict(lr=0.02, nesterov=False)
    from_class, from_object = run(cls.functional(**options)), run(cls(tree(), **options).functional())
    for a, b in zip(jax.tree_util.tree_leaves(from_class), jax.tree_util.tree_leaves(from_object)):
        np.testing.assert_array_equal(a, b)


def test_the_class_form_reports_its_defaults_and_validates_as_the_constructor():
    _, _, defaults = optimizers.AdamW.functional(lr=1e-3)
    assert defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    with pytest.raises(ValueError, match="Invalid learning rate: -1"):
        optimizers.AdamW.functional(lr=-1)
    with pytest.raises(TypeError, match="learning_rate"):
        optimizers.AdamW.functional(learning_rate=0.1)
    with pytest.raises(TypeError, match="pass lr to update"):
        optimizers.AdamW(tree()).functional(lr=0.1)
    with pytest.raises(TypeError, match="LBFGS has no per-parameter rule"):
        optimizers.LBFGS.functional()


def test_as_optax_from_the_class_is_optax_adamw():
    schedule = optax.linear_schedule(0.02, 0.0, 6)
    ours = optimizers.as_optax(optimizers.AdamW, lr=schedule, weight_decay=0.1)
    theirs = optax.adamw(schedule, weight_decay=0.1)
    results = []
    for transformation in (ours, theirs):
        params, state = tree(), transformation.init(tree())
        for grads in gradients(6):
            updates, state = transformation.update(grads, state, params)
            params = optax.apply_updates(params, updates)
        results.append(params)
    # The same definition rounded in another order (see test_functional's SAME_DEFINITION).
    for a, b in zip(jax.tree_util.tree_leaves(results[0]), jax.tree_util.tree_leaves(results[1])):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        optimizers.as_optax(optimizers.AdamW, learning_rate=schedule)


@pytest.mark.parametrize("table", [TorchOps, KernelOps, JaxOps], ids=lambda table: table.__name__)
def test_each_op_table_meets_the_protocol(table):
    assert isinstance(table, Ops)
    for name, declared in inspect.getmembers(Ops, inspect.isfunction):
        if name.startswith("_"):
            continue
        try:
            signature = inspect.signature(getattr(table, name))
        except (ValueError, TypeError):  # a C function (torch.sqrt) without a signature
            continue
        # Rules pass the required arguments by position and the optional ones by name.
        declared_parameters = list(inspect.signature(declared).parameters.values())[1:]
        required = [p.name for p in declared_parameters if p.default is inspect.Parameter.empty]
        optional = {p.name: p.default for p in declared_parameters if p.default is not inspect.Parameter.empty}
        signature.bind(*required, **optional)


def test_a_subclass_defines_its_rule_or_its_step():
    class Incomplete(optimizers.Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, dict(lr=lr))

    weight = torch.zeros(2, requires_grad=True)
    weight.grad = torch.ones(2)
    with pytest.raises(NotImplementedError, match="defines update"):
        Incomplete([weight]).step()
    assert torch.equal(weight, torch.zeros(2))


@pytest.mark.parametrize("name", ["SGD", "Adam", "Adagrad", "RMSprop"])
def test_a_bool_for_a_number_is_that_number_as_in_torch_optim(name):
    """torch.optim trains with lr=True as lr=1; the rule must not take the bool for a switch."""
    ours, theirs = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizers_pair = getattr(optimizers, name)([ours], lr=True), getattr(torch.optim, name)([theirs], lr=True)
    for optimizer, param in zip(optimizers_pair, (ours, theirs)):
        for step in range(3):
            param.grad = torch.full((3,), float(step + 1))
            optimizer.step()
    assert torch.equal(ours, theirs)
