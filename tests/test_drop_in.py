"""Replacing torch.optim in real PyTorch code: models, AMP, torch.compile, hooks, printing, DDP and ZeRO.

Each test runs the same code with ``torch.optim.X`` and ``optimizers.X`` and compares.
"""

from __future__ import annotations

import copy
import inspect
import pickle
import warnings

import pytest
import torch

from . import distributed
from .harness import assert_bitwise, training_step, weights
from .registry import REGISTRY, Entry

ENTRIES = list(REGISTRY.values())
# The two-layer network: dense layers, whose gradients are dense.
LAYERED = [entry for entry in ENTRIES if "dense" in entry.gradients]


class Lookup(torch.nn.Module):
    """A table row for each input, chosen by its largest feature: a model with sparse gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Embedding(6, 3, sparse=True)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.table(inputs.argmax(-1))


def network(dtype=torch.float32, entry: Entry | None = None) -> torch.nn.Module:
    """A two-layer network, or a lookup table for an algorithm that takes sparse gradients only."""
    torch.manual_seed(0)
    if entry and "dense" not in entry.gradients:
        return Lookup().to(dtype)
    bias = not (entry and entry.matrices_only)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16, bias=bias), torch.nn.Tanh(), torch.nn.Linear(16, 3, bias=bias)
    ).to(dtype)


def batches(count=6, dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(12, 6, generator=generator).to(dtype), torch.randn(12, 3, generator=generator).to(dtype))
        for _ in range(count)
    ]


def train_step(entry: Entry, optimizer, model, inputs, targets) -> None:
    """One step on a batch, its loss computed in float32."""
    training_step(entry, optimizer, lambda: torch.nn.functional.mse_loss(model(inputs).float(), targets.float()))


@pytest.mark.parametrize("entry", [entry for entry in LAYERED if entry.param_groups], ids=repr)
def test_frozen_layers_and_per_group_rates_train_a_model_as_torch_optim_does(entry):
    def run(cls):
        model = network(entry=entry)
        model[0].requires_grad_(False)  # frozen, yet handed to the optimizer, as fine-tuning scripts do
        groups = [{"params": model[0].parameters()}, {"params": model[2].weight, "lr": entry.options["lr"] / 10}]
        if model[2].bias is not None:
            groups.append({"params": [model[2].bias], "weight_decay": 0.0})
        optimizer = cls(groups, **entry.options)
        for inputs, targets in batches():
            train_step(entry, optimizer, model, inputs, targets)
        frozen_state = [optimizer.state.get(p, {}) for p in model[0].parameters()]
        return weights(model), frozen_state, optimizer.state_dict()

    reference, ours = run(entry.reference), run(entry.ours)
    assert_bitwise(ours[0], reference[0])
    frozen = len(list(network(entry=entry)[0].parameters()))
    assert_bitwise(ours[0][:frozen], weights(network(entry=entry))[:frozen])  # the frozen layer never moved
    assert [set(s) for s in ours[1]] == [set(s) for s in reference[1]]
    assert ours[2]["param_groups"] == reference[2]["param_groups"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
def test_low_precision_parameters_step_as_in_torch_optim(entry, dtype):
    options = dict(entry.options, **entry.low_precision_options)
    eps = inspect.signature(entry.reference).parameters.get("eps")
    if dtype == torch.float16 and eps is not None and isinstance(eps.default, float):
        options["eps"] = 1e-4  # the default 1e-8 (Adam's) underflows to 0 in float16: 0/0 in the first step

    def run(cls):
        model = network(dtype, entry)
        optimizer = cls(model.parameters(), **options)
        for inputs, targets in batches(4, dtype):
            train_step(entry, optimizer, model, inputs, targets)
        return weights(model) + [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]

    reference, ours = run(entry.reference), run(entry.ours)
    assert_bitwise(ours, reference)
    assert all(torch.isfinite(tensor).all() for tensor in ours)


@pytest.mark.parametrize("entry", [REGISTRY[name] for name in ("SGD", "Adam", "AdamW", "RMSprop")], ids=repr)
def test_autocast_with_a_grad_scaler_matches_torch_optim_and_skips_overflowing_steps(entry):
    def run(cls):
        model = network()
        optimizer = cls(model.parameters(), **entry.options)
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

    reference, ours = run(entry.reference), run(entry.ours)
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
@pytest.mark.parametrize("entry", [REGISTRY["SGD"], REGISTRY["Adam"]], ids=repr)
def test_torch_compile_of_the_step_and_of_a_training_step_matches_eager(entry, mode):
    torch._dynamo.reset()
    eager = compiled_training(entry.ours, "eager", entry.options)
    torch._dynamo.utils.counters.clear()
    compiled = compiled_training(entry.ours, mode, entry.options)
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0  # Dynamo did compile, not just fall back
    torch._dynamo.reset()
    # Inductor generates its own fused C++ loops, which round differently from eager kernels
    # (torch.optim itself moves by about 1e-6 here), so equality is to float32 rounding.
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(compiled, weights(network())))  # it trained


@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
def test_printing_matches_torch_optim(entry):
    reference, ours = (cls(network(entry=entry).parameters(), **entry.options) for cls in (entry.reference, entry.ours))
    assert repr(ours) == repr(reference)


@pytest.mark.parametrize("entry", [REGISTRY[name] for name in ("SGD", "Adam", "Adagrad")], ids=repr)
def test_state_dict_hooks_run_and_rewrite_as_in_torch_optim(entry):
    def run(cls):
        model = network()
        optimizer = cls(model.parameters(), **entry.options)
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

    reference, ours = run(entry.reference), run(entry.ours)
    assert ours == reference == (["state_dict pre", "state_dict post", "load pre", "load post"], 0.125, 0.25)


def test_distributed_data_parallel_over_gloo_trains_as_one_process(tmp_path):
    distributed.run_workers(distributed.ddp_worker, tmp_path)
    reference = distributed.single_process_reference()
    ranks = [torch.load(tmp_path / f"ddp-{rank}.pt", weights_only=True) for rank in range(distributed.WORLD_SIZE)]
    for rank in ranks:
        assert_bitwise(rank["optimizers"], rank["torch.optim"])
        assert_bitwise(rank["optimizers"], ranks[0]["optimizers"])
        # Averaging two half-batch gradients rounds differently from one full-batch gradient.
        for a, b in zip(rank["optimizers"], reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_zero_redundancy_optimizer_shards_state_and_checkpoints(tmp_path):
    distributed.run_workers(distributed.zero_worker, tmp_path)
    reference = distributed.single_process_reference()
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


@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
def test_a_checkpoint_from_an_older_torch_without_its_flags_resumes_as_torch_optim_resumes(entry):
    """Older torch versions saved no maximize/foreach/capturable/differentiable/fused/... flags."""
    model = network(entry=entry)
    trained = entry.reference(model.parameters(), **entry.options)
    data = batches()
    for inputs, targets in data[:3]:
        train_step(entry, trained, model, inputs, targets)
    old = trained.state_dict()
    # The flags torch.optim restores for checkpoints written before they existed (its
    # __setstate__ defaults them); Adafactor, Muon and LBFGS came with all of theirs.
    restored = inspect.getsource(entry.reference.__setstate__)
    for group in old["param_groups"]:
        for flag in [key for key, value in group.items() if isinstance(value, bool) or value is None]:
            if f'"{flag}"' in restored:
                del group[flag]
    saved_weights = weights(model)

    def resume(cls):
        resumed = network(entry=entry)
        with torch.no_grad():
            for param, saved in zip(resumed.parameters(), saved_weights):
                param.copy_(saved)
        optimizer = cls(resumed.parameters(), **entry.options)
        optimizer.load_state_dict(copy.deepcopy(old))  # loading shares tensors with it, in torch.optim too
        for inputs, targets in data[3:]:
            train_step(entry, optimizer, resumed, inputs, targets)
        return weights(resumed), optimizer.param_groups[0]

    reference, ours = resume(entry.reference), resume(entry.ours)
    assert_bitwise(ours[0], reference[0])
    differing = {key for key in reference[1] if key != "params" and ours[1][key] != reference[1][key]}
    assert differing <= {"fused"}  # torch.optim.SGD fills False where its signature's default is None


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
@pytest.mark.parametrize("entry", [entry for entry in ENTRIES if entry.reference_copies_step], ids=repr)
def test_a_copied_model_and_optimizer_train_on_as_torch_optims_copy_does(entry, copier):
    def run(cls):
        model = network(entry=entry)
        optimizer = cls(model.parameters(), **entry.options)
        data = batches()
        for inputs, targets in data[:3]:
            train_step(entry, optimizer, model, inputs, targets)
        # Copied together, as a training checkpoint is, so the optimizer holds the copy's parameters.
        together = {"model": model, "optimizer": optimizer}
        copied = copy.deepcopy(together) if copier == "deepcopy" else pickle.loads(pickle.dumps(together))
        model, optimizer = copied["model"], copied["optimizer"]
        assert all(p is q for p, q in zip(optimizer.param_groups[0]["params"], model.parameters()))
        for inputs, targets in data[3:]:
            train_step(entry, optimizer, model, inputs, targets)
        return weights(model), together["model"], repr(optimizer)

    reference, ours = run(entry.reference), run(entry.ours)
    assert_bitwise(ours[0], reference[0])
    assert_bitwise(weights(ours[1]), weights(reference[1]))  # the originals did not move with the copies
    assert ours[2] == reference[2]
