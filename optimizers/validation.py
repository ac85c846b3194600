"""Hyperparameter checks with torch.optim's messages, called by each class in torch.optim's order."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

import backends

__all__ = [
    "check_array_lr",
    "check_betas",
    "check_fused",
    "check_nonnegative",
    "check_sgd_options",
    "linalg_error",
    "state_dtype_name",
    "with_torch_truth_error",
]

# What JAX and NumPy say when a check compares a multi-element array, and what torch says.
_ARRAY_TRUTH_ERRORS = ("The truth value of an array with more than one element is ambiguous",)
_TORCH_TRUTH_ERROR = "Boolean value of Tensor with more than one value is ambiguous"


def with_torch_truth_error(init: Callable) -> Callable:
    """``init`` raising torch's error where a check compares a multi-element array of another framework.

    The checks compare hyperparameters in torch.optim's order (``0.0 <= eps``); a JAX
    array of two elements fails there with JAX's ValueError, a tensor with torch's
    RuntimeError.  Translating at the one place keeps the order and the message.
    """

    @functools.wraps(init)
    def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValueError as error:
            if str(error).startswith(_ARRAY_TRUTH_ERRORS):
                raise RuntimeError(_TORCH_TRUTH_ERROR) from error
            raise

    return checked_init


def check_array_lr(value: Any, name: str = "lr") -> None:
    """A hyperparameter given as an array (torch tensor, JAX or NumPy array) must have one element."""
    if hasattr(value, "shape") and math.prod(value.shape) != 1:
        raise ValueError(f"Tensor {name} must be 1-element")


def check_nonnegative(value: Any, what: str) -> None:
    """``Invalid <what>: <value>`` unless 0 <= value (NaN is invalid too)."""
    if not 0.0 <= value:
        raise ValueError(f"Invalid {what}: {value}")


def check_betas(betas: Any) -> None:
    """Each beta in [0, 1): two for Adam's family, three for AdEMAMix and Adan.

    Indexed as torch.optim does, so that too few betas raise its IndexError.
    """
    for index in range(max(2, len(betas))):
        if not 0.0 <= betas[index] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {betas[index]}")


def check_sgd_options(lr: Any, momentum: Any, dampening: Any, weight_decay: Any, nesterov: Any) -> None:
    """torch.optim.SGD's checks, in its order (timm's Lars makes the same)."""
    check_array_lr(lr)
    if lr < 0.0:  # not `0 <= lr`: torch's SGD accepts a NaN learning rate
        raise ValueError(f"Invalid learning rate: {lr}")
    if momentum < 0.0:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if weight_decay < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


def check_fused(fused: Any, foreach: Any, differentiable: bool) -> None:
    if fused and differentiable:
        raise RuntimeError("`fused` does not support `differentiable`")
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")


def state_dtype_name(dtype: Any) -> str | None:
    """A ``state_dtype`` of any framework (torch.float32, jnp.float32, "float32") by its name."""
    if dtype is None:
        return None
    # A string names the dtype exactly ("float" is no dtype here, though NumPy reads it as float64).
    name = dtype.removeprefix("torch.") if isinstance(dtype, str) else backends.dtype_name(dtype)
    if name not in ("float32", "float64"):
        raise TypeError(f"state_dtype must be float32, float64 or None (the parameter's dtype), but got {dtype!r}")
    return name


def linalg_error(message: str) -> Exception:
    """torch's error for a failed decomposition (``torch.linalg.LinAlgError``), raised where the
    reference's ``torch.linalg`` call would raise it, on either backend."""
    return torch.linalg.LinAlgError(message)
