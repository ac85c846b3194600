"""``fused=True`` on the torch backend: a rule compiled into one pass over memory.

torch.optim's fused kernels are written by hand, one per algorithm.  Here the rule the eager
path runs is compiled by ``torch.compile`` (Inductor): one vectorized, multithreaded loop
reads the parameter, its gradient and its state once, and writes the parameter and state in
place.  The compiled step takes flat (1-d) arrays and is compiled for any length, so one
compilation per rule, branch setting and dtype serves every parameter.

How parameters reach it (see :class:`Piece`): a large parameter is stepped in place through
flat views of itself, its gradient and its state; smaller ones are stepped together as one
flat bucket, one compiled call and a few multi-tensor copies for all of them instead of a
call each.  With ``bucket_view`` the bucket holds every contiguous parameter and gradient
itself, as views, so its step is one call and no copy.  A rule that is not elementwise (a
per-tensor norm: Lamb's and Lars's trust ratios) steps each parameter in place in its own shape.

Results agree with the eager path to rounding, not bit for bit, as torch.optim's fused
kernels agree with its for-loop: Inductor's ``sqrt`` is correctly rounded where torch's CPU
``sqrt`` is not, and ATen's ``add(alpha=)``/``addcmul``/``lerp`` multiply-add in one fused
operation where the compiled loop rounds the product first.
"""

from __future__ import annotations

import itertools
import operator
import types
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from backends import Rule, Scalars, compute_dtype
from backends.torch_ops import KernelOps
from backends.torch_plan import advance, by_counters, host_values, is_elementwise, is_number, is_plain, state_keys

# Elements from which a parameter is stepped through its own call rather than gathered into a
# bucket: there a call's fixed cost (about 40 us) is below what gathering and scattering it costs.
LARGE = 1 << 18

_kernels: dict[tuple, Callable] = {}
_kernel_numbers = itertools.count()
_compiled: set = set()  # kernels that ran: their failures are errors, not a missing compiler
_failed: set = set()  # kernels this machine could not compile: their parameters step eagerly


def _kernel(rule: Rule, switches: tuple, names: tuple, layout: tuple) -> Callable:
    """The compiled step for one rule, branch setting, scalar names and :attr:`Piece.layout`.

    It takes a flat parameter, its gradient, its state arrays (in ``keys`` order) and the
    numeric scalars (a float64 vector, in ``names`` order); it writes the parameter and state in place and returns
    the state entries the rule created (SGD's first momentum buffer).
    """
    cache_key = (rule.update, switches, names, layout)
    if cache_key not in _kernels:
        keys, _, _, compute, _ = layout

        def step(param, grad, states, numbers):
            # switches as constants, numbers as 0-d tensors
            h = Scalars(dict(switches + tuple((name, numbers[i]) for i, name in enumerate(names))))
            value = param if compute is None else param.to(compute)
            grad = grad if compute is None else grad.to(compute)
            new_value, new_state = rule.update(KernelOps, value, grad, dict(zip(keys, states)), h)
            param.copy_(new_value)
            for key, array in zip(keys, states):
                array.copy_(new_state[key])
            return {key: array for key, array in new_state.items() if key not in keys}

        # Dynamo keeps a few compiled variants per code object and then fails (fullgraph): each
        # kernel gets a code object of its own, so any number of rules and settings coexist.
        name = f"fused_step_{next(_kernel_numbers)}"
        own = types.FunctionType(step.__code__.replace(co_name=name), step.__globals__, name, None, step.__closure__)
        # dynamic_threads: the loop is parallel for any length; Inductor would otherwise decide
        # from the first call's length, and a small first bucket would make it serial for all.
        options: dict[str, Any] = {"cpp.dynamic_threads": True}
        _kernels[cache_key] = torch.compile(own, fullgraph=True, dynamic=True, options=options)
    return _kernels[cache_key]


