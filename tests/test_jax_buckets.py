"""Flat buckets on JAX: small parameters step as one vector per state entry, exactly as each on its own.

Each test runs the same steps twice, once as the optimizer lays them out (small parameters in
buckets) and once with every parameter on its own (``jax_buckets.SMALL = 0``), and compares
the two bit for bit; what a user can do between steps (read or write the state, load and
save, copy, a step without one parameter's gradient, new parameter values) is done in both.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import optimizers
from backends import jax_buckets, jax_functional

from .registry import BEYOND_TORCH_OPTIM, REGISTRY
from .test_properties import ACROSS_FRAMEWORKS

EVERY = {**REGISTRY, **BEYOND_TORCH_OPTIM}
ENTRIES = [entry for entry in EVERY.values() if entry.steps_on_given_gradients and not entry.matrices_only]
#: Small leaves, one a bucket holds not (a scalar), and a large one, which steps on its own.
SHAPES = {"a": (3, 4), "b": (5,), "c": (), "d": (2, 2, 2), "large": (jax_buckets.SMALL,)}


def params(dtype=jnp.float64):
    rng = np.random.default_rng(0)
    return {k: jnp.asarray(rng.standard_normal(shape), dtype) for k, shape in SHAPES.items()}


def gradients(count, dtype=jnp.float64):
    rng = np.random.default_rng(1)
    return [{k: jnp.asarray(rng.standard_normal(shape), dtype) for k, shape in SHAPES.items()} for _ in range(count)]


def arrays_passed(opt, grads) -> int:
    """How many parameter and state arrays ``opt.step(grads)`` gives its compiled program."""
    compiled, passed = jax_functional.step, []

    def counting(rule, layout, numbers, values, step_grads, arrays, counters, flats):
        passed.append(len(jax.tree_util.tree_leaves((values, arrays, flats))))
        return compiled(rule, layout, numbers, values, step_grads, arrays, counters, flats)

    jax_functional.step = counting
    try:
        opt.step(grads)
    finally:
        jax_functional.step = compiled
    return passed[0]


def assert_same(a, b, rtol=0.0):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=rtol, atol=0)


#: Where XLA:CPU contracts a multiply and an add into one fused multiply-add depends on the loop
#: it emits (a bucket's, or one parameter's), so float64 results may differ by an ulp per step
#: (seen: 1 ulp of an element, Schedule-Free SGD and RAdam in float64); without FMA they are equal
#: bit for bit.
FMA_CONTRACTION = 1e-15


def first_array_entry(opt, param):
    return next((k for k, v in opt.state[param].items() if k != "step" and getattr(v, "ndim", 0)), None)


def run(entry, monkeypatch, bucketed: bool):
    """Steps with everything a user does between them; returns the optimizer and what the steps passed."""
    monkeypatch.setattr(jax_buckets, "SMALL", jax_buckets.SMALL if bucketed else 0)
    opt = entry.ours(params(), **entry.options)
    if hasattr(opt, "train"):
        opt.train()  # Schedule-Free optimizers step only in train mode
    grads = gradients(5)
    passed = []
    for i, step_grads in enumerate(grads):
        if i == 2:  # a step without one parameter's gradient
            step_grads = {**step_grads, "b": None}
        if i == 3:  # the state read, and one entry written: the next step takes it
            first = opt.param_groups[0]["params"][0]
            key = first_array_entry(opt, first)
            if key is not None:
                opt.state[first][key] = opt.state[first][key] * 0.5
        if i == 4:  # a copy steps on
            opt = pickle.loads(pickle.dumps(copy.deepcopy(opt)))
        passed.append(arrays_passed(opt, step_grads))
    return opt, passed


@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
def test_small_parameters_step_in_buckets_as_each_on_its_own(entry, monkeypatch):
    """Bit for bit but where the CPU's fused multiply-add is used in one loop and not in the
    other (see the next test): float64 results then differ by an ulp here and there."""
    bucketed, passed = run(entry, monkeypatch, bucketed=True)
    alone, passed_alone = run(entry, monkeypatch, bucketed=False)
    assert_same(bucketed.params, alone.params, rtol=FMA_CONTRACTION)
    assert_same(bucketed.state_dict()["state"], alone.state_dict()["state"], rtol=FMA_CONTRACTION)
    assert bucketed.state_dict()["param_groups"] == alone.state_dict()["param_groups"]
    # Elementwise rules give their program a flat array per entry instead of one per leaf.
    assert (passed[-1] < passed_alone[-1]) == entry.elementwise, (passed, passed_alone)


def test_many_small_parameters_are_three_arrays_to_adams_program():
    shapes = [(8, 8)] * 20
    opt = optimizers.Adam([jnp.ones(shape) for shape in shapes], lr=0.1)
    grads = [jnp.ones(shape) for shape in shapes]
    opt.step(grads)
    assert arrays_passed(opt, grads) == 3  # values, exp_avg, exp_avg_sq: one flat array each


def test_state_read_after_a_step_is_that_steps_and_loads_into_torch_optim(monkeypatch):
    """Reading the state (``opt.state``, ``state_dict()``) splits the buckets into each
    parameter's arrays: torch.optim resumes from them as from its own."""
    grads = gradients(4)
    opt = optimizers.Adam(params(), lr=0.1)
    tensors = [torch.tensor(np.asarray(v), requires_grad=True) for v in params().values()]
    reference = torch.optim.Adam(tensors, lr=0.1)
    for step_grads in grads[:2]:
        opt.step(step_grads)
        for tensor, grad in zip(tensors, step_grads.values()):
            tensor.grad = torch.tensor(np.asarray(grad))
        reference.step()
        for param, tensor in zip(opt.param_groups[0]["params"], tensors):
            np.testing.assert_allclose(
                opt.state[param]["exp_avg"], reference.state[tensor]["exp_avg"], rtol=ACROSS_FRAMEWORKS["float64"]
            )
    resumed = torch.optim.Adam([torch.tensor(np.asarray(v), requires_grad=True) for v in opt.params.values()], lr=0.1)
    saved = opt.state_dict()
    as_torch = {i: {k: torch.tensor(np.asarray(v)) for k, v in s.items()} for i, s in saved["state"].items()}
    resumed.load_state_dict({**saved, "state": as_torch})
    for step_grads in grads[2:]:
        opt.step(step_grads)
        for tensor, grad in zip(resumed.param_groups[0]["params"], step_grads.values()):
            tensor.grad = torch.tensor(np.asarray(grad))
        resumed.step()
    for value, tensor in zip(opt.params.values(), resumed.param_groups[0]["params"]):
        np.testing.assert_allclose(value, tensor.detach().numpy(), rtol=ACROSS_FRAMEWORKS["float64"])


