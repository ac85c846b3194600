"""The algorithms beyond torch.optim against their references: Lion (lion-pytorch), AdEMAMix (the
authors' code, apple/ml-ademamix), Adan (the official sail-sg/Adan) and Schedule-Free AdamW and
SGD (schedulefree), on the torch backend bit for bit, on JAX to float64 rounding, and beside optax
and pytorch_optimizer where those define the same algorithm, with the measured distance where
they do not."""

from __future__ import annotations

import copy
import pickle

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
from optimizers import testing

from .harness import Functional
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


def grouped(leaves, problem):
    return [{"params": [leaves[i] for i in group]} for group in problem.groups]


def torch_side(cls, problem, options, eval_params=False, **ours):
    return testing.torch(lambda ps: cls(grouped(ps, problem), **options, **ours), eval_params=eval_params)


def jax_side(cls, problem, options):
    return testing.jax(lambda leaves: cls(grouped(leaves, problem), **options))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", sorted(REFERENCES))
@settings(deadline=None)
@given(data=st.data())
def test_the_torch_backend_is_the_reference_bit_for_bit(name, foreach, dtype, data):
    problem = data.draw(problems(dtype, **PROBLEMS[name]))
    options = data.draw(OPTIONS[name])
    ours, theirs = getattr(optimizers, name), REFERENCES[name]
    # Schedule-Free: the averaged point x too, which eval() shows.
    for eval_params in [False, True] if name.startswith("ScheduleFree") else [False]:
        testing.assert_agree(
            torch_side(ours, problem, options, eval_params, foreach=foreach),
            torch_side(theirs, problem, options, eval_params),
            problem=problem,
            dtype=dtype,
            rtol=0,
        )


@pytest.mark.parametrize("name", ["ScheduleFreeAdamW", "ScheduleFreeSGD"])
def test_schedule_free_keeps_the_references_counters_in_its_param_groups(name):
    problem = testing.quadratic()
    runs = [
        testing.torch(lambda ps, cls=cls: cls(ps, lr=0.01, warmup_steps=3)).start(problem.params)
        for cls in (getattr(optimizers, name), REFERENCES[name])
    ]
    for step in range(5):
        for run in runs:
            run.step(problem, step)
        counters = ("k", "lr_max", "weight_sum", "scheduled_lr", "train_mode")
        mine, reference = (run.optimizer.param_groups[0] for run in runs)
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
    testing.assert_agree(
        jax_side(getattr(optimizers, name), problem, options),
        torch_side(REFERENCES[name], problem, options),
        problem=problem,
        dtype=dtype,
        # float32: the contract's agreement across frameworks (tests/test_properties.py)
        rtol=JAX_TOLERANCE[name] if dtype == "float64" else 1e-5,
    )


def ours_on_jax(cls, **options):
    return testing.jax(lambda leaves: cls(leaves, **options))


def ours_on_torch(cls, **options):
    return testing.torch(lambda tensors: cls(tensors, **options))


def error(a, b, steps=30) -> float:
    """The kit's largest error between two contenders over 30 steps of its default problem."""
    return testing.compare(a, b, steps=steps).max_error


