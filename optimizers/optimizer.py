"""The one Optimizer class: torch.optim's bookkeeping, with the array work handed to a backend."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks, required

import backends

from .checkpoint import check_loadable, loaded
from .validation import state_dtype_name, with_torch_truth_error

__all__ = ["Optimizer", "required", "signature_arguments"]


class _ClassOrInstanceMethod:
    """A method that receives the class when called on it and the object when called on one."""

    def __init__(self, function: Callable) -> None:
        self.function = function
        self.__doc__ = function.__doc__

    def __get__(self, instance: Any, owner: type) -> Callable:
        return functools.partial(self.function, owner if instance is None else instance)


class Optimizer(torch.optim.Optimizer):
    """Base class of every optimizer, on either backend.

    It is a :class:`torch.optim.Optimizer`, so schedulers, ``GradScaler`` and
    other torch code accept it, and it keeps torch.optim's public contract:
    ``param_groups``, ``state`` (keyed by parameter), ``state_dict`` /
    ``load_state_dict`` in torch.optim's format, step and state-dict hooks,
    ``zero_grad`` and ``add_param_group``.

    An algorithm is a subclass that validates its hyperparameters and defines
    its rule once, for both backends (or, as torch.optim subclasses do, overrides
    :meth:`step` with an algorithm of its own, as :class:`LBFGS` does):

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

    ``bucket_view=True`` (torch, with ``fused=True``) moves each fused group's contiguous
    parameters, their gradients and their state into one flat buffer per dtype, each
    tensor a view at its offset (as ``ZeroRedundancyOptimizer``'s ``parameters_as_bucket_view``
    and DDP's ``gradient_as_bucket_view`` do), so that one compiled loop steps them all and
    nothing is gathered or scattered.  Tensors keep their identity; ``backward()`` accumulates
    into a gradient that is a view (``zero_grad(set_to_none=False)`` keeps them so), and a new
    gradient tensor (after ``zero_grad()``) is copied into its place once per step.  A parameter
    moved elsewhere (``p.data = ...``, ``model.to()``) is taken into a new buffer at the next
    step.  Parameters then share a storage: ``torch.save``, safetensors' ``save_file`` and
    Transformers' ``save_pretrained`` store them as before; safetensors' ``save_model`` refuses
    them with its error on shared tensors, and ``torch.save`` of one parameter alone writes the
    whole buffer.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = with_torch_truth_error(cls.__init__)  # type: ignore[method-assign]

    def __init__(
        self,
        params: Any,
        defaults: dict[str, Any] | None = None,
        *,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
        bucket_view: bool = False,
        **hyperparameters: Any,
    ) -> None:
        """``defaults`` as torch.optim takes them, or the hyperparameters as keywords.

        A constructor passes its own arguments on with :func:`signature_arguments`::

            super().__init__(**signature_arguments(Adam.__init__, locals()))
        """
        defaults = {**(defaults or {}), **hyperparameters, **self.group_counters}
        for flag, value in (("skip_nonfinite", skip_nonfinite), ("bucket_view", bucket_view)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be a bool, but got {type(value).__name__}")
        self.state_dtype = state_dtype_name(state_dtype)
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
        if bucket_view and not (self._backend.name == "torch" and any(g.get("fused") for g in self.param_groups)):
            raise ValueError(
                f"bucket_view=True is an option of fused=True on torch tensors, but this optimizer has "
                f"{'no fused param group' if self._backend.name == 'torch' else self._backend.name + ' arrays'}"
            )
        self.bucket_view = bucket_view

    @staticmethod
    def profile_hook_step(func: Callable) -> Callable:
        """torch.optim's wrapper of ``step`` (torch's ``__setstate__`` wraps each class's once):
        the global and the optimizer's step pre-hooks, which may replace the arguments, then the
        step, then the post-hooks, all inside the range ``Optimizer.step#<class>.step`` -- here in
        the profiler of the optimizer's backend (torch's ``record_function`` would cost a JAX step
        about 10 µs of host time for a range no JAX profiler shows).
        """

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self = args[0]
            with self._backend.profiled(f"Optimizer.step#{type(self).__name__}.step"):
                for pre_hook in chain(_global_optimizer_pre_hooks.values(), self._optimizer_step_pre_hooks.values()):
                    result = pre_hook(self, args, kwargs)
                    if result is not None:
                        if not (isinstance(result, tuple) and len(result) == 2):
                            raise RuntimeError(
                                f"{func} must return None or a tuple of (new_args, new_kwargs), but got {result}."
                            )
                        args, kwargs = result
                out = func(*args, **kwargs)
                self._optimizer_step_code()
                for post_hook in chain(self._optimizer_step_post_hooks.values(), _global_optimizer_post_hooks.values()):
                    post_hook(self, args, kwargs)
                return out

        return wrapper

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
    def coefficients(math: Any, numbers: dict[str, Any]) -> dict[str, Any]:
        """The scalars the rule reads, computed from the group's numeric hyperparameters."""
        return {}

    @staticmethod
    def schedule(math: Any, h: Any, counters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Per parameter: ``(extra scalars for the rule, advanced counters)``.

        Counters keep their stored dtype, so their arithmetic rounds as torch.optim's
        0-d tensors do (``step += 1`` in float32); ``math.float(step)`` gives the
        float64 number torch.optim derives bias corrections from.
        """
        return {}, counters

    #: Hyperparameters the reference keeps on the optimizer rather than in its param groups
    #: (lion-pytorch's ``decoupled_weight_decay``): its checkpoints lack them, and a group loaded
    #: from one keeps this optimizer's value.
    options_outside_groups: tuple[str, ...] = ()

    #: State entries the reference writes as None where the rule does not use them (AdEMAMix's
    #: ``exp_avg_fast`` with beta1 = 0): ``state_dict()`` writes them so, for the reference to
    #: load, and ``load_state_dict()`` reads None as absent.
    unused_state_as_none: tuple[str, ...] = ()

    #: ``options_in_state(group) -> dict``, or None: group options the reference also keeps in each
    #: parameter's state (SOAP's ``precondition_frequency``): ``state_dict()`` writes them there,
    #: for the reference to load, and ``load_state_dict()`` leaves them out (the groups hold them).
    options_in_state: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    #: State entries a reference may save as a 0-d array that the rule broadcasts (Prodigy's
    #: ``p0`` of an all-zero parameter): loaded as they are.
    scalar_state_entries: tuple[str, ...] = ()

    #: Scalars kept in each param group, as some references keep them there (Schedule-Free's
    #: ``k``, Prodigy's ``d``), with their initial values: they join ``defaults`` and so
    #: ``state_dict()["param_groups"]``.  :meth:`advance_group` advances them once per step, for
    #: every group, after :attr:`step_scalars` and before the coefficients (which read them
    #: among the numbers).
    group_counters: dict[str, Any] = {}

    @staticmethod
    def advance_group(math: Any, numbers: dict[str, Any]) -> dict[str, Any]:
        """A group's counters after this step, from its numbers (hyperparameters, counters and
        the step's :attr:`step_scalars`)."""
        return {}

    #: ``step_scalars(ops, math, groups) -> dict`` or None: numbers that depend on the whole
    #: step -- every group's parameters, gradients and state (:class:`backends.GroupStep`, one per
    #: param group, with the group's ``h`` before :meth:`advance_group`) -- such as a global
    #: gradient-norm clip (Adan, Lamb) or Prodigy's estimate of the distance to the solution.
    #: Run once per step after the state is created and before any parameter moves (on JAX's
    #: functional form, traced); :meth:`advance_group` and ``coefficients`` then find them among
    #: the numbers of every group.
    step_scalars: Callable | None = None

    @staticmethod
    def initial_state(ops: Any, param: Any, h: Any) -> dict[str, Any]:
        """The arrays of a parameter's state before its first step (torch.optim's lazy init)."""
        return {}

    @staticmethod
    def update(ops: Any, param: Any, grad: Any, state: dict[str, Any], h: Any) -> tuple[Any, dict[str, Any]]:
        """The update rule for one parameter: ``(new_param, new_state)`` (state without counters)."""
        raise NotImplementedError("an Optimizer subclass defines update() (its rule) or overrides step()")

    @_ClassOrInstanceMethod
    def functional(where: Any, group: int = 0, /, *, flat: bool = False, **hyperparameters: Any) -> Any:
        """The optimizer as pure JAX functions: ``init(params)`` and ``update(grads, state, params, hyperparams)``.

        From the class, as optax users write ``optax.adamw(1e-3)``::

            init, update, defaults = optimizers.AdamW.functional(lr=1e-3, weight_decay=0.05)

        with the constructor's hyperparameters (validated as the constructor validates
        them); from an optimizer, ``opt.functional(group=0)`` takes param group
        ``group``'s.  For a training step the user compiles with ``jax.jit`` (donating
        parameters and state if they like).  The switches (``nesterov``, ``amsgrad``,
        whether there is weight decay) are fixed; ``update`` takes numeric
        hyperparameters as data.  It runs the same traced step as :meth:`step` on the
        JAX backend.  See :class:`backends.jax_functional.Functional`.

        ``flat=True`` gives the form over flat parameters (one vector per dtype, made by its
        ``ravel``), for elementwise rules: see :class:`backends.jax_functional.FlatFunctional`.
        """
        if isinstance(where, type):
            # The constructor validates and fills in the defaults; one placeholder parameter (a
            # matrix, which every rule takes) stands for the pytree ``init`` will be given.
            where = where([np.zeros((1, 1), np.float32)], backend="jax", **hyperparameters)
        elif hyperparameters:
            raise TypeError(
                "opt.functional() takes the hyperparameters of the optimizer's param group; "
                f"pass {', '.join(sorted(hyperparameters))} to update() or build from the class"
            )
        if type(where).update is Optimizer.update:
            raise TypeError(f"{type(where).__name__} has no per-parameter rule, so no functional form")
        chosen = where.param_groups[group]
        return backends.functional(
            where._rule, chosen, where._host_scalars(chosen, backend=backends.get("jax")), flat=flat
        )

    # -- parameters and state ---------------------------------------------------------

    @property
    def state(self) -> defaultdict:
        """Each parameter's state, as torch.optim's ``state``: ``{param: {"step": ..., "exp_avg": ...}}``.

        On JAX the state of small parameters lives in flat buckets between steps (see
        :mod:`backends.jax_buckets`); reading this writes it into these dicts first, and what is
        written into them is what the next step takes.
        """
        held = self.__dict__["state"]
        memory = self.__dict__.get("_backend_memory")
        if memory:
            self._backend.settle(memory)
        return held

    @state.setter
    def state(self, value: defaultdict) -> None:
        self.__dict__["state"] = value
        self._backend_memory = {}  # it held the replaced state

    @property
    def _held_state(self) -> defaultdict:
        """The state as the step keeps it, without settling the backend's buckets (the step's own reads)."""
        return self.__dict__["state"]

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
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            param_group.setdefault(name, default)
        # torch.optim takes a bool for a number (True as 1); the rule would take it for a switch.
        for name, parameter in inspect.signature(type(self).__init__).parameters.items():
            numeric_default = isinstance(parameter.default, (int, float)) and not isinstance(parameter.default, bool)
            if numeric_default and isinstance(param_group.get(name), bool):
                param_group[name] = float(param_group[name])
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
        if self._step_supports_amp_scaling:
            # GradScaler's: an inf changes nothing; otherwise the gradients are unscaled in
            # place, as torch.optim's fused kernels leave them.
            found_inf, grad_scale = getattr(self, "found_inf", None), getattr(self, "grad_scale", None)
            if found_inf is not None and bool(found_inf):
                return loss
            if grad_scale is not None:
                torch._foreach_div_([p.grad for _, params in stepping for p in params], grad_scale)
        if self.skip_nonfinite and not self._backend.all_finite([p.grad for _, params in stepping for p in params]):
            self.skipped_steps += 1
            return loss
        if self._has_initial_state:
            for group in self.param_groups:
                self._init_group(group)
        found = {}
        if self.step_scalars is not None:
            groups = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
            found = self._backend.step_scalars(self._rule, groups, self._held_state, self._host_scalars)
        if self.group_counters:
            for group in self.param_groups:
                numbers = backends.numbers(group, self._backend.host_number, self.switches(group))
                counters = {key: group[key] for key in self.group_counters}  # as stored: k stays an int
                group.update(self.advance_group(backends.HostMath, {**numbers, **counters, **found}))
        if stepping:
            work = [({**group, **found}, params) for group, params in stepping]
            self._backend.apply(self._rule, work, self._held_state, self._backend_memory, self._host_scalars)
        return loss

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """torch.optim's mark of a fused optimizer: ``GradScaler.step`` then neither unscales
        nor skips, but sets ``grad_scale`` and ``found_inf`` on the optimizer for its step."""
        return any(group.get("fused") for group in self.param_groups)

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
            if param.grad is not None and not self._held_state.get(param):
                if h is None:
                    h = self._host_scalars(group)
                initial = self._initial_state(param, h)
                if initial:
                    self._held_state[param] = initial

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
        checked = self.__dict__.setdefault("_fused_checked", set())
        for group, params in stepping:
            if group.get("fused") and not checked.issuperset(map(id, params)):
                # Once per parameter, at its first step, as torch.optim checks (not every step).
                first = [backend.value(p) for p in params if id(p) not in checked]
                unsupported = [
                    value
                    for value in first
                    if backend.floating_bits(value) is None or backend.device_type(value) not in backend.fused_devices
                ]
                if unsupported:
                    value = unsupported[0]
                    raise RuntimeError(
                        "`fused=True` requires all the params to be floating point Tensors of supported "
                        f"devices: {list(backend.fused_devices)} but {value.dtype} and {backend.device_type(value)}"
                    )
                checked.update(id(p) for p in params)
            if self.complex_parameters_error and any(backend.is_complex(backend.value(p)) for p in params):
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
            self.switches,
            self.coefficients,
            self.schedule,
            self.initial_state,
            self.update,
            tuple(self.counters),
            tuple(self.counters.values()),
            self.complex_as_real,
            self.state_dtype,
            self.bucket_view,
            self.step_scalars,
            tuple(self.group_counters),
            self.advance_group,
        )

    def _host_scalars(
        self, group: dict[str, Any], foreach: bool = False, backend: backends.Backend | None = None
    ) -> backends.Scalars:
        """A group's switches and coefficients, computed on the host as torch.optim computes them.

        ``switches`` sees ``group["foreach"]`` as the backend resolved it for this step (True
        when the step runs as multi-tensor operations), so an algorithm whose torch.optim
        multi-tensor path uses another formula can follow it.  ``backend`` (default: this
        optimizer's) converts the numbers.
        """
        backend = self._backend if backend is None else backend
        switches = self.switches({**group, "foreach": foreach})
        coefficients = self.coefficients(backends.HostMath, backends.numbers(group, backend.host_number, switches))
        return backends.Scalars({**switches, **coefficients})

    def _initial_state(self, param: Any, h: Any) -> dict[str, Any]:
        """A parameter's state before its first step: counters, then the algorithm's arrays."""
        value = self._backend.value_for_state(param, differentiable=bool(self.defaults.get("differentiable")))
        return backends.initial_state(self._backend, self._rule, value, h, self._backend.counter_dtype())

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
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        index: dict[int, int] = {}
        for param in chain.from_iterable(g["params"] for g in self.param_groups):
            index.setdefault(id(param), len(index))
        packed_groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
            for g in self.param_groups
        ]
        unused = dict.fromkeys(self.unused_state_as_none)
        copied = {}
        if self.options_in_state is not None:
            for group in self.param_groups:
                options = self.options_in_state(group)
                copied.update(dict.fromkeys(map(id, group["params"]), options))
        packed_state = {
            index.get(id(param), param): {**unused, **value, **copied.get(id(param), {})}
            if value and (unused or copied)
            else value
            for param, value in self.state.items()
        }
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
        parameter's dtype, so its resumed run drifts from an uninterrupted one).
        Flags missing from a state dict written before they existed take this
        class's defaults.  Nothing changes unless the whole state dict loads.
        """
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"a state dict must be a dict, but got {type(state_dict).__name__}")
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved_state = state_dict.get("state")
        if (self.unused_state_as_none or self.options_in_state) and isinstance(saved_state, Mapping):
            state_dict["state"] = {
                index: {k: v for k, v in entry.items() if not self._kept_outside_state(k, v)}
                if isinstance(entry, Mapping)
                else entry
                for index, entry in saved_state.items()
            }
        check_loadable(self, state_dict)
        state, saved_groups = loaded(self, state_dict)
        self.__setstate__({"state": state, "param_groups": saved_groups})
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _kept_outside_state(self, key: str, value: Any) -> bool:
        """Whether a saved state entry is one the reference writes and this optimizer keeps elsewhere."""
        if value is None and key in self.unused_state_as_none:
            return True
        return self.options_in_state is not None and key in self.options_in_state(self.defaults)

    def _lazy_state_shape(self, key: str, value: Any, h: Any) -> tuple | list | None:
        """The shape of a state entry a rule creates during a step (SGD's momentum buffer), for the
        parameter ``value`` in a group whose scalars are ``h``; a list of shapes (None for an empty
        list) for an entry that is a list of arrays; None if it has no fixed shape."""
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
            "bucket_view": self.bucket_view,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch's __setstate__ adds a "differentiable" default, which not every class has.
        had_differentiable = "differentiable" in state.get("defaults", getattr(self, "defaults", {}))
        super().__setstate__(
            {"skip_nonfinite": False, "skipped_steps": 0, "state_dtype": None, "bucket_view": False, **state}
        )
        if not had_differentiable:
            self.defaults.pop("differentiable", None)
        self._backend_memory = {}  # it held the replaced state
        # A flag missing from an older checkpoint means the behaviour from before the
        # flag existed: the class's default for it.  A key the constructor derives (Lion's
        # lr for a decoupled decay), or one the reference keeps outside its param groups,
        # missing from a reference's checkpoint, takes this optimizer's value.
        signature = inspect.signature(type(self).__init__).parameters
        for group in self.param_groups:
            for key in self.defaults:
                if key in group:
                    continue
                if key in self.options_outside_groups:
                    group[key] = self.defaults[key]
                elif key in signature and signature[key].default is not inspect.Parameter.empty:
                    group[key] = signature[key].default
                elif key not in signature:
                    group[key] = self.defaults[key]
        # Counters come back as Python numbers (old torch checkpoints), as another
        # framework's arrays: store each as this backend stores counters.
        for held in self.state.values():
            for key, initial in self.counters.items():
                if key in held:
                    array = backends.counter_array(initial, held[key], self._backend.counter_dtype())
                    held[key] = self._backend.store_counter(array)


def signature_arguments(function: Callable, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of ``function`` (a constructor) by name, read from its ``locals()``.

    Constructors keep torch.optim's exact signatures and pass them on to the base class
    in one line; the parameters' names make the ``defaults`` dict (a value the
    constructor changed, such as ``betas`` made a tuple, goes in as changed).
    """
    names = [name for name in inspect.signature(function).parameters if name != "self"]
    return {name: arguments[name] for name in names}
