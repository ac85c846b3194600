"""The PyTorch backend: rules run as tensor operations and land in place on the user's tensors.

Parameters and state tensors keep their identity across steps (results are
``copy_``-ed into them), as with torch.optim, so code that holds a reference
to a parameter or a state tensor sees it change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

import numpy as np
import torch

from backends import GroupStep, HostMath, Rule, Scalars, numbers, run_update, torch_fused, torch_plan, widened
from backends.torch_ops import KernelOps, TensorMath, TorchOps


class TorchBackend:
    name = "torch"
    ops = TorchOps
    # torch.optim's list in its fused device/dtype error.
    fused_devices = ("mps", "cuda", "xpu", "hpu", "cpu", "mtia", "privateuseone")

    def host_number(self, value: Any, *, recorded: bool = False) -> float | torch.Tensor:
        """A hyperparameter as host-side coefficients see it.

        A number becomes a Python float (float64 arithmetic).  A one-element array (a
        tensor lr) becomes a 0-d CPU tensor of its dtype: what is derived from it --
        ``lr / bias_correction``, ``1 - lr * weight_decay`` -- then rounds exactly as
        torch.optim's arithmetic on that tensor rounds (float32 operations, ``x / tensor``
        as ``reciprocal(tensor) * x``).  It is detached, as torch.optim's step runs under
        ``no_grad``, unless ``recorded``: a differentiable step's scalars keep autograd's
        graph, so derivatives reach a hyperparameter that requires grad.
        """
        if not hasattr(value, "shape"):
            return float(value)
        tensor = value if isinstance(value, torch.Tensor) else torch.from_dlpack(value)
        return (tensor if recorded else tensor.detach()).reshape(()).cpu()

    def counter_dtype(self) -> type:
        """torch.optim's dtype for a new step count: float32, or float64 under a float64 default dtype."""
        return np.float64 if torch.get_default_dtype() == torch.float64 else np.float32

    def device_type(self, array: torch.Tensor) -> str:
        return array.device.type

    def param_groups(self, params: Any) -> tuple[list[dict], bool]:
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if isinstance(groups[0], dict):
            return groups, True
        return [{"params": groups}], False

    def collect_params(self, params: Any, *, allow_non_leaf: bool) -> tuple[list, list[str] | None, None]:
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but "
                "the ordering of tensors in sets will change between runs. Please use a list instead."
            )
        tensors, names = [], []
        for param in params:
            if isinstance(param, tuple):  # from named_parameters()
                names.append(param[0])
                param = param[1]
            tensors.append(param)
        if names and len(names) != len(tensors):
            raise ValueError("all optimizer params should be with/without names. Some param names are missing")
        for param in tensors:
            if not isinstance(param, torch.Tensor):
                raise TypeError(
                    "optimizer can only optimize Tensors, but one of the params is " + torch.typename(param)
                )
            if not allow_non_leaf and not (param.is_leaf or param.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")
        return tensors, names or None, None

    def value(self, param: torch.Tensor) -> torch.Tensor:
        return param

    def value_for_state(self, param: torch.Tensor, *, differentiable: bool) -> torch.Tensor:
        return param if differentiable else param.detach()

    def write(self, param: torch.Tensor, value: torch.Tensor) -> None:
        if value is not param:
            with torch.no_grad():
                param.copy_(value)

    def assemble(self, structure: None, values: list) -> list:
        return list(values)

    def profiled(self, name: str) -> torch.autograd.profiler.record_function:
        return torch.autograd.profiler.record_function(name)

    def run_closure(self, closure: Callable, params: Any) -> tuple[Any, None]:
        with torch.enable_grad():
            return closure(), None

    def match_gradients(self, grads: Any, structure: None, params: list) -> list:
        raise TypeError(
            "the torch backend reads gradients from each parameter's .grad: step() takes only a "
            f"closure, but got {torch.typename(grads)}"
        )

    def zero_grad(self, param: torch.Tensor, set_to_none: bool) -> None:
        if param.grad is None:
            return
        if set_to_none:
            param.grad = None
            return
        if param.grad.grad_fn is not None:
            param.grad.detach_()
        else:
            param.grad.requires_grad_(False)
        param.grad.zero_()

    def store_counter(self, value: np.ndarray) -> torch.Tensor | int:
        if np.issubdtype(np.asarray(value).dtype, np.integer):
            return int(value)  # as torch.optim keeps SparseAdam's step
        # as_tensor, not tensor: under torch.compile the NumPy value arrives as a tensor already.
        return torch.as_tensor(value).clone()

    def is_sparse(self, array: torch.Tensor) -> bool:
        return array.is_sparse

    def floating_bits(self, array: torch.Tensor) -> int | None:
        return array.dtype.itemsize * 8 if array.is_floating_point() else None

    def cast(self, array: torch.Tensor, dtype: str) -> torch.Tensor:
        return array.to(getattr(torch, dtype))

    def all_finite(self, grads: list) -> bool:
        # One flag per gradient, stacked, so the host waits once.
        flags = [torch.isfinite(g.coalesce().values() if g.is_sparse else g).all() for g in grads]
        return bool(torch.stack(flags).all()) if flags else True

    def is_complex(self, array: torch.Tensor) -> bool:
        return array.is_complex()

    def as_real(self, array: torch.Tensor) -> torch.Tensor:
        return torch.view_as_real(array)

    def as_complex(self, array: torch.Tensor) -> torch.Tensor:
        return torch.view_as_complex(array)

    def foreach(self, group: dict[str, Any], params: list) -> bool:
        """Whether ``group`` steps as multi-tensor (``torch._foreach_*``) operations.

        ``foreach=None`` decides as torch.optim's ``_default_to_fused_or_foreach``: on when
        every parameter is a plain tensor on a device with multi-tensor kernels (CUDA and
        the like, not the CPU) and the step is not differentiable.  A sparse gradient
        keeps the group on single tensors, as torch.optim's multi-tensor paths do.
        """
        chosen = group.get("foreach")
        if chosen is None:
            chosen = not (group.get("differentiable") or group.get("fused")) and all(
                torch_plan.is_plain(p) and p.device.type in _FOREACH_DEVICES for p in params
            )
        # Multi-tensor kernels take dense tensors; torch.optim loops over sparse gradients too.
        return bool(chosen) and not any(p.grad is not None and p.grad.is_sparse for p in params)

    def step_scalars(self, rule: Rule, groups: list, state: dict, host_h: Callable[[dict], Any]) -> dict[str, Any]:
        """On the host, op by op, as the references compute such numbers (``.item()`` included)."""
        assert rule.step_scalars is not None  # asked for only where the rule has them
        steps = [
            GroupStep(
                host_h(group),
                [self.value(p) for p in params],
                [p.grad for p in params],
                [state.get(p, {}) for p in params],
            )
            for group, params in groups
        ]
        return rule.step_scalars(self.ops, HostMath, steps)

    def apply(self, rule: Rule, work: list, state: dict, memory: dict, host_h: Callable[..., Any]) -> None:
        for group, params in work:
            differentiable = bool(group.get("differentiable", False))
            foreach = self.foreach(group, params)
            h = host_h(group, foreach=foreach)
            # As torch.optim's step (``_use_grad_for_differentiable``): autograd records the step
            # exactly when it is differentiable, and _step_each reads that mode as the decision.
            with torch.set_grad_enabled(differentiable):
                if group.get("fused"):
                    params = torch_fused.step_group(self, rule, params, h, state, memory)
                elif differentiable:
                    h = self._recorded_scalars(rule, group, h)
                else:
                    params = torch_plan.step_group(self, rule, params, h, state, memory, foreach)
                self._step_each(rule, params, h, state)

    def settle(self, memory: dict) -> None:
        pass  # the state's tensors are the buckets' own views: always current

    def _recorded_scalars(self, rule: Rule, group: dict[str, Any], h: Any) -> Any:
        """``h`` for a differentiable step.

        Where a hyperparameter tensor requires grad (an lr, weight_decay or betas to
        differentiate with respect to, as torch's ``TestDifferentiableOptimizer`` does), the
        coefficients again, from the group's numbers as autograd sees them, in tensor arithmetic
        (:class:`TensorMath`): its graph runs through ``1 - beta1``, ``1 - lr * weight_decay``
        and, in :meth:`_step_each`, the schedule and the update, so the step's derivatives reach
        it as torch.optim's differentiable step's do.  Otherwise ``h`` as it is.
        """
        names = rule.switches({**group, "foreach": False})  # only which keys are switches
        found = numbers(group, functools.partial(self.host_number, recorded=True), names)
        if not _in_graph(found.values()):
            return h
        return Scalars({**vars(h), **rule.coefficients(TensorMath, found)})

    def _step_each(self, rule: Rule, params: list, h: Any, state: dict) -> None:
        """The reference path: the rule run parameter by parameter, op by op, as written.

        Its scalars come in one of two forms.  On the host (the default): counters are read
        back once and the schedule is Python float arithmetic, shared by the parameters whose
        counters agree, and the kernels take the resulting numbers as torch.optim's do.  As 0-d
        tensors: counters stay tensors, the schedule is tensor arithmetic (:class:`TensorMath`)
        per parameter and the kernels take tensor scalars (:class:`KernelOps`).  The tensor form
        serves two steps:

        * under torch.compile, so that nothing is read back to the host and nothing depends on a
          parameter's identity; Inductor fuses the graph, which rounds as a fused loop does (as
          torch.optim's compiled step does);
        * in a differentiable step (autograd records: :meth:`apply` enables it for a
          differentiable group only) whose scalars are in autograd's graph -- a hyperparameter
          that requires grad (see :meth:`_recorded_scalars`) or a counter that does (NAdam's
          ``mu_product``, which torch.optim's differentiable step keeps in the graph) -- so that
          derivatives reach them and such a counter never goes through NumPy.  A differentiable
          step with plain numbers stays on the host, as torch.optim's (its ``.item()`` reads and
          Python-float ``alpha=``) does.
        """
        compiling = torch.compiler.is_compiling()
        # A differentiable step (torch.optim's differentiable=True) records the rule for autograd,
        # which may keep the old parameter, state and counters for its backward (the old maximum
        # of amsgrad, a norm, ASGD's eta): the rule reads copies, so writing the results in place
        # keeps them.
        recorded = torch.is_grad_enabled()
        in_graph = recorded and (
            _in_graph(vars(h).values()) or _in_graph(state.get(p, {}).get(k) for p in params for k in rule.counters)
        )
        tensor_scalars = compiling or in_graph
        schedules: dict[tuple, tuple[Any, dict]] = {}  # parameters usually share their counters
        for param in params:
            held = state.get(param, {})
            if tensor_scalars:
                counters = {k: _copy(held[k]) if recorded else held[k] for k in rule.counters}
                scheduled, advanced = rule.schedule(TensorMath, h, counters)
                param_h = Scalars({**vars(h), **scheduled})
            else:
                counters = {k: np.asarray(held[k])[()] for k in rule.counters}
                key = tuple(float(v) for v in counters.values())
                if key not in schedules:
                    # Scalars derived from counters or tensors reach the kernels as the Python
                    # floats torch.optim hands them.
                    values, advanced = torch_plan.host_values(rule, h, counters)
                    schedules[key] = Scalars(values), {k: self.store_counter(v) for k, v in advanced.items()}
                param_h, advanced = schedules[key]
            arrays = {k: v for k, v in held.items() if k not in rule.counters}
            value, grad = widened(self, rule, param, param), widened(self, rule, param.grad, param)
            if recorded:
                value = value.clone() if value is param else value
                arrays = {k: _copy(v) for k, v in arrays.items()}
            ops = KernelOps if tensor_scalars else TorchOps
            new_param, new_arrays = run_update(self, rule, value, grad, arrays, param_h, ops)
            if new_param is not param:
                param.copy_(new_param)
            _write_state(held, {**advanced, **new_arrays})
            if held and param not in state:
                state[param] = held

    def load_state_value(self, value: Any, param: torch.Tensor, dtype: str | None = None) -> torch.Tensor:
        # torch.optim's casting policy: state follows the parameter's floating dtype and device.
        tensor = value if isinstance(value, torch.Tensor) else torch.from_dlpack(value).clone()
        if param.is_floating_point():
            return tensor.to(dtype=getattr(torch, dtype) if dtype else param.dtype, device=param.device)
        return tensor.to(device=param.device)


# torch.optim's devices with multi-tensor kernels (torch.utils._foreach_utils).
_FOREACH_DEVICES = ("cuda", "xpu", "mtia", "hpu", "privateuseone")


def _write_state(held: dict, new_state: Mapping) -> None:
    """Update a parameter's state dict in place, keeping existing tensors' identity."""
    for key, value in new_state.items():
        current = held.get(key)
        if current is value:
            continue
        if _fits(current, value):
            current.copy_(value)
        elif isinstance(current, list) and isinstance(value, list) and len(current) == len(value):
            # A list of arrays (SOAP's statistics): each kept in place where it fits.
            held[key] = [c.copy_(v) if _fits(c, v) else _owned(v) for c, v in zip(current, value)]
        elif isinstance(value, (torch.Tensor, list)):
            # A new entry may be the gradient itself (SGD's first momentum buffer): own a copy.
            held[key] = _owned(value)
        else:
            held[key] = value


def _in_graph(values: Any) -> bool:
    """Whether any of ``values`` (or of the tuples among them: betas) is a tensor that requires
    grad, which autograd records through."""
    return any(
        _in_graph(v) if isinstance(v, (tuple, list)) else isinstance(v, torch.Tensor) and v.requires_grad
        for v in values
    )


def _copy(value: Any) -> Any:
    """A tensor's copy in autograd's graph (anything else as it is)."""
    return value.clone() if isinstance(value, torch.Tensor) else value


def _fits(current: Any, value: Any) -> TypeGuard[torch.Tensor]:
    """Whether ``value`` can be copied into the tensor ``current``."""
    return (
        isinstance(current, torch.Tensor)
        and isinstance(value, torch.Tensor)
        and current.shape == value.shape
        and current.layout == value.layout == torch.strided
    )


def _owned(value: Any) -> Any:
    """A tensor (or a list of them) as a copy of its own, outside autograd's graph."""
    if isinstance(value, list):
        return [_owned(item) for item in value]
    return value.detach().clone()


BACKEND = TorchBackend()
