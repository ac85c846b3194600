"""Replacing torch.optim in real PyTorch code: models, AMP, torch.compile, hooks, printing, DDP and ZeRO.

Each test runs the same code with ``torch.optim.X`` and ``optimizers.X`` and compares.
"""

from __future__ import annotations

import copy
import inspect
import pickle
import socket
import time
import warnings

import pytest
import torch
import torch.multiprocessing

import optimizers

from . import distributed
from .registry import REGISTRY

ALGORITHMS = sorted(REGISTRY)

# One valid, non-default setting per algorithm, so every branch of a rule is exercised.
OPTIONS = {
    "SGD": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "Adam": dict(lr=0.01, amsgrad=True, weight_decay=0.01),
    "AdamW": dict(lr=0.01),
    "Adamax": dict(lr=0.01),
    "NAdam": dict(lr=0.01, decoupled_weight_decay=True, weight_decay=0.01),
    "RAdam": dict(lr=0.01),
    "Adagrad": dict(lr=0.05, lr_decay=0.01),
    "RMSprop": dict(lr=0.01, momentum=0.5, centered=True),
    "Adadelta": dict(lr=0.5),
    "ASGD": dict(lr=0.05, t0=2, lambd=0.01, weight_decay=0.01),
    "Rprop": dict(lr=0.01, etas=(0.4, 1.3), step_sizes=(1e-5, 1.0)),
    "Adafactor": dict(lr=0.05, weight_decay=0.01, eps=(1e-20, 1e-3)),
    "Muon": dict(lr=0.02, nesterov=False, adjust_lr_fn="match_rms_adamw"),
}
assert set(OPTIONS) == set(ALGORITHMS)


def network(dtype=torch.float32, name: str | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    bias = name != "Muon"  # Muon takes matrices only
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16, bias=bias), torch.nn.Tanh(), torch.nn.Linear(16, 3, bias=bias)
    ).to(dtype)


def batches(count=6, dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(12, 6, generator=generator).to(dtype), torch.randn(12, 3, generator=generator).to(dtype))
            for _ in range(count)]


def both(name):
    return getattr(torch.optim, name), getattr(optimizers, name)


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_bitwise(ours, reference):
    for a, b in zip(ours, reference, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize("name", ALGORITHMS)
def test_frozen_layers_and_per_group_rates_train_a_model_as_torch_optim_does(name):
    def run(cls):
        model = network(name=name)
        model[0].requires_grad_(False)  # frozen, yet handed to the optimizer, as fine-tuning scripts do
        groups = [{"params": model[0].parameters()}, {"params": model[2].weight, "lr": OPTIONS[name]["lr"] / 10}]
        if model[2].bias is not None:
            groups.append({"params": [model[2].bias], "weight_decay": 0.0})
        optimizer = cls(groups, **OPTIONS[name])
        for inputs, targets in batches():
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(inputs), targets).backward()
            optimizer.step()
        frozen_state = [optimizer.state.get(p, {}) for p in model[0].parameters()]
        return weights(model), frozen_state, optimizer.state_dict()

    reference, ours = (run(cls) for cls in both(name))
    assert_bitwise(ours[0], reference[0])
    frozen = len(list(network(name=name)[0].parameters()))
    assert_bitwise(ours[0][:frozen], weights(network(name=name))[:frozen])  # the frozen layer never moved
    assert [set(s) for s in ours[1]] == [set(s) for s in reference[1]]
    assert ours[2]["param_groups"] == reference[2]["param_groups"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_low_precision_parameters_step_as_in_torch_optim(name, dtype):
    options = dict(OPTIONS[name])
    eps = inspect.signature(getattr(torch.optim, name)).parameters.get("eps")
    if dtype == torch.float16 and eps is not None and isinstance(eps.default, float):
        options["eps"] = 1e-4  # the default 1e-8 (Adam's) underflows to 0 in float16: 0/0 in the first step
    if name == "Adafactor":
        options["eps"] = (None, 1e-3)  # its default: eps1 is the dtype's machine epsilon
    if name == "Muon":
        # torch.optim.Muon without Nesterov orthogonalizes a bfloat16 momentum buffer in place
        # (its .bfloat16() copy is the buffer itself), so its buffer ends up normalized; with
        # Nesterov the update is a fresh tensor and both libraries agree.
        options["nesterov"] = True
    def run(cls):
        model = network(dtype, name)
        optimizer = cls(model.parameters(), **options)
        for inputs, targets in batches(4, dtype):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(inputs).float(), targets.float()).backward()
            optimizer.step()
        return weights(model) + [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]

    reference, ours = (run(cls) for cls in both(name))
    assert_bitwise(ours, reference)
    assert all(torch.isfinite(tensor).all() for tensor in ours)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop"])
