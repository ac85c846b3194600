"""The torch.optim contract on the torch backend, checked against torch.optim itself.

Expected errors, state dicts and trajectories are produced by torch.optim in
the same test, never copied from our own output.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import warnings

import pytest
import torch
from torch.optim import lr_scheduler
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import optimizers
from tests.harness import raised, training_step
from tests.registry import REGISTRY


def model_and_data(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    inputs, targets = torch.randn(32, 5, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    return model, inputs, targets


def train(optimizer_class, steps: int = 10, scheduler=None, seed: int = 0, **kwargs):
    """Train a small model; return its final parameters, the optimizer and the scheduler."""
    model, inputs, targets = model_and_data(seed)
    optimizer = optimizer_class(model.parameters(), **kwargs)
    schedule = scheduler(optimizer) if scheduler else None
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
            schedule.step(loss.item())
        elif schedule:
            schedule.step()
    return [p.detach().clone() for p in model.parameters()], optimizer, schedule


ENTRIES = list(REGISTRY.values())


@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
def test_is_a_torch_optimizer_with_torch_signature(entry):
    """Also the registry's account of the options: tests choose the algorithms they apply to by it."""
    parameter = torch.nn.Parameter(torch.zeros(2, 2))  # a matrix, as some algorithms take no other
    assert isinstance(entry.ours([parameter]), torch.optim.Optimizer)
    ours = inspect.signature(entry.ours.__init__).parameters
    theirs = inspect.signature(entry.reference.__init__).parameters
    extras = {"backend": None, "skip_nonfinite": False} | ({"state_dtype": None} if entry.state_dtype else {})
    extras |= {"bucket_view": False} if entry.fused else {}
    assert [(p.name, p.kind, p.default) for p in theirs.values()] == [
        (p.name, p.kind, p.default) for p in ours.values() if p.name not in extras
    ]
    assert {name: (p.kind, p.default) for name, p in ours.items() if name not in theirs} == {
        name: (inspect.Parameter.KEYWORD_ONLY, default) for name, default in extras.items()
    }
    for option in ("fused", "maximize", "weight_decay"):
        assert (option in theirs) is getattr(entry, option), option


def _params():
    return [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))]


# Bad hyperparameters, each tried on every class whose signature has the first argument named.
INVALID_HYPERPARAMETERS = {
    "negative lr": ("lr", dict(lr=-0.1)),
    "NaN lr": ("lr", dict(lr=float("nan"))),
    "tensor lr of two elements": ("lr", dict(lr=torch.tensor([0.1, 0.2]))),
    "negative tensor lr": ("lr", dict(lr=torch.tensor(-0.1))),
    "tensor lr with foreach": ("lr", dict(lr=torch.tensor(0.1), foreach=True)),
    "negative eps": ("eps", dict(eps=-1e-8)),
    "negative weight decay": ("weight_decay", dict(weight_decay=-1e-3)),
    "negative momentum": ("momentum", dict(momentum=-0.5)),
    "beta1 of 1": ("betas", dict(betas=(1.0, 0.999))),
    "negative beta2": ("betas", dict(betas=(0.9, -0.1))),
    "a tensor and a float beta": ("betas", dict(betas=(torch.tensor(0.9), 0.999))),
    "two-element tensor betas": ("betas", dict(betas=(torch.tensor([0.9, 0.8]), torch.tensor(0.99)))),
    "tensor betas with foreach": ("betas", dict(betas=(torch.tensor(0.9), torch.tensor(0.99)), foreach=True)),
    "negative alpha": ("alpha", dict(alpha=-0.1)),
    "rho above 1": ("rho", dict(rho=1.5)),
    "negative lr_decay": ("lr_decay", dict(lr_decay=-0.1)),
    "negative initial accumulator": ("initial_accumulator_value", dict(initial_accumulator_value=-1.0)),
    "negative momentum_decay": ("momentum_decay", dict(momentum_decay=-1.0)),
    "nesterov without momentum": ("nesterov", dict(nesterov=True)),
    "nesterov with dampening": ("nesterov", dict(momentum=0.9, dampening=0.1, nesterov=True)),
    "fused and differentiable": ("fused", dict(fused=True, differentiable=True)),
    "fused and foreach": ("fused", dict(fused=True, foreach=True)),
}
INVALID_PARAMS = {
    "a tensor instead of an iterable": lambda p: p[0],
    "an empty parameter list": lambda p: [],
    "a group whose params are a set": lambda p: [{"params": set(p)}],
    "a non-tensor parameter": lambda p: [p[0], 3.0],
    "a non-leaf tensor": lambda p: [p[0] * 2],
    "a group without params": lambda p: [{"lr": 0.1}],
    "a parameter in two groups": lambda p: [{"params": [p[0]]}, {"params": [p[0], p[1]]}],
    "some names missing": lambda p: [("a", p[0]), p[1]],
    "named and unnamed groups": lambda p: [{"params": [("a", p[0])]}, {"params": [p[1]]}],
}
INVALID = [
    (entry, case)
    for entry in ENTRIES
    for case, (argument, _) in INVALID_HYPERPARAMETERS.items()
    if argument in inspect.signature(entry.reference.__init__).parameters
] + [(entry, case) for entry in ENTRIES for case in INVALID_PARAMS]


