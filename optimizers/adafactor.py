"""Adafactor: Adam-like steps with a second moment factored into row and column statistics."""

from __future__ import annotations

from math import prod
from typing import Any

import backends

from .optimizer import Optimizer, signature_arguments
from .validation import check_array_lr

__all__ = ["Adafactor"]


class Adafactor(Optimizer):
    r"""Adafactor (Shazeer & Stern), in torch.optim.Adafactor's form (no first moment).

    For a matrix gradient :math:`G` (the last two dimensions of a tensor with two
    or more), with :math:`\hat\beta_{2,t} = 1 - t^{c}` (c = beta2_decay):

    .. math::
        R_t &= \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\,\operatorname{mean}_{\text{cols}}(G_t^2), \qquad
        C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\,\operatorname{mean}_{\text{rows}}(G_t^2) \\
        \hat V_t &= \frac{R_t C_t}{\max(\operatorname{mean}(R_t), \epsilon_1)}, \qquad
        U_t = \frac{G_t}{\sqrt{\max(\hat V_t, \epsilon_1^2)}} \\
        \rho_t &= \min(\eta, 1/\sqrt t), \qquad
        \alpha_t = \max(\epsilon_2, \operatorname{RMS}(\theta_{t-1}))\,\rho_t \\
        \theta_t &= \theta_{t-1}(1 - \eta\lambda) - \frac{\alpha_t}{\max(1, \operatorname{RMS}(U_t)/d)}\, U_t

    A vector (or scalar) keeps an unfactored :math:`V_t = \hat\beta_{2,t} V_{t-1} +
    (1-\hat\beta_{2,t}) G_t^2` in place of :math:`\hat V_t`.  eps is the pair
    :math:`(\epsilon_1, \epsilon_2)`; :math:`\epsilon_1` = None means the machine
    epsilon of the parameter's dtype.  weight_decay :math:`\lambda` is decoupled.

    State: ``step``, and ``row_var`` (:math:`R`, shape ``[..., rows, 1]``) and
    ``col_var`` (:math:`C`, ``[..., 1, cols]``) for tensors of two or more
    dimensions, ``variance`` (:math:`V`) otherwise.  Memory is O(rows + cols) per
    matrix instead of Adam's O(rows x cols).

    Where definitions differ: torch's variant (followed here) has no momentum,
    starts the decay rate at :math:`1 - 1^{c} = 0`, clamps :math:`\hat V` at
    :math:`\epsilon_1^2` and divides by the mean of :math:`R`; optax's
    ``adafactor`` has optional momentum, ``decay_rate`` 0.8, its epsilon added
    to :math:`G^2`, and factors only dimensions of at least 128.  With eps[0]
    None and a param group mixing dtypes, torch.optim takes the epsilon of the
    first parameter's dtype for the whole group; here each parameter uses its own.
    torch.optim's multi-tensor path (``foreach=True``, ``_multi_tensor_adafactor``) computes
    every quantity as its for-loop does but the last: it multiplies :math:`U_t` by the step
    size :math:`s_t = -\alpha_t / \max(1, \operatorname{RMS}(U_t)/d)` and then adds
    (``_foreach_mul_``, ``_foreach_add_``: two roundings), where the for-loop adds with
    ``alpha`` (``param.add_(update, alpha=s)``: a fused multiply-add, one rounding), so the
    two differ by an ulp of :math:`\theta` from the first step.  With
    ``foreach=True`` ours follows the multi-tensor form, and as its CPU kernels do it rounds
    the multipliers :math:`s_t` and :math:`1 - \eta\lambda` to a 16-bit parameter's dtype
    (CUDA's multi-tensor kernels keep them in float32: there a 16-bit parameter with
    ``foreach=True`` can step a rounding apart from torch.optim).  torch.optim's Adafactor runs
    multi-tensor only when asked: its ``foreach=None`` is the for-loop on every device, CUDA
    included, and so is ours.
    """

    counters = {"step": 0.0}
    sparse_gradients_error = "Adafactor does not support sparse gradients"
    complex_parameters_error = "Adafactor does not support complex parameters"

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        check_array_lr(lr)
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps[0] is not None and not 0.0 <= eps[0]:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps[0]}")
        if not 0.0 <= eps[1]:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps[1]}")
        if not 1.0 <= d:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
        super().__init__(**signature_arguments(Adafactor.__init__, locals()))

    def _check_step(self, stepping):
        super()._check_step(stepping)
        for _, params in stepping:
            for param in params:
                shape = tuple(self._backend.value(param).shape)
                if prod(shape) == 0:
                    # torch.optim raises this too, partway through its step; here before any change.
                    raise ZeroDivisionError(
                        f"float division by zero: Adafactor divides by the square root of a parameter's "
                        f"element count, and a parameter of shape {shape} is empty"
                    )

    def _host_scalars(
        self, group: dict[str, Any], foreach: bool = False, backend: backends.Backend | None = None
    ) -> backends.Scalars:
        # torch.optim's Adafactor takes its multi-tensor path only when asked (`if foreach:`), with
        # no device-dependent default: foreach=None, which the backend resolves to multi-tensor
        # on CUDA, keeps its for-loop formula there.
        return super()._host_scalars(group, foreach=foreach and bool(group.get("foreach")), backend=backend)

    @staticmethod
    def switches(group):
        return dict(maximize=bool(group["maximize"]), decays=group["weight_decay"] != 0, foreach=bool(group["foreach"]))

    @staticmethod
    def coefficients(math, numbers):
        eps1, eps2 = numbers["eps"]
        lr = numbers["lr"]
        return dict(
            lr=lr,
            beta2_decay=numbers["beta2_decay"],
            eps1=eps1,
            eps2=eps2,
            d=numbers["d"],
            decay_factor=1 - lr * numbers["weight_decay"],
        )

    @staticmethod
    def schedule(math, h, counters):
        step = counters["step"] + 1
        t = math.float(step)
        inverse_root = 1 / t**0.5
        return dict(new_weight=t**h.beta2_decay, rho=math.where(inverse_root < h.lr, inverse_root, h.lr)), {
            "step": step
        }

    @staticmethod
    def initial_state(ops, param, h):
        if param.ndim > 1:
            return {"row_var": ops.zeros_like(param[..., :1]), "col_var": ops.zeros_like(param[..., :1, :])}
        return {"variance": ops.zeros_like(param)}

    @staticmethod
    def update(ops, param, grad, state, h):
        if h.maximize:
            grad = -grad
        eps1 = ops.finfo(param.dtype).eps if h.eps1 is None else h.eps1
        rms = ops.scalar(ops.norm(param)) / prod(param.shape) ** 0.5
        alpha = ops.where(rms > h.eps2, rms, h.eps2) * h.rho  # max(eps2, rms), NaN giving eps2 as in Python
        if h.decays:
            param = param * (_foreach_scalar(ops, h.decay_factor, param) if h.foreach else h.decay_factor)
        if grad.ndim > 1:
            row_var = ops.lerp(state["row_var"], _mean_square(ops, grad, -1), h.new_weight)
            col_var = ops.lerp(state["col_var"], _mean_square(ops, grad, -2), h.new_weight)
            estimate = ops.matmul(row_var, col_var) / ops.clamp(ops.mean(row_var, axis=-2, keepdims=True), eps1)
            new_state = {"row_var": row_var, "col_var": col_var}
        else:
            estimate = ops.lerp(state["variance"], grad * grad, h.new_weight)
            new_state = {"variance": estimate}
        direction = ops.rsqrt(ops.clamp(estimate, eps1 * eps1)) * grad
        ratio = ops.scalar(ops.norm(direction)) / (prod(direction.shape) ** 0.5 * h.d)
        shrink = ops.where(ratio > 1.0, ratio, 1.0)  # max(1, ratio)
        step_size = -alpha / shrink
        if h.foreach:  # torch.optim's multi-tensor Adafactor: _foreach_mul_(updates, alphas), then _foreach_add_
            return param + direction * _foreach_scalar(ops, step_size, direction), new_state
        return ops.add(param, direction, alpha=step_size), new_state


def _foreach_scalar(ops, number, like):
    """``number`` as torch's in-place ``_foreach_mul_`` on the CPU takes it: rounded to ``like``'s
    dtype (16 bits for a 16-bit array, where ``mul`` keeps it in float32; wider dtypes: as ``mul``)."""
    return ops.zeros((), like=like) + number


def _mean_square(ops, grad, axis):
    """mean(g^2) along ``axis``, as torch computes it: the norm squared over the count."""
    norm = ops.norm(grad, axis=axis, keepdims=True)
    return norm * norm / grad.shape[axis]
