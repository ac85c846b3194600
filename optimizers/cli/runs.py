"""Running one optimizer on one problem with one implementation, recording its whole path."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .problems import Problem

# name -> (class name, hyperparameters besides lr).  SGD and momentum are the notebook's two.
CONFIGURATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "SGD": ("SGD", {}),
    "Momentum": ("SGD", {"momentum": 0.9}),
    "Nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}),
    "Adam": ("Adam", {}),
    "AdamW": ("AdamW", {}),
    "Adamax": ("Adamax", {}),
    "NAdam": ("NAdam", {}),
    "RAdam": ("RAdam", {}),
    "Adagrad": ("Adagrad", {}),
    "RMSprop": ("RMSprop", {}),
    "Adadelta": ("Adadelta", {}),
    # Beyond torch.optim: no torch.optim run, our two backends against each other.
    "Lion": ("Lion", {}),
    "AdEMAMix": ("AdEMAMix", {}),
    "Adan": ("Adan", {}),
    "ScheduleFreeAdamW": ("ScheduleFreeAdamW", {}),
    "ScheduleFreeSGD": ("ScheduleFreeSGD", {}),
    "Lamb": ("Lamb", {}),
    "Lars": ("Lars", {"momentum": 0.9}),
    "Prodigy": ("Prodigy", {}),
    "SOAP": ("SOAP", {"precondition_1d": True}),
}

IMPLEMENTATIONS = ("torch.optim", "torch", "jax")


@dataclasses.dataclass
class Run:
    """One implementation's run: the loss and the flattened parameters at every iterate."""

    implementation: str
    losses: np.ndarray  # (steps + 1,): at the start and after each step
    path: np.ndarray  # (steps + 1, number of parameters)
    step_seconds: np.ndarray  # (steps,): wall time of each optimizer.step()

    def steps_to(self, target: float) -> int | None:
        reached = np.flatnonzero(self.losses <= target)
        return int(reached[0]) if reached.size else None


def optimizer_factory(name: str, implementation: str, lr: float) -> Callable[[Any], Any]:
    """A function from parameters to a new optimizer of configuration ``name``."""
    class_name, options = CONFIGURATIONS[name]
    if implementation == "torch.optim":
        import torch

        cls = getattr(torch.optim, class_name)
    else:
        import optimizers

        cls = getattr(optimizers, class_name)

    def make(params: Any) -> Any:
        optimizer = cls(params, lr=lr, **options)
        if hasattr(optimizer, "train"):  # Schedule-Free: the parameters follow y while training
            optimizer.train()
        return optimizer

    return make


def in_torch_optim(name: str) -> bool:
    """Whether torch.optim has the algorithm, so that it runs as the reference."""
    import torch

    return hasattr(torch.optim, CONFIGURATIONS[name][0])


def check_hyperparameters(name: str, lr: float) -> None:
    """Raise the optimizer's own ValueError or TypeError for bad hyperparameters, before any run."""
    import torch

    optimizer_factory(name, "torch", lr)([torch.zeros(1, requires_grad=True)])


def run(problem: Problem, name: str, implementation: str, lr: float, steps: int, dtype: str, seed: int) -> Run:
    start = problem.initial(np.random.default_rng(seed))
    make = optimizer_factory(name, implementation, lr)
    runner = _run_jax if implementation == "jax" else _run_torch
    losses, path, seconds = runner(problem, make, start, steps, dtype)
    return Run(implementation, np.asarray(losses), np.asarray(path), np.asarray(seconds))


def _run_torch(problem, make, start, steps, dtype):
    import torch

    from .problems import torch_math

    math, torch_dtype = torch_math(), getattr(torch, dtype)
    params = [torch.tensor(value, dtype=torch_dtype, requires_grad=True) for value in start]
    optimizer = make(params)

    def loss_at(step):
        data = tuple(torch.as_tensor(a, dtype=torch_dtype) for a in problem.data(step))
        return problem.loss(math, params, data)

    def record():
        with torch.no_grad():
            losses.append(loss_at(None).item())
        path.append(torch.cat([p.detach().reshape(-1) for p in params]).numpy().copy())

    losses, path, seconds = [], [], []
    record()
    for step in range(steps):
        optimizer.zero_grad()
        loss_at(step).backward()
        began = time.perf_counter()
        optimizer.step()
        seconds.append(time.perf_counter() - began)
        record()
    return losses, path, seconds


def _run_jax(problem, make, start, steps, dtype):
    import jax
    import jax.numpy as jnp

    from .problems import jax_math

    math, jax_dtype = jax_math(), getattr(jnp, dtype)
    optimizer = make([jnp.asarray(value, dtype=jax_dtype) for value in start])
    loss = jax.jit(lambda params, data: problem.loss(math, params, data))
    gradient = jax.jit(jax.grad(loss))

    def data_at(step):
        return tuple(jnp.asarray(a, dtype=jax_dtype) for a in problem.data(step))

    def record():
        losses.append(float(loss(optimizer.params, data_at(None))))
        path.append(np.concatenate([np.asarray(p).reshape(-1) for p in optimizer.params]))

    losses, path, seconds = [], [], []
    record()
    for step in range(steps):
        grads = gradient(optimizer.params, data_at(step))
        began = time.perf_counter()
        optimizer.step(grads)
        jax.block_until_ready(optimizer.params)
        seconds.append(time.perf_counter() - began)
        record()
    return losses, path, seconds