def _invalid_kwargs(case, params):
    if case in INVALID_PARAMS:
        return dict(params=INVALID_PARAMS[case](params))
    return dict(params=params, **INVALID_HYPERPARAMETERS[case][1])


@pytest.mark.parametrize("entry, case", INVALID, ids=[f"{entry.name}-{case}" for entry, case in INVALID])
def test_invalid_arguments_raise_what_torch_raises(entry, case):
    params = _params()
    expected = raised(lambda: entry.reference(**_invalid_kwargs(case, params)))
    if expected is None:
        # torch.optim accepts it (e.g. SGD takes a NaN lr); so must we.
        assert raised(lambda: entry.ours(**_invalid_kwargs(case, params))) is None
        return
    assert raised(lambda: entry.ours(**_invalid_kwargs(case, params))) == expected


def test_a_required_hyperparameter_must_be_given():
    params = _params()
    expected = raised(lambda: torch.optim.SGD([{"params": params}], lr=optimizers.required))
    assert expected is not None
    assert raised(lambda: optimizers.SGD([{"params": params}], lr=optimizers.required)) == expected


def test_add_param_group_errors_are_torch_errors():
    params = _params()
    extra = torch.nn.Parameter(torch.zeros(1))
    for bad in ("not a dict", {"params": [params[0]]}, {"params": {extra}}):
        expected = raised(lambda: torch.optim.SGD([params[0]]).add_param_group(copy.copy(bad)))
        assert expected is not None
        assert raised(lambda: optimizers.SGD([params[0]]).add_param_group(copy.copy(bad))) == expected


def test_duplicate_parameters_warn_like_torch():
    p = torch.nn.Parameter(torch.zeros(2))
    messages = []
    for cls in (torch.optim.SGD, optimizers.SGD):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cls([p, p])
        messages.append([(w.category, str(w.message)) for w in caught])
    assert messages[0] and messages[0] == messages[1]


SETTINGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.5, weight_decay=1e-2)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True)),
    ("SGD", dict(lr=torch.tensor(0.05), momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, foreach=True)),
    ("SGD", dict(lr=0.05, momentum=0.9, fused=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=torch.tensor(0.01), betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True, maximize=True)),
    (
        "Adam",
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, betas=(torch.tensor(0.8), torch.tensor(0.9))),
    ),
    ("Adam", dict(lr=0.01, amsgrad=True, foreach=True)),
    ("Adam", dict(lr=0.01, fused=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=torch.tensor(0.01), weight_decay=0.5, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=0.01, fused=True)),
    ("Adamax", dict(lr=0.01, weight_decay=0.1, maximize=True)),
    ("Adamax", dict(lr=torch.tensor(0.01), foreach=True)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, momentum_decay=0.01)),
    ("NAdam", dict(lr=torch.tensor(0.01), weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("NAdam", dict(lr=0.01, foreach=True)),
    ("RAdam", dict(lr=0.01, betas=(0.9, 0.9))),
    ("RAdam", dict(lr=torch.tensor(0.01), weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, foreach=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.5, weight_decay=0.1)),
    ("Adagrad", dict(lr=torch.tensor(0.1), maximize=True)),
    ("Adagrad", dict(lr=0.1, fused=True)),
    ("Adagrad", dict(lr=0.1, foreach=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=torch.tensor(0.01), alpha=0.9, centered=True, momentum=0.9, weight_decay=0.1, maximize=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, foreach=True)),
    ("Adadelta", dict(rho=0.8, weight_decay=0.1)),
    ("Adadelta", dict(lr=torch.tensor(0.5), maximize=True, foreach=True)),
]


@pytest.mark.parametrize("name, kwargs", SETTINGS, ids=[f"{n}-{k}" for n, k in SETTINGS])
def test_training_and_state_dict_equal_torch_optim(name, kwargs):
    """Bit for bit against torch.optim's single-tensor path, the ground truth, and with
    ``foreach=True`` against its multi-tensor path (whose NAdam, RAdam and Adagrad formulas
    differ from the single-tensor ones; tests/test_plan.py covers every dtype).
    ``fused=True`` runs the compiled loop (tests/test_fused.py), which rounds as a fused
    kernel does: it is held to torch.optim's fused kernels at float64's tolerance against
    torch.optim (torch's own fused and single-tensor paths differ by ulps too).
    """
    ours, ours_opt, _ = train(getattr(optimizers, name), **kwargs)
    fused = bool(kwargs.get("fused"))
    reference = kwargs if fused else dict(kwargs, foreach=bool(kwargs.get("foreach")))
    theirs, theirs_opt, _ = train(getattr(torch.optim, name), **reference)
    tolerance = dict(rtol=1e-12, atol=1e-12) if fused else dict(rtol=0, atol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **tolerance)
    ours_sd, theirs_sd = ours_opt.state_dict(), theirs_opt.state_dict()
    _, flagged, _ = train(getattr(torch.optim, name), steps=0, **kwargs)
    assert ours_sd["param_groups"] == flagged.state_dict()["param_groups"]
    assert ours_sd["state"].keys() == theirs_sd["state"].keys()
    for index, entry in theirs_sd["state"].items():
        assert list(ours_sd["state"][index]) == list(entry)  # same keys, in the same order
        for key, value in entry.items():
            torch.testing.assert_close(ours_sd["state"][index][key], value, **tolerance)


def test_state_tensors_keep_their_identity_across_steps():
    (p,) = [torch.nn.Parameter(torch.randn(4))]
    opt = optimizers.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(4)
    opt.step()
    buffer, address = opt.state[p]["momentum_buffer"], p.data_ptr()
    opt.step()
    assert opt.state[p]["momentum_buffer"] is buffer and p.data_ptr() == address
    torch.testing.assert_close(buffer, torch.full((4,), 1.9))
    # The first buffer is a copy, not the gradient itself.
    assert buffer.data_ptr() != p.grad.data_ptr()


def test_a_checkpoint_through_torch_save_continues_identically_in_both_directions():
    for writer, reader in ((torch.optim.SGD, optimizers.SGD), (optimizers.SGD, torch.optim.SGD)):
        kwargs = dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=1e-3)
        expected, _, _ = train(writer, steps=8, **kwargs)
        model, inputs, targets = model_and_data()
        first = writer(model.parameters(), **kwargs)
        for step in range(8):
            if step == 4:
                buffer = io.BytesIO()
                torch.save(first.state_dict(), buffer)
                buffer.seek(0)
                first = reader(model.parameters(), lr=1.0)
                first.load_state_dict(torch.load(buffer, weights_only=True))
            first.zero_grad()
            torch.nn.functional.mse_loss(model(inputs), targets).backward()
            first.step()
        for a, b in zip(model.parameters(), expected):
            torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


def test_an_older_checkpoint_without_newer_flags_loads():
    _, trained, _ = train(torch.optim.SGD, steps=3, lr=0.1, momentum=0.9)
    old = trained.state_dict()
    for group in old["param_groups"]:
        for flag in ("nesterov", "maximize", "foreach", "differentiable", "fused"):
            del group[flag]
    model, _, _ = model_and_data()
    ours = optimizers.SGD(model.parameters(), lr=0.5, nesterov=False, maximize=False)
    ours.load_state_dict(copy.deepcopy(old))
    group = ours.param_groups[0]
    assert (group["lr"], group["momentum"]) == (0.1, 0.9)
    # Missing flags take the constructor's defaults (torch.optim.SGD hard-codes the same
    # values, except fused, which it fills with False where the signature says None).
    assert (group["nesterov"], group["maximize"], group["foreach"], group["differentiable"], group["fused"]) == (
        False,
        False,
        None,
        False,
        None,
    )


