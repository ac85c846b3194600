"""The algorithms beyond torch.optim against their references: Lion (lion-pytorch), AdEMAMix (the
authors' code, apple/ml-ademamix), Adan (the official sail-sg/Adan) and Schedule-Free AdamW and
SGD (schedulefree), on the torch backend bit for bit, on JAX to float64 rounding, and beside optax
and pytorch_optimizer where those define the same algorithm, with the measured distance where
they do not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import lion_pytorch
import numpy as np
import optax
import pytest
import pytorch_optimizer
import schedulefree
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optimizers

from .references.adan_official import Adan as OfficialAdan
from .references.ademamix_apple import AdEMAMix as AppleAdEMAMix
from .strategies import problems, small_floats

REFERENCES = {
    "Lion": lion_pytorch.Lion,
    "AdEMAMix": AppleAdEMAMix,
    "Adan": OfficialAdan,
    "ScheduleFreeAdamW": schedulefree.AdamWScheduleFree,
    "ScheduleFreeSGD": schedulefree.SGDScheduleFree,
}


@st.composite
def lion_options(draw) -> dict:
    return dict(
        lr=draw(small_floats(1e-5, 0.1)),
        betas=(draw(small_floats(0.0, 0.99)), draw(small_floats(0.0, 0.999))),
        weight_decay=draw(st.one_of(st.just(0.0), small_floats(0.0, 1.0))),
        decoupled_weight_decay=draw(st.booleans()),
    )


@st.composite
def ademamix_options(draw) -> dict:
    return dict(
        lr=draw(small_floats(0.0, 0.1)),
        betas=(draw(small_floats(0.0, 0.99)), draw(small_floats(0.0, 0.999)), draw(small_floats(0.0, 0.9999))),
        alpha=draw(small_floats(0.0, 10.0)),
        beta3_warmup=draw(st.one_of(st.none(), st.integers(1, 30))),
        alpha_warmup=draw(st.one_of(st.none(), st.integers(1, 30))),
        eps=draw(small_floats(1e-10, 1e-3)),
        weight_decay=draw(st.one_of(st.just(0.0), small_floats(0.0, 0.1))),
    )


@st.composite
def adan_options(draw) -> dict:
    return dict(
        lr=draw(small_floats(0.0, 0.1)),
        betas=tuple(draw(small_floats(0.0, 0.99)) for _ in range(3)),
        eps=draw(small_floats(1e-10, 1e-3)),
        weight_decay=draw(st.one_of(st.just(0.0), small_floats(0.0, 0.1))),
        max_grad_norm=draw(st.one_of(st.just(0.0), small_floats(0.1, 10.0))),
        no_prox=draw(st.booleans()),
    )


@st.composite
def schedule_free_options(draw, adam: bool) -> dict:
    options = dict(
        lr=draw(small_floats(0.0, 0.5)),
        weight_decay=draw(st.one_of(st.just(0.0), small_floats(0.0, 0.1))),
        warmup_steps=draw(st.one_of(st.just(0), st.integers(1, 10))),
        r=draw(st.one_of(st.just(0.0), small_floats(0.0, 1.0))),
        weight_lr_power=draw(small_floats(0.0, 4.0)),
    )
    if adam:
        betas = (draw(small_floats(0.05, 0.99)), draw(small_floats(0.0, 0.999)))
        return dict(options, lr=options["lr"] / 10, betas=betas, eps=draw(small_floats(1e-10, 1e-3)))
    return dict(options, momentum=draw(small_floats(0.05, 0.99)))


OPTIONS = {
    "Lion": lion_options(),
    "AdEMAMix": ademamix_options(),
    "Adan": adan_options(),
    "ScheduleFreeAdamW": schedule_free_options(adam=True),
    "ScheduleFreeSGD": schedule_free_options(adam=False),
}
# Lion steps by a sign: gradients near zero compare the frameworks' zeros (as Rprop's).
PROBLEMS = {
    "Lion": dict(magnitudes=("ordinary", "large")),
    "AdEMAMix": dict(),
    "Adan": dict(),
    "ScheduleFreeAdamW": dict(),
    "ScheduleFreeSGD": dict(),
}


def train_mode(optimizer):
    """Schedule-Free optimizers start in eval mode, as their reference does."""
    if hasattr(optimizer, "train"):
        optimizer.train()
    return optimizer


def run_torch(cls, problem, options, dtype, **ours):
    params = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in problem.params]
    groups = [{"params": [params[i] for i in group]} for group in problem.groups]
    optimizer = train_mode(cls(groups, **options, **ours))
    for grads in problem.grads:
        for param, grad in zip(params, grads):
            param.grad = None if grad is None else torch.tensor(grad, dtype=dtype)
        optimizer.step()
    return [p.detach() for p in params], optimizer


def run_jax(cls, problem, options):
    optimizer = train_mode(
        cls([{"params": [jnp.asarray(problem.params[i]) for i in group]} for group in problem.groups], **options)
    )
    for grads in problem.grads:
        optimizer.step(
            [[None if grads[i] is None else jnp.asarray(grads[i]) for i in group] for group in problem.groups]
        )
    by_leaf = {i: value for group, values in zip(problem.groups, optimizer.params) for i, value in zip(group, values)}
    return [np.asarray(by_leaf[i]) for i in range(len(problem.params))]


def relative_error(ours, theirs) -> float:
    """The largest difference, relative to each parameter's scale (at least 1)."""
    errors = []
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if b.size:
            errors.append(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))
    return max(errors, default=0.0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", sorted(REFERENCES))
@settings(deadline=None)
@given(data=st.data())
def test_the_torch_backend_is_the_reference_bit_for_bit(name, foreach, dtype, data):
    problem = data.draw(problems(dtype, **PROBLEMS[name]))
    options = data.draw(OPTIONS[name])
    torch_dtype = getattr(torch, dtype)
    ours, ours_optimizer = run_torch(getattr(optimizers, name), problem, options, torch_dtype, foreach=foreach)
    theirs, their_optimizer = run_torch(REFERENCES[name], problem, options, torch_dtype)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    if name.startswith("ScheduleFree"):  # the averaged point, and the counters in the param groups
        ours_optimizer.eval(), their_optimizer.eval()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        counters = ("k", "lr_max", "weight_sum", "scheduled_lr", "train_mode")
        for mine, reference in zip(ours_optimizer.param_groups, their_optimizer.param_groups):
            assert {k: mine[k] for k in counters} == {k: reference[k] for k in counters}


# Float64 agreement of the JAX backend with the torch reference.  Different sqrt and division
# rounding (torch's CPU sqrt is not correctly rounded), FMA placement; Adan's float32 clip factor
# is a float32 sum of squares summed in another order, so a clipped step agrees to float32 only.
JAX_TOLERANCE = {"Lion": 1e-12, "AdEMAMix": 1e-12, "Adan": 1e-6, "ScheduleFreeAdamW": 1e-12, "ScheduleFreeSGD": 1e-12}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(REFERENCES))
@settings(deadline=None, max_examples=10)
@given(data=st.data())
def test_the_jax_backend_follows_the_reference(name, dtype, data):
    problem = data.draw(problems(dtype, max_steps=10, **PROBLEMS[name]))
    options = data.draw(OPTIONS[name])
    theirs, _ = run_torch(REFERENCES[name], problem, options, getattr(torch, dtype))
    # float32: the contract's agreement across frameworks (tests/test_properties.py)
    tolerance = JAX_TOLERANCE[name] if dtype == "float64" else 1e-5
    assert relative_error(run_jax(getattr(optimizers, name), problem, options), theirs) <= tolerance


