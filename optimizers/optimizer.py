"""The one Optimizer class: torch.optim's bookkeeping, with the array work handed to a backend."""

from __future__ import annotations

import abc
import functools
import inspect
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from copy import deepcopy
from itertools import chain
from typing import Any, Callable

import numpy as np
import torch
from torch.optim.optimizer import required

import backends

__all__ = ["Optimizer", "required", "check_array_lr", "check_betas", "check_fused", "check_nonnegative"]


class Optimizer(torch.optim.Optimizer, metaclass=abc.ABCMeta):
    """Base class of every optimizer, on either backend.

    It is a :class:`torch.optim.Optimizer`, so schedulers, ``GradScaler`` and
    other torch code accept it, and it keeps torch.optim's public contract:
    ``param_groups``, ``state`` (keyed by parameter), ``state_dict`` /
    ``load_state_dict`` in torch.optim's format, step and state-dict hooks,
    ``zero_grad`` and ``add_param_group``.

    An algorithm is a subclass that validates its hyperparameters and defines
    its rule once, for both backends:

    ``switches(group) -> dict``
        Bools, strings and None read from a param group: they select the rule's
        branches (``nesterov``, ``weight_decay != 0``) and are compiled into a
        JAX program.  Decided on the host.

    ``coefficients(math, numbers) -> dict``
        Scalar arithmetic on the group's numeric hyperparameters (``1 - beta1``,
        ``1 - lr * weight_decay``).  On torch it runs on the host in Python
        floats, rounding as torch.optim's own scalar arithmetic; on JAX it runs
        inside the compiled step on float64 arrays, so hyperparameters are data
        and a schedule changing them never recompiles.

    ``update(ops, param, grad, state, h) -> (param, state)``
        The rule for one parameter, pure: it returns the new parameter and its
        new state dict and mutates nothing.  ``h`` holds the switches,
        coefficients and ``schedule``'s output as attributes; ``ops`` holds the
        backend's array operations, each rounding as the torch kernel of the
        same name.

    and, where it keeps state, ``initial_state`` (the arrays torch.optim creates
    at a parameter's first step), ``counters`` (per-parameter scalar state such
    as ``step``) and ``schedule(math, h, counters)`` (per-parameter scalars such
    as bias corrections, computed from the parameter's own counters as
    torch.optim computes them).  ``math`` (:class:`backends.HostMath` or its
    traced twin) supplies the few scalar functions that differ between Python
    floats and traced arrays.

    The backend is inferred from the parameters (torch tensors -> ``"torch"``,
    JAX arrays -> ``"jax"``) or forced with ``backend=``.

    On the JAX backend ``params`` is a pytree of arrays (or a list of group
    dicts whose ``"params"`` are pytrees); :attr:`params` returns the current
    values in that structure.  ``step(grads)`` takes gradients shaped like
    :attr:`params` (``None`` for a leaf that got no gradient: its value and
    state stay as they are); ``step(closure=f)`` takes ``f(params) -> (loss,
    grads)``.  Gradients given to ``step`` are held on each leaf's ``.grad``, as
    torch leaves them after ``backward()``: ``step()`` with no argument reuses
    them, and ``zero_grad()`` clears them (``set_to_none=False`` makes them
    zeros, which -- unlike None -- still step the parameter).

    NaN and inf gradients flow into the update exactly as in torch.optim (the
    parameters and moments become non-finite).  With ``skip_nonfinite=True`` a
    step whose gradients are not all finite changes nothing -- parameters,
    state, step counts -- and counts itself in :attr:`skipped_steps`, as
    ``GradScaler`` skips an overflowing step; the check reads one flag back
    from the device per step.

    ``state_dtype=torch.float32`` (or ``jnp.float32``, ``"float32"``) keeps the state
    of narrower parameters (bfloat16, float16) in float32, and steps them there: the
    rule sees the parameter's float32 copy, and the result is rounded to the
    parameter's dtype once per step.  torch.optim keeps such state in the parameter's
    dtype, where small updates of the moments round away, and float16's smallest
    number (6e-8) swallows Adam's eps=1e-8: an element whose gradient has been zero
    divides 0 by 0 and becomes NaN.  The default, None, is torch.optim's behaviour.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _with_torch_truth_error(cls.__init__)

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any],
        *,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        if not isinstance(skip_nonfinite, bool):
            raise TypeError(f"skip_nonfinite must be a bool, but got {type(skip_nonfinite).__name__}")
        self.state_dtype = _state_dtype_name(state_dtype)
        if isinstance(params, torch.Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or dicts, "
                "but got " + torch.typename(params)
            )
        if isinstance(params, Iterator):  # e.g. model.parameters(): read it once
            params = list(params)
        self._backend = backends.get(backend if backend is not None else backends.infer(params) or "torch")
        # torch's own __setstate__ creates the hook registries and wraps step() with them.  It
        # also adds a "differentiable" default, which torch.optim's constructors do not.
        had_differentiable = "differentiable" in defaults
        super().__setstate__({"defaults": defaults, "state": defaultdict(dict), "param_groups": []})
        if not had_differentiable:
            del self.defaults["differentiable"]
        self.skip_nonfinite = skip_nonfinite
        self.skipped_steps = 0
        self._structures: list[Any] = []
        self._backend_memory: dict = {}  # what the backend keeps between steps (fused buckets)
        groups, self._grouped = self._backend.param_groups(params)
        for group in groups:
            self.add_param_group(group)

    # -- what an algorithm defines ------------------------------------------------

    #: Per-parameter scalar state with its initial value (e.g. ``{"step": 0.0}``), stored as
    #: torch.optim stores it (a 0-d float32 tensor on torch, a 0-d array on JAX) and
    #: advanced by :meth:`schedule`; the rule never sees it.  An ``int`` initial value makes
    #: an integer counter (a Python int on torch); a function of the group's scalars ``h``
    #: an initial value read from the group (ASGD's ``eta`` starts at ``lr``).
    counters: dict[str, Any] = {}

    #: The RuntimeError message for a sparse gradient, or None if the rule accepts them.
    sparse_gradients_error: str | None = None

    #: The RuntimeError message for a dense gradient, or None if the rule accepts them.
    dense_gradients_error: str | None = None

    #: The RuntimeError message for a complex parameter, or None if the rule accepts them.
    complex_parameters_error: str | None = None

    #: Whether the rule sees a complex parameter (and its state) as (real, imag) pairs, as
    #: torch.optim's rules that are not linear in the gradient do.
    complex_as_real: bool = True

    @staticmethod
    def switches(group: dict[str, Any]) -> dict[str, Any]:
        """The rule's branches, read from ``group`` on the host (bools, strings, None).

        ``group["foreach"]`` is the resolved execution mode: whether this step runs as
        multi-tensor operations (the torch backend's ``foreach``).
        """
        return {}

    @staticmethod
    @abc.abstractmethod
    def coefficients(math: Any, numbers: dict[str, Any]) -> dict[str, Any]:
        """The scalars the rule reads, computed from the group's numeric hyperparameters."""

    @staticmethod
    def schedule(math: Any, h: Any, counters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Per parameter: ``(extra scalars for the rule, advanced counters)``.

        Counters keep their stored dtype, so their arithmetic rounds as torch.optim's
        0-d tensors do (``step += 1`` in float32); ``math.float(step)`` gives the
        float64 number torch.optim derives bias corrections from.
        """
        return {}, counters

    @staticmethod
    def initial_state(ops: Any, param: Any, h: Any) -> dict[str, Any]:
        """The arrays of a parameter's state before its first step (torch.optim's lazy init)."""
        return {}

    @staticmethod
    @abc.abstractmethod
    def update(ops: Any, param: Any, grad: Any, state: dict[str, Any], h: Any) -> tuple[Any, dict[str, Any]]:
        """The update rule for one parameter: ``(new_param, new_state)`` (state without counters)."""

    def functional(self, group: int = 0) -> Any:
        """This optimizer as pure JAX functions: ``init(params)`` and ``update(grads, state, params, hyperparams)``.

        For a training step the user compiles with ``jax.jit`` (donating parameters and
        state if they like).  The switches (``nesterov``, ``amsgrad``, whether there is
        weight decay) and the default hyperparameters come from param group ``group``;
        ``update`` takes numeric hyperparameters as data.  It runs the same traced step
        as :meth:`step` on the JAX backend.  See :class:`backends.jax_backend.Functional`.
        """
        chosen = self.param_groups[group]
        jax_backend = backends.get("jax")
        return jax_backend.functional(self._rule, chosen, self._host_scalars(chosen), _counter_dtype())

    # -- parameters -------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """The name of the backend this optimizer runs on: ``"torch"`` or ``"jax"``."""
        return self._backend.name

    @property
    def params(self) -> Any:
        """The current parameters, in the structure they were given in.

        One pytree (torch: one list) when the optimizer was built from one;
        otherwise a list with one per param group.
        """
        trees = [
            self._backend.assemble(structure, [self._backend.value(p) for p in group["params"]])
            for group, structure in zip(self.param_groups, self._structures)
        ]
        return trees[0] if self._single_tree else trees

    @property
    def _single_tree(self) -> bool:
        return not self._grouped and len(self.param_groups) == 1

    @torch._disable_dynamo
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (e.g. layers unfrozen during fine-tuning), as torch.optim does."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        params, names, structure = self._backend.collect_params(
            param_group["params"], allow_non_leaf=bool(self.defaults.get("differentiable"))
        )
        param_group["params"] = params
        if names is not None:
            param_group["param_names"] = names
        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError(
                    f"parameter group didn't specify a value of required optimization parameter {name}"
                )
            param_group.setdefault(name, default)
        if len(params) != len(set(params)):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; "
                "in future, this will cause an error; "
                "see github.com/pytorch/pytorch/issues/40967 for more information",
                stacklevel=3,
            )
        taken: set = set()
        for group in self.param_groups:
            taken.update(group["params"])
            if ("param_names" in param_group) != ("param_names" in group):
                which = "with names" if "param_names" in param_group else "without names"
                raise ValueError(
                    "all optimizer param groups should be with/without names. "
                    f"cannot add param group {which} to the optimizer"
                )
        if not taken.isdisjoint(params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(param_group)
        self._structures.append(structure)

    # -- stepping ---------------------------------------------------------------------

    def step(self, closure: Callable | Any = None) -> Any:
        """Perform one optimization step and return the closure's loss (None without one).

        Args:
            closure: on torch, a callable that re-evaluates the model and returns
                the loss.  On JAX, either a callable ``f(params) -> (loss, grads)``
                or the gradients themselves, shaped like :attr:`params`.
        """
        loss = None
        if callable(closure):
            loss = self._run_closure(closure)
        elif closure is not None:
            self._receive_gradients(closure)
        stepping = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        stepping = [(group, params) for group, params in stepping if params]
        self._check_step(stepping)
        if self.skip_nonfinite and not self._backend.all_finite([p.grad for _, params in stepping for p in params]):
            self.skipped_steps += 1
            return loss
        if self._has_initial_state:
            for group in self.param_groups:
                self._init_group(group)
        work = [
            (group, params, self._host_scalars(group, foreach=self._backend.foreach(group, params)))
            for group, params in stepping
        ]
        if work:
            self._backend.apply(self._rule, work, self.state, self._backend_memory)
        return loss

    @property
    def _has_initial_state(self) -> bool:
        """Whether a parameter's first step creates state (counters or arrays) before the rule runs."""
        return bool(self.counters) or type(self).initial_state is not Optimizer.initial_state

    def _init_group(self, group: dict[str, Any]) -> None:
        """Create the state of ``group``'s parameters that get their first gradient.

        Named as torch.optim's: torch.compile runs a method of this name on the host while it
        traces a step (and guards on the state it made), so the compiled step never contains
        the lazy initialization.
        """
        h = None
        for param in group["params"]:
            if param.grad is not None and not self.state.get(param):
                if h is None:
                    h = self._host_scalars(group)
                initial = self._initial_state(param, h)
                if initial:
                    self.state[param] = initial

    def _run_closure(self, closure: Callable) -> Any:
        """Evaluate a step closure at the current parameters; its gradients land on ``.grad``."""
        loss, grads = self._backend.run_closure(closure, self.params)
        if grads is not None:
            self._receive_gradients(grads)
        return loss

    def _check_step(self, stepping: list[tuple[dict[str, Any], list]]) -> None:
        """Raise, before anything changes, the errors torch.optim raises during its step.

        ``stepping`` holds ``(group, params with a gradient)``.  torch.optim checks these
        parameter by parameter while it updates, so a failure there leaves earlier
        parameters stepped; here nothing has moved yet.
        """
        backend = self._backend
        for group, params in stepping:
            fused = bool(group.get("fused"))
            if fused or self.complex_parameters_error:
                values = list(map(backend.value, params))
                unsupported = fused and [v for v in values if backend.floating_bits(v) is None or not _fused_device(v)]
                if unsupported:
                    value = unsupported[0]
                    raise RuntimeError(
                        "`fused=True` requires all the params to be floating point Tensors of supported "
                        f"devices: {_FUSED_DEVICES} but {value.dtype} and {_device_type(value)}"
                    )
                if self.complex_parameters_error and any(map(backend.is_complex, values)):
                    raise RuntimeError(self.complex_parameters_error)
            if self.sparse_gradients_error or self.dense_gradients_error:
                sparse = [backend.is_sparse(param.grad) for param in params]
                if self.sparse_gradients_error and any(sparse):
                    raise RuntimeError(self.sparse_gradients_error)
                if self.dense_gradients_error and not all(sparse):
                    raise RuntimeError(self.dense_gradients_error)

    @property
    def _rule(self) -> backends.Rule:
        return backends.Rule(
            self.switches, self.coefficients, self.schedule, self.initial_state, self.update,
            tuple(self.counters), tuple(self.counters.values()), self.complex_as_real, self.state_dtype,
        )

    def _host_scalars(self, group: dict[str, Any], foreach: bool = False) -> backends.Scalars:
        """A group's switches and coefficients, computed on the host as torch.optim computes them.

        ``switches`` sees ``group["foreach"]`` as the backend resolved it for this step (True
        when the step runs as multi-tensor operations), so an algorithm whose torch.optim
        multi-tensor path uses another formula can follow it.
        """
        switches = self.switches({**group, "foreach": foreach})
        coefficients = self.coefficients(backends.HostMath, backends.numbers(group, scalar, switches))
        return backends.Scalars({**switches, **coefficients})

    def _initial_state(self, param: Any, h: Any) -> dict[str, Any]:
        """A parameter's state before its first step: counters, then the algorithm's arrays."""
        value = self._backend.value(param)
        return backends.initial_state(self._backend, self._rule, value, h, _counter_dtype())

    def _initialize_all_state(self) -> None:
        """Create every parameter's state now rather than at its first step (torch's Adagrad does)."""
        for group in self.param_groups:
            h = self._host_scalars(group)
            for param in group["params"]:
                self.state[param] = self._initial_state(param, h)

    def _receive_gradients(self, grads: Any) -> None:
        """Validate gradients for every group, then hold them on the parameters (all or nothing)."""
        trees = [grads] if self._single_tree else grads
        if not self._single_tree and (not isinstance(trees, (list, tuple)) or len(trees) != len(self.param_groups)):
            raise ValueError(
                f"expected a list of {len(self.param_groups)} gradient trees, one per param group, "
                f"but got {type(grads).__name__}"
            )
        matched = [
            self._backend.match_gradients(tree, structure, group["params"])
            for tree, structure, group in zip(trees, self._structures, self.param_groups)
        ]
        for group, group_grads in zip(self.param_groups, matched):
            for param, grad in zip(group["params"], group_grads):
                param.grad = grad

    @torch._disable_dynamo
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters (to None, or to zeros with ``set_to_none=False``)."""
        for group in self.param_groups:
            for param in group["params"]:
                self._backend.zero_grad(param, set_to_none)

    # -- checkpoints ------------------------------------------------------------------

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in torch.optim's format.

        ``{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}``,
        parameters numbered in group order.  State values are this backend's arrays;
        :meth:`load_state_dict` of either backend accepts either kind.
        """
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        index: dict[int, int] = {}
        for param in chain.from_iterable(g["params"] for g in self.param_groups):
            index.setdefault(id(param), len(index))
        packed_groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
            for g in self.param_groups
        ]
        packed_state = {index.get(id(param), param): value for param, value in self.state.items()}
        state_dict = {"state": packed_state, "param_groups": packed_groups}
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict written by :meth:`state_dict` of either backend, or by torch.optim.

        Parameters are matched by order.  State arrays are converted to this
        backend and cast like torch.optim casts them (floating state to the
        parameter's dtype), except counters, which keep their dtype as ``step``
        does (torch.optim casts NAdam's float32 ``mu_product`` to a float64
        parameter's dtype, so its resumed run drifts from an uninterrupted one).  Flags missing from a state dict
        written before they existed take this class's defaults.  Nothing changes
        unless the whole state dict loads.
        """
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"a state dict must be a dict, but got {type(state_dict).__name__}")
        state_dict = dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._check_loadable(state_dict)
        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        saved_ids = list(chain.from_iterable(s["params"] for s in saved_groups))
        params = list(chain.from_iterable(g["params"] for g in groups))
        param_of = dict(zip(saved_ids, params))

        def convert(value: Any, param: Any, key: Any = None) -> Any:
            if key in self.counters:  # stored by __setstate__, in their own dtype
                return value
            if hasattr(value, "__dlpack__"):  # an array of any framework
                dtype = backends.compute_dtype(self._backend, self._rule, self._backend.value(param))
                return self._backend.load_state_value(value, param, dtype)
            if isinstance(value, dict):
                return {k: convert(v, param, k) for k, v in value.items()}
            if isinstance(value, Iterable) and not isinstance(value, str):
                return type(value)(convert(v, param) for v in value)
            return value

        state: defaultdict = defaultdict(dict)
        for saved_id, value in state_dict["state"].items():
            if saved_id in param_of:
                state[param_of[saved_id]] = convert(value, param_of[saved_id])
            else:  # state not tied to a parameter is kept as it is, as torch.optim does
                state[saved_id] = value
        for group, saved in zip(groups, saved_groups):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
        self.__setstate__({"state": state, "param_groups": saved_groups})
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        """Raise ValueError naming the first way ``state_dict`` does not fit this optimizer.

        torch.optim checks the group and parameter counts; a state entry of another
        shape or type loads there and fails at a later step, half-applied.  Here
        every entry is checked against the state this optimizer would create for its
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
        if len(self.param_groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for index, saved in enumerate(saved_groups):
            if not isinstance(saved.get("params"), (list, tuple)):
                raise ValueError(f"loaded state dict's param group {index} has no list of 'params'")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(self.param_groups, saved_groups)):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
            )
        for index, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            _check_loaded_hyperparameters(index, group, saved)
            # A rule-driven step's first state depends on the hyperparameters (Adam's amsgrad).
            loaded = {**group, **{k: saved[k] for k in group if k in saved and k != "params"}}
            h = self._host_scalars(loaded) if self.coefficients else None
            for saved_id, param in zip(saved["params"], group["params"]):
                if saved_id in saved_state:
                    self._check_loaded_state(saved_id, saved_state[saved_id], param, h)

    def _check_loaded_state(self, saved_id: Any, entry: Any, param: Any, h: Any) -> None:
        """Check one parameter's saved state against what its first step would create."""
        value = self._backend.value(param)
        where = f"loaded state for parameter {saved_id} (shape {tuple(value.shape)})"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be a dict of state entries, but got {type(entry).__name__}")
        expected = self._initial_state(param, h)
        for key in expected:
            if key not in entry:
                raise ValueError(f"{where} has no {key!r} entry")
        for key, saved in entry.items():
            if key in self.counters:
                if not _is_number(saved):
                    raise ValueError(f"{where} has {key!r} = {saved!r}, which is not a number")
                continue
            shape = tuple(expected[key].shape) if key in expected else self._lazy_state_shape(key, value)
            if shape is None:
                continue
            if not hasattr(saved, "__dlpack__") or not hasattr(saved, "shape"):
                raise ValueError(f"{where} has {key!r} of type {type(saved).__name__}, not an array")
            if tuple(saved.shape) != shape:
                raise ValueError(f"{where} has {key!r} of shape {tuple(saved.shape)}, expected {shape}")
            if not _is_numeric_array(saved):
                raise ValueError(f"{where} has {key!r} of dtype {saved.dtype}, which is not numeric")

    def _lazy_state_shape(self, key: str, value: Any) -> tuple | None:
        """The shape of a state entry a rule creates during a step (SGD's momentum buffer)."""
        return tuple(value.shape)

    def __getstate__(self) -> dict[str, Any]:
        return {
            **super().__getstate__(),
            "_backend": self._backend,
            "_structures": self._structures,
            "_grouped": self._grouped,
            "skip_nonfinite": self.skip_nonfinite,
            "skipped_steps": self.skipped_steps,
            "state_dtype": self.state_dtype,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__({"skip_nonfinite": False, "skipped_steps": 0, "state_dtype": None, **state})
        self._backend_memory = {}  # it held the replaced state
        # A flag missing from an older checkpoint means the behaviour from before the
        # flag existed: the class's default for it.
        signature = inspect.signature(type(self).__init__).parameters
        for group in self.param_groups:
            for key in self.defaults:
                if key not in group and key in signature and signature[key].default is not inspect.Parameter.empty:
                    group[key] = signature[key].default
        # Counters come back as Python numbers (old torch checkpoints), as another
        # framework's arrays: store each as this backend stores counters.
        for held in self.state.values():
            for key, initial in self.counters.items():
                if key in held:
                    array = backends.counter_array(initial, held[key], _counter_dtype())
                    held[key] = self._backend.store_counter(array)


def _check_loaded_hyperparameters(index: int, group: dict[str, Any], saved: Mapping[str, Any]) -> None:
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
    if isinstance(value.dtype, torch.dtype):
        return value.dtype is not torch.bool
    return np.dtype(value.dtype).kind not in "bOSU"  # bfloat16 and float8 are kind "V"


def _state_dtype_name(dtype: Any) -> str | None:
    """A ``state_dtype`` of any framework (torch.float32, jnp.float32, "float32") by its name."""
    if dtype is None:
        return None
    try:
        name = str(dtype).removeprefix("torch.") if isinstance(dtype, (str, torch.dtype)) else np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in ("float32", "float64"):
        raise TypeError(f"state_dtype must be float32, float64 or None (the parameter's dtype), but got {dtype!r}")
    return name


# torch.optim's list in its fused device/dtype error.
_FUSED_DEVICES = ["mps", "cuda", "xpu", "hpu", "cpu", "mtia", "privateuseone"]


def _fused_device(array: Any) -> bool:
    """Whether torch.optim's fused kernels run on a tensor's device (the meta device: no)."""
    return not isinstance(array, torch.Tensor) or array.device.type in _FUSED_DEVICES


def _device_type(array: Any) -> str:
    """The device kind of a tensor ("cpu", "cuda") or of a JAX array ("cpu", "gpu")."""
    return array.device.type if isinstance(array, torch.Tensor) else next(iter(array.devices())).platform


def _counter_dtype() -> type:
    """torch.optim's dtype for a new step count: float32, or float64 under a float64 default dtype."""
    return np.float64 if torch.get_default_dtype() == torch.float64 else np.float32


def scalar(value: Any) -> float | torch.Tensor:
    """A hyperparameter as host-side :meth:`Optimizer.coefficients` should see it.

    A number becomes a Python float (float64 arithmetic).  A one-element array
    (a tensor lr, on either backend) becomes a 0-d CPU tensor of its dtype: what
    is derived from it -- ``lr / bias_correction``, ``1 - lr * weight_decay`` --
    then rounds exactly as torch.optim's arithmetic on that tensor rounds
    (float32 operations, ``x / tensor`` as ``reciprocal(tensor) * x``).
    """
    if not hasattr(value, "shape"):
        return float(value)
    tensor = value if isinstance(value, torch.Tensor) else torch.from_dlpack(value)
    return tensor.detach().reshape(()).cpu()


# -- hyperparameter checks with torch.optim's messages, called in each class's torch order ----

# What JAX and NumPy say when a check compares a multi-element array, and what torch says.
_ARRAY_TRUTH_ERRORS = ("The truth value of an array with more than one element is ambiguous",)
_TORCH_TRUTH_ERROR = "Boolean value of Tensor with more than one value is ambiguous"


def _with_torch_truth_error(init: Callable) -> Callable:
    """``init`` raising torch's error where a check compares a multi-element array of another framework.

    The checks compare hyperparameters in torch.optim's order (``0.0 <= eps``); a JAX
    array of two elements fails there with JAX's ValueError, a tensor with torch's
    RuntimeError.  Translating at the one place keeps the order and the message.
    """
    @functools.wraps(init)
    def checked_init(self, *args: Any, **kwargs: Any) -> None:
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
    for index in (0, 1):
        if not 0.0 <= betas[index] < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: {betas[index]}")


def check_fused(fused: Any, foreach: Any, differentiable: bool) -> None:
    if fused and differentiable:
        raise RuntimeError("`fused` does not support `differentiable`")
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