SCHEDULERS = {
    "StepLR": lambda opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    "MultiStepLR": lambda opt: lr_scheduler.MultiStepLR(opt, milestones=[2, 5, 9], gamma=0.3),
    "ExponentialLR": lambda opt: lr_scheduler.ExponentialLR(opt, gamma=0.8),
    "CosineAnnealingLR": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=6, eta_min=1e-4),
    "CosineAnnealingWarmRestarts": lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=3, T_mult=2),
    "OneCycleLR": lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=12),
    "CyclicLR": lambda opt: lr_scheduler.CyclicLR(opt, 1e-3, 0.05, step_size_up=3, cycle_momentum=False),
    "CyclicLR with momentum": lambda opt: lr_scheduler.CyclicLR(
        opt, 1e-3, 0.05, step_size_up=3, base_momentum=0.8, max_momentum=0.95
    ),
    "LinearLR": lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.2, total_iters=5),
    "SequentialLR": lambda opt: lr_scheduler.SequentialLR(
        opt, [lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3), lr_scheduler.ExponentialLR(opt, 0.9)], [3]
    ),
    "ChainedScheduler": lambda opt: lr_scheduler.ChainedScheduler(
        [lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=4), lr_scheduler.ExponentialLR(opt, gamma=0.9)]
    ),
    "LambdaLR": lambda opt: lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1 + epoch)),
    "ReduceLROnPlateau": lambda opt: lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.5),
}
# One algorithm with SGD's momentum, one with Adam's betas (cycled as momentum), one with neither.
SCHEDULED = {"SGD": dict(lr=0.05, momentum=0.9), "Adam": dict(lr=0.05), "RMSprop": dict(lr=0.01, momentum=0.9)}


def _without_callables(state):
    """A scheduler state dict without the functions some keep (not comparable across runs)."""
    if isinstance(state, dict):
        return {k: _without_callables(v) for k, v in state.items() if not callable(v) and k != "_scale_fn_ref"}
    if isinstance(state, list):
        return [_without_callables(v) for v in state]
    return state


@pytest.mark.parametrize("algorithm", sorted(SCHEDULED))
@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_lr_schedulers_drive_it_as_they_drive_torch_optim(scheduler, algorithm):
    """Same weights, same learning rates, same scheduler state dict as with torch.optim."""
    kwargs = SCHEDULED[algorithm]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        ours, ours_opt, ours_schedule = train(
            getattr(optimizers, algorithm), steps=12, scheduler=SCHEDULERS[scheduler], **kwargs
        )
        theirs, theirs_opt, theirs_schedule = train(
            getattr(torch.optim, algorithm), steps=12, scheduler=SCHEDULERS[scheduler], **kwargs
        )
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ours_opt.state_dict()["param_groups"] == theirs_opt.state_dict()["param_groups"]
    assert _without_callables(ours_schedule.state_dict()) == _without_callables(theirs_schedule.state_dict())


