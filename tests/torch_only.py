"""Every algorithm trains a small torch model (bit for bit as torch.optim where it has the class) without JAX.

Run as a script in an environment with ``pip install optimizers`` and no extras (``.ci/run``
does, from the built wheel), and by ``tests/test_packaging.py`` with JAX made unimportable.
"""

from __future__ import annotations

import sys

import torch

import optimizers


def train(module, name: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    if name == "SparseAdam":
        parameters = list(embedding.parameters())
    elif name == "Muon":  # matrices only
        parameters = [p for p in model.parameters() if p.dim() == 2]
    else:
        parameters = list(model.parameters())
    optimizer = getattr(module, name)(parameters)
    if hasattr(optimizer, "train"):  # Schedule-Free starts in eval mode
        optimizer.train()
    data = torch.randn(16, 4)

    def closure():
        optimizer.zero_grad()
        if name == "SparseAdam":
            loss = embedding(torch.arange(10) % 7).square().sum()
        else:
            loss = model(data).square().mean()
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    return [p.detach().clone() for p in parameters]


def main() -> int:
    names = [name for name in optimizers.__all__ if isinstance(getattr(optimizers, name), type)]
    names = [name for name in names if name != "Optimizer"]
    for name in names:
        ours = train(optimizers, name)
        if hasattr(torch.optim, name):
            if not all(torch.equal(a, b) for a, b in zip(ours, train(torch.optim, name))):
                raise AssertionError(f"{name} differs from torch.optim.{name}")
        elif not all(bool(torch.isfinite(p).all()) for p in ours):  # beyond torch.optim: tested on its own
            raise AssertionError(f"{name} trained to non-finite values")
    # The test kit compares torch optimizers without JAX (or Hypothesis) installed.
    from optimizers import testing

    testing.assert_agree(
        testing.torch(lambda ps: optimizers.Adam(ps, lr=1e-2)),
        testing.torch(lambda ps: torch.optim.Adam(ps, lr=1e-2)),
        rtol=0,
    )
    if sys.modules.get("jax") is not None:
        raise AssertionError("the torch side imported JAX")
    print(f"{len(names)} algorithms trained as torch.optim without JAX; optimizers.testing ran")
    return len(names)


if __name__ == "__main__":
    main()
