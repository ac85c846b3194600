"""The algorithms beyond torch.optim against their references: Lion (lion-pytorch), AdEMAMix (the
authors' code, apple/ml-ademamix), Adan (the official sail-sg/Adan), Schedule-Free AdamW and SGD
(schedulefree), Lamb and Lars (timm) and Prodigy (prodigyopt), on the torch backend bit for bit
(default and foreach paths), and beside optax and pytorch_optimizer where those define the same
algorithm, with the measured distance where they do not.  The generic properties -- the JAX
backend against the reference in float64 and float32, maximize, checkpoints, groups, missing and
non-finite gradients, the functional form -- run on them through the registry
(tests/test_properties.py)."""

from __future__ import annotations

import copy
import pickle

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import pytorch_optimizer
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optimizers
from backends.torch_ops import TorchOps
from optimizers import testing

from .harness import Functional
from .registry import BEYOND_TORCH_OPTIM
from .strategies import problems

REFERENCES = {name: entry.reference for name, entry in BEYOND_TORCH_OPTIM.items()}
OPTIONS = {name: entry.hyperparameters for name, entry in BEYOND_TORCH_OPTIM.items()}
PROBLEMS = {name: entry.problem_options for name, entry in BEYOND_TORCH_OPTIM.items()}
# timm's classes have a multi-tensor path of their own (Lamb's folds its bias corrections):
# our foreach follows it.
TAKES_FOREACH = {"Lamb", "Lars"}
# SOAP's step is linear algebra per parameter: it has no multi-tensor path, here or there.
PATHS = [(name, foreach) for name in sorted(REFERENCES) for foreach in [False, True] if name != "SOAP" or not foreach]


def grouped(leaves, problem):
    return [{"params": [leaves[i] for i in group]} for group in problem.groups]


def torch_side(cls, problem, options, eval_params=False, **ours):
    return testing.torch(lambda ps: cls(grouped(ps, problem), **options, **ours), eval_params=eval_params)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name, foreach", PATHS)
