"""The torch backend's planned step: each rule traced once (``backends/plan.py``), run in place.

A plan becomes a straight-line Python function over a bucket of parameters (same device,
dtypes and state entries) in one of two forms:

* **each** (``foreach=False``; the default on CPU): a loop over the bucket's parameters,
  each result written by the kernel the rule's eager run calls, in place (``x.mul_(b)``) or
  into its buffer (``torch.sqrt(v, out=w)``).  The same kernels in the same order: bit for
  bit torch.optim's for-loop, with no allocation after the first step (intermediates live
  in workspaces kept between steps, one per dtype and slot, as large as the largest tensor).
* **foreach** (``foreach=True``; the default on CUDA): one ``torch._foreach_*`` call per
  operation over the bucket's tensor lists, as torch.optim's multi-tensor path.
  Intermediates are fresh lists, as there; operations without a multi-tensor kernel loop.

What a plan cannot run keeps the unplanned path: sparse gradients, ``state_dtype`` widening,
``differentiable=True``, a complex parameter whose rule creates state, and rules that are not
elementwise (:class:`backends.plan.Untraceable`).  Under ``torch.compile`` the unplanned path
is traced instead: there the graph is the plan, and Inductor its code.

Plans are kept per process (they depend on the rule, mode, dtypes and branch settings, not on
tensors); what a plan runs on -- the buckets, their state lists and workspace views -- is kept
in the optimizer's backend memory, which ``load_state_dict`` empties.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from backends import HostMath, Rule, compute_dtype, is_switch
from backends.plan import GRAD, PARAM, Plan, TracingOps, Untraceable, make_plan, state_buffer, trace

# Operations with a multi-tensor kernel of the same name (``torch._foreach_<name>``).
_FOREACH = {
    "add",
    "sub",
    "mul",
    "div",
    "lerp",
    "addcmul",
    "addcdiv",
    "sqrt",
    "rsqrt",
    "maximum",
    "abs",
    "sign",
    "neg",
    "reciprocal",
    "pow",
}
# Operations whose in-place method (``x.<name>_``) computes what ``torch.<name>`` does.
_IN_PLACE = _FOREACH - {"maximum"} | {"clamp"}


@dataclass
class Compiled:
    """A plan and its code: ``run`` steps a bucket, ``scalars(h)`` evaluates its numbers."""

    plan: Plan
    run: Callable
    scalars: Callable[[dict], tuple]
    guards: Callable[[dict], tuple]
    outcomes: tuple
    mode: str
    source: str  # the generated code, for reading


_plans: dict[tuple, Any] = {}  # a list of Compiled, or None: untraceable


def infer(name: str, args: tuple, kwargs: dict, into: torch.Tensor | None = None) -> torch.Tensor:
    """An operation's result as a meta tensor (its dtype and shape), from its operands'.

    A 0-d tensor number (a tensor lr) stays a tensor operand, as it is in the step: against a
    0-d parameter it takes part in type promotion (a float16 scalar times a float32 lr is
    float32).  As ``alpha=``/``value=`` it is a Python number, as ATen reads it.  Written
    ``into`` a floating tensor, the result takes that tensor's dtype, as an in-place
    operation's does.
    """

    def operand(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.device.type != "meta":
            return torch.empty((), dtype=value.dtype, device="meta")
        return value

    def number(value: Any) -> Any:
        return value.item() if isinstance(value, torch.Tensor) and value.device.type != "meta" else value

    result = getattr(torch, name)(*map(operand, args), **{k: number(v) for k, v in kwargs.items()})
    if into is not None and into.is_floating_point() and result.is_floating_point() and result.dtype != into.dtype:
        return result.to(into.dtype)
    return result


def _same_kind(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype


# -- code generation -----------------------------------------------------------------------


def _names(plan: Plan) -> dict[str, str]:
    keys = plan.state_keys + tuple(k for k in plan.created if k not in plan.state_keys)
    names = {PARAM: "p", GRAD: "g"}
    names.update({state_buffer(key): f"s{i}" for i, key in enumerate(keys)})
    names.update({f"work{i}": f"w{i}" for i in range(len(plan.workspaces))})
    return names


def _argument(arg: tuple, names: dict[str, str]) -> str:
    kind, value = arg
    if kind == "buffer":
        return names[value]
    if kind == "scalar":
        return f"k{value}"
    return repr(value)


def _call(instruction: Any, names: dict[str, str], skip: int = 0) -> tuple[list[str], str]:
    """The operands as code, and the call's argument list without its first ``skip`` operands."""
    args = [_argument(a, names) for a in instruction.args]
    kwargs = [f"{k}={_argument(v, names)}" for k, v in instruction.kwargs.items()]
    return args, ", ".join(args[skip:] + kwargs)


