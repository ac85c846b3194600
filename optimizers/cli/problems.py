"""The built-in problems of ``python -m optimizers``.

A problem's loss is written once, for PyTorch, JAX and NumPy alike: it only uses array
operators, array methods (``sum``, ``mean``) and the few functions a :class:`Math` names.
Anything random (the quadratic's gradient noise, the network's initial weights) is drawn
from NumPy with the run's seed, so every implementation sees the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np


class Math(NamedTuple):
    """The functions a loss may call besides operators, for one array library."""

    tanh: Callable[[Any], Any]
    log_softmax: Callable[[Any], Any]


def numpy_math() -> Math:
    def log_softmax(z):
        shifted = z - z.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

    return Math(np.tanh, log_softmax)


def torch_math() -> Math:
    import torch

    return Math(torch.tanh, lambda z: torch.log_softmax(z, -1))


def jax_math() -> Math:
    import jax
    import jax.numpy as jnp

    return Math(jnp.tanh, lambda z: jax.nn.log_softmax(z, -1))


@dataclasses.dataclass(frozen=True)
class Problem:
    """A loss to minimize, where to start, and what counts as solved.

    ``loss(math, params, data)`` takes the parameters as a list of arrays and a tuple of
    arrays: ``data(step)`` for the gradient of that step, ``data(None)`` for the objective
    that is reported (the quadratic's noise perturbs only its gradients).  A 2-D problem has a single parameter of
    shape ``(2,)`` and a ``view`` (x range, y range) for drawing its contour.
    """

    name: str
    title: str
    loss: Callable[[Math, list, tuple], Any]
    initial: Callable[[np.random.Generator], list[np.ndarray]]
    data: Callable[[int | None], tuple[np.ndarray, ...]]
    target: float
    learning_rates: dict[str, float]
    view: tuple[tuple[float, float], tuple[float, float]] | None = None
    minimum: tuple[float, float] | None = None


def _no_data(step: int | None) -> tuple:
    return ()


def _start(x: float, y: float) -> Callable[[np.random.Generator], list[np.ndarray]]:
    return lambda rng: [np.array([x, y])]


def rosenbrock(math: Math, params: list, data: tuple) -> Any:
    """(1 - x)² + 100 (y - x²)²: a curved valley with its minimum at (1, 1)."""
    x, y = params[0][0], params[0][1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def beale(math: Math, params: list, data: tuple) -> Any:
    """(1.5 - x + xy)² + (2.25 - x + xy²)² + (2.625 - x + xy³)²: flat plateaus, minimum at (3, 0.5)."""
    x, y = params[0][0], params[0][1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


QUADRATIC_CURVATURES = (1.0, 50.0)
QUADRATIC_NOISE = 0.5


def noisy_quadratic(math: Math, params: list, data: tuple) -> Any:
    """½(x² + 50 y²) + ξ·(x, y): condition number 50, gradients perturbed by noise ξ ~ N(0, ½²)."""
    x, y = params[0][0], params[0][1]
    a, b = QUADRATIC_CURVATURES
    loss = 0.5 * (a * x**2 + b * y**2)
    (noise,) = data
    return loss + noise[0] * x + noise[1] * y


def digits_classifier(math: Math, params: list, data: tuple) -> Any:
    """Mean cross-entropy of a 64-32-10 tanh network on scikit-learn's handwritten digits."""
    w1, b1, w2, b2 = params
    images, one_hot = data
    logits = math.tanh(images @ w1 + b1) @ w2 + b2
    return -(one_hot * math.log_softmax(logits)).sum(-1).mean()


@functools.cache
def _digits_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships the 1,797 images inside the package

    digits = load_digits()
    images = digits.data / 16.0
    one_hot = np.eye(10)[digits.target]
    return images, one_hot


def _digits_initial(rng: np.random.Generator) -> list[np.ndarray]:
    def layer(fan_in: int, fan_out: int) -> list[np.ndarray]:
        bound = 1 / np.sqrt(fan_in)  # torch.nn.Linear's default initialization range
        return [rng.uniform(-bound, bound, (fan_in, fan_out)), rng.uniform(-bound, bound, fan_out)]

    return layer(64, 32) + layer(32, 10)


def _make_problems(seed: int, steps: int) -> dict[str, Problem]:
    noise = np.random.default_rng(seed).normal(0.0, QUADRATIC_NOISE, (steps, 2))
    return {
        "rosenbrock": Problem(
            "rosenbrock",
            "Rosenbrock",
            rosenbrock,
            _start(-1.5, 2.0),
            _no_data,
            target=1e-2,
            learning_rates=dict(
                SGD=1e-3,
                Momentum=1e-3,
                Nesterov=1e-3,
                Adam=0.3,
                AdamW=0.3,
                Adamax=0.3,
                NAdam=0.3,
                RAdam=3e-3,
                Adagrad=0.3,
                RMSprop=0.03,
                Adadelta=3.0,
                Lion=0.01,
                AdEMAMix=1.0,
                Adan=0.3,
                ScheduleFreeAdamW=1.0,
                ScheduleFreeSGD=0.01,
                Lamb=0.03,
                Lars=0.001,
                Prodigy=1.0,
                SOAP=0.1,
            ),
            view=((-2.0, 2.0), (-1.0, 3.0)),
            minimum=(1.0, 1.0),
        ),
        "beale": Problem(
            "beale",
            "Beale",
            beale,
            _start(1.0, 1.5),
            _no_data,
            target=1e-2,
            learning_rates=dict(
                SGD=0.01,
                Momentum=1e-3,
                Nesterov=1e-3,
                Adam=0.1,
                AdamW=0.1,
                Adamax=0.3,
                NAdam=0.1,
                RAdam=0.01,
                Adagrad=1.0,
                RMSprop=0.03,
                Adadelta=3.0,
                Lion=0.1,
                AdEMAMix=0.1,
                Adan=1.0,
                ScheduleFreeAdamW=1.0,
                ScheduleFreeSGD=0.01,
                Lamb=0.03,
                Lars=0.003,
                Prodigy=0.1,
                SOAP=0.1,
            ),
            view=((-4.5, 4.5), (-4.5, 4.5)),
            minimum=(3.0, 0.5),
        ),
        "quadratic": Problem(
            "quadratic",
            "Noisy ill-conditioned quadratic",
            noisy_quadratic,
            _start(-4.0, 2.0),
            lambda step: (np.zeros(2) if step is None else noise[step],),
            target=0.1,
            learning_rates=dict(
                SGD=0.03,
                Momentum=3e-3,
                Nesterov=0.01,
                Adam=0.1,
                AdamW=0.1,
                Adamax=0.1,
                NAdam=0.1,
                RAdam=0.03,
                Adagrad=0.3,
                RMSprop=0.03,
                Adadelta=3.0,
                Lion=0.1,
                AdEMAMix=0.1,
                Adan=0.1,
                ScheduleFreeAdamW=0.3,
                ScheduleFreeSGD=0.1,
                Lamb=0.3,
                Lars=0.01,
                Prodigy=1.0,
                SOAP=0.1,
            ),
            view=((-5.0, 5.0), (-3.0, 3.0)),
            minimum=(0.0, 0.0),
        ),
        "digits": Problem(
            "digits",
            "Handwritten digits, 64-32-10 tanh network",
            digits_classifier,
            _digits_initial,
            lambda step: _digits_data(),
            target=0.1,
            learning_rates=dict(
                SGD=1.0,
                Momentum=0.1,
                Nesterov=0.1,
                Adam=0.01,
                AdamW=0.01,
                Adamax=0.03,
                NAdam=0.01,
                RAdam=0.03,
                Adagrad=0.1,
                RMSprop=3e-3,
                Adadelta=1.0,
                Lion=0.03,
                AdEMAMix=0.1,
                Adan=0.1,
                ScheduleFreeAdamW=0.1,
                ScheduleFreeSGD=3.0,
                Lamb=0.01,
                Lars=1.0,
                Prodigy=0.3,
                SOAP=0.1,
            ),
        ),
    }


PROBLEM_NAMES = ("rosenbrock", "beale", "quadratic", "digits")


def problems(names: list[str], seed: int, steps: int) -> list[Problem]:
    available = _make_problems(seed, steps)
    return [available[name] for name in names]