def quadratic_steps(steps=30, seed=0):
    rng = np.random.default_rng(seed)
    start = {"w": rng.standard_normal((7, 5)), "b": rng.standard_normal(13)}
    noise = [{k: rng.standard_normal(v.shape) for k, v in start.items()} for _ in range(steps)]
    return start, noise


def optax_run(transformation, steps=30):
    start, noise = quadratic_steps(steps)
    params = jax.tree_util.tree_map(jnp.asarray, start)
    state = transformation.init(params)
    for n in noise:
        grads = jax.tree_util.tree_map(lambda p, e: p + jnp.asarray(e), params, n)
        updates, state = transformation.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def ours_run(cls, steps=30, **options):
    start, noise = quadratic_steps(steps)
    optimizer = train_mode(cls(jax.tree_util.tree_map(jnp.asarray, start), **options))
    for n in noise:
        optimizer.step(jax.tree_util.tree_map(lambda p, e: p + jnp.asarray(e), optimizer.params, n))
    return optimizer.params


def tree_error(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def test_lion_is_optax_lion():
    assert tree_error(ours_run(optimizers.Lion, lr=1e-2), optax_run(optax.lion(1e-2, weight_decay=0.0))) == 0
    decayed = tree_error(
        ours_run(optimizers.Lion, lr=1e-2, weight_decay=0.1), optax_run(optax.lion(1e-2, weight_decay=0.1))
    )
    assert decayed <= 1e-13  # p(1 - lr wd) - lr sign against p - lr (sign + wd p)


def apple_schedules(alpha, beta1, beta3, warmup):
    """The reference's warmups as optax schedules: optax counts from 0, the reference from 1."""

    def half_life(beta):
        return jnp.log(0.5) / jnp.log(beta + 1e-8) - 1

    def alpha_at(count):
        t = count.astype(jnp.float64) + 1
        return jnp.where(t < warmup, t / warmup * alpha, alpha)

    def beta3_at(count):
        t = count.astype(jnp.float64) + 1
        fraction = t / warmup
        mixed = (1 - fraction) * half_life(beta1) + fraction * half_life(beta3)
        return jnp.where(t < warmup, 0.5 ** (1 / (mixed + 1)), beta3)

    return alpha_at, beta3_at


def test_ademamix_is_optax_ademamix_and_its_warmups_run_a_step_behind():
    options = dict(lr=1e-2, alpha=5.0, weight_decay=0.1)
    same = optax.contrib.ademamix(1e-2, b1=0.9, b2=0.999, b3=0.9999, alpha=5.0, weight_decay=0.1)
    assert tree_error(ours_run(optimizers.AdEMAMix, **options), optax_run(same)) <= 1e-14
    warm = dict(options, alpha_warmup=20, beta3_warmup=20)
    alpha_at, beta3_at = apple_schedules(5.0, 0.9, 0.9999, 20)
    shifted = optax.contrib.ademamix(1e-2, b1=0.9, b2=0.999, b3=beta3_at, alpha=alpha_at, weight_decay=0.1)
    ours = ours_run(optimizers.AdEMAMix, **warm)
    assert tree_error(ours, optax_run(shifted)) <= 1e-14
    # optax's own count (0-based, in float32) for the same warmups: a step behind.
    unshifted = optax.contrib.ademamix(
        1e-2,
        b1=0.9,
        b2=0.999,
        b3=lambda count: beta3_at(count - 1),
        alpha=lambda count: alpha_at(count - 1),
        weight_decay=0.1,
    )
    assert tree_error(ours, optax_run(unshifted)) > 1e-3


def test_adan_differs_from_optax_adan_by_its_beta2_coefficient():
    ours = ours_run(optimizers.Adan, lr=1e-2, no_prox=True)
    theirs = optax_run(optax.adan(1e-2, eps_root=0.0))
    # optax uses 1 - b2 where the official code uses b2 (optax PR #1715): a different algorithm.
    assert tree_error(ours, theirs) > 1e-3


def torch_quadratic(cls, steps=30, **options):
    start, noise = quadratic_steps(steps)
    params = [torch.tensor(v, requires_grad=True) for v in start.values()]
    optimizer = train_mode(cls(params, **options))
    for n in noise:
        for param, e in zip(params, n.values()):
            param.grad = param.detach() + torch.tensor(e)
        optimizer.step()
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize(
    "name, options, theirs, tolerance",
    [
        # lerp and addcdiv where the authors' code multiplies and divides: ulps apart.
        ("AdEMAMix", dict(lr=1e-2, alpha=5.0, weight_decay=0.1), dict(weight_decouple=True), 1e-13),
        # One warmup for both schedules, without the authors' 1e-8 inside the half-life's log.
        ("AdEMAMix", dict(lr=1e-2, alpha=5.0, alpha_warmup=20, beta3_warmup=20), dict(t_alpha_beta3=20), 1e-4),
        ("Adan", dict(lr=1e-2, weight_decay=0.02), dict(), 1e-13),
        # The clip factor rounded another way (a float32 tensor): float32-sized differences.
        ("Adan", dict(lr=1e-2, max_grad_norm=5.0), dict(), 1e-5),
    ],
)
def test_pytorch_optimizer_computes_the_same_to_rounding(name, options, theirs, tolerance):
    ours = torch_quadratic(getattr(optimizers, name), **options)
    other = {k: v for k, v in options.items() if k not in ("alpha_warmup", "beta3_warmup")}
    reference = torch_quadratic(getattr(pytorch_optimizer, name), **other, **theirs)
    error = relative_error(ours, reference)
    assert 0 < error <= tolerance


CHECKPOINT_OPTIONS = {
    "Lion": dict(lr=1e-2, weight_decay=0.1),
    "AdEMAMix": dict(lr=1e-2, alpha_warmup=5, beta3_warmup=5),
    "Adan": dict(lr=1e-2, max_grad_norm=1.0, weight_decay=0.02),
    "ScheduleFreeAdamW": dict(lr=1e-2, warmup_steps=3, weight_decay=0.1),
    "ScheduleFreeSGD": dict(lr=0.1, warmup_steps=3, r=0.5),
}


@pytest.mark.parametrize("name", sorted(CHECKPOINT_OPTIONS))
def test_a_reference_checkpoint_continues_identically_in_ours_and_back(name):
    options = CHECKPOINT_OPTIONS[name]
    rng = np.random.default_rng(3)
    start = rng.standard_normal((4, 3))
    grads = [torch.tensor(rng.standard_normal((4, 3))) for _ in range(12)]

    def run(classes):
        param = torch.tensor(start, requires_grad=True)
        optimizer = train_mode(classes[0]([param], **options))
        for index, grad in enumerate(grads):
            if index == 6:  # switch implementations through a state dict
                saved = optimizer.state_dict()
                optimizer = classes[1]([param], **options)
                optimizer.load_state_dict(saved)  # Schedule-Free: train_mode comes with the groups
            param.grad = grad.clone()
            optimizer.step()
        return param.detach()

    reference, ours = REFERENCES[name], getattr(optimizers, name)
    uninterrupted = run([reference, reference])
    assert torch.equal(run([reference, ours]), uninterrupted)
    assert torch.equal(run([ours, reference]), uninterrupted)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_the_class_form_and_fused_steps(name):
    options = dict(lr=1e-2)
    start, noise = quadratic_steps(8)
    init, update, _ = getattr(optimizers, name).functional(**options)
    params = jax.tree_util.tree_map(jnp.asarray, start)
    state = init(params)
    for n in noise:
        params, state = update(jax.tree_util.tree_map(lambda p, e: p + jnp.asarray(e), params, n), state, params)
    assert tree_error(params, ours_run(getattr(optimizers, name), steps=8, **options)) <= 1e-15
    planned = torch_quadratic(getattr(optimizers, name), steps=8, **options)
    fused = torch_quadratic(getattr(optimizers, name), steps=8, fused=True, **options)
    assert relative_error(fused, planned) <= 1e-13  # Inductor's loop rounds as its own C++ does


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("Lion", dict(lr=0.0), "Invalid learning rate: 0.0"),
        ("Lion", dict(betas=(0.9, 1.5)), "Invalid beta parameter at index 1: 1.5"),
        ("AdEMAMix", dict(betas=(0.9, 0.999, 1.0)), "Invalid beta parameter at index 2: 1.0"),
        ("AdEMAMix", dict(alpha=-1.0), "Invalid alpha value: -1.0"),
        ("Adan", dict(max_grad_norm=-1.0), "Invalid Max grad norm: -1.0"),
        ("Adan", dict(eps=-1.0), "Invalid epsilon value: -1.0"),
    ],
)
def test_bad_hyperparameters_are_named(name, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        getattr(optimizers, name)([torch.zeros(2, requires_grad=True)], **options)


@pytest.mark.parametrize("name", ["ScheduleFreeAdamW", "ScheduleFreeSGD"])
def test_schedule_free_is_optax_without_warmup_and_a_step_ahead_with_it(name):
    adam = name == "ScheduleFreeAdamW"
    lr = 0.05 if adam else 0.1
    transformation = optax.contrib.schedule_free_adamw if adam else optax.contrib.schedule_free_sgd
    ours = ours_run(getattr(optimizers, name), lr=lr, weight_decay=0.1)
    assert tree_error(ours, optax_run(transformation(lr, weight_decay=0.1))) <= 1e-13
    # optax counts its inner warmup from 0, the reference from 1: optax's first step does not move.
    warm = ours_run(getattr(optimizers, name), lr=lr, warmup_steps=5, weight_decay=0.1)
    assert tree_error(warm, optax_run(transformation(lr, warmup_steps=5, weight_decay=0.1))) > 1e-3


def test_schedule_free_steps_only_in_train_mode_and_eval_params_give_x():
    params = {"w": jnp.ones(3)}
    gradients = [{"w": jnp.arange(3.0)}, {"w": jnp.ones(3)}]
    optimizer = optimizers.ScheduleFreeAdamW(params, lr=0.1)
    with pytest.raises(RuntimeError, match="not in train mode"):
        optimizer.step(gradients[0])
    optimizer.train()
    for grad in gradients:
        optimizer.step(grad)
    init, update, _ = optimizers.ScheduleFreeAdamW.functional(lr=0.1)
    y, state = params, init(params)
    for grad in gradients:
        y, state = update(grad, state, y)
    np.testing.assert_array_equal(y["w"], optimizer.params["w"])
    optimizer.eval()
    x = optimizers.ScheduleFreeAdamW.eval_params(y, state, 0.9)
    np.testing.assert_array_equal(x["w"], optimizer.params["w"])
    theirs = optax.contrib.schedule_free_adamw(0.1)
    their_state, their_y = theirs.init(params), params
    for grad in gradients:
        updates, their_state = theirs.update(grad, their_state, their_y)
        their_y = optax.apply_updates(their_y, updates)
    their_x = optax.contrib.schedule_free_eval_params(their_state, their_y)
    np.testing.assert_allclose(their_x["w"], x["w"], rtol=1e-14, atol=1e-14)
