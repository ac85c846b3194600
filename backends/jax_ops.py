"""The array operations update rules use on the JAX backend, and traced scalar arithmetic."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax._src.lax.lax import _convert_element_type  # the one way to make a traced value weakly typed
from jax.experimental import sparse

__all__ = ["JaxOps", "TracedMath", "owned_copy"]


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
    def is_sparse(x):
        return isinstance(x, sparse.BCOO)

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
    def scatter_add(dense, like, values, alpha=1.0):
        """``dense + alpha * s``, ``s`` the sparse array with ``like``'s indices and ``values``."""
        return dense.at[tuple(like.indices.T)].add(values * alpha, mode="drop")  # times 1.0: exact

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
    def sum(x, axis=None):
        return jnp.sum(x, axis=axis)

    @staticmethod
    def astype(x, dtype):
        return x.astype(dtype)

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

    @staticmethod
    def tensordot(x, y, axes):
        return jnp.tensordot(x, y, axes=(tuple(axes[0]), tuple(axes[1])))

    @staticmethod
    def eigh(x):
        # torch reads the lower triangle as given; a product such as G G^T is symmetric only to
        # rounding, so averaging it with its transpose (JAX's default) would change it.
        return tuple(jnp.linalg.eigh(x, UPLO="L", symmetrize_input=False))

    @staticmethod
    def qr(x):
        return tuple(jnp.linalg.qr(x))

    @staticmethod
    def eye_like(x):
        return jnp.eye(x.shape[0], dtype=x.dtype)

    @staticmethod
    def argsort(x, descending=False):
        return jnp.argsort(x, descending=descending)

    @staticmethod
    def take(x, indices, axis):
        return jnp.take(x, indices, axis=axis)

    @staticmethod
    def flip(x, axis):
        return jnp.flip(x, axis=axis)

    @staticmethod
    def permute(x, axes):
        return jnp.transpose(x, tuple(axes))

    @staticmethod
    def cond(predicate, if_true, if_false):
        if isinstance(predicate, bool):
            return if_true() if predicate else if_false()
        return jax.lax.cond(predicate, if_true, if_false)

    dot = staticmethod(jnp.dot)  # of two vectors, a 0-d array

    @staticmethod
    def copy(x):
        """A buffer of its own (inside jit, free): a step donates the parameter and its state apart."""
        return jnp.array(x, copy=True)

    finfo = staticmethod(jnp.finfo)
    rsqrt = staticmethod(jax.lax.rsqrt)
    reciprocal = staticmethod(jnp.reciprocal)

    @staticmethod
    def where(condition, if_true, if_false):
        return jnp.where(condition, if_true, if_false)

    sqrt = staticmethod(jnp.sqrt)
    maximum = staticmethod(jnp.maximum)
    abs = staticmethod(jnp.abs)
    zeros_like = staticmethod(jnp.zeros_like)

    @staticmethod
    def sign(x):
        """-1, 0 or 1; 0 for NaN, as torch's CPU kernel computes (0 < x) - (x < 0)."""
        return jnp.where(jnp.isnan(x), jnp.zeros_like(x), jnp.sign(x))

    @staticmethod
    def zeros(shape, like):
        return jnp.zeros(shape, like.dtype)

    @staticmethod
    def full_like(x, value):
        if hasattr(value, "__dlpack__") and not isinstance(value, jax.Array):
            value = owned_copy(value)  # a one-element hyperparameter as the host holds it (a tensor lr)
        return jnp.full_like(x, value)


def _compute_dtype(x) -> Any:
    """float32 for low-precision arrays, their own dtype otherwise: what torch's CPU kernels accumulate in."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _wide_matmul(m1, m2):
    """m1 @ m2 left in the accumulation dtype (see :func:`_compute_dtype`), not yet rounded."""
    return jnp.matmul(m1, m2, preferred_element_type=_compute_dtype(m1))


class TracedMath:
    """:class:`backends.HostMath` for scalars traced inside a compiled step (float64 under x64)."""

    @staticmethod
    def float(value):
        # Weakly typed, as a Python float: against a float32 hyperparameter array (a tensor
        # lr) the arithmetic stays float32, as torch's does with a Python scalar.
        return _convert_element_type(value, jnp.result_type(float), weak_type=True)

    where = staticmethod(jnp.where)
    sqrt = staticmethod(jnp.sqrt)
    log = staticmethod(jnp.log)

    @staticmethod
    def cast_like(value, like):
        return jnp.asarray(value).astype(jnp.asarray(like).dtype)


def owned_copy(value: Any) -> jax.Array:
    """A JAX array of another framework's array, never sharing its memory (that one may be mutated)."""
    if hasattr(value, "detach"):  # a torch tensor: export through DLPack, which knows bfloat16
        return jnp.array(jnp.from_dlpack(value.detach().contiguous()), copy=True)
    return jnp.array(value, copy=True)  # JAX and NumPy arrays (read-only ones too)
