"""Guarantees beyond torch.optim parity on valid input: extremes, low precision, skipped steps.

- empty and 0-d parameters step as in torch.optim, or fail as it fails -- before any change;
- step counts past 2**24, where a float32 ``step`` stops counting, still give torch.optim's
  (and the exact formula's) bias corrections;
- ``state_dtype``: float32 state for bfloat16/float16 parameters, equal to a float32 run
  rounded to the parameter's dtype after each step; float16's eps underflow, documented;
- ``skip_nonfinite`` for the closure-driven LBFGS and the sparse SparseAdam, whose steps
  do not go through the shared rule runner (the others have a property in test_properties.py).
"""

from __future__ import annotations

import copy
import pickle

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optimizers
from tests.harness import raised, to_numpy
from tests.registry import REGISTRY
from tests.strategies import problems
from tests.test_properties import across_frameworks

# The tests below give each parameter a dense gradient and step without a closure.
ENTRIES = [entry for entry in REGISTRY.values() if entry.steps_on_given_gradients]


def raised_type(call) -> type | None:
    error = raised(call)
    return error and error[0]


def bits(array: np.ndarray) -> np.ndarray:
    return array.view(f"u{array.dtype.itemsize}")


# -- empty and 0-d parameters ------------------------------------------------------------


def extreme_shapes(entry) -> list[tuple]:
    return [(3, 2), (0, 2), (2, 0), (1, 1)] if entry.matrices_only else [(3,), (), (0,), (2, 0, 3)]


@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
def test_empty_and_zero_dim_parameters_step_or_fail_as_in_torch_optim_and_fail_atomically(entry):
    """torch.optim's Adafactor and Muon divide by zero on some empty parameters, partway
    through a step; ours raises the same exception type, on both backends, before any change."""
    shapes = extreme_shapes(entry)
    generator = np.random.default_rng(0)
    values = [generator.standard_normal(shape).astype(np.float32) for shape in shapes]
    grads = [generator.standard_normal(shape).astype(np.float32) for shape in shapes]

    def torch_run(cls):
        params = [torch.nn.Parameter(torch.tensor(v)) for v in values]
        opt = cls(params)
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        error = raised_type(opt.step)
        return error, [to_numpy(p) for p in params], opt

    expected_error, expected, _ = torch_run(entry.reference)
    error, got, _ = torch_run(entry.ours)
    assert error is expected_error
    opt = entry.ours([jnp.asarray(v) for v in values])
    assert raised_type(lambda: opt.step([jnp.asarray(g) for g in grads])) is expected_error
    if expected_error is None:
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(opt.params, expected):
            np.testing.assert_allclose(np.asarray(a), b, rtol=across_frameworks(entry, "float32"))
    else:  # nothing moved: not even the parameters before the empty one
        for a, v in zip(got, values):
            np.testing.assert_array_equal(a, v)
        for a, v in zip(opt.params, values):
            np.testing.assert_array_equal(np.asarray(a), v)
        assert not opt.state


