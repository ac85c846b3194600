"""Squared-gradient accumulators: Adagrad and its exponentially-decaying successors RMSprop and Adadelta."""

from __future__ import annotations

from typing import Any

from .optimizer import Optimizer, signature_arguments
from .terms import count_step, decay_coefficients, decay_switches, direction
from .validation import check_array_lr, check_fused, check_nonnegative

__all__ = ["Adagrad", "RMSprop", "Adadelta"]


def _coefficients(numbers: dict[str, Any]) -> dict[str, Any]:
    return dict(decay_coefficients(numbers), eps=numbers["eps"])


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al.): torch.optim.Adagrad.

    .. math::
        \tilde\eta_t = \frac{\eta}{1 + (t-1)\,\text{lr\_decay}}, \qquad
        s_t = s_{t-1} + g_t^2, \qquad
        \theta_t = \theta_{t-1} - \tilde\eta_t \frac{g_t}{\sqrt{s_t} + \epsilon}

    State: ``step`` and ``sum`` (:math:`s`), created for every parameter when the
    optimizer is built, with :math:`s_0` = initial_accumulator_value.

    A sparse gradient updates the entries it holds, as torch.optim's sparse path does (the
    quotient added to the parameter with a sparse add, which rounds unlike the dense form);
    with weight decay it raises torch.optim's error.

    Where definitions differ: torch starts the accumulator at 0 and adds eps
    (1e-10) after the square root; optax's ``adagrad`` starts it at 0.1 and puts
    eps (1e-7) inside.  Unlike torch.optim, a per-group ``initial_accumulator_value``
    is honoured (torch.optim uses the constructor's value for every group).
    """

    counters = {"step": 0.0}

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
        bucket_view: bool = False,
    ) -> None:
        check_array_lr(lr)
        check_nonnegative(lr, "learning rate")
        check_nonnegative(lr_decay, "lr_decay value")
        check_nonnegative(weight_decay, "weight_decay value")
        check_nonnegative(initial_accumulator_value, "initial_accumulator_value value")
        check_nonnegative(eps, "epsilon value")
        check_fused(fused, foreach, differentiable)
        super().__init__(**signature_arguments(Adagrad.__init__, locals()))
        self._initialize_all_state()

    @staticmethod
    def switches(group):
        return dict(decay_switches(group), foreach=bool(group["foreach"]))

    @staticmethod
    def coefficients(math, numbers):
        return dict(
            _coefficients(numbers),
            lr_decay=numbers["lr_decay"],
            initial_accumulator_value=numbers["initial_accumulator_value"],
        )

    @staticmethod
    def schedule(math, h, counters):
        step = counters["step"] + 1
        return dict(clr=h.lr / (1 + (math.float(step) - 1) * h.lr_decay)), {"step": step}

    @staticmethod
    def initial_state(ops, param, h):
        return {"sum": ops.full_like(param, h.initial_accumulator_value)}

    def _check_step(self, stepping):
        super()._check_step(stepping)
        for group, params in stepping:
            if group["weight_decay"] != 0 and any(self._backend.is_sparse(p.grad) for p in params):
                raise RuntimeError("weight_decay option is not compatible with sparse gradients")

    @staticmethod
    def update(ops, param, grad, state, h):
        if ops.is_sparse(grad):
            grad = ops.coalesce(-grad if h.maximize else grad)
            values = ops.sparse_values(grad)
            accumulated = ops.scatter_add(state["sum"], grad, values * values)
            std = ops.sqrt(ops.gather(accumulated, grad)) + h.eps
            return ops.scatter_add(param, grad, values / std, alpha=-h.clr), {"sum": accumulated}
        grad = direction(ops, param, grad, h)
        accumulated = ops.addcmul(state["sum"], grad, grad, value=1)
        std = ops.sqrt(accumulated) + h.eps
        if h.foreach:  # torch.optim's multi-tensor Adagrad scales the gradient first
            return ops.addcdiv(param, grad * -h.clr, std), {"sum": accumulated}
        return ops.addcdiv(param, grad, std, value=-h.clr), {"sum": accumulated}


class RMSprop(Optimizer):
    r"""RMSprop (Hinton), optionally centered and with momentum: torch.optim.RMSprop.

    .. math::
        v_t &= \alpha v_{t-1} + (1-\alpha) g_t^2, \qquad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t \ \text{(centered)} \\
        d_t &= \sqrt{v_t - \bar g_t^2} + \epsilon \ \text{(centered)} \ \text{or}\ \sqrt{v_t} + \epsilon \\
        b_t &= \mu b_{t-1} + g_t / d_t, \quad \theta_t = \theta_{t-1} - \eta b_t \ \text{(momentum)}
            \quad\text{or}\quad \theta_t = \theta_{t-1} - \eta\, g_t / d_t

    State: ``step``, ``square_avg`` (:math:`v`), ``momentum_buffer`` (with
    momentum > 0), ``grad_avg`` (:math:`\bar g`, centered).

    Where definitions differ: torch adds eps after the square root and
    defaults alpha to 0.99; optax's ``rmsprop`` puts eps inside by default and
    its decay defaults to 0.9.  With momentum, torch applies the learning rate
    outside the buffer; optax puts it inside, which differs under a schedule.
    """

    counters = {"step": 0.0}
    sparse_gradients_error = "RMSprop does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        check_array_lr(lr)
        check_nonnegative(lr, "learning rate")
        check_nonnegative(eps, "epsilon value")
        check_nonnegative(momentum, "momentum value")
        check_nonnegative(weight_decay, "weight_decay value")
        check_nonnegative(alpha, "alpha value")
        super().__init__(**signature_arguments(RMSprop.__init__, locals()))

    @staticmethod
    def switches(group):
        return dict(decay_switches(group), centered=bool(group["centered"]), has_momentum=group["momentum"] > 0)

    @staticmethod
    def coefficients(math, numbers):
        alpha = numbers["alpha"]
        return dict(_coefficients(numbers), alpha=alpha, one_minus_alpha=1 - alpha, momentum=numbers["momentum"])

    schedule = staticmethod(count_step)

    @staticmethod
    def initial_state(ops, param, h):
        keys = ["square_avg"] + ["momentum_buffer"] * h.has_momentum + ["grad_avg"] * h.centered
        return {key: ops.zeros_like(param) for key in keys}

    @staticmethod
    def update(ops, param, grad, state, h):
        grad = direction(ops, param, grad, h)
        square_avg = ops.addcmul(state["square_avg"] * h.alpha, grad, grad, value=h.one_minus_alpha)
        new_state = {"square_avg": square_avg}
        if h.centered:
            grad_avg = new_state["grad_avg"] = ops.lerp(state["grad_avg"], grad, h.one_minus_alpha)
            avg = ops.sqrt(ops.addcmul(square_avg, grad_avg, grad_avg, value=-1))
        else:
            avg = ops.sqrt(square_avg)
        avg = avg + h.eps
        if h.has_momentum:
            buffer = new_state["momentum_buffer"] = ops.addcdiv(state["momentum_buffer"] * h.momentum, grad, avg)
            return ops.add(param, buffer, alpha=-h.lr), new_state
        return ops.addcdiv(param, grad, avg, value=-h.lr), new_state


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler): torch.optim.Adadelta.

    .. math::
        v_t &= \rho v_{t-1} + (1-\rho) g_t^2, \qquad
        \Delta_t = \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}} g_t \\
        u_t &= \rho u_{t-1} + (1-\rho) \Delta_t^2, \qquad
        \theta_t = \theta_{t-1} - \eta \Delta_t

    State: ``step``, ``square_avg`` (:math:`v`), ``acc_delta`` (:math:`u`).
    torch's lr (default 1.0) scales the step; the paper has none.  optax's
    ``adadelta`` has the same rule with eps default 1e-6 and rho 0.9.
    """

    counters = {"step": 0.0}
    sparse_gradients_error = "Adadelta does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: Any = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        check_array_lr(lr)
        check_nonnegative(lr, "learning rate")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho}")
        check_nonnegative(eps, "epsilon value")
        check_nonnegative(weight_decay, "weight_decay value")
        super().__init__(**signature_arguments(Adadelta.__init__, locals()))

    switches = staticmethod(decay_switches)

    @staticmethod
    def coefficients(math, numbers):
        rho = numbers["rho"]
        return dict(_coefficients(numbers), rho=rho, one_minus_rho=1 - rho)

    schedule = staticmethod(count_step)

    @staticmethod
    def initial_state(ops, param, h):
        return {"square_avg": ops.zeros_like(param), "acc_delta": ops.zeros_like(param)}

    @staticmethod
    def update(ops, param, grad, state, h):
        grad = direction(ops, param, grad, h)
        square_avg = ops.addcmul(state["square_avg"] * h.rho, grad, grad, value=h.one_minus_rho)
        std = ops.sqrt(square_avg + h.eps)
        delta = ops.sqrt(state["acc_delta"] + h.eps) / std * grad
        acc_delta = ops.addcmul(state["acc_delta"] * h.rho, delta, delta, value=h.one_minus_rho)
        return ops.add(param, delta, alpha=-h.lr), {"square_avg": square_avg, "acc_delta": acc_delta}
