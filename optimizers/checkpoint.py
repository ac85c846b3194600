"""Loading a state dict: every entry checked against what the optimizer would create, then converted.

torch.optim checks the group and parameter counts; a state entry of another shape or
type loads there and fails at a later step, half-applied.  Here a state dict that does
not fit raises a ValueError naming the first misfit, and nothing changes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from copy import deepcopy
from itertools import chain
from typing import Any

import numpy as np

import backends

__all__ = ["check_loadable", "loaded"]


def check_loadable(optimizer: Any, state_dict: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first way ``state_dict`` does not fit ``optimizer``.

    Every state entry is checked against the state the optimizer would create for its
    parameter under the saved hyperparameters.
    """
    for key in ("state", "param_groups"):
        if key not in state_dict:
            raise ValueError(f"loaded state dict has no {key!r} entry")
    saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
    if not isinstance(saved_groups, (list, tuple)) or not all(isinstance(g, Mapping) for g in saved_groups):
        raise ValueError("loaded state dict's 'param_groups' must be a list of dicts")
    if not isinstance(saved_state, Mapping):
        raise ValueError(f"loaded state dict's 'state' must be a dict, but got {type(saved_state).__name__}")
    if len(optimizer.param_groups) != len(saved_groups):
        raise ValueError("loaded state dict has a different number of parameter groups")
    for index, saved in enumerate(saved_groups):
        if not isinstance(saved.get("params"), (list, tuple)):
            raise ValueError(f"loaded state dict's param group {index} has no list of 'params'")
    if any(len(g["params"]) != len(s["params"]) for g, s in zip(optimizer.param_groups, saved_groups)):
        raise ValueError(
            "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
        )
    for index, (group, saved) in enumerate(zip(optimizer.param_groups, saved_groups)):
        _check_hyperparameters(index, group, saved)
        # A rule-driven step's first state depends on the hyperparameters (Adam's amsgrad).
        loaded = {**group, **{k: saved[k] for k in group if k in saved and k != "params"}}
        h = optimizer._host_scalars(loaded)
        for saved_id, param in zip(saved["params"], group["params"]):
            if saved_id in saved_state:
                _check_loaded_state(optimizer, saved_id, saved_state[saved_id], param, h)


def loaded(optimizer: Any, state_dict: Mapping[str, Any]) -> tuple[defaultdict, list[dict[str, Any]]]:
    """``(state, param_groups)`` of a checked ``state_dict``, for ``optimizer.__setstate__``.

    Parameters are matched by order; state arrays of any framework become this backend's
    arrays, cast as torch.optim casts them; counters keep their dtype.
    """
    backend, rule = optimizer._backend, optimizer._rule
    saved_groups = deepcopy(state_dict["param_groups"])
    saved_ids = list(chain.from_iterable(s["params"] for s in saved_groups))
    params = list(chain.from_iterable(g["params"] for g in optimizer.param_groups))
    param_of = dict(zip(saved_ids, params))

    def convert(value: Any, param: Any, key: Any = None) -> Any:
        if key in optimizer.counters:  # stored by __setstate__, in their own dtype
            return value
        if hasattr(value, "__dlpack__"):  # an array of any framework
            dtype = backends.compute_dtype(backend, rule, backend.value(param))
            return backend.load_state_value(value, param, dtype)
        if isinstance(value, dict):
            return {k: convert(v, param, k) for k, v in value.items()}
        if isinstance(value, Iterable) and not isinstance(value, str):
            sequence_type: Any = type(value)
            return sequence_type(convert(v, param) for v in value)
        return value

    state: defaultdict = defaultdict(dict)
    for saved_id, value in state_dict["state"].items():
        if saved_id in param_of:
            state[param_of[saved_id]] = convert(value, param_of[saved_id])
        else:  # state not tied to a parameter is kept as it is, as torch.optim does
            state[saved_id] = value
    for group, saved in zip(optimizer.param_groups, saved_groups):
        saved["params"] = group["params"]
        if "param_names" in group and "param_names" not in saved:
            saved["param_names"] = group["param_names"]
    return state, saved_groups