# -- long runs -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Adam", "AdamW", "NAdam", "RAdam", "Adamax"])
def test_step_counts_past_2_to_the_24_keep_torch_optims_and_the_exact_bias_corrections(name):
    """A float32 ``step`` stops at 2**24 (adding 1 rounds back), as torch.optim's does; the
    bias corrections 1 - beta**step it feeds are then 1 to float64 precision either way,
    so the update is the exact formula's at the true step count."""
    start = 2.0**24 - 2
    value, grad = np.array([0.5, -1.5, 2.0], np.float32), np.array([0.1, -0.2, 0.3], np.float32)
    exp_avg, exp_avg_sq = np.array([0.01, -0.02, 0.03], np.float32), np.array([1e-3, 2e-3, 3e-3], np.float32)

    def state_for(param, torch_side: bool):
        state = {"step": np.float32(start), "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        if name == "Adamax":
            state = {"step": np.float32(start), "exp_avg": exp_avg, "exp_inf": exp_avg_sq}
        if name == "NAdam":
            state["mu_product"] = np.float32(1.0)
        convert = torch.tensor if torch_side else jnp.asarray
        return {k: convert(np.asarray(v)) for k, v in state.items()}

    def run(cls, backend):
        param = torch.nn.Parameter(torch.tensor(value)) if backend != "jax" else jnp.asarray(value)
        opt = cls([param], lr=1e-3)
        template = {
            "state": {0: state_for(param, backend != "jax")},
            "param_groups": copy.deepcopy(opt.state_dict()["param_groups"]),
        }
        opt.load_state_dict(template)
        path = []
        for _ in range(4):
            if backend == "jax":
                opt.step([jnp.asarray(grad)])
                path.append(np.asarray(opt.params[0]))
            else:
                param.grad = torch.tensor(grad)
                opt.step()
                path.append(to_numpy(param))
        return path, float(np.asarray(to_numpy(opt.state_dict()["state"][0]["step"])))

    expected, expected_step = run(getattr(torch.optim, name), "torch.optim")
    assert expected_step == 2.0**24  # torch.optim's float32 step stops counting
    for backend in ("torch", "jax"):
        got, step = run(getattr(optimizers, name), backend)
        assert step == expected_step
        for a, b in zip(got, expected):
            if backend == "torch":
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=1e-6)
    if name == "Adam":  # the exact formula in float64, at the true step counts
        param, m, v = value.astype(np.float64), exp_avg.astype(np.float64), exp_avg_sq.astype(np.float64)
        for k, got_value in enumerate(expected, start=1):
            t = start + k
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad.astype(np.float64) ** 2
            param = param - 1e-3 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
            np.testing.assert_allclose(got_value, param, rtol=1e-6)


# -- float32 state for low-precision parameters ----------------------------------------------

