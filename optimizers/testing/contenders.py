"""Contenders: anything that steps parameters, wrapped so a problem can drive it.

A contender is started from a problem's starting values and then stepped; at each step it
hands its current values to the problem's gradient function and applies what comes back.
"""

from __future__ import annotations

import copy
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import backends
from optimizers.testing.problems import Loss, Problem


class Run(ABC):
    """One contender's run: ``step`` it through a problem, read its ``values``."""

    optimizer: Any

    @abstractmethod
    def step(self, problem: Problem, step: int) -> None:
        """Take ``problem``'s gradients for ``step`` at the current values and apply one update."""

    @abstractmethod
    def values(self) -> list[np.ndarray]:
        """The current parameter values as NumPy arrays, in the order they were given."""


class Contender(ABC):
    """Something that can run an optimizer from given starting values."""

    name: str

    @abstractmethod
    def start(self, params: Sequence[np.ndarray]) -> Run:
        """A fresh optimizer over ``params`` (NumPy arrays in the comparison's dtype)."""

    def __repr__(self) -> str:
        return f"<contender {self.name}>"


def closure_required(step: Callable) -> bool:
    """Whether ``step`` has a ``closure`` argument without a default (LBFGS's)."""
    try:
        closure = inspect.signature(step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def loss_of(name: str, problem: Problem) -> Loss:
    """The problem's loss, for an optimizer that steps with a closure; refused where there is none."""
    if problem.loss is None:
        raise ValueError(
            f"{name} steps with a closure, which evaluates the loss, and the problem {problem.name!r} "
            "has none: use a problem with a loss, e.g. testing.quadratic()"
        )
    return problem.loss


def check_eval_mode(name: str, optimizer: Any) -> None:
    if not (callable(getattr(optimizer, "eval", None)) and callable(getattr(optimizer, "train", None))):
        raise ValueError(
            f"eval_params=True reads the parameters after optimizer.eval() (Schedule-Free's averaged "
            f"point), but {name} has no train() and eval() methods"
        )


def evaluation_copy(optimizer: Any) -> Any:
    """A deep copy of ``optimizer`` in eval mode.  Going to eval() and back to train() would
    round the training point twice and so change the run being compared."""
    evaluated = copy.deepcopy(optimizer)
    evaluated.eval()
    return evaluated


class TorchRun(Run):
    def __init__(self, contender: TorchContender, params: Sequence[np.ndarray]):
        import torch

        self.contender = contender
        self.tensors = [torch.tensor(p, device=contender.device, requires_grad=True) for p in params]
        self.optimizer = contender.factory(list(self.tensors))
        if not callable(getattr(self.optimizer, "step", None)):
            raise TypeError(
                f"testing.torch's factory must return an optimizer with step(), got {type(self.optimizer).__name__}"
            )
        kind = type(self.optimizer)
        self.name = contender.name or f"{kind.__module__.split('.')[0]}.{kind.__name__}" + (
            " (eval)" if contender.eval_params else ""
        )
        if contender.eval_params:
            check_eval_mode(self.name, self.optimizer)
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()  # Schedule-Free optimizers step only in train mode
        self.with_closure = closure_required(self.optimizer.step)

    def set_gradients(self, problem: Problem, step: int) -> None:
        import torch

        grads = problem.gradients(step, self.current)
        for tensor, grad in zip(self.tensors, grads):
            if grad is None:
                tensor.grad = None
                continue
            dense = torch.tensor(grad, device=self.contender.device)
            tensor.grad = dense.to_sparse() if self.contender.sparse else dense

    def step(self, problem: Problem, step: int) -> None:
        import torch

        if not self.with_closure:
            self.set_gradients(problem, step)
            self.optimizer.step()
            return
        loss = loss_of(self.name, problem)

        def closure() -> Any:
            self.set_gradients(problem, step)
            return torch.tensor(loss(step, self.current()), dtype=self.tensors[0].dtype)

        self.optimizer.step(closure)

    def current(self) -> list[np.ndarray]:
        return [t.detach().cpu().numpy().copy() for t in self.tensors]

    def values(self) -> list[np.ndarray]:
        if not self.contender.eval_params:
            return self.current()
        evaluated = evaluation_copy(self.optimizer)
        return [p.detach().cpu().numpy().copy() for group in evaluated.param_groups for p in group["params"]]


class TorchContender(Contender):
    def __init__(self, factory: Callable, *, eval_params: bool, sparse: bool, device: Any, name: str | None):
        if not callable(factory):
            raise TypeError(f"testing.torch takes a factory: a function of a list of tensors, got {factory!r}")
        self.factory, self.eval_params, self.sparse, self.device = factory, eval_params, sparse, device
        self.name = name or ""

    def start(self, params: Sequence[np.ndarray]) -> Run:
        run = TorchRun(self, params)
        self.name = self.name or run.name
        return run


def torch(
    factory: Callable[[list], Any],
    *,
    eval_params: bool = False,
    sparse: bool = False,
    device: Any = "cpu",
    name: str | None = None,
) -> Contender:
    """A torch.optim-style optimizer: ``factory(list of tensors)`` returns it.

    Each step sets every tensor's ``.grad`` from the problem (None where it gives none) and
    calls ``step()``; an optimizer whose ``step`` requires a closure (LBFGS) gets one that
    recomputes the gradients and the problem's loss at the current values.

    Args:
        eval_params: compare the parameters as ``optimizer.eval()`` shows them (Schedule-Free's
            averaged point x), read from a deep copy so the run itself is untouched, rather
            than where gradients are taken; optimizers with ``train()`` are put in train mode
            before the first step either way.  The factory must then keep the list's order.
        sparse: hand the gradients over as sparse COO tensors (SparseAdam).
        device: where the tensors live.
        name: what reports call it (default: the package and class, e.g. ``torch.Adam``).
    """
    return TorchContender(factory, eval_params=eval_params, sparse=sparse, device=device, name=name)


def require_x64(params: Sequence[np.ndarray]) -> None:
    import jax

    if any(p.dtype.itemsize == 8 and p.dtype.kind == "f" or p.dtype == np.complex128 for p in params):
        if not jax.config.read("jax_enable_x64"):
            raise ValueError(
                "a float64 comparison on JAX needs 64-bit JAX, which is off: "
                "jax.config.update('jax_enable_x64', True) before creating arrays"
            )


class JaxRun(Run):
    def __init__(self, contender: JaxContender, params: Sequence[np.ndarray]):
        import jax
        import jax.numpy as jnp

        require_x64(params)
        self.contender = contender
        self.optimizer = contender.factory([jnp.asarray(p) for p in params])
        if getattr(self.optimizer, "backend", None) != "jax":
            raise TypeError(
                "testing.jax's factory must return one of our optimizers on the JAX backend, got "
                f"{type(self.optimizer).__name__} on {getattr(self.optimizer, 'backend', 'no backend')!r}"
            )
        self.name = contender.name or f"optimizers.{type(self.optimizer).__name__} (jax" + (
            ", eval)" if contender.eval_params else ")"
        )
        leaves, self.structure = jax.tree_util.tree_flatten(self.optimizer.params)
        if [leaf.shape for leaf in leaves] != [p.shape for p in params]:
            raise ValueError(
                f"{self.name} holds parameters of shapes {[leaf.shape for leaf in leaves]} where the problem "
                f"gives {[p.shape for p in params]}: the factory must keep the list's order"
            )
        if contender.eval_params:
            check_eval_mode(self.name, self.optimizer)
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()
        self.with_closure = closure_required(self.optimizer.step)

    def step(self, problem: Problem, step: int) -> None:
        import jax
        import jax.numpy as jnp

        def gradients(values: Callable[[], list[np.ndarray]]) -> Any:
            grads = problem.gradients(step, values)
            return jax.tree_util.tree_unflatten(self.structure, grads)  # NumPy arrays: the step converts them

        if not self.with_closure:
            self.optimizer.step(gradients(self.current))
            return
        loss = loss_of(self.name, problem)

        def closure(params: Any) -> tuple[Any, Any]:
            values = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(params)]
            return jnp.asarray(loss(step, values), values[0].dtype), gradients(lambda: values)

        self.optimizer.step(closure=closure)

    def current(self) -> list[np.ndarray]:
        import jax

        return [np.array(leaf) for leaf in jax.tree_util.tree_leaves(self.optimizer.params)]

    def values(self) -> list[np.ndarray]:
        import jax

        if not self.contender.eval_params:
            return self.current()
        return [np.array(leaf) for leaf in jax.tree_util.tree_leaves(evaluation_copy(self.optimizer).params)]


