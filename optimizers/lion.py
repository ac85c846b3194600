"""Lion: the sign of an interpolated momentum, found by program search."""

from __future__ import annotations

from typing import Any

from .optimizer import Optimizer, signature_arguments
from .validation import check_array_lr, check_fused

__all__ = ["Lion"]


class Lion(Optimizer):
    r"""Lion, EvoLved Sign Momentum (Chen et al., 2023): ``lion_pytorch.Lion`` on either backend.

    .. math::
        \theta_{t-1} &\leftarrow \theta_{t-1}\,(1 - \eta\lambda') \\
        c_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        \theta_t = \theta_{t-1} - \eta\,\operatorname{sign}(c_t) \\
        m_t &= \beta_2 m_{t-1} + (1-\beta_2) g_t

    with :math:`\lambda' = \lambda` (the paper's decay, multiplied by the learning rate), or
    :math:`\lambda' = \lambda / \eta_0` with ``decoupled_weight_decay`` (:math:`\eta_0` the
    constructor's ``lr``: the decay per step is then :math:`\lambda` at the initial rate and
    follows a schedule's ratio).  State: ``exp_avg`` (:math:`m`).

    Where definitions differ:

    * optax's ``lion`` adds ``weight_decay * param`` to the sign before scaling by the
      learning rate: :math:`\theta - \eta(\operatorname{sign}(c) + \lambda\theta)`, the same
      value rounded in another order; its default weight_decay is 1e-3, the reference's 0.
    * The update is a sign: where :math:`c_t` is 0 or within rounding of it, frameworks may
      disagree on its sign (XLA flushes float32 subnormals to zero, torch keeps them).
    * lion-pytorch checks its arguments with bare ``assert`` statements; here they raise
      ValueError naming the value.  Its ``use_triton`` option (a CUDA kernel) is not taken;
      ``foreach`` and ``fused`` run the same rule planned or compiled.
    * Complex parameters: lion-pytorch's ``sgn_`` is :math:`c/|c|` there; not supported here.
    """

    complex_parameters_error = "Lion does not support complex parameters"
    options_outside_groups = ("decoupled_weight_decay",)

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
        bucket_view: bool = False,
    ) -> None:
        check_array_lr(lr)
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate: {lr} (Lion needs lr > 0)")
        for index, beta in enumerate(betas):
            if not 0.0 <= beta <= 1.0:
                raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        check_fused(fused, foreach, False)
        super().__init__(**signature_arguments(Lion.__init__, locals()))
        # lion-pytorch divides a decoupled decay by the constructor's lr, for every group (a
        # bool lr counts as its number, as the groups' own lr does).
        self.defaults["initial_lr_of_decay"] = float(lr) if isinstance(lr, bool) else lr
        for group in self.param_groups:
            group["initial_lr_of_decay"] = self.defaults["initial_lr_of_decay"]

    @staticmethod
    def switches(group):
        return dict(
            maximize=bool(group["maximize"]),
            decays=group["weight_decay"] != 0,
            decoupled=bool(group["decoupled_weight_decay"]),
        )

    @staticmethod
    def coefficients(math, numbers):
        lr, weight_decay = numbers["lr"], numbers["weight_decay"]
        beta1, beta2 = numbers["betas"]
        return dict(
            lr=lr,
            decay_factor=1.0 - lr * weight_decay,
            decoupled_decay_factor=1.0 - lr * (weight_decay / numbers["initial_lr_of_decay"]),
            beta1=beta1,
            one_minus_beta1=1.0 - beta1,
            beta2=beta2,
            one_minus_beta2=1.0 - beta2,
        )

    @staticmethod
    def initial_state(ops, param, h):
        return {"exp_avg": ops.zeros_like(param)}

    @staticmethod
    def update(ops, param, grad, state, h):
        if h.maximize:
            grad = -grad
        if h.decays:
            param = param * (h.decoupled_decay_factor if h.decoupled else h.decay_factor)
        exp_avg = state["exp_avg"]
        direction = ops.sign(ops.add(exp_avg * h.beta1, grad, alpha=h.one_minus_beta1))
        param = ops.add(param, direction, alpha=-h.lr)
        return param, {"exp_avg": ops.add(exp_avg * h.beta2, grad, alpha=h.one_minus_beta2)}