def _each_lines(instruction: Any, names: dict[str, str]) -> list[str]:
    """One instruction on single tensors, writing into ``names[dest]`` (no allocation)."""
    dest, name = names[instruction.dest], instruction.name
    args, call = _call(instruction, names)
    first = instruction.args[0] if instruction.args else None
    in_place = first == ("buffer", instruction.dest)
    if name in ("copy", "clone"):
        return [f"{dest}.copy_({args[0]})"]
    if name == "zeros_like":
        return [f"{dest}.zero_()"]
    if name == "full_like":
        return [f"{dest}.fill_({args[1]})"]
    if name == "where":
        condition, if_true, if_false = instruction.args
        if if_true[0] != "buffer" and if_false[0] == "buffer":  # torch.where takes no out= with a number
            lines = [] if if_false == ("buffer", instruction.dest) else [f"{dest}.copy_({args[2]})"]
            return lines + [f"{dest}.masked_fill_({args[0]}, {args[1]})"]
        if if_true[0] != "buffer" or if_false[0] != "buffer":
            return [f"{dest}.copy_(torch.where({call}))"]
    if in_place and name in _IN_PLACE:
        return [f"{dest}.{name}_({_call(instruction, names, skip=1)[1]})"]
    return [f"torch.{name}({call}, out={dest})"]


def _foreach_lines(instruction: Any, names: dict[str, str], workspaces: set[str], bound: set[str]) -> list[str]:
    """One instruction over the bucket's tensor lists (upper-case names).  ``bound`` holds the
    workspaces that already name a list of tensors; this instruction's may join it."""
    lists = {buffer: name.upper() for buffer, name in names.items()}
    dest, name = lists[instruction.dest], instruction.name
    args, call = _call(instruction, lists)
    in_place = instruction.args and instruction.args[0] == ("buffer", instruction.dest)
    fresh = instruction.dest in workspaces and not in_place  # the name is bound to a new list
    first_binding = instruction.dest in workspaces and instruction.dest not in bound
    bound.add(instruction.dest)
    if name in _FOREACH:
        if in_place:
            return [f"torch._foreach_{name}_({call})"]
        if fresh:
            return [f"{dest} = torch._foreach_{name}({call})"]
        return [f"torch._foreach_copy_({dest}, torch._foreach_{name}({call}))"]
    if name in ("copy", "clone") and not fresh:
        return [f"torch._foreach_copy_({dest}, {args[0]})"]
    # No multi-tensor kernel: a loop over the tensors, as torch.optim's own loops.
    operands = [lists[b] for kind, b in (*instruction.args, *instruction.kwargs.values()) if kind == "buffer"]
    operands = list(dict.fromkeys(operands))
    zipped = ", ".join(operand.lower() for operand in operands)
    # A workspace that already holds tensors (a dead value's, or a dying operand's: ``where``
    # into its ``if_false`` as masked_fill_) is written in place, saving a list of new tensors.
    if fresh and first_binding:
        _, single = _call(instruction, names)
        expression = {"copy": "{0}.clone()", "clone": "{0}.clone()", "zeros_like": "torch.zeros_like({0})"}.get(name)
        first = _argument(instruction.args[0], names)
        value = expression.format(first) if expression else f"torch.{name}({single})"
        return [f"{dest} = [{value} for {zipped}, in zip({', '.join(operands)})]"]
    body = _each_lines(instruction, names)
    loop_names = list(dict.fromkeys([dest.lower(), *(o.lower() for o in operands)]))
    loop_lists = list(dict.fromkeys([dest, *operands]))
    return [f"for {', '.join(loop_names)}, in zip({', '.join(loop_lists)}):"] + [f"    {line}" for line in body]


