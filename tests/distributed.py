"""Worker processes for the multi-process tests: DDP, ZeroRedundancyOptimizer and FSDP2 over gloo,
and the parent's side: starting them, and the single-process run they are held to.

Each worker trains the same small model on its half of one batch, then saves what the
parent process checks.  Both optimizers run in every worker, so the parent compares
``optimizers.Adam`` with ``torch.optim.Adam`` under exactly the same collective arithmetic.
"""

from __future__ import annotations

import datetime
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import optimizers

WORLD_SIZE = 2
STEPS = 5
LR = 0.05


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator)) for _ in range(STEPS)]


def train(network: torch.nn.Module, optimizer, data, rank: int | None = None) -> None:
    for inputs, targets in data:
        if rank is not None:  # this rank's half of the batch
            half = inputs.shape[0] // WORLD_SIZE
            inputs, targets = inputs[rank * half : (rank + 1) * half], targets[rank * half : (rank + 1) * half]
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(network(inputs), targets).backward()
        optimizer.step()


def run_workers(worker, out, timeout=180.0) -> None:
    """Start WORLD_SIZE spawned processes; kill them all if they outlive ``timeout``."""
    context = torch.multiprocessing.start_processes(
        worker, args=(str(out),), nprocs=WORLD_SIZE, join=False, start_method="spawn"
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
    network = model()
    train(network, torch.optim.Adam(network.parameters(), lr=LR), batches())
    return [p.detach().clone() for p in network.parameters()]


def _join(rank: int, out: str) -> None:
    # A file rendezvous: a TCP one on a port probed free beforehand can lose the port to another
    # process before the group binds it (a CI run hung there once, with the other test worker busy).
    dist.init_process_group(
        "gloo",
        init_method=f"file://{os.path.join(out, 'rendezvous')}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )


def ddp_worker(rank: int, out: str) -> None:
    _join(rank, out)
    try:
        result = {}
        for name, cls in (("optimizers", optimizers.Adam), ("torch.optim", torch.optim.Adam)):
            network = DistributedDataParallel(model())
            train(network, cls(network.parameters(), lr=LR), batches(), rank)
            result[name] = [p.detach().clone() for p in network.module.parameters()]
        torch.save(result, os.path.join(out, f"ddp-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def zero_worker(rank: int, out: str) -> None:
    _join(rank, out)
    try:
        result, data = {}, batches()
        for name, cls in (("optimizers", optimizers.Adam), ("torch.optim", torch.optim.Adam)):
            network = DistributedDataParallel(model())
            optimizer = ZeroRedundancyOptimizer(network.parameters(), optimizer_class=cls, lr=LR)
            train(network, optimizer, data[:3], rank)
            result[f"{name} local state"] = len(optimizer.optim.state)
            optimizer.consolidate_state_dict(to=0)
            path = os.path.join(out, f"zero-{name}-checkpoint.pt")
            if rank == 0:
                torch.save({"model": network.module.state_dict(), "optimizer": optimizer.state_dict()}, path)
            dist.barrier()
            train(network, optimizer, data[3:], rank)
            result[name] = [p.detach().clone() for p in network.module.parameters()]

            # A fresh run resumes from the consolidated checkpoint and must end where this one did.
            checkpoint = torch.load(path, weights_only=True)
            resumed = model()
            resumed.load_state_dict(checkpoint["model"])
            resumed = DistributedDataParallel(resumed)
            resumed_optimizer = ZeroRedundancyOptimizer(resumed.parameters(), optimizer_class=cls, lr=LR)
            resumed_optimizer.load_state_dict(checkpoint["optimizer"])
            train(resumed, resumed_optimizer, data[3:], rank)
            result[f"{name} resumed"] = [p.detach().clone() for p in resumed.module.parameters()]
        torch.save(result, os.path.join(out, f"zero-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def fsdp_worker(rank: int, out: str) -> None:
    """FSDP2: every parameter a DTensor sharded along its first dimension (the second layer's 3 rows
    unevenly, 2 and 1), gradients reduce-scattered, the optimizer stepping this rank's shard only."""
    _join(rank, out)
    try:
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        result = {}
        for name, cls in (("optimizers", optimizers.Adam), ("torch.optim", torch.optim.Adam)):
            for foreach in (None, True):
                network = model()
                for layer in (network[0], network[2]):
                    fully_shard(layer, mesh=mesh)
                fully_shard(network, mesh=mesh)
                train(network, cls(network.parameters(), lr=LR, foreach=foreach), batches(), rank)
                # full_tensor() all-gathers the shards: the whole parameter, as every rank sees it.
                result[f"{name} foreach={foreach}"] = [p.detach().full_tensor() for p in network.parameters()]
        torch.save(result, os.path.join(out, f"fsdp-{rank}.pt"))
    finally:
        dist.destroy_process_group()
