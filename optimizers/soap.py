"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner, refreshed every few steps."""

from __future__ import annotations

from itertools import chain
from math import prod
from typing import Any

import backends

from .optimizer import Optimizer, signature_arguments
from .validation import check_array_lr, check_betas, linalg_error

__all__ = ["SOAP"]

DATA_FORMATS = ("channels_first", "channels_last")


class SOAP(Optimizer):
    r"""SOAP (Vyas et al., 2024) as ``pytorch_optimizer.SOAP`` (4.1) computes it.

    Each preconditioned dimension :math:`i` of a parameter (of its merged shape with
    ``merge_dims``) keeps Shampoo's statistic :math:`L_i` and an orthogonal basis :math:`Q_i`;
    :math:`P(X)` contracts every dimension :math:`i` of :math:`X` with :math:`Q_i`
    (:math:`Q_L^\top X Q_R` for a matrix), :math:`P^{-1}` with :math:`Q_i^\top`.  With
    :math:`s = t - 1`, :math:`\beta_s` = shampoo_beta (:math:`\beta_2` if None):

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\, P(g_t)^2 \\
        u_t &= P^{-1}\!\left(\frac{P(m_t)}{\sqrt{v_t} + \epsilon}\right), \qquad
        \theta_t = \left(\theta_{t-1} - \eta \frac{\sqrt{1-\beta_2^{s}}}{1-\beta_1^{s}}\, u_t\right)(1 - \eta\lambda) \\
        L_{i,t} &= \beta_s L_{i,t-1} + (1-\beta_s)\, G_{(i)} G_{(i)}^\top

    (:math:`G_{(i)}` the gradient unfolded along dimension :math:`i`).  At a parameter's
    first gradient :math:`L_i` takes it in and :math:`Q_i` is the eigenvectors of :math:`L_i`,
    largest eigenvalue first; the group's first step moves nothing else.  When :math:`s > 0`
    is a multiple of ``precondition_frequency``, after the step, one power iteration refreshes
    each basis: the columns of :math:`L_i Q_i` are ordered by the estimated eigenvalues
    :math:`\operatorname{diag}(Q_i^\top L_i Q_i)` (and :math:`v`'s entries with them), and
    :math:`Q_i` becomes the Q of their QR decomposition, computed in float32 as the reference
    computes it.  Dimensions above ``max_precondition_dim`` (and 1-D parameters, unless
    ``precondition_1d``) are not rotated; ``normalize_gradient`` divides :math:`u_t` by its
    RMS (plus :math:`\epsilon`); ``data_format="channels_last"`` merges a 4-D NHWC tensor as
    NCHW.

    State: ``exp_avg`` (:math:`m`, in the parameter's basis), ``exp_avg_sq`` (:math:`v`, in
    the rotated one), ``GG`` (the :math:`L_i`, an empty list for a dimension not rotated) and
    ``Q`` (the :math:`Q_i`); the groups hold ``step``, as the reference keeps it.

    Where definitions differ:

    * The reference keeps ``precondition_frequency`` and ``shampoo_beta`` in each parameter's
      state from its first step and reads them there; here the group's values are read at
      each step (the same unless a group's value is changed).  ``state_dict()`` writes them
      into each parameter's state for the reference to load.
    * With ``merge_dims``, the reference's shape merge turns every tensor of at most
      ``max_precondition_dim`` elements into shape ``[1]``, so its step raises a RuntimeError
      for any such tensor of two or more elements (every bias); here such a tensor is one
      dimension of all its elements, as the authors' SOAP merges it.
    * With ``maximize`` the reference negates ``p.grad`` in place (a second ``step()`` on the
      same gradient steps the other way); here gradients are not written.  A tensor ``lr`` is
      multiplied in place by the bias correction there at every step; here it is read.
    * Eigendecompositions of bfloat16 and float16 statistics are computed in float64 (the
      reference's retry after torch refuses them); a float32 one that fails to converge
      raises here, where the reference retries it in float64.  A first gradient that is not
      finite raises torch's ``LinAlgError`` before anything changes, as the reference's
      eigendecomposition raises it (mid-step).
    * No JAX reference exists.  Eigenvectors are defined up to sign and, for a repeated
      eigenvalue, up to a rotation within its eigenspace; LAPACK builds choose differently.
      The update is invariant to the signs and to the order of the basis (the refresh sorts
      it), not to such rotations: the torch and JAX backends agree where every eigenvalue
      of a statistic is simple when its basis is computed.
    """

    group_counters = {"step": 0}
    #: The reference keeps these two on the optimizer rather than in its param groups.
    options_outside_groups = ("maximize", "data_format")
    sparse_gradients_error = "SOAP does not support sparse gradients"
    complex_parameters_error = "SOAP does not support complex parameters"

    def __init__(
        self,
        params: Any,
        lr: Any = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float | None = None,
        weight_decay: float = 1e-2,
        precondition_frequency: int = 10,
        max_precondition_dim: int = 10000,
        merge_dims: bool = False,
        precondition_1d: bool = False,
        correct_bias: bool = True,
        normalize_gradient: bool = False,
        data_format: str = "channels_first",
        eps: float = 1e-8,
        maximize: bool = False,
        *,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        check_array_lr(lr)
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr} (it must be >= 0)")
        check_betas(betas)
        if shampoo_beta is not None and not 0.0 <= shampoo_beta < 1.0:
            raise ValueError(f"Invalid shampoo_beta: {shampoo_beta} (it must be in [0, 1), or None for beta2)")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        for name, value in (
            ("precondition_frequency", precondition_frequency),
            ("max_precondition_dim", max_precondition_dim),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Invalid {name}: {value!r} (it must be a positive int)")
        if data_format not in DATA_FORMATS:
            raise ValueError(f"Invalid data_format: {data_format!r} (one of {', '.join(DATA_FORMATS)})")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        super().__init__(**signature_arguments(SOAP.__init__, locals()))

    @staticmethod
    def options_in_state(group: dict[str, Any]) -> dict[str, Any]:
        """The group options the reference also keeps in each parameter's state."""
        shampoo_beta = group["shampoo_beta"]
        return {
            "precondition_frequency": group["precondition_frequency"],
            "shampoo_beta": group["betas"][1] if shampoo_beta is None else shampoo_beta,
        }

    def _check_step(self, stepping):
        super()._check_step(stepping)
        if self.skip_nonfinite:  # such a step is skipped whole
            return
        for group, params in stepping:
            h = backends.Scalars(self.switches(group))
            for param in params:
                if self.state.get(param):  # not its first gradient
                    continue
                # LAPACK solves 1 x 1 and 2 x 2 blocks in closed form (NaN in, NaN out); its
                # iteration for larger ones fails on a non-finite matrix, and torch raises.
                sizes = _statistic_sizes(tuple(self._backend.value(param).shape), h)
                if any(size and size > 2 for size in sizes) and not self._backend.all_finite([param.grad]):
                    every = chain.from_iterable(g["params"] for g in self.param_groups)
                    index = next(i for i, p in enumerate(every) if p is param)
                    raise linalg_error(
                        f"linalg.eigh: SOAP's preconditioner for parameter {index} (shape "
                        f"{tuple(self._backend.value(param).shape)}) starts from its first gradient, which is not "
                        "finite: its eigendecomposition fails (nothing was changed)"
                    )

    @staticmethod
    def switches(group):
        return dict(
            maximize=bool(group["maximize"]),
            corrects=bool(group["correct_bias"]),
            normalizes=bool(group["normalize_gradient"]),
            decays=group["weight_decay"] != 0,
            merge_dims=bool(group["merge_dims"]),
            precondition_1d=bool(group["precondition_1d"]),
            channels_last=group["data_format"] == "channels_last",
            # It decides the state's shapes: it shapes the program rather than feeding it.
            max_precondition_dim=int(group["max_precondition_dim"]),
        )

    @staticmethod
    def advance_group(math, numbers):
        return {"step": numbers["step"] + 1}

    @staticmethod
    def coefficients(math, numbers):
        lr = numbers["lr"]
        beta1, beta2 = numbers["betas"]
        shampoo_beta = numbers.get("shampoo_beta", beta2)  # None is a switch: beta2
        # The group's step count after this step's; s, the reference's bias-correction step,
        # is 0 at the first step, which moves no parameter (and -1 before any step).
        s = numbers["step"] - 1
        counted = math.where(s > 0, s, 1)
        return dict(
            lr=lr,
            one_minus_beta1=1.0 - beta1,
            one_minus_beta2=1.0 - beta2,
            statistics_weight=1.0 - shampoo_beta,
            eps=numbers["eps"],
            first_step=s == 0,
            refresh=math.where(s > 0, s % numbers["precondition_frequency"] == 0, False),
            corrected_step_size=lr * (math.sqrt(1.0 - beta2**counted) / (1.0 - beta1**counted)),
            decay_factor=1.0 - numbers["weight_decay"] * lr,
        )

    @staticmethod
    def initial_state(ops, param, h):
        sizes = _statistic_sizes(tuple(param.shape), h)
        statistics = [[] if size is None else ops.zeros((size, size), param) for size in sizes]
        return {"exp_avg": ops.zeros_like(param), "exp_avg_sq": ops.zeros_like(param), "GG": statistics}

    @staticmethod
    def update(ops, param, grad, state, h):
        if h.maximize:
            grad = -grad
        statistics, exp_avg, exp_avg_sq = state["GG"], state["exp_avg"], state["exp_avg_sq"]

        def first_gradient():  # the statistics start from it, and the bases from them
            first_statistics = _accumulated(ops, statistics, grad, h)
            first_bases = [[] if _is_placeholder(m) else _eigenvectors(ops, m) for m in first_statistics]
            return first_statistics, *_refreshed(ops, first_statistics, first_bases, exp_avg_sq, h)

        statistics, exp_avg_sq, bases = backends.lazy_entry(
            ops, state, "Q", h, first_gradient, lambda held: (statistics, exp_avg_sq, held)
        )

        def adam_step():
            new_exp_avg = ops.lerp(exp_avg, grad, h.one_minus_beta1)
            new_exp_avg_sq = ops.lerp(exp_avg_sq, _squared(_project(ops, grad, bases, h)), h.one_minus_beta2)
            denominator = ops.sqrt(new_exp_avg_sq) + h.eps
            direction = _project(ops, _project(ops, new_exp_avg, bases, h) / denominator, bases, h, backward=True)
            if h.normalizes:
                direction = direction / (ops.sqrt(ops.mean(_squared(direction))) + h.eps)
            stepped = ops.add(param, direction, alpha=-(h.corrected_step_size if h.corrects else h.lr))
            if h.decays:
                stepped = stepped * h.decay_factor
            new_statistics = _accumulated(ops, statistics, grad, h)
            refreshed_exp_avg_sq, new_bases = _refreshed(ops, new_statistics, bases, new_exp_avg_sq, h)
            return stepped, new_exp_avg, refreshed_exp_avg_sq, new_statistics, new_bases

        new_param, new_exp_avg, new_exp_avg_sq, new_statistics, new_bases = ops.cond(
            h.first_step, lambda: (param, exp_avg, exp_avg_sq, statistics, bases), adam_step
        )
        return new_param, {"exp_avg": new_exp_avg, "exp_avg_sq": new_exp_avg_sq, "GG": new_statistics, "Q": new_bases}

    def _lazy_state_shape(self, key, value, h):
        if key == "Q":  # an orthogonal matrix beside each statistic that is not empty
            return [(size, size) if size else None for size in _statistic_sizes(tuple(value.shape), h)]
        return super()._lazy_state_shape(key, value, h)


def _squared(x: Any) -> Any:
    return x * x


def _is_placeholder(statistic: Any) -> bool:
    """A dimension that is not rotated: the empty list, or a 0 x 0 statistic of an empty dimension."""
    return isinstance(statistic, list) or statistic.shape[0] == 0


def _merged_shape(shape: tuple, limit: int) -> tuple:
    """The reference's merge: runs of dimensions multiplied together while the product stays
    at most ``limit`` (a dimension above it stands alone, after a 1 where nothing preceded it).

    The reference returns ``[1]`` when everything merges into one dimension; that is the
    tensor's size (see the class's differences).
    """
    merged, product = [], 1
    for size in shape:
        product *= size
        if product > limit:
            merged.append(product // size)
            product = size
    merged.append(product)
    return tuple(merged) if len(merged) > 1 else (prod(shape),)


def _channels_first(shape: tuple, h: Any) -> bool:
    return h.channels_last and len(shape) == 4


def _merged(ops: Any, x: Any, h: Any) -> Any:
    if _channels_first(x.shape, h):
        x = ops.permute(x, (0, 3, 1, 2))
    return x.reshape(_merged_shape(tuple(x.shape), h.max_precondition_dim))


def _unmerged(ops: Any, x: Any, shape: tuple, h: Any) -> Any:
    if _channels_first(shape, h):
        return ops.permute(x.reshape((shape[0], shape[3], shape[1], shape[2])), (0, 2, 3, 1))
    return x.reshape(shape)


def _statistic_sizes(shape: tuple, h: Any) -> list:
    """Per dimension that carries a statistic, its size, or None where the reference keeps ``[]``."""
    limit = h.max_precondition_dim
    if len(shape) == 1:
        return [shape[0] if h.precondition_1d and shape[0] <= limit else None]
    if h.merge_dims:
        if _channels_first(shape, h):
            shape = (shape[0], shape[3], shape[1], shape[2])
        shape = _merged_shape(tuple(shape), limit)
    return [size if size <= limit else None for size in shape]


def _project(ops: Any, x: Any, bases: list, h: Any, backward: bool = False) -> Any:
    """``x`` with each dimension contracted with its basis (``Q``, or ``Q^T`` backward); a
    dimension without one only rotates to the end, so every dimension comes back in order."""
    shape = tuple(x.shape)
    if h.merge_dims:
        x = _merged(ops, x, h)
    for basis in bases:
        if isinstance(basis, list):
            x = ops.permute(x, (*range(1, x.ndim), 0))
        else:
            x = ops.tensordot(x, basis, ([0], [1 if backward else 0]))
    return _unmerged(ops, x, shape, h) if h.merge_dims else x


def _accumulated(ops: Any, statistics: list, grad: Any, h: Any) -> list:
    """Each statistic moved toward the gradient's outer product along its dimension."""
    if grad.ndim == 1:
        if isinstance(statistics[0], list):
            return statistics
        outer = ops.matmul(grad.reshape((-1, 1)), grad.reshape((1, -1)))
        return [ops.lerp(statistics[0], outer, h.statistics_weight)]
    unfolded = _merged(ops, grad, h) if h.merge_dims else grad
    new = []
    for axis, statistic in enumerate(statistics):
        if isinstance(statistic, list):
            new.append(statistic)
            continue
        others = [*chain(range(axis), range(axis + 1, unfolded.ndim))]
        new.append(ops.lerp(statistic, ops.tensordot(unfolded, unfolded, (others, others)), h.statistics_weight))
    return new


def _eigenvectors(ops: Any, statistic: Any) -> Any:
    """The eigenvectors of ``statistic`` (plus 1e-30 on its diagonal), largest eigenvalue first."""
    dtype = backends.dtype_name(statistic.dtype)
    narrow = dtype in ("bfloat16", "float16")  # no eigendecomposition in these: the reference retries in float64
    wide = ops.astype(statistic, "float64") if narrow else statistic
    vectors = ops.eigh(ops.add(wide, ops.eye_like(wide), alpha=1e-30))[1]
    return ops.flip(ops.astype(vectors, dtype) if narrow else vectors, 1)


def _refreshed(ops: Any, statistics: list, bases: list, exp_avg_sq: Any, h: Any) -> tuple[Any, list]:
    """``(exp_avg_sq, bases)`` after one power iteration where this step refreshes, else as they are."""

    def power_iteration():
        second = _merged(ops, exp_avg_sq, h) if h.merge_dims else exp_avg_sq
        new_bases = []
        for axis, (statistic, basis) in enumerate(zip(statistics, bases)):
            if _is_placeholder(statistic):
                new_bases.append([])
                continue
            product = ops.matmul(statistic, basis)
            order = ops.argsort(ops.sum(basis * product, axis=0), descending=True)
            second = ops.take(second, order, axis)
            # QR in float32, as the reference computes it, whatever the statistic's dtype.
            q = ops.qr(ops.astype(ops.take(product, order, 1), "float32"))[0]
            new_bases.append(ops.astype(q, backends.dtype_name(product.dtype)))
        return (_unmerged(ops, second, tuple(exp_avg_sq.shape), h) if h.merge_dims else second), new_bases

    return ops.cond(h.refresh, power_iteration, lambda: (exp_avg_sq, bases))
