"""The JAX backend: parameters are pytrees of JAX arrays; a whole step is one jit-compiled function.

Each leaf of a parameter pytree becomes a :class:`Param`, a handle with an
identity, so torch.optim's bookkeeping (``state`` keyed by parameter,
``param_groups``, ``state_dict``) applies unchanged.  The rule for every leaf
of every group is traced into one program, scalar arithmetic included
(coefficients, and schedules from each parameter's counters).  The switches a
rule branches on (bools, strings, None) are compiled in; every numeric
hyperparameter enters as a weakly-typed scalar argument, so changing a learning
rate never recompiles and never changes a parameter's dtype.  The same traced
step is the optimizer's functional form (:class:`Functional`), for a training
step the user compiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse
from jax._src.lax.lax import _convert_element_type  # the one way to make a traced value weakly typed

from backends import Rule, Scalars, initial_state, numbers, run_update, widened


class Param:
    """One leaf of a parameter pytree: its current value, its gradient, and where it sits."""

    __slots__ = ("value", "grad", "path")

    def __init__(self, value: jax.Array, path: str):
        self.value = value
        self.grad = None
        self.path = path

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    def __repr__(self) -> str:
        return f"Param({self.path}, shape={tuple(self.shape)}, dtype={self.dtype})"


class JaxOps:
    """The array operations update rules use, on JAX arrays inside jit.

    Each is written in the form whose rounding matches the torch CPU kernel of
    the same name as closely as XLA allows: the same operation order, and the
    product XLA contracts into a fused multiply-add placed where torch's FMA is.
    Two differences remain and are ulp-sized: torch's CPU ``sqrt`` is not
    correctly rounded (XLA's is), and XLA divides by a scalar by multiplying
    with its reciprocal.
    """

    @staticmethod
    def add(x, y, alpha=1.0):
        """x + alpha * y, rounded as torch's add-with-alpha kernel rounds it.

        torch computes fma(alpha, y, x).  Written product-first, XLA's CPU code
        generator contracts this product (and not one inside ``x``, such as
        SGD's ``buffer * momentum``) into the fused multiply-add, so the two
        backends agree bit for bit; ``x + alpha * y`` contracts the wrong one.
        One case still differs by an ulp: a negated ``y`` (SGD's maximize with
        momentum) becomes a subtraction whose other product LLVM contracts, and
        no order of the operands changes that.
        """
        y = y.astype(jnp.result_type(x, y))  # a bfloat16 y (Muon's update) promotes before the product, as in torch
        return alpha * y + x

    @staticmethod
    def lerp(x, end, weight):
        """x + weight * (end - x), switching form at weight 0.5 as torch does for accuracy."""
        return jnp.where(jnp.abs(weight) < 0.5, weight * (end - x) + x, end - (1 - weight) * (end - x))

    @staticmethod
    def addcmul(x, t1, t2, value=1.0):
        """x + value * t1 * t2 (value times t1 first, as torch)."""
        return value * t1 * t2 + x

    @staticmethod
    def addcdiv(x, t1, t2, value=1.0):
        """x + value * t1 / t2 (value times t1 first, as torch)."""
        return (value * t1) / t2 + x

    @staticmethod
    def dense(x):
        return x.todense() if isinstance(x, sparse.BCOO) else x

    @staticmethod
    def coalesce(x):
        """A sparse array with its duplicate entries summed (padding entries point out of bounds).

        A dense array becomes the sparse array of its nonzero entries (as torch's ``to_sparse``).
        """
        if not isinstance(x, sparse.BCOO):
            return sparse.BCOO.fromdense(x, nse=x.size)
        return x.sum_duplicates(nse=x.nse)

    @staticmethod
    def sparse_values(x):
        return x.data

    @staticmethod
    def gather(dense, like):
        """The entries of ``dense`` where the sparse array ``like`` has entries, shaped as its values."""
        return dense.at[tuple(like.indices.T)].get(mode="fill", fill_value=0)

    @staticmethod
    def scatter_add(dense, like, values):
        """``dense`` plus a sparse array with ``like``'s indices and ``values``."""
        return dense.at[tuple(like.indices.T)].add(values, mode="drop")

    @staticmethod
    def clamp(x, low=None, high=None):
        """min(max(x, low), high) in x's dtype, NaN kept; a None bound is no bound."""
        return jnp.clip(x, low, high).astype(x.dtype)

    @staticmethod
    def norm(x, axis=None, keepdims=False):
        """The Euclidean norm in x's dtype, accumulated in float32 or wider as torch's kernel does."""
        wide = x.astype(_compute_dtype(x))
        return jnp.sqrt(jnp.sum(wide * wide, axis=axis, keepdims=keepdims)).astype(x.dtype)

    @staticmethod
    def mean(x, axis=None, keepdims=False):
        return jnp.mean(x.astype(_compute_dtype(x)), axis=axis, keepdims=keepdims).astype(x.dtype)

    @staticmethod
    def matmul(m1, m2):
        """m1 @ m2, accumulated in float32 or wider and rounded once, as torch's CPU kernels."""
        return _wide_matmul(m1, m2).astype(m1.dtype)

    @staticmethod
    def addmm(x, m1, m2, beta=1.0, alpha=1.0):
        """beta * x + alpha * (m1 @ m2), rounded once to x's dtype, as torch's CPU addmm."""
        product = _wide_matmul(m1, m2)
        return (alpha * product + beta * x.astype(product.dtype)).astype(x.dtype)

    @staticmethod
    def bfloat16(x):
        return x.astype(jnp.bfloat16)

    @staticmethod
    def scalar(x):
        """A 0-d array as a (traced) number of the host's precision, as ``.item()`` gives on torch."""
        return TracedMath.float(x)

    concat = staticmethod(jnp.concatenate)
    dot = staticmethod(jnp.dot)  # of two vectors, a 0-d array

    @staticmethod
    def copy(x):
        """JAX arrays are immutable: ``x`` itself is the copy."""
        return x

    finfo = staticmethod(jnp.finfo)
    rsqrt = staticmethod(jax.lax.rsqrt)
    reciprocal = staticmethod(jnp.reciprocal)

    where = staticmethod(jnp.where)
    sqrt = staticmethod(jnp.sqrt)
    maximum = staticmethod(jnp.maximum)
    abs = staticmethod(jnp.abs)
    zeros_like = staticmethod(jnp.zeros_like)

    @staticmethod
    def sign(x):
        """-1, 0 or 1; 0 for NaN, as torch's CPU kernel computes (0 < x) - (x < 0)."""
        return jnp.where(jnp.isnan(x), jnp.zeros_like(x), jnp.sign(x))

    @staticmethod
    def full_like(x, value):
        if hasattr(value, "__dlpack__") and not isinstance(value, jax.Array):
            value = _owned_copy(value)  # a one-element hyperparameter as the host holds it (a tensor lr)
        return jnp.full_like(x, value)


def _compute_dtype(x) -> Any:
    """float32 for low-precision arrays, their own dtype otherwise: what torch's CPU kernels accumulate in."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _wide_matmul(m1, m2):
    """m1 @ m2 left in the accumulation dtype (see :func:`_compute_dtype`), not yet rounded."""
    return jnp.matmul(m1, m2, preferred_element_type=_compute_dtype(m1))


class JaxBackend:
    name = "jax"
    ops = JaxOps

    def param_groups(self, params: Any) -> tuple[list[dict], bool]:
        # A list of per-layer dicts is a common pytree; only dicts with "params" are groups.
        if isinstance(params, (list, tuple)) and params and isinstance(params[0], Mapping) and "params" in params[0]:
            return list(params), True
        if not jax.tree_util.tree_leaves(params):
            raise ValueError("optimizer got an empty parameter list")
        return [{"params": params}], False

    def collect_params(self, params: Any, *, allow_non_leaf: bool) -> tuple[list, None, Any]:
        if isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but "
                "the ordering of arrays in sets will change between runs. Please use a list instead."
            )
        leaves, structure = jax.tree_util.tree_flatten_with_path(params)
        handles = []
        for path, leaf in leaves:
            where = _where(path)
            if not isinstance(leaf, (jax.Array, np.ndarray)):
                raise TypeError(
                    f"optimizer can only optimize JAX arrays, but the parameter at {where} is "
                    f"{type(leaf).__module__}.{type(leaf).__qualname__}"
                )
            if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                raise TypeError(
                    f"optimizer can only optimize floating-point or complex arrays, but the parameter "
                    f"at {where} has dtype {leaf.dtype}"
                )
            # The optimizer owns its copy: each step consumes (donates) the arrays it holds.
            handles.append(Param(jnp.array(leaf, copy=True), where))
        return handles, None, structure

    def value(self, param: Param) -> jax.Array:
        return param.value

    def write(self, param: Param, value: jax.Array) -> None:
        param.value = value

    def assemble(self, structure: Any, values: list) -> Any:
        return jax.tree_util.tree_unflatten(structure, values)

    def run_closure(self, closure: Callable, params: Any) -> tuple[Any, Any]:
        result = closure(params)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                "a closure on the JAX backend must return (loss, grads), as jax.value_and_grad(loss_fn) "
                f"does, but it returned {type(result).__name__}"
            )
        return result

    def match_gradients(self, grads: Any, structure: Any, params: list) -> list:
        leaves, found_structure = jax.tree_util.tree_flatten(grads, is_leaf=_is_gradient_leaf)
        if found_structure == structure:
            return [_checked_gradient(grad, param) for grad, param in zip(leaves, params)]
        # Only a mismatch needs the paths (slower to collect), to name what is missing or extra.
        found, _ = jax.tree_util.tree_flatten_with_path(grads, is_leaf=_is_gradient_leaf)
        expected = [p.path for p in params]
        given = [_where(path) for path, _ in found]
        missing = [w for w in expected if w not in given]
        unexpected = [w for w in given if w not in expected]
        detail = "; ".join(
            part
            for part in (
                f"no gradient at {', '.join(missing)}" if missing else "",
                f"unexpected gradient at {', '.join(unexpected)}" if unexpected else "",
            )
            if part
        ) or f"expected the structure {structure}, got {found_structure}"
        raise ValueError(f"gradients do not match the parameters' tree: {detail}")

    def zero_grad(self, param: Param, set_to_none: bool) -> None:
        if param.grad is not None:
            param.grad = None if set_to_none else jnp.zeros_like(param.grad)

    def store_counter(self, value: np.ndarray) -> jax.Array:
        return jnp.array(value)

    def is_sparse(self, array: Any) -> bool:
        return isinstance(array, sparse.BCOO)

    def floating_bits(self, array: Any) -> int | None:
        return jnp.finfo(array.dtype).bits if jnp.issubdtype(array.dtype, jnp.floating) else None

    def cast(self, array: Any, dtype: str) -> Any:
        return array.astype(dtype)

    def all_finite(self, grads: list) -> bool:
        return bool(_all_finite([g.data if isinstance(g, sparse.BCOO) else g for g in grads]))

    def is_complex(self, array: jax.Array) -> bool:
        return jnp.iscomplexobj(array)

    def as_real(self, array: jax.Array) -> jax.Array:
        return jnp.stack([array.real, array.imag], axis=-1)

    def as_complex(self, array: jax.Array) -> jax.Array:
        return jax.lax.complex(array[..., 0], array[..., 1])

    def foreach(self, group: dict[str, Any], params: list) -> bool:
        return False  # one compiled program per step: torch.optim's single-tensor formulas

    def apply(self, rule: Rule, work: list, state: dict, memory: dict) -> None:
        del memory  # one compiled program per step: nothing to keep between steps but the jit cache
        switches, numbers, values, grads, states = [], [], [], [], []
        for group, params, _ in work:
            group_switches = rule.switches(group)
            switches.append(_static(group_switches))
            numbers.append(hyperparameters(group, group_switches))
            values.append([p.value for p in params])
            grads.append([p.grad for p in params])
            states.append([state.get(p, {}) for p in params])
        # The step consumes the parameters and state: a gradient that is one of those arrays
        # (opt.step(opt.params) for the loss |p|^2 / 2) must survive the call as its own copy.
        consumed = {id(a) for group in values for a in group}
        consumed.update(id(a) for group in states for held in group for a in held.values())
        grads = [[jnp.copy(g) if id(g) in consumed else g for g in group_grads] for group_grads in grads]
        new_values, new_states = _step(rule, tuple(switches), numbers, values, grads, states)
        for (_, params, _), group_values, group_states in zip(work, new_values, new_states):
            for param, value, param_state in zip(params, group_values, group_states):
                param.value = value
                if param_state:
                    state[param] = {**state.get(param, {}), **param_state}

    def functional(self, rule: Rule, group: Mapping[str, Any], h: Any, counter_dtype: type) -> "Functional":
        return _functional(rule, group, h, counter_dtype)

    def load_state_value(self, value: Any, param: Param, dtype: str | None = None) -> jax.Array:
        array = _owned_copy(value)  # never another optimizer's array: a step consumes its state
        return array.astype(dtype or param.dtype) if jnp.issubdtype(param.dtype, jnp.inexact) else array


def _owned_copy(value: Any) -> jax.Array:
    """A JAX array of another framework's array, never sharing its memory (that one may be mutated)."""
    if hasattr(value, "detach"):  # a torch tensor: export through DLPack, which knows bfloat16
        return jnp.array(jnp.from_dlpack(value.detach().contiguous()), copy=True)
    return jnp.array(value, copy=True)  # JAX and NumPy arrays (read-only ones too)


def _where(path) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _is_gradient_leaf(node: Any) -> bool:
    """None (no gradient) and sparse arrays are leaves of a gradient tree, not subtrees."""
    return node is None or isinstance(node, sparse.BCOO)


def _checked_gradient(grad: Any, param: Param) -> jax.Array | None:
    if grad is None:
        return None
    if isinstance(grad, jax.Array) and grad.dtype == param.dtype and grad.shape == param.shape:
        return grad  # the common case, decided without the dtype checks below
    if not isinstance(grad, (jax.Array, sparse.BCOO)):
        try:
            grad = jnp.asarray(grad)
        except TypeError as error:
            raise TypeError(f"gradient at {param.path} is not an array: {error}") from None
    if grad.shape != param.shape:
        raise ValueError(
            f"gradient at {param.path} has shape {tuple(grad.shape)}, but the parameter has shape {tuple(param.shape)}"
        )
    complex_param = jnp.issubdtype(param.dtype, jnp.complexfloating)
    allowed = jnp.inexact if complex_param else jnp.floating
    if not jnp.issubdtype(grad.dtype, allowed):
        raise TypeError(
            f"gradient at {param.path} has dtype {grad.dtype}, but the parameter has dtype {param.dtype}: "
            f"a gradient must be {'floating-point or complex' if complex_param else 'floating-point'}"
        )
    return grad if grad.dtype == param.dtype else grad.astype(param.dtype)


class TracedMath:
    """:class:`backends.HostMath` for scalars traced inside a compiled step (float64 under x64)."""

    @staticmethod
    def float(value):
        # Weakly typed, as a Python float: against a float32 hyperparameter array (a tensor
        # lr) the arithmetic stays float32, as torch's does with a Python scalar.
        return _convert_element_type(value, jnp.result_type(float), weak_type=True)

    where = staticmethod(jnp.where)
    sqrt = staticmethod(jnp.sqrt)

    @staticmethod
    def cast_like(value, like):
        return jnp.asarray(value).astype(jnp.asarray(like).dtype)


def hyperparameters(group: Mapping[str, Any], switches: Mapping[str, Any]) -> dict[str, Any]:
    """A group's numeric hyperparameters as the compiled step's data.

    Python numbers stay Python floats, which jit takes as weakly typed scalars (without a
    dispatch per number per step), so they round as torch's Python scalars do against a
    tensor's dtype; arrays (a tensor-like lr) keep their dtype.
    """
    def convert(value: Any) -> float | jax.Array:
        if not hasattr(value, "shape"):
            return float(value)
        if isinstance(value, jax.Array) and value.shape == ():
            return value
        return jnp.reshape(value if isinstance(value, jax.Array) else jnp.asarray(np.asarray(value)), ())

    return numbers(group, convert, switches)


def _static(switches: Mapping[str, Any]) -> tuple:
    return tuple(sorted(switches.items()))


def _in_precision(value: Any, precision: Any) -> Any:
    # Coefficients round to the parameter's precision, as torch casts a Python scalar;
    # low-precision parameters compute in float32, as torch's kernels do.  A narrower
    # array (a float32 tensor-like lr beside float64 parameters) keeps its dtype: torch's
    # scalar arithmetic on such a tensor (Adafactor's step size) stays in float32 too.
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.floating):
        if value.weak_type:  # a Python number: it stays one, in the parameter's precision
            return _convert_element_type(value, precision, weak_type=True)
        if jnp.finfo(value.dtype).bits > jnp.finfo(precision).bits:
            return value.astype(precision)
    return value


#: In a functional state, marks a leaf whose lazily created entries (SGD's momentum buffer)
#: already hold values: until then they are zeros the rule must not read.
INITIALIZED = "initialized"


def _leaf_step(rule: Rule, shared: dict, value, grad, param_state: dict):
    """One parameter's step inside a trace: its schedule from its own counters, then the rule."""
    if INITIALIZED in param_state:
        # A functional state has a fixed structure, so lazily created entries exist from the
        # start; the rule's first step runs without them, as torch.optim's does, and later
        # steps with them.  Both are elementwise over the same arrays, so computing both and
        # selecting fuses into one pass; a lax.cond would keep XLA from updating the donated
        # buffers in place (measured: SGD with momentum 5x slower).
        held = {k: v for k, v in param_state.items() if k != INITIALIZED}
        eager = {*rule.counters, *rule.initial_state(JaxOps, value, Scalars(shared))}
        first = {k: v for k, v in held.items() if k in eager}
        later_step = _leaf_step(rule, shared, value, grad, held)
        first_step = _leaf_step(rule, shared, value, grad, first)
        new_value, new_state = jax.tree_util.tree_map(
            lambda later, first: jnp.where(param_state[INITIALIZED], later, first), later_step, first_step
        )
        return new_value, {**new_state, INITIALIZED: jnp.ones((), bool)}
    counters = {k: param_state[k] for k in rule.counters}
    arrays = {k: v for k, v in param_state.items() if k not in rule.counters}
    scheduled, advanced = rule.schedule(TracedMath, Scalars(shared), counters)
    work, work_grad = widened(BACKEND, rule, value, value), widened(BACKEND, rule, grad, value)
    precision = jnp.promote_types(jnp.finfo(work.dtype).dtype, jnp.float32)
    h = Scalars({k: _in_precision(v, precision) for k, v in {**shared, **scheduled}.items()})
    new_value, new_arrays = run_update(BACKEND, rule, work, work_grad, arrays, h)
    new_state = {k: jnp.asarray(v).astype(counters[k].dtype) for k, v in advanced.items()}
    new_state.update({k: v.astype(arrays[k].dtype if k in arrays else work.dtype) for k, v in new_arrays.items()})
    return new_value.astype(value.dtype), new_state


def _traced_step(rule, switches, numbers, values, grads, states):
    """A whole step, traced: every group's coefficients, then every parameter's rule."""
    new_values, new_states = [], []
    for group_switches, group_numbers, group_values, group_grads, group_states in zip(
        switches, numbers, values, grads, states
    ):
        shared = _shared(rule, group_switches, group_numbers)
        stepped = [_leaf_step(rule, shared, *leaf) for leaf in zip(group_values, group_grads, group_states)]
        new_values.append([value for value, _ in stepped])
        new_states.append([param_state for _, param_state in stepped])
    return new_values, new_states


@jax.jit
def _all_finite(arrays: list) -> jax.Array:
    return jnp.array([jnp.isfinite(a).all() for a in arrays]).all()


#: The object-oriented step: one program for the whole step (switches compiled in).  It
#: donates the parameters and state it replaces, so XLA writes the new ones in their place.
_step = jax.jit(_traced_step, static_argnums=(0, 1), donate_argnums=(3, 5))


class Functional(NamedTuple):
    """An optimizer as pure functions, for a training step the user compiles.

    ``init(params) -> state`` and ``update(grads, state, params, hyperparams=None) ->
    (new_params, new_state)``.  ``state`` is a pytree shaped like ``params`` with a dict
    of arrays at each leaf (torch.optim's state entries, e.g. ``step``, ``exp_avg``), so
    it can be donated, sharded and checkpointed like any pytree.  ``hyperparams``
    overrides the numeric hyperparameters in :attr:`hyperparams` (``lr``, ``betas``,
    ...) with numbers or arrays, traced or not: changing them never recompiles.  A
    ``None`` gradient leaves its parameter and state as they are.
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]
    hyperparams: dict[str, Any]


def _functional(rule: Rule, group: Mapping[str, Any], h: Any, counter_dtype: type) -> Functional:
    """The pure form of ``rule`` with ``group``'s switches and (default) hyperparameters.

    ``update`` runs the traced step :func:`_step` compiles for the object-oriented
    ``step()``; only its inputs come from the caller instead of the optimizer.
    """
    group_switches = rule.switches(group)
    switches = (_static(group_switches),)
    defaults = hyperparameters(group, group_switches)

    def init(params: Any) -> Any:
        leaves, structure = jax.tree_util.tree_flatten(params)
        shared = _shared(rule, switches[0], defaults)
        states = []
        for leaf in leaves:
            value = jnp.asarray(leaf)
            state = {k: _placed_like(v, value) for k, v in initial_state(BACKEND, rule, value, h, counter_dtype).items()}
            # Entries the rule creates at its first step (SGD's momentum buffer) exist from
            # the start here, as zeros, so the state's structure never changes.
            _, stepped = jax.eval_shape(lambda s: _leaf_step(rule, shared, value, value, s), state)
            lazy = {k: _placed_like(jnp.zeros(v.shape, v.dtype), value) for k, v in stepped.items() if k not in state}
            states.append({**state, **lazy, INITIALIZED: jnp.zeros((), bool)} if lazy else state)
        return jax.tree_util.tree_unflatten(structure, states)

    @jax.jit
    def update(grads: Any, state: Any, params: Any, hyperparams: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
        values, structure = jax.tree_util.tree_flatten(params)
        grad_leaves = _flatten_like(structure, grads, "gradients")
        states = _flatten_like(structure, state, "state")
        numbers = {**defaults, **_checked_overrides(defaults, hyperparams or {})}
        stepping = [i for i, grad in enumerate(grad_leaves) if grad is not None]
        new_values, new_states = _traced_step(
            rule, switches, [numbers], [[values[i] for i in stepping]],
            [[_as_dtype(grad_leaves[i], values[i].dtype) for i in stepping]], [[states[i] for i in stepping]],
        )
        values, states = list(values), list(states)
        for i, value, leaf_state in zip(stepping, new_values[0], new_states[0]):
            values[i], states[i] = value, leaf_state
        return jax.tree_util.tree_unflatten(structure, values), jax.tree_util.tree_unflatten(structure, states)

    return Functional(init, update, {k: _plain(v) for k, v in defaults.items()})


def _as_dtype(grad: Any, dtype: Any) -> Any:
    return grad.astype(dtype) if isinstance(grad, sparse.BCOO) else jnp.asarray(grad).astype(dtype)


def _shared(rule: Rule, switches: tuple, numbers: Mapping[str, Any]) -> dict:
    return {**dict(switches), **rule.coefficients(TracedMath, numbers)}


def _placed_like(array: jax.Array, like: jax.Array) -> jax.Array:
    """``array`` with ``like``'s sharding, so state lives where its parameter lives."""
    sharding = getattr(like, "sharding", None)
    return jax.device_put(array, sharding) if sharding is not None and array.shape == like.shape else array


def _flatten_like(structure: Any, tree: Any, what: str) -> list:
    try:
        return structure.flatten_up_to(tree)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{what} do not match the parameters' tree: {error}") from None


def _checked_overrides(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))}: this optimizer's numeric "
            f"hyperparameters are {', '.join(sorted(defaults))}"
        )
    return {k: tuple(overrides[k]) if isinstance(defaults[k], tuple) else overrides[k] for k in overrides}


def _plain(value: Any) -> Any:
    """A default hyperparameter as the user wrote it: a float (or a tuple of floats) unless it was an array."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return float(value) if getattr(value, "weak_type", False) else value


BACKEND = JaxBackend()