LOW = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@pytest.mark.parametrize("entry", [entry for entry in ENTRIES if entry.state_dtype], ids=repr)
@settings(max_examples=max(5, settings.default.max_examples // 4))
@given(data=st.data())
def test_float32_state_for_low_precision_parameters_is_a_float32_run_rounded_each_step(entry, data):
    """``state_dtype=torch.float32`` on bfloat16/float16 parameters equals torch.optim on float32
    copies whose values are rounded to the low dtype after each step: bit for bit, state too."""
    low = LOW[data.draw(st.sampled_from(sorted(LOW)), label="dtype")]
    problem = data.draw(problems("float32", **entry.problem_options), label="problem")
    kwargs = data.draw(entry.hyperparameters, label="hyperparameters")

    def rounded(array):
        return torch.tensor(array).to(low)

    ours = [torch.nn.Parameter(rounded(p)) for p in problem.params]
    reference = [torch.nn.Parameter(rounded(p).float()) for p in problem.params]
    ours_opt = entry.ours(
        [{"params": [ours[i] for i in g]} for g in problem.groups], state_dtype=torch.float32, **kwargs
    )
    reference_opt = entry.reference([{"params": [reference[i] for i in g]} for g in problem.groups], **kwargs)
    for row in problem.rows:
        for mine, theirs, grad in zip(ours, reference, row):
            mine.grad = None if grad is None else rounded(grad)
            theirs.grad = None if grad is None else rounded(grad).float()
        ours_opt.step()
        reference_opt.step()
        with torch.no_grad():
            for theirs in reference:
                theirs.copy_(theirs.to(low).float())
        for mine, theirs in zip(ours, reference):
            assert mine.dtype == low
            np.testing.assert_array_equal(bits(to_numpy(mine.float())), bits(to_numpy(theirs)))
    for mine, theirs in zip(ours, reference):
        held, expected = ours_opt.state.get(mine, {}), reference_opt.state.get(theirs, {})
        assert held.keys() == expected.keys()
        for key in held:
            if torch.is_tensor(held[key]) and held[key].is_floating_point() and key not in ours_opt.counters:
                assert held[key].dtype == torch.float32
                np.testing.assert_array_equal(bits(to_numpy(held[key])), bits(to_numpy(expected[key])))


@pytest.mark.parametrize("name", ["SGD", "Adam", "Adafactor", "Muon"])
def test_float32_state_on_jax_follows_the_torch_backend_and_survives_checkpoints(name):
    shape = (4, 3)
    generator = np.random.default_rng(1)
    values = generator.standard_normal(shape).astype(np.float32)
    grads = [generator.standard_normal(shape).astype(np.float32) for _ in range(5)]
    options = dict(lr=0.01, momentum=0.9) if name == "SGD" else dict(lr=0.01)
    param = torch.nn.Parameter(torch.tensor(values).bfloat16())
    torch_opt = getattr(optimizers, name)([param], state_dtype=torch.float32, **options)
    jax_opt = getattr(optimizers, name)([jnp.asarray(values, jnp.bfloat16)], state_dtype=jnp.float32, **options)
    for grad in grads:
        param.grad = torch.tensor(grad).bfloat16()
        torch_opt.step()
        jax_opt.step([jnp.asarray(grad, jnp.bfloat16)])
    # One float32 ulp of difference can round a parameter to the neighbouring bfloat16.
    np.testing.assert_allclose(np.asarray(jax_opt.params[0], np.float32), to_numpy(param.float()), rtol=0, atol=2**-7)
    jax_state = jax_opt.state_dict()["state"][0]
    for key, value in torch_opt.state_dict()["state"][0].items():
        if key != "step":
            assert jax_state[key].dtype == jnp.float32
            # Moments depend on the gradients only: float32 agreement, however the parameters round.
            np.testing.assert_allclose(np.asarray(jax_state[key]), to_numpy(value), rtol=1e-5, atol=1e-7)
    # Checkpoints keep float32 state float32 (torch.optim would round it to bfloat16) ...
    resumed = getattr(optimizers, name)([jnp.asarray(values, jnp.bfloat16)], state_dtype="float32", **options)
    resumed.load_state_dict(torch_opt.state_dict())
    for key, value in torch_opt.state_dict()["state"][0].items():
        np.testing.assert_array_equal(np.asarray(resumed.state_dict()["state"][0][key]), to_numpy(value))
    # ... and pickling keeps the option.
    assert pickle.loads(pickle.dumps(torch_opt)).state_dtype == "float32"


@pytest.mark.parametrize("value", [torch.bfloat16, "int32", 32, "float", object()])
def test_an_invalid_state_dtype_is_named(value):
    with pytest.raises(TypeError, match="state_dtype must be float32, float64 or None"):
        optimizers.Adam([torch.nn.Parameter(torch.zeros(2))], state_dtype=value)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_float16_eps_underflow_gives_torch_optims_nan_and_float32_state_avoids_it(backend):
    """Adam's eps=1e-8 is below float16's smallest number: an element whose gradient has been
    zero computes 0 / (0 + 0) = NaN, in torch.optim and in ours.  Float32 state keeps eps."""
    values, grad = np.array([1.0, 2.0], np.float16), np.array([0.0, 1.0], np.float16)
    reference = torch.nn.Parameter(torch.tensor(values))
    reference.grad = torch.tensor(grad)
    torch.optim.Adam([reference], lr=0.1).step()
    assert torch.isnan(reference[0]) and not torch.isnan(reference[1])
    for state_dtype in (None, "float32"):
        if backend == "torch":
            param = torch.nn.Parameter(torch.tensor(values))
            param.grad = torch.tensor(grad)
            optimizers.Adam([param], lr=0.1, state_dtype=state_dtype).step()
            result = to_numpy(param)
        else:
            opt = optimizers.Adam([jnp.asarray(values)], lr=0.1, state_dtype=state_dtype)
            opt.step([jnp.asarray(grad)])
            result = np.asarray(opt.params[0])
        if state_dtype is None:
            np.testing.assert_array_equal(result, to_numpy(reference))
        else:
            np.testing.assert_array_equal(result, np.array([1.0, 1.9], np.float16))


# -- skipping non-finite steps: the algorithms the property cannot feed ------------------------


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_lbfgs_skips_a_step_whose_closure_gives_non_finite_gradients(backend):
    """The closure runs many times per step: a non-finite gradient in any run undoes the step."""
    values = [np.array([1.0, -2.0, 0.5]), np.array([[0.3, 0.1], [-0.7, 2.0]])]
    runs = {"count": 0, "poisoned": None}  # the closure's runs, and which one gives NaN

    def gradients(current):
        runs["count"] += 1
        grads = [2 * v + 0.1 * v**3 for v in current]
        if runs["count"] == runs["poisoned"]:
            grads[1] = grads[1] * np.nan
        return sum(float((v**2).sum()) for v in current), grads

    def make(skip):
        if backend == "torch":
            params = [torch.nn.Parameter(torch.tensor(v)) for v in values]
            opt = optimizers.LBFGS(params, lr=0.5, max_iter=5, skip_nonfinite=skip)

            def closure():
                loss, grads = gradients([to_numpy(p) for p in params])
                for p, g in zip(params, grads):
                    p.grad = torch.tensor(g)
                return loss

            return opt, closure, lambda: [to_numpy(p) for p in params]
        opt = optimizers.LBFGS([jnp.asarray(v) for v in values], lr=0.5, max_iter=5, skip_nonfinite=skip)

        def closure(current):
            loss, grads = gradients([np.asarray(v) for v in current])
            return loss, [jnp.asarray(g) for g in grads]

        return opt, closure, lambda: [np.asarray(v) for v in opt.params]

    opt, closure, read = make(True)
    before = read()
    runs.update(count=0, poisoned=3)
    opt.step(closure)
    assert runs["count"] > 3  # it ran, and went on past the poisoned run
    assert opt.skipped_steps == 1 and not opt.state
    for a, b in zip(read(), before):
        np.testing.assert_array_equal(a, b)
    runs.update(poisoned=None)  # unpoisoned, the same step goes through as without the option
    opt.step(closure)
    plain, plain_closure, plain_read = make(False)
    plain.step(plain_closure)
    for a, b in zip(read(), plain_read()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_sparse_adam_skips_a_step_with_a_non_finite_sparse_gradient(backend):
    rows, values = np.array([[0, 2, 2]]), np.array([[1.0, 2.0], [np.inf, 0.5], [0.25, 0.0]])
    dense = np.arange(8.0).reshape(4, 2)
    if backend == "torch":
        param = torch.nn.Parameter(torch.tensor(dense))
        opt = optimizers.SparseAdam([param], lr=0.1, skip_nonfinite=True)
        param.grad = torch.sparse_coo_tensor(torch.tensor(rows), torch.tensor(values), dense.shape)
        opt.step()
        result = to_numpy(param)
    else:
        from jax.experimental import sparse

        opt = optimizers.SparseAdam([jnp.asarray(dense)], lr=0.1, skip_nonfinite=True)
        opt.step([sparse.BCOO((jnp.asarray(values), jnp.asarray(rows.T)), shape=dense.shape)])
        result = np.asarray(opt.params[0])
    np.testing.assert_array_equal(result, dense)
    assert opt.skipped_steps == 1 and not opt.state


def test_skip_nonfinite_must_be_a_bool_and_survives_copies():
    with pytest.raises(TypeError, match="skip_nonfinite must be a bool, but got str"):
        optimizers.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, skip_nonfinite="yes")
    opt = optimizers.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, skip_nonfinite=True)
    opt.param_groups[0]["params"][0].grad = torch.tensor([float("nan")])
    opt.step()
    for copied in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert copied.skip_nonfinite and copied.skipped_steps == 1