_DTYPE, _GRAD_DTYPE = operator.attrgetter("dtype"), operator.attrgetter("grad.dtype")
_DATA_PTR, _GRAD = torch.Tensor.data_ptr, operator.attrgetter("grad")


class Piece:
    """Parameters of one group that one kernel call steps: a large one in place, or a bucket.

    A large parameter (``LARGE`` elements or more, contiguous, with contiguous state) is stepped
    through flat views of itself, its gradient and its state: nothing is copied; for a rule
    that is not elementwise, every parameter is stepped in place as it is shaped.  A bucket of smaller
    ones keeps their state in flat buffers (the tensors in ``optimizer.state`` are re-pointed
    into them with ``set_`` and keep their identity); each step it gathers gradients and values
    into flat buffers it keeps, so a step allocates nothing, and copies the new values back.
    A ``viewed`` bucket re-points the parameters, gradients and step counters into its buffers
    as well: its step copies only a gradient that is not in its place (a new tensor after
    ``zero_grad()``), and reads and advances the counters as one array each.
    """

    def __init__(
        self,
        params: list,
        state: dict,
        keys: tuple,
        compute: torch.dtype | None,
        in_place: bool,
        shaped: bool,
        viewed: bool,
        counters: tuple,
    ) -> None:
        self.params, self.keys, self.in_place, self.shaped, self.viewed = params, keys, in_place, shaped, viewed
        self.helds: list[Any] = [state.get(p) for p in params]
        first = params[0]
        # What a kernel is compiled for: the state entries, the dtypes it reads and computes in, and
        # the rank of a shaped parameter (a compiled variant each).
        self.layout = (keys, first.dtype, first.grad.dtype, compute, first.dim() if shaped else None)
        if in_place:
            self.value = first.detach() if shaped else first.detach().view(-1)
            self.states = tuple(self.helds[0][key] if shaped else self.helds[0][key].view(-1) for key in keys)
        else:
            size = sum(p.numel() for p in params)
            self.value = _flatten(params) if viewed else torch.empty(size, dtype=first.dtype, device=first.device)
            self.grad = torch.empty(size, dtype=first.grad.dtype, device=first.device)
            self.values, self.grads = _shaped(self.value, params), _shaped(self.grad, params)
            self.value_places, self.grad_places = list(map(_DATA_PTR, self.values)), list(map(_DATA_PTR, self.grads))
            self.states = tuple(_flatten([held[key] for held in self.helds]) for key in keys)
        # Tensor counters (Adam's step) of a viewed bucket: one buffer per key, with the tensors in it.
        self.counters: dict[str, tuple[list, torch.Tensor]] = {}
        for key in counters if viewed and None not in self.helds else ():
            tensors = [held[key] for held in self.helds]
            if all(map(torch.is_tensor, tensors)):
                self.counters[key] = (tensors, _flatten(tensors))
        self._entries = (*keys, *self.counters)
        self.arrays = self._arrays(self.helds)
        # A rule may add entries to an existing state dict (Adan's previous gradient).
        self.entry_counts = [len(held) if held else 0 for held in self.helds]

    def _arrays(self, helds: list) -> list:
        """The state tensors the plan holds, in order (read at C speed: a bucket checks a
        thousand parameters' every step)."""
        if not self._entries:
            return []
        entries = operator.itemgetter(*self._entries)
        if len(self._entries) == 1:
            return list(map(entries, helds))
        return list(itertools.chain.from_iterable(map(entries, helds)))

    def holds(self, state: dict) -> bool:
        """Whether the plan still stands: the same state tensors (``load_state_dict`` replaces
        them, a step may add some), the same dtypes and, in place, the parameter's memory
        (``module.to()`` replaces them)."""
        helds: list[Any] = list(map(state.get, self.params))
        return (
            # a viewed parameter given another dtype has new memory: the last check fails
            (self.viewed or set(map(_DTYPE, self.params)) == {self.layout[1]})
            and (self.viewed or set(map(_GRAD_DTYPE, self.params)) == {self.layout[2]})
            and all(map(operator.is_, helds, self.helds))
            and [len(held) if held else 0 for held in helds] == self.entry_counts
            and all(map(operator.is_, self._arrays(helds), self.arrays))
            and (not self.in_place or self.params[0].data_ptr() == self.value.data_ptr())
            and (not self.viewed or list(map(_DATA_PTR, self.params)) == self.value_places)
        )

    def step(self, kernel: Callable, numbers: torch.Tensor) -> dict | None:
        """One kernel call for all the piece's parameters; returns the state entries it created
        (flat), or None when the kernel cannot be compiled here and nothing was written."""
        if self.in_place:
            grad = self.params[0].grad
            return _run(kernel, self.value, grad if self.shaped else grad.reshape(-1), self.states, numbers)
        grads = list(map(_GRAD, self.params))
        if self.viewed:
            if list(map(_DATA_PTR, grads)) != self.grad_places:
                self._take_gradients(grads)
            return _run(kernel, self.value, self.grad, self.states, numbers)
        torch._foreach_copy_(self.grads, grads)
        torch._foreach_copy_(self.values, self.params)
        created = _run(kernel, self.value, self.grad, self.states, numbers)
        if created is not None:
            torch._foreach_copy_(self.params, self.values)
        return created

    def advance(self, stored: dict, state: dict) -> None:
        """Write the advanced counters (as the backend stores them) into the state."""
        for key, (_, buffer) in self.counters.items():
            buffer.copy_(stored[key])
        rest = {key: value for key, value in stored.items() if key not in self.counters}
        if rest:
            advance([state[p] for p in self.params if p in state], rest)

    def _take_gradients(self, grads: list) -> None:
        """Copy the gradients that are not views into the bucket there, and re-point them."""
        moved = [i for i, (grad, place) in enumerate(zip(grads, self.grad_places)) if grad.data_ptr() != place]
        torch._foreach_copy_([self.grads[i] for i in moved], [grads[i] for i in moved])
        for i in moved:
            grads[i].set_(self.grads[i])