def test_autocast_with_a_grad_scaler_matches_torch_optim_and_skips_overflowing_steps(name):
    def run(cls):
        model = network()
        optimizer = cls(model.parameters(), **OPTIONS[name])
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=2)
        scales = []
        for i, (inputs, targets) in enumerate(batches()):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.mse_loss(model(inputs), targets)
            if i == 2:
                loss = loss * float("inf")  # this step's gradients overflow: the scaler must skip it
            scaler.scale(loss).backward()
            before = weights(model)
            scaler.step(optimizer)
            scaler.update()
            if i == 2:
                assert_bitwise(weights(model), before)
            scales.append(scaler.get_scale())
        return weights(model), scales, scaler.state_dict()

    reference, ours = (run(cls) for cls in both(name))
    assert_bitwise(ours[0], reference[0])
    assert ours[1] == reference[1] and ours[1][2] < ours[1][1]  # the inf step halved the scale
    assert ours[2] == reference[2]


def compiled_training(cls, mode, options):
    model = network()
    optimizer = cls(model.parameters(), **options)
    data = batches(4)

    def eager_step(inputs, targets):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer.step()

    optimizer_step = torch.compile(optimizer.step) if mode == "step" else optimizer.step

    def step_with_compiled_optimizer(inputs, targets):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        optimizer_step()

    train = {"eager": eager_step, "step": step_with_compiled_optimizer, "whole": torch.compile(eager_step)}[mode]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inductor's own chatter on CPU
        for inputs, targets in data:
            train(inputs, targets)
    return weights(model)


@pytest.mark.parametrize("mode", ["step", "whole"])
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_torch_compile_of_the_step_and_of_a_training_step_matches_eager(name, mode):
    torch._dynamo.reset()
    eager = compiled_training(getattr(optimizers, name), "eager", OPTIONS[name])
    torch._dynamo.utils.counters.clear()
    compiled = compiled_training(getattr(optimizers, name), mode, OPTIONS[name])
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0  # Dynamo did compile, not just fall back
    torch._dynamo.reset()
    # Inductor generates its own fused C++ loops, which round differently from eager kernels
    # (torch.optim itself moves by about 1e-6 here), so equality is to float32 rounding.
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(compiled, weights(network())))  # it trained


@pytest.mark.parametrize("name", ALGORITHMS)
def test_printing_matches_torch_optim(name):
    reference, ours = (cls(network(name=name).parameters(), **OPTIONS[name]) for cls in both(name))
    assert repr(ours) == repr(reference)