def test_lion_is_optax_lion():
    assert error(ours_on_jax(optimizers.Lion, lr=1e-2), testing.optax(optax.lion(1e-2, weight_decay=0.0))) == 0
    decayed = error(
        ours_on_jax(optimizers.Lion, lr=1e-2, weight_decay=0.1), testing.optax(optax.lion(1e-2, weight_decay=0.1))
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
    assert error(ours_on_jax(optimizers.AdEMAMix, **options), testing.optax(same)) <= 1e-14
    ours = ours_on_jax(optimizers.AdEMAMix, **options, alpha_warmup=20, beta3_warmup=20)
    alpha_at, beta3_at = apple_schedules(5.0, 0.9, 0.9999, 20)
    shifted = optax.contrib.ademamix(1e-2, b1=0.9, b2=0.999, b3=beta3_at, alpha=alpha_at, weight_decay=0.1)
    assert error(ours, testing.optax(shifted)) <= 1e-14
    # optax's own count (0-based, in float32) for the same warmups: a step behind.
    unshifted = optax.contrib.ademamix(
        1e-2,
        b1=0.9,
        b2=0.999,
        b3=lambda count: beta3_at(count - 1),
        alpha=lambda count: alpha_at(count - 1),
        weight_decay=0.1,
    )
    assert error(ours, testing.optax(unshifted)) > 1e-3


def test_adan_differs_from_optax_adan_by_its_beta2_coefficient():
    ours = ours_on_jax(optimizers.Adan, lr=1e-2, no_prox=True)
    # optax uses 1 - b2 where the official code uses b2 (optax PR #1715): a different algorithm.
    assert error(ours, testing.optax(optax.adan(1e-2, eps_root=0.0))) > 1e-3


@pytest.mark.parametrize(
    "name, options, theirs, tolerance",
    [
        # lerp and addcdiv where the authors' code multiplies and divides: ulps apart.
        ("AdEMAMix", dict(lr=1e-2, alpha=5.0, weight_decay=0.1), dict(weight_decouple=True), 1e-13),
        # One warmup for both schedules, without the authors' 1e-8 inside the half-life's log.
        ("AdEMAMix", dict(lr=1e-2, alpha=5.0, alpha_warmup=20, beta3_warmup=20), dict(t_alpha_beta3=20), 1e-4),
        ("Adan", dict(lr=1e-2, weight_decay=0.02), dict(), 1e-13),
        # The clip factor rounded another way (a float32 tensor): float32-sized differences.
        # (The problem's gradient norm starts near 5.1: a clip at 1 acts on every step.)
        ("Adan", dict(lr=1e-2, max_grad_norm=1.0), dict(), 1e-5),
    ],
)
def test_pytorch_optimizer_computes_the_same_to_rounding(name, options, theirs, tolerance):
    other = {k: v for k, v in options.items() if k not in ("alpha_warmup", "beta3_warmup")}
    measured = error(
        ours_on_torch(getattr(optimizers, name), **options),
        ours_on_torch(getattr(pytorch_optimizer, name), **other, **theirs),
    )
    assert 0 < measured <= tolerance


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
        optimizer = classes[0]([param], **options)
        if hasattr(optimizer, "train"):  # Schedule-Free starts in eval mode, as its reference
            optimizer.train()
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


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_a_copy_steps_on_as_the_uninterrupted_reference(name, copier):
    """State is made outside autograd's graph, as the references make it: Schedule-Free's z, a
    clone of the parameter, once kept the graph, and deep copies of the optimizer failed.
    (lion-pytorch's own copies cannot step: it keeps options in attributes that torch.optim's
    __getstate__ leaves out.)"""
    problem = testing.quadratic()

    def run(cls, copier=None):
        run = testing.torch(lambda ps: cls(ps, lr=1e-2)).start(problem.params)
        for step in range(6):
            if step == 3 and copier:
                state = [v for s in run.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
                assert not any(v.requires_grad for v in state)
                together = (run.tensors, run.optimizer)
                copied = copy.deepcopy(together) if copier == "deepcopy" else pickle.loads(pickle.dumps(together))
                run.tensors, run.optimizer = copied
            run.step(problem, step)
        return run.current()

    for a, b in zip(run(getattr(optimizers, name), copier), run(REFERENCES[name])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_the_class_form_and_fused_steps(name):
    cls, options = getattr(optimizers, name), dict(lr=1e-2)
    class_form = Functional(lambda leaves: cls.functional(**options))
    assert error(class_form, ours_on_jax(cls, **options), steps=8) <= 1e-15
    # Inductor's loop rounds as its own C++ does
    assert error(ours_on_torch(cls, fused=True, **options), ours_on_torch(cls, **options), steps=8) <= 1e-13


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
    ours = ours_on_jax(getattr(optimizers, name), lr=lr, weight_decay=0.1)
    assert error(ours, testing.optax(transformation(lr, weight_decay=0.1))) <= 1e-13
    # optax counts its inner warmup from 0, the reference from 1: optax's first step does not move.
    warm = ours_on_jax(getattr(optimizers, name), lr=lr, warmup_steps=5, weight_decay=0.1)
    assert error(warm, testing.optax(transformation(lr, warmup_steps=5, weight_decay=0.1))) > 1e-3


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