def _commuted(instruction: Any) -> Any:
    """``mul``/``add`` (without ``alpha``) whose second operand is its destination, with the
    operands swapped so that it runs in place: exact, as IEEE products and sums commute."""
    args = instruction.args
    if (
        instruction.name in ("mul", "add")
        and not instruction.kwargs
        and len(args) == 2
        and args[1] == ("buffer", instruction.dest)
        and args[0][0] == "buffer"
    ):
        return dataclasses.replace(instruction, args=(args[1], args[0]))
    return instruction


def _generate(plan: Plan, mode: str) -> tuple[Callable, str]:
    """``run(P, G, S, W, k)`` for ``mode``: "each" (per tensor, into workspaces ``W``) or
    "foreach" (multi-tensor)."""
    instructions = [_commuted(instruction) for instruction in plan.instructions]
    names = _names(plan)
    state_names = [names[state_buffer(k)] for k in plan.state_keys] + [
        names[state_buffer(k)] for k in plan.created if k not in plan.state_keys
    ]
    work_names = [names[f"work{i}"] for i in range(len(plan.workspaces))]
    header = []
    if plan.scalars:
        header.append(f"{', '.join(f'k{i}' for i in range(len(plan.scalars)))}, = k")
    if mode == "foreach":
        if state_names:
            header.append(f"{', '.join(n.upper() for n in state_names)}, = S")
        workspaces = {f"work{i}" for i in range(len(plan.workspaces))}
        bound: set[str] = set()
        body = [line for instruction in instructions for line in _foreach_lines(instruction, names, workspaces, bound)]
        lines = ["def run(P, G, S, W, k):", *(f"    {line}" for line in header + body)]
    else:
        lists = ["P", "G", *(n.upper() for n in state_names + work_names)]
        if state_names:
            header.append(f"{', '.join(n.upper() for n in state_names)}, = S")
        if work_names:
            header.append(f"{', '.join(n.upper() for n in work_names)}, = W")
        body = [line for instruction in instructions for line in _each_lines(instruction, names)]
        loop = f"for {', '.join(['p', 'g', *state_names, *work_names])}, in zip({', '.join(lists)}):"
        lines = ["def run(P, G, S, W, k):", *(f"    {line}" for line in header), f"    {loop}"]
        lines += [f"        {line}" for line in body]
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(source, f"<plan {hex(id(plan))}>", "exec"), namespace)
    return namespace["run"], source


def _evaluator(expressions: list[str]) -> Callable[[dict], tuple]:
    return eval(f"lambda h: ({''.join(e + ', ' for e in expressions)})")  # expressions built by plan.Symbolic


def compiled_plan(
    rule: Rule, mode: str, metas: Callable[[], dict[str, torch.Tensor]], layout: tuple, values: dict[str, Any]
) -> Compiled | None:
    """The plan for ``layout`` under these values of ``h``, as code for ``mode`` (see
    :func:`_generate`); None if the rule is untraceable.

    ``metas()`` gives the inputs' metadata (meta tensors), needed only to trace.  Plans are
    kept per (rule, mode, layout, switches); among those, the first whose guards hold.
    """
    switches = tuple((k, v) for k, v in values.items() if _is_switch(v))
    key = (rule.update, mode, layout, switches)
    known = _plans.get(key, [])
    if known is None:
        return None
    for candidate in known:
        if candidate.guards(values) == candidate.outcomes:
            return candidate
    numbers = {k: v for k, v in values.items() if not _is_switch(v)}
    if not all(map(is_number, numbers.values())):
        _plans[key] = None
        return None
    try:
        traced = trace(rule.update, TracingOps, infer, metas(), dict(switches), numbers, mode == "foreach")
        plan = make_plan(traced, _same_kind)
    except Untraceable:
        _plans[key] = None
        return None
    except RuntimeError:
        # Operands a kernel refuses (lerp of a float32 state and a float64 gradient, after
        # model.to()): the op-by-op path runs the kernel, which raises torch's own message.
        _plans[key] = None
        return None
    run, source = _generate(plan, mode)
    guards = _evaluator([source for source, _ in plan.guards])
    entry = Compiled(plan, run, _evaluator(plan.scalars), guards, tuple(o for _, o in plan.guards), mode, source)
    _plans.setdefault(key, []).append(entry)
    return entry