class JaxContender(Contender):
    def __init__(self, factory: Callable, *, eval_params: bool, name: str | None):
        if not callable(factory):
            raise TypeError(f"testing.jax takes a factory: a function of a list of JAX arrays, got {factory!r}")
        self.factory, self.eval_params, self.name = factory, eval_params, name or ""

    def start(self, params: Sequence[np.ndarray]) -> Run:
        run = JaxRun(self, params)
        self.name = self.name or run.name
        return run


def jax(factory: Callable[[list], Any], *, eval_params: bool = False, name: str | None = None) -> Contender:
    """One of our optimizers on the JAX backend: ``factory(list of JAX arrays)`` returns it.

    The factory may put the arrays into param groups, keeping their order.  ``eval_params``
    as for :func:`torch`.
    """
    backends.require("jax", extra="jax", feature="testing.jax")
    return JaxContender(factory, eval_params=eval_params, name=name)


class OptaxRun(Run):
    def __init__(self, contender: OptaxContender, params: Sequence[np.ndarray]):
        import jax
        import jax.numpy as jnp
        import optax

        require_x64(params)
        self.contender = contender
        self.optimizer = contender.transformation
        self.params = [jnp.asarray(p) for p in params]
        self.state = self.optimizer.init(self.params)
        self.update = jax.jit(self.optimizer.update) if contender.jit else self.optimizer.update
        self.apply = jax.jit(optax.apply_updates) if contender.jit else optax.apply_updates

    def step(self, problem: Problem, step: int) -> None:
        import jax.numpy as jnp

        grads = problem.gradients(step, self.current)
        missing = [index for index, grad in enumerate(grads) if grad is None]
        if missing:
            raise ValueError(
                f"{self.contender.name} takes a gradient for every parameter, and {problem.name!r} gives "
                f"none for parameters {missing} at step {step}: use a problem without missing gradients"
            )
        updates, self.state = self.update([jnp.asarray(g) for g in grads], self.state, self.params)
        self.params = self.apply(self.params, updates)

    def current(self) -> list[np.ndarray]:
        return [np.array(p) for p in self.params]

    def values(self) -> list[np.ndarray]:
        if self.contender.eval_params is None:
            return self.current()
        return [np.array(p) for p in self.contender.eval_params(self.state, self.params)]


class OptaxContender(Contender):
    def __init__(self, transformation: Any, *, eval_params: Callable | None, jit: bool, name: str):
        if not (callable(getattr(transformation, "init", None)) and callable(getattr(transformation, "update", None))):
            raise TypeError(
                f"testing.optax takes an optax GradientTransformation (init and update), got {transformation!r}"
            )
        self.transformation, self.eval_params, self.jit, self.name = transformation, eval_params, jit, name

    def start(self, params: Sequence[np.ndarray]) -> Run:
        return OptaxRun(self, params)


def optax(
    transformation: Any, *, eval_params: Callable | None = None, jit: bool = True, name: str = "optax"
) -> Contender:
    """An optax ``GradientTransformation``, applied with ``optax.apply_updates``.

    Args:
        eval_params: ``eval_params(state, params)``, the parameters to compare instead of
            ``params`` (e.g. ``optax.contrib.schedule_free_eval_params``).
        jit: compile ``update`` as training code does (XLA may then fuse multiply-adds).
        name: what reports call it.
    """
    backends.require("optax", extra="optax", feature="testing.optax")
    return OptaxContender(transformation, eval_params=eval_params, jit=jit, name=name)