def _check_loaded_state(optimizer: Any, saved_id: Any, entry: Any, param: Any, h: Any) -> None:
    """Check one parameter's saved state against what its first step would create."""
    value = optimizer._backend.value(param)
    where = f"loaded state for parameter {saved_id} (shape {tuple(value.shape)})"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a dict of state entries, but got {type(entry).__name__}")
    if not entry:  # a reference that touched the parameter's state without stepping it
        return
    expected = optimizer._initial_state(param, h)
    for key in expected:
        if key not in entry:
            raise ValueError(f"{where} has no {key!r} entry")
    for key, saved in entry.items():
        if key in optimizer.counters:
            if not _is_number(saved):
                raise ValueError(f"{where} has {key!r} = {saved!r}, which is not a number")
            continue
        shape = _shape_of(expected[key]) if key in expected else optimizer._lazy_state_shape(key, value, h)
        if isinstance(shape, list):  # a list of arrays (SOAP's statistics), None for an empty list
            if not isinstance(saved, (list, tuple)) or len(saved) != len(shape):
                raise ValueError(f"{where} has {key!r} = {_described(saved)}, expected a list of {len(shape)}")
            for position, (item, item_shape) in enumerate(zip(saved, shape)):
                if item_shape is None:
                    if not (isinstance(item, (list, tuple)) and not item):
                        raise ValueError(f"{where} has {key!r}[{position}] = {_described(item)}, expected []")
                else:
                    _check_array(optimizer, f"{where} has {key!r}[{position}]", key, item, item_shape)
        elif shape is not None:
            _check_array(optimizer, f"{where} has {key!r}", key, saved, shape)


def _shape_of(array: Any) -> tuple | list:
    """What a state entry the optimizer creates looks like: an array's shape, or a list's shapes."""
    if isinstance(array, list):
        return [None if isinstance(item, list) else tuple(item.shape) for item in array]
    return tuple(array.shape)


def _described(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return f"an array of shape {tuple(value.shape)}" if hasattr(value, "shape") else type(value).__name__


def _check_array(optimizer: Any, where: str, key: str, saved: Any, shape: tuple) -> None:
    if not hasattr(saved, "__dlpack__") or not hasattr(saved, "shape"):
        raise ValueError(f"{where} of type {type(saved).__name__}, not an array")
    if tuple(saved.shape) != shape and not (key in optimizer.scalar_state_entries and not saved.shape):
        raise ValueError(f"{where} of shape {tuple(saved.shape)}, expected {shape}")
    if not _is_numeric_array(saved):
        raise ValueError(f"{where} of dtype {saved.dtype}, which is not numeric")


def _check_hyperparameters(index: int, group: dict[str, Any], saved: Mapping[str, Any]) -> None:
    """A saved hyperparameter must be of the kind this optimizer's group holds there."""
    for key, current in group.items():
        if key == "params" or key not in saved:
            continue
        value = saved[key]
        if isinstance(current, bool):
            valid = isinstance(value, (bool, type(None))) if key in ("foreach", "fused") else isinstance(value, bool)
        elif isinstance(current, (int, float)) or hasattr(current, "shape"):
            valid = _is_number(value)
        elif isinstance(current, tuple) and all(isinstance(v, (int, float)) or hasattr(v, "shape") for v in current):
            valid = isinstance(value, (tuple, list)) and len(value) == len(current) and all(map(_is_number, value))
        else:
            continue
        if not valid:
            raise ValueError(f"loaded state dict's param group {index} has {key}={value!r}, unlike {current!r}")


def _is_number(value: Any) -> bool:
    """A real number, or a one-element numeric array of any framework (as a tensor lr)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float, np.number)):
        return True
    return hasattr(value, "shape") and math.prod(value.shape) == 1 and _is_numeric_array(value)


def _is_numeric_array(value: Any) -> bool:
    return backends.is_numeric(value.dtype)