def test_grad_scaler_steps_it_and_skips_non_finite_steps():
    results = []
    for cls in (torch.optim.SGD, optimizers.SGD):
        model, inputs, targets = model_and_data()
        model.float()
        opt = cls(model.parameters(), lr=0.1, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        for step in range(4):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.mse_loss(model(inputs.float()), targets.float())
            scaler.scale(loss).backward()
            if step == 2:  # an overflowing gradient: the scaler must skip this step
                next(model.parameters()).grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
        results.append(([p.detach().clone() for p in model.parameters()], scaler.get_scale()))
    (ours, ours_scale), (theirs, theirs_scale) = results[1], results[0]
    assert ours_scale == theirs_scale < 2.0**8
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_hooks_run_in_torch_order():
    def record(opt_class):
        events = []
        p = torch.nn.Parameter(torch.ones(1))
        opt = opt_class([p], lr=0.1)
        handles = [
            register_optimizer_step_pre_hook(lambda o, a, k: events.append("global pre")),
            register_optimizer_step_post_hook(lambda o, a, k: events.append("global post")),
            opt.register_step_pre_hook(lambda o, a, k: events.append("pre")),
            opt.register_step_post_hook(lambda o, a, k: events.append("post")),
            opt.register_state_dict_pre_hook(lambda o: events.append("state_dict pre")),
            opt.register_state_dict_post_hook(lambda o, sd: events.append("state_dict post")),
            opt.register_load_state_dict_pre_hook(lambda o, sd: events.append("load pre")),
            opt.register_load_state_dict_post_hook(lambda o: events.append("load post")),
        ]
        p.grad = torch.ones(1)
        opt.step(lambda: events.append("closure") or 1.0)
        opt.load_state_dict(opt.state_dict())
        for handle in handles:
            handle.remove()
        return events

    assert record(optimizers.SGD) == record(torch.optim.SGD)


def test_a_step_is_a_profiler_range_named_as_torch_optim_names_it():
    def ranges(opt_class):
        p = torch.nn.Parameter(torch.ones(2))
        opt = opt_class([p], lr=0.1)
        p.grad = torch.ones(2)
        with torch.profiler.profile() as profile:
            opt.step()
        return {event.name for event in profile.events() if event.name.startswith("Optimizer.")}

    assert ranges(optimizers.SGD) == ranges(torch.optim.SGD) == {"Optimizer.step#SGD.step"}


def test_a_pre_hook_can_replace_the_step_arguments():
    p = torch.nn.Parameter(torch.ones(1))
    opt = optimizers.SGD([p], lr=0.1)
    opt.register_step_pre_hook(lambda o, args, kwargs: ((o,), {"closure": lambda: 7.0}))
    p.grad = torch.ones(1)
    assert opt.step() == 7.0


def test_step_returns_the_closure_loss_and_skips_parameters_without_gradient():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = optimizers.SGD([a, b], lr=0.5, momentum=0.9)

    def closure():
        opt.zero_grad()
        loss = (a**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 2.0
    assert opt.step() is None
    torch.testing.assert_close(b.detach(), torch.ones(2), rtol=0, atol=0)
    assert b not in opt.state and a in opt.state


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad_matches_torch(set_to_none):
    grads = []
    for cls in (torch.optim.SGD, optimizers.SGD):
        p = torch.nn.Parameter(torch.ones(3))
        opt = cls([p])
        (p * 2).sum().backward()
        opt.zero_grad(set_to_none=set_to_none)
        grads.append(p.grad)
    assert (grads[0] is None) == (grads[1] is None) == set_to_none
    if not set_to_none:
        torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


def test_add_param_group_mid_training_and_named_parameters_match_torch():
    runs = []
    for cls in (torch.optim.SGD, optimizers.SGD):
        model, inputs, targets = model_and_data()
        first, second = model[0], model[2]
        opt = cls(first.named_parameters(), lr=0.1, momentum=0.9)
        for step in range(6):
            if step == 3:
                opt.add_param_group({"params": list(second.named_parameters()), "lr": 0.01, "nesterov": True})
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(inputs), targets).backward()
            opt.step()
        runs.append(([p.detach().clone() for p in model.parameters()], opt.state_dict()["param_groups"]))
    (theirs, theirs_groups), (ours, ours_groups) = runs
    assert ours_groups == theirs_groups and "param_names" in ours_groups[0]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
def test_sparse_gradients_step_as_in_torch_optim_or_get_its_error_before_any_change(entry):
    def run(cls):
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(10, 3, sparse=True)
        start = embedding.weight.detach().clone()
        optimizer = cls(embedding.parameters(), lr=0.1)

        def loss():
            return embedding(torch.tensor([1, 4, 4])).square().sum()

        errors = [raised(lambda: training_step(entry, optimizer, loss)) for _ in range(3)]
        assert embedding.weight.grad.is_sparse
        return errors, start, embedding.weight.detach().clone(), optimizer.state

    expected_errors, _, expected, _ = run(entry.reference)
    errors, start, ours, state = run(entry.ours)
    assert errors == expected_errors
    if "sparse" in entry.gradients:
        assert errors == [None] * 3
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    else:
        assert errors[0] is not None
        torch.testing.assert_close(ours, start, rtol=0, atol=0)
        assert not state


def test_deepcopy_and_pickle_keep_training_identically():
    _, opt, _ = train(optimizers.SGD, steps=3, lr=0.1, momentum=0.9)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert isinstance(clone, optimizers.SGD) and clone.backend == "torch"
        assert repr(clone) == repr(opt)
        (p,) = clone.param_groups[0]["params"][:1]
        p.grad = torch.ones_like(p)
        before = p.detach().clone()
        clone.step()
        assert not torch.equal(p.detach(), before)


def test_adagrad_refuses_weight_decay_with_sparse_gradients_before_any_change():
    results = []
    for cls in (torch.optim.Adagrad, optimizers.Adagrad):
        param = torch.nn.Parameter(torch.ones(3))
        param.grad = torch.ones(3).to_sparse()
        optimizer = cls([param], lr=0.1, weight_decay=0.1)
        results.append(raised(optimizer.step))
        assert torch.equal(param.detach(), torch.ones(3))
    assert results[0] == results[1] == (RuntimeError, "weight_decay option is not compatible with sparse gradients")
