"""Stochastic gradient descent, with momentum, dampening and Nesterov momentum; and averaged SGD."""

from __future__ import annotations

from typing import Any

from .optimizer import Optimizer, signature_arguments
from .terms import decay_coefficients, decay_switches, direction, momentum_step
from .validation import check_array_lr, check_fused, check_nonnegative, check_sgd_options

__all__ = ["SGD", "ASGD"]


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with momentum: torch.optim.SGD on either backend.

    The notebook's two rules.  Plain SGD steps against the gradient of the
    mini-batch loss:

    .. math:: w_{t+1} = w_t - \eta \cdot \nabla L

    Momentum makes the weights move like a heavy ball rolling downhill, so a
    noisy mini-batch gradient hardly turns it; ``gamma`` weighs the previous
    updates against the new gradient:

    .. math::
        v_t = \gamma v_{t-1} + \nabla L, \qquad w_{t+1} = w_t - \eta v_t

    In full, with torch.optim's options (lr :math:`\eta`, momentum :math:`\mu`,
    dampening :math:`\tau`, weight_decay :math:`\lambda`):

    .. math::
        g_t &= \pm\nabla L(w_{t-1}) + \lambda w_{t-1}  \qquad (- \text{ with maximize}) \\
        b_1 &= g_1, \qquad b_t = \mu b_{t-1} + (1 - \tau) g_t \\
        w_t &= w_{t-1} - \eta \, (g_t + \mu b_t) \ \text{(nesterov)} \quad\text{or}\quad w_{t-1} - \eta \, b_t

    State: ``momentum_buffer`` (:math:`b_t`), created at a parameter's first
    step with a gradient, only when momentum is non-zero.

    Where other definitions differ:

    * The first buffer is the gradient itself, not zeros, so dampening starts at
      the second step; optax's ``trace`` starts from zeros and has no dampening.
    * The learning rate multiplies the buffer, not the gradient entering it
      (Sutskever et al. and some frameworks use :math:`v_t = \mu v_{t-1} + \eta g_t`);
      the two agree for a constant lr and differ under a schedule.
    * Nesterov is :math:`g_t + \mu b_t`, torch's form.
    * ``foreach`` and ``differentiable`` are accepted and validated as in torch.optim;
      ``fused=True`` runs this rule compiled into one loop (``backends/torch_fused.py``).

    Args:
        params: tensors, ``named_parameters()``, or param-group dicts (torch); a
            pytree of arrays or a list of param-group dicts with pytrees (JAX).
        lr: learning rate :math:`\eta` (a float, or a one-element array).
        momentum: :math:`\mu`. dampening: :math:`\tau`. weight_decay: :math:`\lambda` (L2 penalty).
        nesterov: use Nesterov momentum (needs momentum > 0 and zero dampening).
        maximize: maximize the objective instead of minimizing it.
        backend: ``"torch"`` or ``"jax"``; inferred from ``params`` when None.
    """

    complex_as_real = False  # linear in the gradient: torch.optim.SGD steps complex tensors directly

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: Any = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
        bucket_view: bool = False,
    ) -> None:
        check_sgd_options(lr, momentum, dampening, weight_decay, nesterov)
        check_fused(fused, foreach, differentiable)
        super().__init__(**signature_arguments(SGD.__init__, locals()))

    @staticmethod
    def switches(group: dict[str, Any]) -> dict[str, Any]:
        return dict(decay_switches(group), nesterov=bool(group["nesterov"]), has_momentum=group["momentum"] != 0)

    @staticmethod
    def coefficients(math: Any, numbers: dict[str, Any]) -> dict[str, Any]:
        return dict(decay_coefficients(numbers), momentum=numbers["momentum"], undamped=1.0 - numbers["dampening"])

    @staticmethod
    def update(ops, param, grad, state, h):
        return momentum_step(ops, param, direction(ops, param, grad, h), state, h)


def _learning_rate(h):
    return h.lr


class ASGD(Optimizer):
    r"""Averaged SGD (Polyak & Juditsky), in torch.optim.ASGD's form.

    .. math::
        g_t &= \pm\nabla L(\theta_{t-1}) + \lambda_{wd}\,\theta_{t-1} \\
        \theta_t &= \theta_{t-1}(1 - \lambda\eta_t) - \eta_t g_t \\
        \bar\theta_t &= \bar\theta_{t-1} + \mu_t(\theta_t - \bar\theta_{t-1})
            \quad (\bar\theta_t = \theta_t \text{ while } \mu_t = 1) \\
        \eta_{t+1} &= \frac{\eta}{(1 + \lambda\eta t)^{\alpha}}, \qquad
        \mu_{t+1} = \frac{1}{\max(1, t - t_0)}

    with lr :math:`\eta`, lambd :math:`\lambda` (the decay term, also the step-size
    decay), alpha :math:`\alpha`, t0 :math:`t_0` (the step averaging starts).

    State: ``step``, ``eta`` (:math:`\eta_t`, starting at lr), ``mu``
    (:math:`\mu_t`, starting at 1) -- 0-d counters, as in torch.optim -- and
    ``ax``, the average :math:`\bar\theta`: read it for evaluation, the
    parameters themselves are the un-averaged iterate.  A step uses the
    :math:`\eta_t, \mu_t` stored by the previous one.
    """

    counters = {"step": 0.0, "eta": _learning_rate, "mu": 1.0}
    sparse_gradients_error = "ASGD does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        *,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        check_array_lr(lr)
        check_nonnegative(lr, "learning rate")
        check_nonnegative(weight_decay, "weight_decay value")
        super().__init__(**signature_arguments(ASGD.__init__, locals()))

    switches = staticmethod(decay_switches)

    @staticmethod
    def coefficients(math, numbers):
        return dict(decay_coefficients(numbers), lambd=numbers["lambd"], alpha=numbers["alpha"], t0=numbers["t0"])

    @staticmethod
    def schedule(math, h, counters):
        eta, mu = math.float(counters["eta"]), math.float(counters["mu"])
        step = counters["step"] + 1
        t = math.float(step)
        # torch.optim computes the next eta from lr as given: a tensor lr keeps it in float32.
        next_eta = h.lr / (1 + h.lambd * h.lr * t) ** h.alpha
        since_t0 = t - h.t0
        next_mu = 1 / math.where(since_t0 > 1, since_t0, 1.0)
        advanced = {
            "step": step,
            "eta": math.cast_like(next_eta, counters["eta"]),
            "mu": math.cast_like(next_mu, counters["mu"]),
        }
        return dict(eta=eta, mu=mu, shrink=1 - h.lambd * eta), advanced

    @staticmethod
    def initial_state(ops, param, h):
        return {"ax": ops.zeros_like(param)}

    @staticmethod
    def update(ops, param, grad, state, h):
        grad = direction(ops, param, grad, h)
        param = ops.add(param * h.shrink, grad, alpha=-h.eta)
        ax = state["ax"]
        # Until averaging starts (mu = 1) torch copies the parameter: ax + (param - ax) would round.
        return param, {"ax": ops.where(h.mu != 1, ax + (param - ax) * h.mu, param)}
