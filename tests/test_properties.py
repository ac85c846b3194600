"""Properties every registered optimizer must have, checked on generated problems.

Trajectories are compared by the error max|a - b| of every parameter after every
step, relative to the largest magnitude that parameter has had so far (see
``AgreementReport.compare``).  Runs on the same backend must agree bit for bit;
across implementations the tolerances are those of the design contract.
"""

from __future__ import annotations

import inspect
import unittest.mock
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from backends import jax_buckets
from optimizers import testing
from tests.harness import REPORT, Run, relative_error, trajectory
from tests.registry import BEYOND_TORCH_OPTIM, REGISTRY
from tests.strategies import problems

# Every algorithm: torch.optim's, whose reference is torch.optim's class, and those beyond it,
# whose reference is the torch implementation their issue names ("torch.optim" below).
EVERY = [*REGISTRY.values(), *BEYOND_TORCH_OPTIM.values()]
# The properties feed each optimizer a generated problem's gradients, one per step.
ENTRIES = [entry for entry in EVERY if entry.steps_on_given_gradients]
DTYPES = ["float64", "float32"]
# Across frameworks (op order, fused multiply-add) results differ by ulps, which 20 steps may grow.
ACROSS_FRAMEWORKS = {"float64": 1e-10, "float32": 1e-5}
# Our torch backend runs the same torch kernels as torch.optim's single-tensor path: bit for bit.
AGAINST_TORCH_OPTIM = {"float64": 0.0, "float32": 0.0}