@settings(deadline=None)
@given(data=st.data())
def test_the_torch_backend_is_the_reference_bit_for_bit(name, foreach, dtype, data):
    problem = data.draw(problems(dtype, **PROBLEMS[name]))
    options = data.draw(OPTIONS[name])
    ours, theirs = getattr(optimizers, name), REFERENCES[name]
    reference_mode = dict(foreach=foreach) if name in TAKES_FOREACH else {}
    mode = dict(foreach=foreach) if name != "SOAP" else {}
    # Schedule-Free: the averaged point x too, which eval() shows.
    for eval_params in [False, True] if name.startswith("ScheduleFree") else [False]:
        testing.assert_agree(
            torch_side(ours, problem, options, eval_params, **mode),
            torch_side(theirs, problem, options, eval_params, **reference_mode),
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


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_a_reference_checkpoint_continues_identically_in_ours_and_back(name):
    options = BEYOND_TORCH_OPTIM[name].options
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
    if BEYOND_TORCH_OPTIM[name].fused:  # Inductor's loop rounds as its own C++ does
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
        ("Lamb", dict(max_grad_norm=0.0), "Invalid max_grad_norm: 0.0"),
        ("Lamb", dict(lr=0.0, corrected_weight_decay=True), "Corrected weight decay requires a positive max lr"),
        ("Lars", dict(nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
        ("Lars", dict(momentum=-0.5), "Invalid momentum value: -0.5"),
        ("Prodigy", dict(d0=0.0), "Invalid d0 value: 0.0"),
        ("Prodigy", dict(slice_p=0), "Invalid slice_p value: 0"),
        ("Prodigy", dict(fsdp_in_use=True), "fsdp_in_use=True"),
        ("SOAP", dict(precondition_frequency=0), "Invalid precondition_frequency: 0"),
        ("SOAP", dict(max_precondition_dim=2.5), "Invalid max_precondition_dim: 2.5"),
        ("SOAP", dict(shampoo_beta=1.0), "Invalid shampoo_beta: 1.0"),
        ("SOAP", dict(data_format="NHWC"), "Invalid data_format: 'NHWC'"),
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


def test_lamb_is_optax_lamb_without_the_clip_and_always_adapting():
    unclipped = dict(lr=1e-2, max_grad_norm=None, always_adapt=True)
    for weight_decay in (0.0, 0.01):
        ours = ours_on_jax(optimizers.Lamb, **unclipped, weight_decay=weight_decay)
        assert error(ours, testing.optax(optax.lamb(1e-2, eps=1e-6, weight_decay=weight_decay))) <= 1e-14
    # timm's defaults clip the gradients' global norm at 1 (the problem's starts near 5).
    defaults = ours_on_jax(optimizers.Lamb, lr=1e-2)
    assert error(defaults, testing.optax(optax.lamb(1e-2, eps=1e-6, weight_decay=0.01))) > 1e-4


def test_lamb_is_another_algorithm_than_pytorch_optimizers_lamb():
    # It clamps the weight norm at 10 and corrects the bias of m only.
    ours = ours_on_torch(optimizers.Lamb, lr=1e-2, max_grad_norm=None)
    theirs = ours_on_torch(pytorch_optimizer.Lamb, lr=1e-2, weight_decay=0.01, eps=1e-6)
    assert error(ours, theirs) > 1e-2


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_lars_is_optax_lars_without_decay_and_differs_with_it(momentum):
    def pair(weight_decay):
        options = dict(lr=0.5, momentum=momentum, always_adapt=True, weight_decay=weight_decay, eps=0.0)
        return ours_on_jax(optimizers.Lars, **options), testing.optax(
            optax.lars(0.5, weight_decay=weight_decay, momentum=momentum, eps=0.0)
        )

    assert error(*pair(0.0), steps=30) == 0  # with eps=0 on both sides (timm's default is 1e-8)
    # optax's ratio divides by ||g + wd p||, timm's by ||g|| + wd ||p|| + eps.
    assert error(*pair(1e-3), steps=30) > 1e-6


def test_prodigy_is_optax_prodigy_when_it_corrects_the_bias():
    ours = ours_on_jax(optimizers.Prodigy, use_bias_correction=True, weight_decay=0.1)
    assert error(ours, testing.optax(optax.contrib.prodigy(1.0, weight_decay=0.1))) <= 1e-10
    # optax always bias-corrects; the reference's default does not.
    assert error(ours_on_jax(optimizers.Prodigy), testing.optax(optax.contrib.prodigy(1.0))) > 0.1


def test_prodigy_waits_out_zero_gradients_as_the_reference_where_optax_divides_by_zero():
    zero_first = testing.given_gradients(
        [np.array([1.0, -2.0])], [[np.zeros(2)], [np.zeros(2)], [np.array([0.5, 0.1])], [np.array([0.2, -0.3])]]
    )
    reference = ours_on_torch(REFERENCES["Prodigy"])
    runs = testing.trajectory(reference, zero_first)
    np.testing.assert_array_equal(runs[1][0], [1.0, -2.0])  # no step, no NaN while sum |s| = 0
    for ours in (ours_on_torch(optimizers.Prodigy), ours_on_jax(optimizers.Prodigy)):
        testing.assert_agree(ours, reference, problem=zero_first, rtol=1e-15)
    assert np.isnan(testing.trajectory(testing.optax(optax.contrib.prodigy(1.0)), zero_first)[0][0]).all()


def test_prodigy_estimates_d_over_every_group_and_refuses_unequal_rates_before_stepping():
    three = [np.ones(3), np.full(2, -1.0), np.zeros(4)]
    rows = [[g * (k + 1) for g in (np.arange(3.0), np.ones(2), -np.ones(4))] for k in range(5)]
    problem = testing.given_gradients(three, rows)

    def groups(params):
        # A zero-lr group takes no part in the estimate but still steps with the global dlr.
        return [{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:2]}, {"params": params[2:], "lr": 0.0}]

    ours, theirs = (
        testing.torch(lambda ps, cls=cls: cls(groups(ps), decouple=False))
        for cls in (optimizers.Prodigy, REFERENCES["Prodigy"])
    )
    testing.assert_agree(ours, theirs, problem=problem, rtol=0)
    tensors = [torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)]
    mixed = optimizers.Prodigy([{"params": tensors[:1]}, {"params": tensors[1:], "lr": 0.5}])
    for group in mixed.param_groups:
        group["params"][0].grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="different lr values"):
        mixed.step()
    assert not mixed.state and [g["k"] for g in mixed.param_groups] == [0, 0]


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_soap_merges_dimensions_as_the_reference(data_format):
    """Merged shapes ((2, 3, 4, 5) -> (6, 4, 5); as NCHW from NHWC, (10, 12)), with statistics
    for the dimensions up to max_precondition_dim and none above it, refreshed every 2 steps."""
    problem = testing.quadratic(shapes=[(2, 3, 4, 5), (4, 6), (3, 5, 2, 2)], seed=1)
    options = dict(lr=1e-2, merge_dims=True, max_precondition_dim=12, precondition_frequency=2, data_format=data_format)
    ours, theirs = ours_on_torch(optimizers.SOAP, **options), ours_on_torch(REFERENCES["SOAP"], **options)
    testing.assert_agree(ours, theirs, problem=problem, steps=12, rtol=0)


def test_soap_merges_a_small_tensor_into_one_dimension_where_the_reference_raises():
    """The reference merges a tensor of at most max_precondition_dim elements into shape [1] and
    raises; here it is one dimension of all its elements: the reference's own step for that
    tensor flattened, preconditioned as a vector."""
    rng = np.random.default_rng(4)
    start, rows = rng.standard_normal((3, 4)), [[rng.standard_normal((3, 4))] for _ in range(8)]
    options = dict(lr=1e-2, precondition_frequency=2)
    with pytest.raises(RuntimeError, match=r"shape '\[1\]' is invalid"):
        testing.trajectory(
            ours_on_torch(REFERENCES["SOAP"], merge_dims=True, **options), testing.given_gradients([start], rows)
        )
    merged = testing.trajectory(
        ours_on_torch(optimizers.SOAP, merge_dims=True, **options), testing.given_gradients([start], rows)
    )
    flat = testing.given_gradients([start.reshape(-1)], [[g.reshape(-1) for g in row] for row in rows])
    vector = testing.trajectory(ours_on_torch(REFERENCES["SOAP"], precondition_1d=True, **options), flat)
    for (got,), (expected,) in zip(merged, vector):
        np.testing.assert_array_equal(got.reshape(-1), expected)


