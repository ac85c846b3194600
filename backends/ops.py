"""The array operations an update rule may use: the contract every backend's op table meets.

Each operation rounds as the torch kernel of the same name (see the backends' tables for
how closely each framework can follow it).  ``tests/test_backends.py`` checks that both
tables have every operation with these parameters; mypy checks the types.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Ops"]

Array = Any


@runtime_checkable
class Ops(Protocol):
    """What ``ops`` holds in ``update(ops, param, grad, state, h)``: static functions over arrays."""

    # -- elementwise, torch's fused forms -------------------------------------------------
    def add(self, x: Array, y: Array, alpha: Any = 1.0) -> Array:
        """x + alpha * y."""

    def lerp(self, x: Array, end: Array, weight: Any) -> Array:
        """x + weight * (end - x)."""

    def addcmul(self, x: Array, t1: Array, t2: Array, value: Any = 1.0) -> Array:
        """x + value * t1 * t2."""

    def addcdiv(self, x: Array, t1: Array, t2: Array, value: Any = 1.0) -> Array:
        """x + value * t1 / t2."""

    def where(self, condition: Any, if_true: Array, if_false: Array) -> Array:
        """Elementwise choice."""

    def clamp(self, x: Array, low: Any = None, high: Any = None) -> Array:
        """min(max(x, low), high), NaN kept; a None bound is no bound."""

    def sqrt(self, x: Array) -> Array: ...
    def rsqrt(self, x: Array) -> Array: ...
    def reciprocal(self, x: Array) -> Array: ...
    def maximum(self, x: Array, y: Array) -> Array: ...
    def abs(self, x: Array) -> Array: ...
    def sign(self, x: Array) -> Array: ...
    def zeros_like(self, x: Array) -> Array: ...
    def full_like(self, x: Array, value: Any) -> Array: ...

    def zeros(self, shape: Any, like: Array) -> Array:
        """Zeros of ``shape`` in ``like``'s dtype and device."""

    def bfloat16(self, x: Array) -> Array: ...

    def copy(self, x: Array) -> Array:
        """An array that later writes to ``x`` leave as it is."""

    def finfo(self, dtype: Any) -> Any:
        """The floating-point type's limits (``eps``, ``tiny``)."""

    # -- reductions and linear algebra ------------------------------------------------------
    def norm(self, x: Array, axis: Any = None, keepdims: bool = False) -> Array:
        """The Euclidean norm, of all elements or along ``axis``, in x's dtype."""

    def mean(self, x: Array, axis: Any = None, keepdims: bool = False) -> Array: ...

    def sum(self, x: Array, axis: Any = None) -> Array:
        """The sum of all elements (a 0-d array of x's dtype), or along ``axis``."""

    def astype(self, x: Array, dtype: str) -> Array:
        """``x`` in the dtype named ``dtype`` ("float32")."""

    def dot(self, x: Array, y: Array) -> Array:
        """Of two vectors, a 0-d array."""

    def matmul(self, m1: Array, m2: Array) -> Array: ...

    def addmm(self, x: Array, m1: Array, m2: Array, beta: Any = 1.0, alpha: Any = 1.0) -> Array:
        """beta * x + alpha * (m1 @ m2), rounded once to x's dtype."""

    def concat(self, arrays: Any) -> Array: ...

    def tensordot(self, x: Array, y: Array, axes: Any) -> Array:
        """The sum of products over ``x``'s axes ``axes[0]`` and ``y``'s ``axes[1]`` (torch's ``dims``)."""

    def eigh(self, x: Array) -> tuple[Array, Array]:
        """(eigenvalues ascending, eigenvectors as columns) of a symmetric matrix, read from its lower triangle."""

    def qr(self, x: Array) -> tuple[Array, Array]:
        """The reduced QR decomposition ``(q, r)`` (LAPACK's Householder signs)."""

    def eye_like(self, x: Array) -> Array:
        """The identity matrix of square ``x``'s size, dtype and device."""

    def argsort(self, x: Array, descending: bool = False) -> Array: ...

    def take(self, x: Array, indices: Array, axis: int) -> Array:
        """``x``'s slices at ``indices`` along ``axis`` (torch's ``index_select``)."""

    def flip(self, x: Array, axis: int) -> Array: ...

    def permute(self, x: Array, axes: Any) -> Array:
        """``x`` with its axes reordered: axis ``i`` of the result is ``x``'s axis ``axes[i]``."""

    # -- control flow ------------------------------------------------------------------------
    def cond(self, predicate: Any, if_true: Any, if_false: Any) -> Any:
        """``if_true()`` or ``if_false()`` (functions of no arguments returning arrays of one structure).

        A host bool decides on the host; a traced one compiles both and runs one, so an
        expensive branch taken every few steps (an eigendecomposition) costs only then.
        """

    def scalar(self, x: Array) -> Any:
        """A 0-d array as a host number, as torch.optim's ``.item()`` reads it."""

    # -- sparse gradients ----------------------------------------------------------------------
    def is_sparse(self, x: Array) -> bool:
        """Whether ``x`` is a sparse array (torch sparse COO, JAX ``BCOO``): a host-side branch."""

    def dense(self, x: Array) -> Array:
        """A sparse gradient as the dense array it stands for."""

    def coalesce(self, x: Array) -> Array:
        """A sparse array with its duplicate entries summed; a dense one as the sparse array of its nonzeros."""

    def sparse_values(self, x: Array) -> Array: ...

    def gather(self, dense: Array, like: Array) -> Array:
        """The entries of ``dense`` where the sparse array ``like`` has entries, shaped as its values."""

    def scatter_add(self, dense: Array, like: Array, values: Array, alpha: Any = 1.0) -> Array:
        """``dense + alpha * s``, ``s`` the sparse array with ``like``'s indices and ``values``."""