def is_elementwise(rule: Rule, param: Any, held: dict, values: dict, compute: torch.dtype | None) -> bool:
    """Whether the rule, under these values of ``h``, is elementwise over ``param`` stepped in
    ``compute`` (None: its own dtype), i.e. it traces into a plan: then any flat view of its
    arrays, or a bucket of several, steps the same."""
    if not _flat_state(held):
        return False
    layout = Bucket.layout_of(rule, param, held)
    if compute is not None:
        layout = (layout[0], compute, compute, *layout[3:])

    def metas() -> dict[str, torch.Tensor]:
        found = _metas_of(param, held, layout)
        if compute is not None:
            found[PARAM], found[GRAD] = found[PARAM].to(compute), found[GRAD].to(compute)
        return found

    return compiled_plan(rule, "each", metas, layout, values) is not None


def _is_switch(value: Any) -> bool:
    return is_switch(value) or isinstance(value, np.bool_)


def is_number(value: Any) -> bool:
    """A number of ``h`` a step takes as data: a Python or NumPy number (not a bool) or a 0-d tensor."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0
    return not _is_switch(value) and isinstance(value, (int, float, np.number))


def _flat_state(held: dict | None) -> bool:
    """Whether a parameter's state holds no lists of arrays (SOAP's statistics), which plans do not take."""
    return not any(isinstance(value, list) for value in (held or {}).values())


def state_keys(rule: Rule, held: dict | None) -> tuple:
    """A parameter's state entries a step reads and writes: arrays, not counters (nor a None buffer)."""
    return tuple(k for k, v in (held or {}).items() if k not in rule.counters and isinstance(v, torch.Tensor))


# -- stepping a group ----------------------------------------------------------------------


class Workspaces:
    """Flat buffers kept between steps, one per (device, dtype, slot), with views per shape.

    ``generation`` counts the times a buffer grew: views made before that are stale.
    """

    def __init__(self) -> None:
        self.flat: dict[tuple, torch.Tensor] = {}
        self.views: dict[tuple, torch.Tensor] = {}
        self.generation = 0

    def lists(self, plan: Plan, values: list[torch.Tensor]) -> tuple[list, ...]:
        """Per workspace of ``plan``, a view shaped like each of ``values``."""
        device, largest = values[0].device, max(v.numel() for v in values)
        result = []
        for slot, meta in enumerate(plan.workspaces):
            key = (device, meta.dtype, slot)
            flat = self.flat.get(key)
            if flat is None or flat.numel() < largest:
                self.flat[key] = torch.empty(largest, dtype=meta.dtype, device=device)
                self.views = {k: v for k, v in self.views.items() if k[0] != key}
                self.generation += 1
            views = []
            for value in values:
                view = self.views.get((key, value.shape))
                if view is None:
                    view = self.views[(key, value.shape)] = self.flat[key][: value.numel()].view(value.shape)
                views.append(view)
            result.append(views)
        return tuple(result)