@pytest.mark.parametrize("name", ["ScheduleFreeAdamW", "ScheduleFreeSGD"])
def test_parameters_given_new_values_between_steps_are_taken_into_their_bucket(name, monkeypatch):
    """Schedule-Free's ``eval()`` and ``train()`` move every parameter: the next step concatenates them again."""

    def run(small):
        monkeypatch.setattr(jax_buckets, "SMALL", small)
        opt = getattr(optimizers, name)(params(), **EVERY[name].options)
        opt.train()
        for i, step_grads in enumerate(gradients(5)):
            if i == 3:
                opt.eval()
                evaluated = opt.params
                opt.train()
            opt.step(step_grads)
        return opt.params, evaluated

    assert_same(run(jax_buckets.SMALL), run(0), rtol=FMA_CONTRACTION)


WITHOUT_FMA = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    import optimizers
    from backends import jax_buckets
    from tests.test_jax_buckets import gradients, params

    def run(small, make, dtype):
        jax_buckets.SMALL = small
        opt = make(params(dtype))
        if hasattr(opt, "train"):
            opt.train()
        for step_grads in gradients(4, dtype):
            opt.step(step_grads)
        arrays = [opt.params, opt.state_dict()["state"]]
        return [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(arrays)]

    cases = {
        "ScheduleFreeSGD": (lambda p: optimizers.ScheduleFreeSGD(p, lr=0.1, warmup_steps=3, r=0.5), jnp.float64),
        "AdamW bfloat16": (lambda p: optimizers.AdamW(p, lr=0.01, state_dtype="float32"), jnp.bfloat16),
    }
    differences = {}
    for name, (make, dtype) in cases.items():
        bucketed, alone = run(jax_buckets.SMALL, make, dtype), run(0, make, dtype)
        differences[name] = max(float(np.max(np.abs(a - b), initial=0.0)) for a, b in zip(bucketed, alone))
    print(json.dumps(differences))
    """
)


def test_without_fused_multiply_add_buckets_step_bit_for_bit_as_each_parameter():
    """The layouts' differences are XLA:CPU's FMA contraction and nothing else: with an
    instruction set that has no FMA (SSE4.2), a bucket steps bit for bit as each parameter on
    its own.  (With FMA, Schedule-Free SGD's float64 parameters and AdamW's float32 state of
    bfloat16 parameters differ by an ulp here: the bucket's loop over concatenated gradients
    and one parameter's loop contract different multiply-adds.)"""
    environment = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"}
    finished = subprocess.run(
        [sys.executable, "-c", WITHOUT_FMA], capture_output=True, text=True, timeout=300, env=environment
    )
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout.strip().splitlines()[-1]) == {"ScheduleFreeSGD": 0.0, "AdamW bfloat16": 0.0}


def test_an_optimizer_on_raveled_parameters_steps_each_leaf_as_on_the_tree(monkeypatch):
    """``optimizers.ravel``: the object step over one vector per dtype, its gradients taken through
    ``unravel``, steps every leaf as the optimizer over the tree does (FMA contraction aside)."""
    monkeypatch.setattr(jax_buckets, "SMALL", 0)  # the tree's leaves each on their own
    tree = {k: v for k, v in params().items() if k != "c"} | {"f32": jnp.ones((2, 3), jnp.float32)}
    flat, unravel = optimizers.ravel(tree)
    elements = sum(int(np.prod(shape)) for key, shape in SHAPES.items() if key != "c")
    assert {k: v.shape for k, v in flat.items()} == {"float64": (elements,), "float32": (6,)}
    on_tree, on_flat = optimizers.Adam(tree, lr=0.1), optimizers.Adam(flat, lr=0.1)

    def loss(params):
        return sum(jnp.sum(jnp.sin(leaf) * (i + 1)) for i, leaf in enumerate(jax.tree_util.tree_leaves(params)))

    for _ in range(3):
        on_tree.step(jax.grad(loss)(on_tree.params))
        on_flat.step(jax.grad(lambda flat: loss(unravel(flat)))(on_flat.params))
    assert_same(unravel(on_flat.params), on_tree.params, rtol=FMA_CONTRACTION)
    assert arrays_passed(on_flat, jax.grad(lambda flat: loss(unravel(flat)))(on_flat.params)) == 6