def test_soap_steps_alike_whatever_signs_and_order_its_eigenvectors_come_in(monkeypatch):
    """What the backends' agreement rests on.  Another LAPACK may return each eigenvector negated,
    or the eigenvalues in another order: the update is invariant to both (the projections negate
    twice; the refresh sorts the basis by its estimated eigenvalues and its QR does not see a
    column's sign).  Not to a rotation within a repeated eigenvalue's eigenspace: there the
    backends differ, as two LAPACK builds running the reference do."""
    problem = testing.quadratic(shapes=[(4, 3), (2, 3, 4), (3,)], seed=3)
    options = dict(lr=1e-2, precondition_frequency=3, precondition_1d=True)
    expected = testing.trajectory(ours_on_torch(optimizers.SOAP, **options), problem, steps=12)
    generator, eigh = torch.Generator().manual_seed(0), TorchOps.eigh

    def scrambled(matrix):
        values, vectors = eigh(matrix)
        order = torch.randperm(len(values), generator=generator)
        signs = torch.randint(0, 2, (len(values),), generator=generator) * 2 - 1
        return values[order], vectors[:, order] * signs.to(vectors.dtype)

    monkeypatch.setattr(TorchOps, "eigh", staticmethod(scrambled))
    got = testing.trajectory(ours_on_torch(optimizers.SOAP, **options), problem, steps=12)
    for got_values, expected_values in zip(got, expected):
        for a, b in zip(got_values, expected_values):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_soap_refuses_a_non_finite_first_gradient_before_changing_anything(backend):
    """The reference's eigendecomposition of a 3 x 3 or larger statistic fails on it (LAPACK
    solves 2 x 2 ones in closed form, NaN in and out); here the same error comes before any change."""
    start = [np.ones((3, 2)), np.ones((2, 2))]
    poisoned = [np.array([[np.nan, 1.0], [1.0, 1.0], [1.0, 1.0]]), np.ones((2, 2))]
    small_poisoned = [np.ones((3, 2)), np.full((2, 2), np.nan)]

    def step(optimizer, leaves, grads):
        if backend == "jax" and not isinstance(optimizer, REFERENCES["SOAP"]):
            return optimizer.step(list(map(jnp.asarray, grads)))
        for leaf, grad in zip(leaves, grads):
            leaf.grad = torch.tensor(grad)
        return optimizer.step()

    def fresh(cls):
        on_torch = backend == "torch" or cls is REFERENCES["SOAP"]
        leaves = [torch.tensor(v, requires_grad=True) for v in start] if on_torch else list(map(jnp.asarray, start))
        return cls(leaves), leaves

    reference, leaves = fresh(REFERENCES["SOAP"])
    with pytest.raises(torch.linalg.LinAlgError):
        step(reference, leaves, poisoned)
    ours, leaves = fresh(optimizers.SOAP)
    with pytest.raises(torch.linalg.LinAlgError, match=r"parameter 0 \(shape \(3, 2\)\)"):
        step(ours, leaves, poisoned)
    assert not ours.state and ours.param_groups[0]["step"] == 0
    for value, expected in zip(ours.params, start):
        np.testing.assert_array_equal(np.asarray(value.detach() if backend == "torch" else value), expected)
    for cls in (REFERENCES["SOAP"], optimizers.SOAP):
        optimizer, leaves = fresh(cls)
        step(optimizer, leaves, small_poisoned)  # no error: NaN flows on, in both


def test_soap_checkpoints_are_checked_matrix_by_matrix():
    param = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    soap = optimizers.SOAP([param])
    param.grad = torch.randn(4, 3, dtype=torch.float64)
    soap.step()
    saved = soap.state_dict()
    assert saved["state"][0]["precondition_frequency"] == 10 and saved["state"][0]["shampoo_beta"] == 0.95
    missing = copy.deepcopy(saved)
    missing["state"][0]["Q"] = missing["state"][0]["Q"][:1]
    with pytest.raises(ValueError, match="has 'Q' = a list of 1, expected a list of 2"):
        soap.load_state_dict(missing)
    misshapen = copy.deepcopy(saved)
    misshapen["state"][0]["GG"][1] = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"has 'GG'\[1\] of shape \(2, 2\), expected \(3, 3\)"):
        soap.load_state_dict(misshapen)
    soap.load_state_dict(saved)  # and the options the reference keeps in the state stay out of it
    assert set(soap.state[param]) == {"exp_avg", "exp_avg_sq", "GG", "Q"}