def host_values(rule: Rule, h: Any, counters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``h`` with the schedule's scalars for these counters, as the Python numbers torch.optim
    hands its kernels, and the advanced counters."""
    scheduled, advanced = rule.schedule(HostMath, h, counters)
    values = {k: float(v) if isinstance(v, np.floating) else v for k, v in {**vars(h), **scheduled}.items()}
    return values, advanced


def by_counters(rule: Rule, params: list, state: dict, flat: Sequence[dict] = ()) -> list[list]:
    """``params`` split by their counter values (read at once), as each set steps with one schedule.

    ``flat`` holds counters kept in one buffer: ``{key: (the tensors, in order, their buffer)}``;
    where a key's tensors are exactly those, their values are read from the buffer.
    """
    if not params:
        return []
    if not rule.counters:
        return [params]
    columns = []
    for key in rule.counters:
        counters = [state[p][key] for p in params]
        kept = _flat_values(key, counters, flat)
        if kept is not None:
            columns.append(kept)
        elif all(isinstance(c, torch.Tensor) for c in counters):
            columns.append(torch.stack(counters).tolist())
        else:
            columns.append([float(c) for c in counters])
    split: dict[tuple, list] = {}
    for param, values in zip(params, zip(*columns)):
        split.setdefault(values, []).append(param)
    return list(split.values())


def _flat_values(key: str, counters: list, flat: Sequence[dict]) -> list | None:
    """The values of ``counters``, read from the buffer that holds exactly them; None if none does."""
    for kept in flat:
        tensors, buffer = kept.get(key, ((), None))
        if len(tensors) == len(counters) and all(map(operator.is_, tensors, counters)):
            return buffer.tolist()
    return None


def advance(helds: list, advanced: dict) -> None:
    """Write the advanced counters (as the backend stores them) into every parameter's state
    (``helds``: the state dicts, None for a parameter without state): one multi-tensor copy
    per tensor counter."""
    if advanced and None in helds:
        helds = [held for held in helds if held is not None]
    for key, value in advanced.items():
        current = [held[key] for held in helds]
        if isinstance(value, torch.Tensor) and all(isinstance(c, torch.Tensor) for c in current):
            if current:
                torch._foreach_copy_(current, [value] * len(current))
        else:  # a Python int counter (SparseAdam's step)
            for held in helds:
                held[key] = value


def step_group(backend: Any, rule: Rule, params: list, h: Any, state: dict, memory: dict, foreach: bool) -> list:
    """Step the planned part of one group; return the parameters left to the unplanned path."""
    if torch.compiler.is_compiling():
        return params  # torch.compile's graph is the plan: the unplanned path traces into it
    mode = "foreach" if foreach else "each"
    left: list = []
    planned = params
    if not _flat_state(state.get(params[0])):  # a rule keeps lists in every parameter's state or in none
        return params
    if rule.state_dtype or any(map(_IS_SPARSE, map(_GRAD, params))) or not all(map(is_plain, params)):
        # A tensor subclass (FSDP2's DTensor) runs its own operators, which the plan's
        # workspaces, plain tensors, would mix with: it steps op by op, as torch.optim's.
        unplannable = {p for p in params if not is_plain(p) or p.grad.is_sparse or compute_dtype(backend, rule, p)}
        planned, left = [p for p in params if p not in unplannable], [p for p in params if p in unplannable]
    workspaces = memory.setdefault("workspaces", Workspaces())
    for members in by_counters(rule, planned, state):
        counters = {key: np.asarray(state[members[0]][key])[()] for key in rule.counters}
        values, advanced = host_values(rule, h, counters)
        store = {k: backend.store_counter(v) for k, v in advanced.items()}
        for bucket in _buckets(rule, members, state, memory):
            entry = compiled_plan(rule, mode, bucket.metas, bucket.layout, values)
            if entry is None or (bucket.complex_view and entry.plan.created):
                left += bucket.params
                continue
            bucket.run(entry, state, workspaces, values)
            if entry.plan.created:  # the state has new entries: the next step sorts anew
                memory.pop(("buckets", tuple(map(id, members))), None)
            advance(bucket.helds, store)
    return left


def _metas_of(param: Any, held: dict, layout: tuple) -> dict[str, torch.Tensor]:
    """The parameter's, gradient's and state entries' metadata as meta tensors (real views of
    complex ones, where the layout says so)."""

    def meta(tensor: torch.Tensor) -> torch.Tensor:
        if layout[4]:
            tensor = torch.view_as_real(tensor.detach())
        return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")

    return {PARAM: meta(param), GRAD: meta(param.grad), **{state_buffer(k): meta(held[k]) for k, _ in layout[3]}}


class Bucket:
    """Parameters one plan steps together: same device, dtypes, state entries and complex view.

    It keeps their state tensors in lists between steps, and the workspace views of the plans it
    ran; :meth:`holds` tells whether they are still the optimizer's (``load_state_dict``
    replaces the state, ``p.data = ...`` may change a dtype or shape).
    """

    def __init__(self, rule: Rule, params: list, state: dict) -> None:
        first = params[0]
        held = state.get(first, {})
        self.params = params
        self.layout = self.layout_of(rule, first, held)
        self.keys = tuple(key for key, _ in self.layout[3])
        self.complex_view = self.layout[4]
        self.helds: list[Any] = [state.get(p) for p in params]
        self.states = [[h[k] for h in self.helds] for k in self.keys]
        self.shapes = list(map(_SHAPE, params))  # what workspace views are shaped for
        self.views: dict[int, tuple[int, tuple]] = {}  # plan -> (workspace generation, views)

    @staticmethod
    def layout_of(rule: Rule, param: Any, held: dict) -> tuple:
        """What a plan is made for: device, dtypes, state entries (arrays), complex view, and
        whether the parameter is 0-d (a 0-d tensor lr then takes part in type promotion)."""
        entries = tuple((key, held[key].dtype) for key in state_keys(rule, held))
        complex_view = rule.real_view and param.is_complex()
        return (param.device, param.dtype, param.grad.dtype, entries, complex_view, param.dim() == 0)

    def holds(self, state: dict) -> bool:
        """Whether the optimizer's state is still the one kept here (the same dicts and tensors)."""
        helds: list[Any] = list(map(state.get, self.params))
        return all(map(operator.is_, helds, self.helds)) and all(
            all(map(operator.is_, [h[k] for h in helds], column)) for k, column in zip(self.keys, self.states)
        )

    def metas(self) -> dict[str, torch.Tensor]:
        return _metas_of(self.params[0], self.helds[0] or {}, self.layout)

    def run(self, entry: Compiled, state: dict, workspaces: Workspaces, values: dict) -> None:
        plan, params = entry.plan, self.params
        grads = [p.grad for p in params]
        states = list(self.states)
        for key, meta in plan.created.items():
            created = [torch.empty_like(grad, dtype=meta.dtype) for grad in grads]
            for param, tensor in zip(params, created):
                state.setdefault(param, {})[key] = tensor
            states.append(created)
        lists = [params, grads, *states]
        if self.complex_view:
            lists = [[torch.view_as_real(t.detach()) for t in tensors] for tensors in lists]
        values_list, grads, *states = lists
        work: tuple = ()
        if plan.workspaces and entry.mode == "each":
            generation, work = self.views.get(id(plan), (-1, ()))
            if generation != workspaces.generation or list(map(_SHAPE, params)) != self.shapes:
                self.shapes = list(map(_SHAPE, params))
                work = workspaces.lists(plan, values_list)
                self.views[id(plan)] = (workspaces.generation, work)
        entry.run(values_list, grads, states, work, entry.scalars(values))