def _is_large(param: Any, held: Any, keys: tuple) -> bool:
    arrays = [held[key] for key in keys]
    return param.numel() >= LARGE and all(a.is_contiguous() for a in [param, *arrays])


def _shaped(flat: torch.Tensor, params: list) -> list:
    """Views of consecutive slices of ``flat``, shaped as ``params``."""
    return [view.view(p.shape) for view, p in zip(flat.split([p.numel() for p in params]), params)]


def _flatten(tensors: list) -> torch.Tensor:
    """One buffer holding ``tensors``' values, each tensor re-pointed to its slice of it."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    offset = 0
    for tensor in tensors:
        tensor.set_(flat.untyped_storage(), offset, tensor.shape)
        offset += tensor.numel()
    return flat


def step_group(backend: Any, rule: Rule, params: list, h: Any, state: dict, memory: dict) -> list:
    """Step one group's ``params`` (each with a gradient) through compiled kernels.

    ``memory`` keeps the plan of each set of parameters (its pieces) between steps.  Returns
    the parameters left to the eager path: those with sparse gradients, and those whose kernel
    this machine cannot compile.
    """
    left = [p for p in params if p.grad.is_sparse]
    flat_counters = [piece.counters for plan in memory.values() for piece in plan if piece.counters]
    dense = [p for p in params if not p.grad.is_sparse] if left else params
    for members in by_counters(rule, dense, state, flat_counters):
        counters = {key: np.asarray(state[members[0]][key])[()] for key in rule.counters}
        values, advanced = host_values(rule, h, counters)
        names = tuple(k for k, v in values.items() if is_number(v))  # inputs; the rest is compiled in
        switches = tuple((k, v) for k, v in values.items() if k not in names)
        # A 0-d tensor lr enters as its value, as ATen reads a Scalar.
        numbers = torch.tensor([float(values[k]) for k in names], dtype=torch.float64)
        stored = {k: backend.store_counter(v) for k, v in advanced.items()}
        compute = compute_dtype(backend, rule, members[0])
        elementwise = is_elementwise(
            rule, members[0], state.get(members[0], {}), values, getattr(torch, compute) if compute else None
        )
        for piece in _plan(backend, rule, members, state, memory, elementwise):
            created = piece.step(_kernel(rule, switches, names, piece.layout), numbers)
            if created is None:
                left += piece.params
                continue
            for key, flat in created.items():  # a first momentum buffer may be the gradient itself: a copy
                for param, view in zip(piece.params, _shaped(flat.clone(), piece.params)):
                    state.setdefault(param, {})[key] = view
            piece.advance(stored, state)
    return left


def _plan(backend: Any, rule: Rule, members: list, state: dict, memory: dict, elementwise: bool) -> list[Piece]:
    """The pieces ``members`` step in: kept from the last step while they still hold."""
    ids = tuple(map(id, members))
    key = (ids, elementwise)
    plan = memory.get(key)
    if plan is not None and all(piece.holds(state) for piece in plan):
        return plan
    _check_state_dtypes(backend, rule, members, state)
    for other in [k for k in memory if not set(k[0]).isdisjoint(ids)]:
        del memory[other]  # their state is about to move into the new plan's buffers
    layouts: dict[tuple, list] = {}
    for param in members:
        held: Any = state.get(param)
        keys = state_keys(rule, held)
        # A tensor subclass (a DTensor) keeps its memory: re-pointing it would bypass the subclass.
        viewed = elementwise and rule.bucket_view and param.is_contiguous() and is_plain(param)
        if not elementwise or (not viewed and _is_large(param, held, keys)):
            layout: tuple = (True, False, keys, id(param))
        else:
            layout = (False, viewed, keys, param.dtype, param.grad.dtype, param.device, *(held[k].dtype for k in keys))
        layouts.setdefault(layout, []).append(param)
    plan = memory[key] = []
    for (in_place, viewed, keys, *_), params in layouts.items():
        compute = compute_dtype(backend, rule, params[0])
        compute_type = getattr(torch, compute) if compute else None
        plan.append(Piece(params, state, keys, compute_type, in_place, not elementwise, viewed, rule.counters))
    return plan


#: torch's names of the floating dtypes, as its fused kernels' errors write them.
_SCALAR_TYPES = {torch.float64: "Double", torch.float32: "Float", torch.bfloat16: "BFloat16", torch.float16: "Half"}


def _check_state_dtypes(backend: Any, rule: Rule, members: list, state: dict) -> None:
    """torch.optim's fused kernels take state in the parameter's dtype only: after
    ``model.to(torch.float64)`` a float32 state gets their error, before this group changes
    (checked when a plan is made: a parameter whose dtype changed no longer fits its plan)."""
    for param in members:
        compute = compute_dtype(backend, rule, param)
        expected = getattr(torch, compute) if compute else param.dtype
        held = state.get(param, {})
        for key in state_keys(rule, held):
            found = held[key].dtype
            if found in _SCALAR_TYPES and found != expected:
                raise RuntimeError(f"expected scalar type {_SCALAR_TYPES[expected]} but found {_SCALAR_TYPES[found]}")


def _run(kernel: Callable, *args: Any) -> dict | None:
    """``kernel(*args)``; None if it cannot be compiled here (warned once), before it wrote anything."""
    if kernel in _failed:
        return None
    try:
        result = kernel(*args)
    except Exception as error:  # no C++ compiler, an unsupported platform: compilation, never data
        if kernel in _compiled:
            raise
        _failed.add(kernel)
        warnings.warn(f"fused=True: the step could not be compiled here, so it runs eagerly ({error})", stacklevel=4)
        return None
    _compiled.add(kernel)
    return result
