"""A rule traced once into a plan: its operations in order, and the buffer each result lives in.

A rule's ``update`` is pure: it returns new arrays.  Run operation by operation it allocates
every intermediate, and the backend then copies the results into the parameter and its state.
Here the rule is called once with recording stand-ins instead of arrays -- :class:`Traced`
for the parameter, gradient and state, :class:`Symbolic` for each number of ``h`` -- and the
recording is turned into a :class:`Plan`:

* **Trace.**  Every array operation of ``ops`` and every arithmetic operator on an array is
  recorded with the operator semantics of the backend's arrays (``2 / x`` is
  ``reciprocal(x) * 2``, as a torch tensor computes it).  Numbers stay symbolic: arithmetic on
  them is recorded as a Python expression, evaluated on the host once per step with the same
  Python numbers the unplanned step computes with.  A comparison of numbers (ASGD's
  ``mu != 1``) is decided at trace time and kept as a guard; a plan holds while its guards
  give the same answers.  Anything that is not elementwise over arrays of one shape (a norm,
  a matrix product, broadcasting) raises :class:`Untraceable`: the rule keeps the unplanned
  path.

* **Plan.**  Liveness analysis gives every result a buffer: its final home (the parameter or
  a state entry) once the old value there is dead; else the buffer of an operand that dies at
  this operation (the operation runs in place); else a home whose old value is dead and whose
  final value comes only after this result dies; else a workspace.  The gradient is never
  written.  Results that could not be computed in their home are copied there at the end.

A backend turns a plan into code (``backends/torch_plan.py``): the same sequence of kernels
the rule's eager run calls, each writing into its assigned buffer, so results are bit for bit
the eager ones.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backends import Scalars

PARAM, GRAD = "param", "grad"


class Untraceable(Exception):
    """The rule does something a plan cannot express; it runs unplanned."""


def state_buffer(key: str) -> str:
    return f"state:{key}"


# -- symbolic numbers ----------------------------------------------------------------------


class Symbolic:
    """A number of ``h`` inside a trace: its Python expression over ``h`` and its current value.

    Arithmetic builds a longer expression (and computes the value, so that comparisons can be
    decided); a comparison returns a plain bool and records itself as a guard of the trace.
    """

    __slots__ = ("source", "value", "tracer")

    def __init__(self, source: str, value: Any, tracer: Tracer) -> None:
        self.source, self.value, self.tracer = source, value, tracer

    def _combine(self, other: Any, symbol: str, function: Callable, reflected: bool = False) -> Any:
        if isinstance(other, Traced):
            return NotImplemented
        other_source, other_value = _source_of(other)
        left, right = (other_source, self.source) if reflected else (self.source, other_source)
        values = (other_value, self.value) if reflected else (self.value, other_value)
        return Symbolic(f"({left} {symbol} {right})", function(*values), self.tracer)

    def __add__(self, other):
        return self._combine(other, "+", operator.add)

    def __radd__(self, other):
        return self._combine(other, "+", operator.add, True)

    def __sub__(self, other):
        return self._combine(other, "-", operator.sub)

    def __rsub__(self, other):
        return self._combine(other, "-", operator.sub, True)

    def __mul__(self, other):
        return self._combine(other, "*", operator.mul)

    def __rmul__(self, other):
        return self._combine(other, "*", operator.mul, True)

    def __truediv__(self, other):
        return self._combine(other, "/", operator.truediv)

    def __rtruediv__(self, other):
        return self._combine(other, "/", operator.truediv, True)

    def __pow__(self, other):
        return self._combine(other, "**", operator.pow)

    def __rpow__(self, other):
        return self._combine(other, "**", operator.pow, True)

    def __neg__(self):
        return Symbolic(f"(-{self.source})", -self.value, self.tracer)

    def _compare(self, other: Any, symbol: str, function: Callable) -> Any:
        if isinstance(other, Traced):
            return NotImplemented
        other_source, other_value = _source_of(other)
        outcome = bool(function(self.value, other_value))
        self.tracer.guards.append((f"bool({self.source} {symbol} {other_source})", outcome))
        return outcome

    def __gt__(self, other):
        return self._compare(other, ">", operator.gt)

    def __lt__(self, other):
        return self._compare(other, "<", operator.lt)

    def __ge__(self, other):
        return self._compare(other, ">=", operator.ge)

    def __le__(self, other):
        return self._compare(other, "<=", operator.le)

    def __eq__(self, other):
        return self._compare(other, "==", operator.eq)  # type: ignore[override]

    def __ne__(self, other):
        return self._compare(other, "!=", operator.ne)  # type: ignore[override]

    def __bool__(self) -> bool:
        outcome = bool(self.value)
        self.tracer.guards.append((f"bool({self.source})", outcome))
        return outcome

    __hash__ = object.__hash__

    def __float__(self) -> float:
        raise Untraceable("a number of h converted to a Python float inside the rule")


def _source_of(value: Any) -> tuple[str, Any]:
    if isinstance(value, Symbolic):
        return value.source, value.value
    if isinstance(value, (bool, int, float)):
        return repr(value), value
    raise Untraceable(f"a number of h combined with {type(value).__name__}")


# -- traced arrays -------------------------------------------------------------------------


class Traced:
    """An array inside a trace: the index of the value it stands for, its metadata, and whether
    it continues a state entry (a state entry, or computed from one as first operand)."""

    __slots__ = ("tracer", "index", "meta", "of_state")

    def __init__(self, tracer: Tracer, index: int, meta: Any, of_state: bool = False) -> None:
        self.tracer, self.index, self.meta, self.of_state = tracer, index, meta, of_state

    @property
    def shape(self) -> tuple:
        return tuple(self.meta.shape)

    @property
    def ndim(self) -> int:
        return len(self.meta.shape)

    @property
    def dtype(self) -> Any:
        return self.meta.dtype

    def __getattr__(self, name: str) -> Any:
        # An array method beyond the operators below (reshape, view): the rule runs unplanned.
        if name.startswith("__"):
            raise AttributeError(name)
        raise Untraceable(f"the array method {name} is not an elementwise operation a plan runs")

    def _record(self, name: str, *args: Any) -> Traced:
        return self.tracer.record(name, args, {})

    # The operators of the backend's arrays, as their own methods compute them.
    def __add__(self, other):
        return self._record("add", self, other)

    def __radd__(self, other):
        return self._record("add", self, other)

    def __sub__(self, other):
        return self._record("sub", self, other)

    def __rsub__(self, other):
        # torch's rsub has no out= form; other + (-self) is the same IEEE difference.
        return self._record("add", self._record("neg", self), other)

    def __mul__(self, other):
        return self._record("mul", self, other)

    def __rmul__(self, other):
        return self._record("mul", self, other)

    def __truediv__(self, other):
        return self._record("div", self, other)

    def __rtruediv__(self, other):
        return self._record("mul", self._record("reciprocal", self), other)

    def __pow__(self, other):
        return self._record("pow", self, other)

    def __neg__(self):
        return self._record("neg", self)

    def __abs__(self):
        return self._record("abs", self)

    def __gt__(self, other):
        return self._record("gt", self, other)

    def __lt__(self, other):
        return self._record("lt", self, other)

    def __ge__(self, other):
        return self._record("ge", self, other)

    def __le__(self, other):
        return self._record("le", self, other)

    def __eq__(self, other):
        return self._record("eq", self, other)  # type: ignore[override]

    def __ne__(self, other):
        return self._record("ne", self, other)  # type: ignore[override]

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise Untraceable("the truth value of an array decides a branch of the rule")


class TracingOps:
    """The ``ops`` a rule sees while traced: the elementwise operations, recorded.

    Any other operation (norms, products, sparse arrays) makes the rule untraceable.
    """

    ELEMENTWISE = (
        "add",
        "lerp",
        "addcmul",
        "addcdiv",
        "sqrt",
        "rsqrt",
        "reciprocal",
        "maximum",
        "abs",
        "sign",
        "clamp",
    )

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def __getattr__(self, name: str) -> Callable:
        if name not in self.ELEMENTWISE:
            raise Untraceable(f"ops.{name} is not an elementwise operation a plan runs")
        return lambda *args, **kwargs: self._tracer.record(name, args, kwargs)

    def where(self, condition: Any, if_true: Any, if_false: Any) -> Any:
        if isinstance(condition, bool):  # a switch, or a number comparison kept as a guard
            return if_true if condition else if_false
        return self._tracer.record("where", (condition, if_true, if_false), {})

    def zeros_like(self, x: Traced) -> Traced:
        return self._tracer.record("zeros_like", (x,), {})

    def full_like(self, x: Traced, value: Any) -> Traced:
        return self._tracer.record("full_like", (x, value), {})

    def copy(self, x: Traced) -> Traced:
        return self._tracer.record("clone", (x,), {})

    @staticmethod
    def dense(x: Traced) -> Traced:
        return x  # a planned step has dense gradients only

    @staticmethod
    def is_sparse(x: Traced) -> bool:
        return False  # a planned step has dense gradients only


# -- the trace -----------------------------------------------------------------------------


@dataclass
class Operation:
    name: str
    args: tuple  # ("value", index) | ("scalar", index into Trace.scalars) | ("constant", number)
    kwargs: dict
    meta: Any  # the result's metadata (dtype, shape) from the backend's ``infer``


@dataclass
class Trace:
    inputs: dict[str, int]  # buffer name -> the value index it holds at the start
    operations: list[Operation]  # value index = len(inputs) + position
    outputs: dict[str, int]  # home buffer -> the value index it must hold at the end
    metas: list  # metadata of every value
    scalars: list[str] = field(default_factory=list)  # Python expressions over h
    guards: list[tuple[str, bool]] = field(default_factory=list)


class Tracer:
    def __init__(self, infer: Callable, in_place_everywhere: bool = False) -> None:
        self.infer = infer
        self.in_place_everywhere = in_place_everywhere
        self.metas: list = []
        self.operations: list[Operation] = []
        self.scalars: list[str] = []
        self.guards: list[tuple[str, bool]] = []
        self._scalar_index: dict[str, int] = {}

    def value(self, meta: Any, of_state: bool = False) -> Traced:
        self.metas.append(meta)
        return Traced(self, len(self.metas) - 1, meta, of_state)

    def record(self, name: str, args: tuple, kwargs: dict) -> Traced:
        encoded_args = tuple(map(self._encode, args))
        encoded_kwargs = {k: self._encode(v) for k, v in kwargs.items()}
        concrete = lambda v: v.meta if isinstance(v, Traced) else v.value if isinstance(v, Symbolic) else v  # noqa: E731
        first = args[0] if args and isinstance(args[0], Traced) else None
        of_state = first is not None and first.of_state
        # The reference updates its state in place (buf.mul_(momentum).add_(grad)), its
        # multi-tensor code every first operand: such a result is rounded to that operand's
        # dtype, which matters once the two differ (a model moved to float64 after its state
        # was made).
        into = first.meta if first is not None and (of_state or self.in_place_everywhere) else None
        meta = self.infer(name, tuple(map(concrete, args)), {k: concrete(v) for k, v in kwargs.items()}, into)
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, Traced) and tuple(arg.meta.shape) != tuple(meta.shape):
                raise Untraceable(f"{name} broadcasts {tuple(arg.meta.shape)} to {tuple(meta.shape)}")
        self.operations.append(Operation(name, encoded_args, encoded_kwargs, meta))
        return self.value(meta, of_state)

    def _encode(self, value: Any) -> tuple:
        if isinstance(value, Traced):
            if value.tracer is not self:
                raise Untraceable("an array from another trace")
            return ("value", value.index)
        if isinstance(value, Symbolic):
            if value.source not in self._scalar_index:
                self._scalar_index[value.source] = len(self.scalars)
                self.scalars.append(value.source)
            return ("scalar", self._scalar_index[value.source])
        if isinstance(value, (bool, int, float)) or value is None:
            return ("constant", value)
        raise Untraceable(f"an operation took a {type(value).__name__}")


def trace(
    update: Callable,
    ops_for: Callable[[Tracer], Any],
    infer: Callable,
    metas: dict[str, Any],
    switches: dict[str, Any],
    numbers: dict[str, Any],
    in_place_everywhere: bool = False,
) -> Trace:
    """Record ``update(ops, param, grad, state, h)`` once.

    ``metas`` holds the metadata of the parameter, gradient and each state entry (by buffer
    name); ``switches`` the concrete values of ``h``, ``numbers`` its numbers (current values).
    ``infer(name, args, kwargs, into)`` gives an operation's result metadata from its
    operands', as an operation writing into ``into`` (metadata, or None) would make it: into
    the first operand where it continues a state entry, or everywhere if
    ``in_place_everywhere`` (the reference's multi-tensor code).
    """
    tracer = Tracer(infer, in_place_everywhere)
    inputs = {name: tracer.value(meta, name.startswith("state:")) for name, meta in metas.items()}
    # h: switches as they are, numbers as Symbolic
    h = Scalars({**switches, **{k: Symbolic(f"h[{k!r}]", v, tracer) for k, v in numbers.items()}})
    state_keys = [name.removeprefix("state:") for name in metas if name.startswith("state:")]
    state = {key: inputs[state_buffer(key)] for key in state_keys}
    new_param, new_state = update(ops_for(tracer), inputs[PARAM], inputs[GRAD], state, h)
    outputs = {PARAM: new_param, **{state_buffer(k): v for k, v in new_state.items()}}
    for name, value in outputs.items():
        if not isinstance(value, Traced) or value.tracer is not tracer:
            raise Untraceable(f"the rule's {name} is a {type(value).__name__}, not an array")
    return Trace(
        inputs={name: value.index for name, value in inputs.items()},
        operations=tracer.operations,
        outputs={name: value.index for name, value in outputs.items()},
        metas=tracer.metas,
        scalars=tracer.scalars,
        guards=tracer.guards,
    )


# -- the plan ------------------------------------------------------------------------------


@dataclass
class Instruction:
    name: str  # an operation's name, or "copy"
    dest: str  # the buffer written
    args: tuple  # ("buffer", name) | ("scalar", index) | ("constant", number)
    kwargs: dict
    meta: Any


@dataclass
class Plan:
    """What a backend turns into code: instructions over named buffers.

    Buffers: ``"param"``, ``"grad"`` (read only), ``"state:<key>"`` (including entries the
    rule creates: ``created``) and ``"work<i>"`` (kept between steps; ``workspaces`` holds
    their metadata).
    """

    instructions: list[Instruction]
    workspaces: list[Any]
    created: dict[str, Any]  # state entries the rule creates -> their metadata
    scalars: list[str]
    guards: list[tuple[str, bool]]
    state_keys: tuple[str, ...]  # the entries read


def make_plan(trace: Trace, same_kind: Callable[[Any, Any], bool]) -> Plan:
    """Assign every value of ``trace`` a buffer (see the module docstring).

    ``same_kind(a, b)`` tells whether a value of metadata ``a`` may live in a buffer made for
    ``b`` (same dtype; shapes are equal in any trace).
    """
    first = len(trace.inputs)
    ends = len(trace.metas)  # "used at the end", for outputs
    needed = set(trace.outputs.values())  # results nothing reads (a branch ops.where drops) are not computed
    for position in range(ends - 1, first - 1, -1):
        if position in needed:
            needed.update(index for kind, index in _operands(trace.operations[position - first]) if kind == "value")
    steps = [(p, op) for p, op in enumerate(trace.operations, first) if p in needed]
    last_use = {index: -1 for index in range(ends)}
    for position, operation in steps:
        for kind, index in _operands(operation):
            if kind == "value":
                last_use[index] = position
    for index in trace.outputs.values():
        last_use[index] = ends
    homes_of: dict[int, list[str]] = {}
    for home, index in trace.outputs.items():
        homes_of.setdefault(index, []).append(home)
    defined_at = {index: index for index in range(ends)}

    where: dict[int, str] = {index: name for name, index in trace.inputs.items()}
    occupant: dict[str, int | None] = dict(trace.inputs.items())
    created = {
        home.removeprefix("state:"): trace.metas[index]
        for home, index in trace.outputs.items()
        if home not in trace.inputs
    }
    for key in created:
        occupant[state_buffer(key)] = None
    buffer_meta = {name: trace.metas[index] for name, index in trace.inputs.items()}
    buffer_meta.update({state_buffer(k): meta for k, meta in created.items()})
    workspaces: list[Any] = []
    instructions = []

    def free(buffer: str, position: int) -> bool:
        held = occupant[buffer]
        return held is None or last_use[held] <= position

    def final_value_after(buffer: str, index: int) -> bool:
        """Whether ``buffer`` may hold ``index`` for a while: its final value (if any) comes
        from an operation at or after ``index``'s last use."""
        final = trace.outputs.get(buffer)
        if final is None:
            return True
        if final < first:  # an input: copied in at the end, after every operation
            return final != trace.inputs.get(buffer)
        return defined_at[final] >= last_use[index]

    for position, operation in steps:
        meta = operation.meta
        operands = [index for kind, index in operation.args if kind == "value"]
        chosen = None
        for home in homes_of.get(position, []):
            if free(home, position) and same_kind(meta, buffer_meta[home]):
                chosen = home
                break
        if chosen is None:  # in place on an operand that dies here (the first operand preferred)
            for index in operands:
                buffer = where[index]
                if (
                    buffer != GRAD
                    and last_use[index] == position
                    and occupant[buffer] == index
                    and same_kind(meta, buffer_meta[buffer])
                    and final_value_after(buffer, position)
                ):
                    chosen = buffer
                    break
        if chosen is None:  # a home whose old value is dead, as scratch
            for buffer in buffer_meta:
                if (
                    buffer not in (GRAD,)
                    and not buffer.startswith("work")
                    and free(buffer, position)
                    and same_kind(meta, buffer_meta[buffer])
                    and final_value_after(buffer, position)
                ):
                    chosen = buffer
                    break
        if chosen is None:
            for number, workspace_meta in enumerate(workspaces):
                buffer = f"work{number}"
                if free(buffer, position) and same_kind(meta, workspace_meta):
                    chosen = buffer
                    break
        if chosen is None:
            chosen = f"work{len(workspaces)}"
            workspaces.append(meta)
            buffer_meta[chosen] = meta
            occupant[chosen] = None
        occupant[chosen] = position
        where[position] = chosen
        instructions.append(
            Instruction(
                operation.name,
                chosen,
                tuple(_bind(arg, where) for arg in operation.args),
                {k: _bind(v, where) for k, v in operation.kwargs.items()},
                meta,
            )
        )
    instructions += _final_copies(trace, where)
    instructions, scalars = _used_scalars(instructions, trace.scalars)
    state_keys = tuple(name.removeprefix("state:") for name in trace.inputs if name.startswith("state:"))
    return Plan(instructions, workspaces, created, scalars, trace.guards, state_keys)


def _used_scalars(instructions: list[Instruction], scalars: list[str]) -> tuple[list[Instruction], list[str]]:
    """The instructions with their numbers renumbered, and only the numbers they read (a branch
    that ``ops.where`` dropped needs none of its own)."""
    used = sorted({i for ins in instructions for kind, i in (*ins.args, *ins.kwargs.values()) if kind == "scalar"})
    position = {old: new for new, old in enumerate(used)}

    def renumber(arg: tuple) -> tuple:
        return ("scalar", position[arg[1]]) if arg[0] == "scalar" else arg

    renumbered = [
        Instruction(
            ins.name,
            ins.dest,
            tuple(map(renumber, ins.args)),
            {k: renumber(v) for k, v in ins.kwargs.items()},
            ins.meta,
        )
        for ins in instructions
    ]
    return renumbered, [scalars[i] for i in used]


def _operands(operation: Operation) -> tuple:
    return (*operation.args, *operation.kwargs.values())


def _bind(arg: tuple, where: dict[int, str]) -> tuple:
    kind, value = arg
    return ("buffer", where[value]) if kind == "value" else arg


def _final_copies(trace: Trace, where: dict[int, str]) -> list[Instruction]:
    """Copies of final values computed outside their homes, ordered so that no copy overwrites
    a buffer another copy still reads."""
    pending = [
        (home, where[index], trace.metas[index]) for home, index in trace.outputs.items() if where[index] != home
    ]
    ordered = []
    while pending:
        sources = {source for _, source, _ in pending}
        ready = [copy for copy in pending if copy[0] not in sources]
        if not ready:
            raise Untraceable("the rule swaps values between its parameter and state")
        for copy in ready:
            pending.remove(copy)
            home, source, meta = copy
            ordered.append(Instruction("copy", home, (("buffer", source),), {}, meta))
    return ordered