def _buckets(rule: Rule, params: list, state: dict, memory: dict) -> list[Bucket]:
    """``params`` sorted into buckets, kept between steps while they hold and the parameters'
    and gradients' dtypes are those they were sorted by (``model.to()`` changes them)."""
    key = ("buckets", tuple(map(id, params)))
    dtypes = (list(map(_DTYPE, params)), list(map(_DTYPE, map(_GRAD, params))))
    kept = memory.get(key)
    if kept is not None and kept[1] == dtypes and all(bucket.holds(state) for bucket in kept[0]):
        return kept[0]
    sorted_params: dict[tuple, list] = {}
    for param in params:
        sorted_params.setdefault(Bucket.layout_of(rule, param, state.get(param, {})), []).append(param)
    buckets = [Bucket(rule, members, state) for members in sorted_params.values()]
    memory[key] = (buckets, dtypes)
    return buckets


_GRAD, _DTYPE, _SHAPE = operator.attrgetter("grad"), operator.attrgetter("dtype"), operator.attrgetter("shape")
_IS_SPARSE = operator.attrgetter("is_sparse")


def is_plain(tensor: torch.Tensor) -> bool:
    """A tensor, not a subclass with operators of its own: what torch.optim's multi-tensor paths take."""
    return type(tensor) in (torch.Tensor, torch.nn.Parameter)