@pytest.mark.parametrize("name", ["SGD", "Adam", "Adagrad"])
def test_state_dict_hooks_run_and_rewrite_as_in_torch_optim(name):
    def run(cls):
        model = network()
        optimizer = cls(model.parameters(), **OPTIONS[name])
        calls = []

        def post_hook(opt, state_dict):
            calls.append("state_dict post")
            state_dict["param_groups"][0]["lr"] = 0.125  # a post-hook may rewrite what is saved
            return state_dict

        def load_pre_hook(opt, state_dict):
            calls.append("load pre")
            state_dict = dict(state_dict, param_groups=[dict(g, lr=0.25) for g in state_dict["param_groups"]])
            return state_dict

        optimizer.register_state_dict_pre_hook(lambda opt: calls.append("state_dict pre"))
        optimizer.register_state_dict_post_hook(post_hook)
        optimizer.register_load_state_dict_pre_hook(load_pre_hook)
        optimizer.register_load_state_dict_post_hook(lambda opt: calls.append("load post"))
        saved = optimizer.state_dict()
        optimizer.load_state_dict(saved)
        return calls, saved["param_groups"][0]["lr"], optimizer.param_groups[0]["lr"]

    reference, ours = (run(cls) for cls in both(name))
    assert ours == reference == (["state_dict pre", "state_dict post", "load pre", "load post"], 0.125, 0.25)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_workers(worker, out, timeout=180.0) -> None:
    """Start WORLD_SIZE spawned processes; kill them all if they outlive ``timeout``."""
    context = torch.multiprocessing.start_processes(
        worker, args=(free_port(), str(out)), nprocs=distributed.WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{worker.__name__} did not finish in {timeout:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def single_process_reference() -> list[torch.Tensor]:
    """torch.optim.Adam on the full batches, in one process."""
    model = distributed.model()
    distributed.train(model, torch.optim.Adam(model.parameters(), lr=distributed.LR), distributed.batches())
    return weights(model)


def test_distributed_data_parallel_over_gloo_trains_as_one_process(tmp_path):
    run_workers(distributed.ddp_worker, tmp_path)
    reference = single_process_reference()
    ranks = [torch.load(tmp_path / f"ddp-{rank}.pt", weights_only=True) for rank in range(distributed.WORLD_SIZE)]
    for rank in ranks:
        assert_bitwise(rank["optimizers"], rank["torch.optim"])
        assert_bitwise(rank["optimizers"], ranks[0]["optimizers"])
        # Averaging two half-batch gradients rounds differently from one full-batch gradient.
        for a, b in zip(rank["optimizers"], reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_zero_redundancy_optimizer_shards_state_and_checkpoints(tmp_path):
    run_workers(distributed.zero_worker, tmp_path)
    reference = single_process_reference()
    ranks = [torch.load(tmp_path / f"zero-{rank}.pt", weights_only=True) for rank in range(distributed.WORLD_SIZE)]
    # The state is sharded: each rank holds some of the 4 parameters' state, together all of them.
    held = [rank["optimizers local state"] for rank in ranks]
    assert sum(held) == 4 and all(0 < count < 4 for count in held)
    assert held == [rank["torch.optim local state"] for rank in ranks]
    for rank in ranks:
        assert_bitwise(rank["optimizers"], rank["torch.optim"])
        assert_bitwise(rank["optimizers resumed"], rank["optimizers"])
        assert_bitwise(rank["torch.optim resumed"], rank["torch.optim"])
        for a, b in zip(rank["optimizers"], reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    checkpoint = torch.load(tmp_path / "zero-optimizers-checkpoint.pt", weights_only=True)
    torch_checkpoint = torch.load(tmp_path / "zero-torch.optim-checkpoint.pt", weights_only=True)
    assert checkpoint["optimizer"]["param_groups"] == torch_checkpoint["optimizer"]["param_groups"]
    assert sorted(checkpoint["optimizer"]["state"]) == sorted(torch_checkpoint["optimizer"]["state"]) == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_a_checkpoint_from_an_older_torch_without_its_flags_resumes_as_torch_optim_resumes(name):
    """Older torch versions saved no maximize/foreach/capturable/differentiable/fused/... flags."""
    model = network(name=name)
    trained = getattr(torch.optim, name)(model.parameters(), **OPTIONS[name])
    data = batches()
    for inputs, targets in data[:3]:
        trained.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        trained.step()
    old = trained.state_dict()
    # The flags torch.optim restores for checkpoints written before they existed (its
    # __setstate__ defaults them); Adafactor and Muon came with all of theirs.
    restored = inspect.getsource(getattr(torch.optim, name).__setstate__)
    for group in old["param_groups"]:
        for flag in [key for key, value in group.items() if isinstance(value, bool) or value is None]:
            if f'"{flag}"' in restored:
                del group[flag]
    saved_weights = weights(model)

    def resume(cls):
        resumed = network(name=name)
        with torch.no_grad():
            for param, saved in zip(resumed.parameters(), saved_weights):
                param.copy_(saved)
        optimizer = cls(resumed.parameters(), **OPTIONS[name])
        optimizer.load_state_dict(copy.deepcopy(old))  # loading shares tensors with it, in torch.optim too
        for inputs, targets in data[3:]:
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(resumed(inputs), targets).backward()
            optimizer.step()
        return weights(resumed), optimizer.param_groups[0]

    reference, ours = (resume(cls) for cls in both(name))
    assert_bitwise(ours[0], reference[0])
    differing = {key for key in reference[1] if key != "params" and ours[1][key] != reference[1][key]}
    assert differing <= {"fused"}  # torch.optim.SGD fills False where its signature's default is None


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", ALGORITHMS)
def test_a_copied_model_and_optimizer_train_on_as_torch_optims_copy_does(name, copier):
    def run(cls):
        model = network(name=name)
        optimizer = cls(model.parameters(), **OPTIONS[name])
        data = batches()
        for inputs, targets in data[:3]:
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(inputs), targets).backward()
            optimizer.step()
        # Copied together, as a training checkpoint is, so the optimizer holds the copy's parameters.
        together = {"model": model, "optimizer": optimizer}
        copied = copy.deepcopy(together) if copier == "deepcopy" else pickle.loads(pickle.dumps(together))
        model, optimizer = copied["model"], copied["optimizer"]
        assert all(p is q for p, q in zip(optimizer.param_groups[0]["params"], model.parameters()))
        for inputs, targets in data[3:]:
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(inputs), targets).backward()
            optimizer.step()
        return weights(model), together["model"], repr(optimizer)

    reference, ours = (run(cls) for cls in both(name))
    assert_bitwise(ours[0], reference[0])
    assert_bitwise(weights(ours[1]), weights(reference[1]))  # the originals did not move with the copies
    assert ours[2] == reference[2]