# The agreement properties run the profile's full example count; the properties built on
# them (maximize, checkpoints, groups, missing gradients, closures, skipped steps, the
# functional form) a quarter of it: each example compiles fresh programs, and CI time is
# bounded (the thorough profile runs 250 each).
secondary = settings(max_examples=max(3, settings.default.max_examples // 4))


def tolerance(entry, first: str, second: str, dtype: str) -> float:
    if first == second:
        return 0.0
    if {first, second} == {"torch", "torch.optim"}:
        return AGAINST_TORCH_OPTIM[dtype]
    return across_frameworks(entry, dtype)


def across_frameworks(entry, dtype: str) -> float:
    return (entry.across_frameworks or ACROSS_FRAMEWORKS)[dtype]


def draw_case(data, entry, dtype, **problem_options):
    problem = data.draw(problems(dtype, **entry.problem_options, **problem_options), label="problem")
    kwargs = data.draw(entry.hyperparameters, label="hyperparameters")
    return problem, kwargs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
@given(data=st.data())
def test_jax_backend_agrees_with_torch(entry, dtype, data):
    problem, kwargs = draw_case(data, entry, dtype)
    lr_array = entry.tensor_lr and data.draw(st.booleans(), label="lr as a one-element array")
    jax_run = trajectory(entry, "jax", problem, kwargs, lr_array)
    # A float32 lr makes the step sizes float32 numbers: torch computes their schedule in
    # float32 tensor ops, each rounded, where XLA contracts a multiply-add into one FMA
    # (ASGD's 1 + lambd * lr * t differs by a float32 ulp), so agreement is float32's.
    precision = "float32" if lr_array else dtype
    for reference in ("torch", "torch.optim"):
        expected = trajectory(entry, reference, problem, kwargs, lr_array)
        limit = tolerance(entry, "jax", reference, precision)
        REPORT.compare(entry.name, f"jax vs {reference}", dtype, jax_run, expected, limit)


# Those beyond torch.optim: tests/test_beyond_torch_optim.py, on the default and foreach paths.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("entry", [entry for entry in ENTRIES if entry.reference_class is None], ids=repr)
@given(data=st.data())
def test_torch_backend_matches_torch_optim(entry, dtype, data):
    problem, kwargs = draw_case(data, entry, dtype)
    lr_array = entry.tensor_lr and data.draw(st.booleans(), label="lr as a one-element array")
    ours = trajectory(entry, "torch", problem, kwargs, lr_array)
    expected = trajectory(entry, "torch.optim", problem, kwargs, lr_array)
    REPORT.compare(
        entry.name, "torch vs torch.optim", dtype, ours, expected, tolerance(entry, "torch", "torch.optim", dtype)
    )


# torch.optim's foreach=True path, for each class that has one: the planned (elementwise) rules in
# tests/test_plan.py, in every dtype and through mid-run events; the others (Adafactor) here.
# The properties above never generate foreach (IMPLEMENTATION_FLAGS), so a class missing from both
# lists would have its multi-tensor formula compared with nothing.
FOREACH_UNPLANNED = [
    entry
    for entry in ENTRIES
    if entry.reference_class is None
    and not entry.elementwise
    and "foreach" in inspect.signature(entry.reference.__init__).parameters
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("entry", FOREACH_UNPLANNED, ids=repr)
@given(data=st.data())
def test_torch_backend_matches_torch_optim_on_its_foreach_path(entry, dtype, data):
    problem, kwargs = draw_case(data, entry, dtype)
    lr_array = entry.tensor_lr and data.draw(st.booleans(), label="lr as a one-element array")
    kwargs = dict(kwargs, foreach=True)
    ours = trajectory(entry, "torch", problem, kwargs, lr_array)
    expected = trajectory(entry, "torch.optim", problem, kwargs, lr_array)
    REPORT.compare(
        entry.name,
        "torch vs torch.optim (foreach)",
        dtype,
        ours,
        expected,
        tolerance(entry, "torch", "torch.optim", dtype),
    )


def test_every_foreach_path_of_torch_optim_is_compared():
    """Each registered class whose torch.optim signature has ``foreach`` is compared on that path."""
    planned = {entry.name for entry in REGISTRY.values() if entry.elementwise}
    compared = planned | {entry.name for entry in FOREACH_UNPLANNED}
    with_foreach = {
        entry.name for entry in REGISTRY.values() if "foreach" in inspect.signature(entry.reference.__init__).parameters
    }
    assert with_foreach <= compared, f"foreach=True never compared with torch.optim: {with_foreach - compared}"
    assert "Adafactor" in {entry.name for entry in FOREACH_UNPLANNED}


# The functional update and the object's step trace the same rule, but into separately compiled
# programs: a functional state's lazily created entries (SGD's momentum buffer) add a select,
# and XLA contracts multiply-adds by the surrounding graph, so results may differ by ulps.
FUNCTIONAL_VS_OBJECT = {"float64": 1e-13, "float32": 1e-6}


@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
@secondary
@given(data=st.data())
def test_functional_form_follows_the_object_step(entry, data):
    """``opt.functional()``'s update runs the traced step of the object's ``step()``."""
    problem, kwargs = draw_case(data, entry, data.draw(st.sampled_from(DTYPES), label="dtype"))
    dtype = problem.params[0].dtype.name
    lr_array = entry.tensor_lr and data.draw(st.booleans(), label="lr as a one-element array")
    functional = trajectory(entry, "functional", problem, kwargs, lr_array)
    object_run = trajectory(entry, "jax", problem, kwargs, lr_array)
    REPORT.compare(entry.name, "functional vs jax", dtype, functional, object_run, FUNCTIONAL_VS_OBJECT[dtype])
    torch_run = trajectory(entry, "torch", problem, kwargs, lr_array)
    REPORT.compare(entry.name, "functional vs torch", dtype, functional, torch_run, across_frameworks(entry, dtype))


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("entry", [entry for entry in ENTRIES if entry.maximize], ids=repr)
@secondary
@given(data=st.data())
def test_maximize_equals_minimizing_the_negated_gradient(entry, backend, data):
    """Exact on torch.  On JAX the two are different programs -- XLA folds an in-program
    negation into the arithmetic around it -- so they agree to rounding (measured: 4e-16)."""
    problem, kwargs = draw_case(data, entry, "float64")
    maximized = trajectory(entry, backend, problem, {**kwargs, "maximize": True})
    minimized = trajectory(entry, backend, problem.negated(), {**kwargs, "maximize": False})
    REPORT.compare(
        entry.name, f"maximize ({backend})", "float64", maximized, minimized, 0.0 if backend == "torch" else 1e-13
    )


CHECKPOINT_ROUTES = [
    ("torch", "torch"),
    ("jax", "jax"),
    ("torch.optim", "torch"),
    ("torch", "torch.optim"),
    ("torch", "jax"),
    ("jax", "torch"),
]


@pytest.mark.parametrize("source, target", CHECKPOINT_ROUTES, ids=[f"{s}->{t}" for s, t in CHECKPOINT_ROUTES])
@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
@secondary
@given(data=st.data())
def test_checkpoint_mid_trajectory_changes_nothing(entry, source, target, data):
    """Save after k steps, load into a fresh optimizer on ``target``, continue: the run is unchanged.

    Loading into torch.optim is held to what torch.optim does with its own checkpoint:
    it casts state other than ``step`` to the parameter's dtype, which changes NAdam's
    ``mu_product`` in float64 runs.
    """
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    problem, kwargs = draw_case(data, entry, dtype, min_steps=2)
    split = data.draw(st.integers(1, problem.steps - 1), label="steps before the checkpoint")
    resumed = resume(entry, source, target, problem, kwargs, split)
    if target == "torch.optim":
        expected = resume(entry, target, target, problem, kwargs, split)
    else:
        expected = trajectory(entry, source, problem, kwargs)
    REPORT.compare(
        entry.name, f"checkpoint {source}->{target}", dtype, resumed, expected, tolerance(entry, source, target, dtype)
    )


def resume(entry, source, target, problem, kwargs, split):
    """The trajectory of ``split`` steps on ``source``, a checkpoint, and the rest on ``target``."""
    first = Run(entry, source, problem, kwargs)
    before = first.trajectory(split)
    second = Run(entry, target, problem.after(split, first.values()), kwargs)
    second.optimizer.load_state_dict(first.checkpoint())
    assert second.state().keys() == first.state().keys()
    return before + second.trajectory()


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
@secondary
@given(data=st.data())
def test_splitting_into_groups_with_equal_hyperparameters_changes_nothing(entry, backend, data):
    """Bit for bit, except on JAX for rules with numbers kept per group (group counters, step
    scalars: Adan, Lamb, Schedule-Free): the compiled step computes them once per group, so one
    group and several are different programs, which XLA fuses and contracts differently
    (measured: 1-2 ulps in float64), as for the functional form.

    On JAX each parameter steps on its own here: a group's small parameters step as one flat
    bucket, so grouping decides the buckets, and XLA:CPU contracts multiply-adds into FMAs by
    the loop it emits (tests/test_jax_buckets.py: bit for bit without FMA, an ulp apart with it,
    which a sign-based rule such as Lion's can turn into a step of the learning rate)."""
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    problem, kwargs = draw_case(data, entry, dtype)
    assume(len(problem.groups) > 1)
    with unittest.mock.patch.object(jax_buckets, "SMALL", 0):
        grouped = trajectory(entry, backend, problem, kwargs)
        single = trajectory(entry, backend, replace(problem, groups=[list(range(len(problem.params)))]), kwargs)
    per_group = entry.ours.group_counters or entry.ours.step_scalars
    limit = FUNCTIONAL_VS_OBJECT[dtype] if backend == "jax" and per_group else 0.0
    REPORT.compare(entry.name, f"groups ({backend})", dtype, grouped, single, limit)


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
@secondary
@given(data=st.data())
def test_a_parameter_without_gradient_keeps_its_value_and_state(entry, backend, data):
    problem, kwargs = draw_case(data, entry, data.draw(st.sampled_from(DTYPES), label="dtype"))
    assume(any(g is None for row in problem.rows for g in row))
    run = Run(entry, backend, problem, kwargs)
    for row in problem.rows:
        values, state = run.values(), run.state()
        run.step()
        new_values, new_state = run.values(), run.state()
        for leaf, grad in enumerate(row):
            if grad is None:
                assert new_values[leaf].tobytes() == values[leaf].tobytes()
                assert new_state.get(leaf, {}).keys() == state.get(leaf, {}).keys()
                for key, value in state.get(leaf, {}).items():
                    assert new_state[leaf][key].tobytes() == value.tobytes()


@pytest.mark.parametrize("entry", [entry for entry in EVERY if "dense" in entry.gradients], ids=repr)
@secondary
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 20))
def test_closure_driven_training_agrees_across_backends(entry, data, seed, steps):
    """step(closure) on torch (autograd) and on JAX (value_and_grad) follow the same path, also
    where the algorithm evaluates the closure several times a step (LBFGS)."""
    kwargs = data.draw(entry.hyperparameters, label="hyperparameters")
    rng = np.random.default_rng(seed)
    # A matrix, so Adafactor factors it and Muon takes it.
    start, target = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    curvature = rng.uniform(0.1, 2.0, (2, 3))

    p = torch.tensor(start, requires_grad=True)
    torch_opt = entry.ours([p], **kwargs)
    t_target, t_curvature = torch.from_numpy(target), torch.from_numpy(curvature)

    def closure():
        torch_opt.zero_grad()
        value = 0.5 * torch.sum(t_curvature * (p - t_target) ** 2)
        value.backward()
        return value

    jax_opt = entry.ours(jnp.asarray(start), **kwargs)
    for optimizer in (torch_opt, jax_opt):
        if callable(getattr(optimizer, "train", None)):  # Schedule-Free steps in train mode
            optimizer.train()
    value_and_grad = jax.value_and_grad(lambda q: 0.5 * jnp.sum(curvature * (q - target) ** 2))
    torch_path, jax_path = [], []
    loss_tolerance = 1e-9 if entry.across_frameworks is None else entry.across_frameworks["float64"]
    for _ in range(steps):
        torch_loss = torch_opt.step(closure)
        jax_loss = jax_opt.step(closure=value_and_grad)
        assert torch_loss.item() == pytest.approx(float(jax_loss), rel=loss_tolerance, abs=1e-12)
        torch_path.append([p.detach().numpy().copy()])
        jax_path.append([np.asarray(jax_opt.params)])
    REPORT.compare(
        entry.name, "closure torch vs jax", "float64", jax_path, torch_path, across_frameworks(entry, "float64")
    )


# Keywords that select an implementation, not the math: accepted, never generated.
IMPLEMENTATION_FLAGS = {"params", "self", "foreach", "fused", "capturable", "differentiable", "backend"}


@pytest.mark.parametrize("entry", EVERY, ids=repr)
def test_every_option_is_generated(entry):
    """Each hyperparameter of the reference's signature leaves its default in some generated case."""
    signature = inspect.signature(entry.reference.__init__).parameters
    fixed = IMPLEMENTATION_FLAGS | set(entry.fixed_options)
    options = {name: p.default for name, p in signature.items() if name not in fixed and p.kind != p.VAR_KEYWORD}
    moved = set()

    @settings(max_examples=60, derandomize=True, database=None)
    @given(entry.hyperparameters)
    def collect(kwargs):
        moved.update(name for name, value in kwargs.items() if value != options[name])

    collect()
    assert moved == set(options), f"never generated away from the default: {set(options) - moved}"


def poison(data, problem):
    """The problem with a NaN or inf put into some steps' gradients, and the indices of those steps."""
    grads, poisoned = problem.rows, set()
    for step in sorted(data.draw(st.sets(st.integers(0, problem.steps - 1), min_size=1), label="poisoned steps")):
        leaves = [i for i, g in enumerate(grads[step]) if g is not None and g.size]
        if not leaves:
            continue
        leaf = data.draw(st.sampled_from(leaves), label="poisoned leaf")
        bad = np.array(grads[step][leaf])
        bad.flat[data.draw(st.integers(0, bad.size - 1), label="element")] = data.draw(
            st.sampled_from([np.nan, np.inf, -np.inf]), label="non-finite value"
        )
        grads[step][leaf] = bad
        poisoned.add(step)
    return testing.given_gradients(problem.params, grads, problem.groups), poisoned


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
@secondary
@given(data=st.data())
def test_skipped_nonfinite_steps_change_nothing(entry, backend, data):
    """With ``skip_nonfinite=True`` a run equals one in which its non-finite steps never happened:
    parameters, state and step counts bit for bit."""
    problem, kwargs = draw_case(data, entry, data.draw(st.sampled_from(DTYPES), label="dtype"))
    poisoned_problem, poisoned = poison(data, problem)
    assume(poisoned)
    skipping = Run(entry, backend, poisoned_problem, {**kwargs, "skip_nonfinite": True})
    got = skipping.trajectory()
    rows = problem.rows
    kept = testing.given_gradients(problem.params, [g for i, g in enumerate(rows) if i not in poisoned], problem.groups)
    reference = Run(entry, backend, kept, kwargs)
    expected, values = [], [np.asarray(p) for p in problem.params]
    for step in range(len(rows)):
        if step not in poisoned:
            reference.step()
            values = reference.values()
        expected.append(values)
    REPORT.compare(entry.name, f"skip non-finite ({backend})", "mixed", got, expected, 0.0)
    assert skipping.optimizer.skipped_steps == len(poisoned)
    state, expected_state = skipping.state(), reference.state()
    assert state.keys() == expected_state.keys()
    for index in state:
        assert state[index].keys() == expected_state[index].keys()
        for key in state[index]:
            np.testing.assert_array_equal(state[index][key], expected_state[index][key])


@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
@secondary
@given(data=st.data())
def test_nonfinite_gradients_flow_as_in_torch_optim_by_default(entry, data):
    """Without the option, NaN and inf propagate where torch.optim propagates them, on both backends."""
    problem, kwargs = draw_case(data, entry, "float64")
    poisoned_problem, _ = poison(data, problem)
    try:
        expected = trajectory(entry, "torch.optim", poisoned_problem, kwargs)
    except RuntimeError as error:  # SOAP's reference: a first gradient's eigendecomposition fails
        for backend in ("torch", "jax"):
            with pytest.raises(type(error)):
                trajectory(entry, backend, poisoned_problem, kwargs)
        return
    for backend in ("torch", "jax"):
        got = trajectory(entry, backend, poisoned_problem, kwargs)
        for step, (got_values, expected_values) in enumerate(zip(got, expected)):
            for leaf, (a, b) in enumerate(zip(got_values, expected_values)):
                where = f"{backend}, step {step}, leaf {leaf}"
                np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=where)
                finite = np.isfinite(b)
                np.testing.assert_array_equal(a[~finite], b[~finite], err_msg=where)
                if backend == "torch":
                    np.testing.assert_array_equal(a, b, err_msg=where)
                else:
                    scale = max(1.0, np.abs(b[finite]).max(initial=0.0))
                    assert relative_error(a[finite], b[finite], scale) <= across_frameworks(entry, "float64"), where
