"""The array operations update rules use on the torch backend."""

from __future__ import annotations

import math

import torch


class TorchOps:
    """The array operations update rules use: the torch kernels torch.optim's single-tensor path calls.

    Running a rule with these reproduces torch.optim bit for bit on this backend.
    """

    @staticmethod
    def add(x, y, alpha=1.0):
        """x + alpha * y."""
        return torch.add(x, y, alpha=alpha)

    @staticmethod
    def lerp(x, end, weight):
        """x + weight * (end - x)."""
        return torch.lerp(x, end, weight)

    @staticmethod
    def addcmul(x, t1, t2, value=1.0):
        """x + value * t1 * t2."""
        return torch.addcmul(x, t1, t2, value=value)

    @staticmethod
    def addcdiv(x, t1, t2, value=1.0):
        """x + value * t1 / t2."""
        return torch.addcdiv(x, t1, t2, value=value)

    @staticmethod
    def is_sparse(x):
        return x.is_sparse

    @staticmethod
    def dense(x):
        """A sparse gradient as the dense array it stands for."""
        return x.to_dense() if x.is_sparse else x

    @staticmethod
    def coalesce(x):
        """A sparse array with its duplicate entries summed; a dense one as the sparse array of its nonzeros."""
        return x.coalesce() if x.is_sparse else x.to_sparse()

    @staticmethod
    def sparse_values(x):
        return x._values()

    @staticmethod
    def gather(dense, like):
        """The entries of ``dense`` where the sparse array ``like`` has entries, shaped as its values."""
        return dense.sparse_mask(like)._values()

    @staticmethod
    def scatter_add(dense, like, values, alpha=1.0):
        """``dense + alpha * s``, ``s`` the sparse array with ``like``'s indices and ``values``
        (per entry as the dense add-with-alpha kernel rounds it)."""
        return dense.add(torch.sparse_coo_tensor(like._indices(), values, like.size()), alpha=alpha)

    @staticmethod
    def where(condition, if_true, if_false):
        """Elementwise choice; a Python bool (a host-side schedule's) picks one array whole."""
        if isinstance(condition, bool):
            return if_true if condition else if_false
        return torch.where(condition, if_true, if_false)

    @staticmethod
    def clamp(x, low=None, high=None):
        """min(max(x, low), high), NaN kept; a None bound is no bound."""
        return torch.clamp(x, low, high)

    @staticmethod
    def norm(x, axis=None, keepdims=False):
        """The Euclidean norm, of all elements or along ``axis``, in x's dtype."""
        return torch.linalg.vector_norm(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def mean(x, axis=None, keepdims=False):
        return torch.mean(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def sum(x, axis=None):
        return torch.sum(x) if axis is None else torch.sum(x, dim=axis)

    @staticmethod
    def astype(x, dtype):
        return x.to(getattr(torch, dtype))

    @staticmethod
    def addmm(x, m1, m2, beta=1.0, alpha=1.0):
        """beta * x + alpha * (m1 @ m2), rounded once to x's dtype."""
        return torch.addmm(x, m1, m2, beta=beta, alpha=alpha)

    @staticmethod
    def bfloat16(x):
        return x.bfloat16()

    @staticmethod
    def scalar(x):
        """A 0-d array as a host number, as torch.optim's ``.item()`` reads it (a device sync)."""
        return x.item()

    concat = staticmethod(torch.cat)

    @staticmethod
    def tensordot(x, y, axes):
        return torch.tensordot(x, y, dims=[list(axes[0]), list(axes[1])])

    @staticmethod
    def eigh(x):
        return tuple(torch.linalg.eigh(x))

    @staticmethod
    def qr(x):
        return tuple(torch.linalg.qr(x))

    @staticmethod
    def eye_like(x):
        return torch.eye(x.shape[0], dtype=x.dtype, device=x.device)

    @staticmethod
    def argsort(x, descending=False):
        return torch.argsort(x, descending=descending)

    @staticmethod
    def take(x, indices, axis):
        return torch.index_select(x, axis, indices)

    @staticmethod
    def flip(x, axis):
        return torch.flip(x, dims=[axis])

    @staticmethod
    def permute(x, axes):
        return torch.permute(x, tuple(axes))

    @staticmethod
    def cond(predicate, if_true, if_false):
        """On the host: a bool, or a 0-d tensor read back (a device sync)."""
        return if_true() if bool(predicate) else if_false()

    dot = staticmethod(torch.dot)  # of two vectors, a 0-d array

    @staticmethod
    def copy(x):
        """An array that later writes to ``x`` leave as it is."""
        return torch.clone(x)

    finfo = staticmethod(torch.finfo)
    matmul = staticmethod(torch.matmul)
    rsqrt = staticmethod(torch.rsqrt)
    reciprocal = staticmethod(torch.reciprocal)

    sqrt = staticmethod(torch.sqrt)
    maximum = staticmethod(torch.maximum)
    abs = staticmethod(torch.abs)
    sign = staticmethod(torch.sign)

    @staticmethod
    def zeros_like(x):
        return torch.zeros_like(x, memory_format=torch.preserve_format)

    @staticmethod
    def zeros(shape, like):
        return torch.zeros(shape, dtype=like.dtype, device=like.device)

    @staticmethod
    def full_like(x, value):
        return torch.full_like(x, value, memory_format=torch.preserve_format)


class KernelOps(TorchOps):
    """TorchOps for scalars that are 0-d tensors, as they are inside a compiled step.

    ``alpha=``/``value=``/``weight=`` take a Python number; a 0-d tensor there is read back to
    the host, which a compiled graph cannot do, and a Python float would be compiled in as a
    constant, so each new value (a beta1 that CyclicLR cycles) would compile the step again.
    Here tensor scalars multiply as tensors (rounding as a fused loop does, not as ATen's
    multiply-add kernels); Python numbers go to the ATen operation as they are.
    """

    @staticmethod
    def add(x, y, alpha=1.0):
        return x + alpha * y if isinstance(alpha, torch.Tensor) else torch.add(x, y, alpha=alpha)

    @staticmethod
    def lerp(x, end, weight):
        if not isinstance(weight, torch.Tensor):
            return torch.lerp(x, end, weight)
        # ATen's two-sided form: exact at both ends.
        return torch.where(weight < 0.5, x + weight * (end - x), end - (end - x) * (1 - weight))

    @staticmethod
    def addcmul(x, t1, t2, value=1.0):
        return x + value * t1 * t2 if isinstance(value, torch.Tensor) else torch.addcmul(x, t1, t2, value=value)

    @staticmethod
    def addcdiv(x, t1, t2, value=1.0):
        return x + value * t1 / t2 if isinstance(value, torch.Tensor) else torch.addcdiv(x, t1, t2, value=value)


class TensorMath:
    """:class:`backends.HostMath` for a step that torch.compile traces: counters stay 0-d tensors
    and the schedule is float64 tensor arithmetic inside the graph (no read back to the host),
    as torch.optim's own step computes it when compiled."""

    @staticmethod
    def float(value):
        return value.to(torch.float64) if isinstance(value, torch.Tensor) else float(value)

    @staticmethod
    def where(condition, if_true, if_false):
        if not isinstance(condition, torch.Tensor):
            return if_true if condition else if_false
        wide = [v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float64) for v in (if_true, if_false)]
        return torch.where(condition, *wide)

    @staticmethod
    def sqrt(value):
        return torch.sqrt(value) if isinstance(value, torch.Tensor) else math.sqrt(value)

    @staticmethod
    def log(value):
        return torch.log(value) if isinstance(value, torch.Tensor) else math.log(value)

    @staticmethod
    def cast_like(value, like):
        return torch.as_tensor(value).to(like.dtype)
