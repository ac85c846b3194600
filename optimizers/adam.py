"""The Adam family: Adam, AdamW, Adamax, NAdam and RAdam.

They share their moment estimates and weight decay, written once below as
small pure functions; each algorithm adds its own bias correction and step.
"""

from __future__ import annotations

from typing import Any

from .optimizer import Optimizer, signature_arguments
from .terms import decay_coefficients, decay_switches, decoupled_decay, direction
from .validation import check_array_lr, check_betas, check_fused, check_nonnegative

__all__ = ["Adam", "AdamW", "Adamax", "NAdam", "RAdam"]


def _switches(group: dict[str, Any]) -> dict[str, Any]:
    return decay_switches(group, decoupled=bool(group.get("decoupled_weight_decay", False)))


def _coefficients(math: Any, numbers: dict[str, Any]) -> dict[str, Any]:
    """What every Adam-family rule reads: direction, weight decay and the moments' decay rates."""
    beta1, beta2 = numbers["betas"]
    return dict(
        decay_coefficients(numbers),
        beta1=beta1,
        beta2=beta2,
        # For tensor betas torch.optim moves beta1 to the parameter's dtype before
        # `1 - beta1` (one rounding of the exact difference: float64 here, then the
        # kernel's cast, gives the same) but computes `1 - beta2` in beta2's dtype.
        one_minus_beta1=1 - math.float(beta1),
        one_minus_beta2=1 - beta2,
        eps=numbers["eps"],
    )


def _moments(ops, grad, state, h):
    """m_t = beta1 m_{t-1} + (1 - beta1) g_t,  v_t = beta2 v_{t-1} + (1 - beta2) g_t^2."""
    exp_avg = ops.lerp(state["exp_avg"], grad, h.one_minus_beta1)
    exp_avg_sq = ops.addcmul(state["exp_avg_sq"] * h.beta2, grad, grad, value=h.one_minus_beta2)
    return exp_avg, exp_avg_sq


def _zero_moments(ops, param, keys=("exp_avg", "exp_avg_sq")):
    return {key: ops.zeros_like(param) for key in keys}


def _check_adam_family(lr, eps, betas, weight_decay) -> None:
    """Adamax, NAdam and RAdam validate in this order (Adam checks array lr and betas more)."""
    check_array_lr(lr)
    check_nonnegative(lr, "learning rate")
    check_nonnegative(eps, "epsilon value")
    check_betas(betas)
    check_nonnegative(weight_decay, "weight_decay value")


class Adam(Optimizer):
    r"""Adam (Kingma & Ba), optionally with AMSGrad and decoupled weight decay: torch.optim.Adam.

    .. math::
        g_t &= \pm\nabla L(\theta_{t-1}) \; [+ \lambda\theta_{t-1}] \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \ \text{(amsgrad)} \ \text{or}\ v_t \\
        \theta_t &= \theta_{t-1} - \frac{\eta}{1-\beta_1^t}\,
                   \frac{m_t}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    With ``decoupled_weight_decay`` (AdamW) the decay does not enter :math:`g_t`;
    instead :math:`\theta_{t-1} \leftarrow \theta_{t-1}(1 - \eta\lambda)` first.

    State: ``step`` (per parameter: a parameter without a gradient does not
    advance it), ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`),
    ``max_exp_avg_sq`` (:math:`\hat v`, with amsgrad).

    Where definitions differ: eps is added after the square root of the
    bias-corrected second moment (optax's ``adam`` too; some implementations add
    it before the correction); AMSGrad takes the maximum of the raw :math:`v_t`
    and bias-corrects afterwards (optax's ``amsgrad`` keeps the maximum of the
    corrected one); weight_decay is coupled L2 (optax's ``adam`` has none).
    Bias corrections come from each parameter's own step, in float64 as
    torch.optim computes them (on JAX inside the compiled step).
    """

    counters = {"step": 0.0}
    sparse_gradients_error = "Adam does not support sparse gradients, please consider SparseAdam instead"

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-3,
        betas: tuple[Any, Any] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
        bucket_view: bool = False,
    ) -> None:
        if hasattr(lr, "shape"):
            if foreach and not capturable:
                raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
            check_array_lr(lr)
        check_nonnegative(lr, "learning rate")
        check_nonnegative(eps, "epsilon value")
        check_betas(betas)
        check_nonnegative(weight_decay, "weight_decay value")
        if hasattr(betas[0], "shape") != hasattr(betas[1], "shape"):
            raise ValueError("betas must be either both floats or both Tensors")
        for index, beta in enumerate(betas):
            if hasattr(beta, "shape"):
                if not capturable and foreach:
                    raise ValueError(
                        f"betas[{index}] as a Tensor is not supported for capturable=False and foreach=True"
                    )
                check_array_lr(beta, f"betas[{index}]")
        check_fused(fused, foreach, differentiable)
        betas = tuple(betas)
        super().__init__(**signature_arguments(Adam.__init__, locals()))

    @staticmethod
    def switches(group):
        return dict(_switches(group), amsgrad=bool(group["amsgrad"]))

    def _check_step(self, stepping):
        super()._check_step(stepping)
        for group, params in stepping:
            if group.get("differentiable") and any(
                getattr(self.state.get(p, {}).get("step"), "requires_grad", False) for p in params
            ):
                # torch.optim's Adam and AdamW (only they) refuse it; other classes step.
                raise RuntimeError("`requires_grad` is not supported for `step` in differentiable mode")

    coefficients = staticmethod(_coefficients)

    @staticmethod
    def schedule(math, h, counters):
        step = counters["step"] + 1
        bias_correction1 = 1 - h.beta1 ** math.float(step)
        bias_correction2 = 1 - h.beta2 ** math.float(step)
        return dict(step_size=h.lr / bias_correction1, bias_correction2_sqrt=bias_correction2**0.5), {"step": step}

    @staticmethod
    def initial_state(ops, param, h):
        keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if h.amsgrad else ("exp_avg", "exp_avg_sq")
        return _zero_moments(ops, param, keys)

    @staticmethod
    def update(ops, param, grad, state, h):
        param, grad = decoupled_decay(param, h), direction(ops, param, grad, h)
        exp_avg, exp_avg_sq = _moments(ops, grad, state, h)
        new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        second_moment = exp_avg_sq
        if h.amsgrad:
            second_moment = new_state["max_exp_avg_sq"] = ops.maximum(state["max_exp_avg_sq"], exp_avg_sq)
        denom = ops.sqrt(second_moment) / h.bias_correction2_sqrt + h.eps
        return ops.addcdiv(param, exp_avg, denom, value=-h.step_size), new_state


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter): torch.optim.AdamW.

    .. math::
        \theta_{t-1} \leftarrow \theta_{t-1}(1 - \eta\lambda), \quad \text{then the Adam step.}

    The decay is scaled by the learning rate, as in torch.optim (and optax's
    ``adamw``, which multiplies ``weight_decay * param`` by the learning rate
    through its schedule); the paper's form scales it by a separate schedule
    multiplier only.  The default weight_decay is 1e-2.
    """

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-3,
        betas: tuple[Any, Any] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
        bucket_view: bool = False,
    ) -> None:
        super().__init__(**signature_arguments(AdamW.__init__, locals()), decoupled_weight_decay=True)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # AdamW's decay is decoupled whatever a checkpoint says
            group["decoupled_weight_decay"] = True


class Adamax(Optimizer):
    r"""Adamax, Adam with the infinity norm (Kingma & Ba, section 7): torch.optim.Adamax.

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon) \\
        \theta_t &= \theta_{t-1} - \frac{\eta}{1-\beta_1^t} \frac{m_t}{u_t}

    State: ``step``, ``exp_avg`` (:math:`m`), ``exp_inf`` (:math:`u`).  eps sits
    inside the maximum, as in torch.optim (optax's ``adamax`` adds it to
    :math:`u_t` outside the maximum).
    """

    counters = {"step": 0.0}
    sparse_gradients_error = "Adamax does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: Any = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        _check_adam_family(lr, eps, betas, weight_decay)
        super().__init__(**signature_arguments(Adamax.__init__, locals()))

    @staticmethod
    def switches(group):
        return dict(_switches(group), foreach=bool(group["foreach"]))

    coefficients = staticmethod(_coefficients)

    @staticmethod
    def schedule(math, h, counters):
        step = counters["step"] + 1
        # torch.optim's multi-tensor Adamax reads a tensor lr as a Python float first.
        lr = math.float(h.lr) if h.foreach else h.lr
        return dict(clr=lr / (1 - h.beta1 ** math.float(step))), {"step": step}

    @staticmethod
    def initial_state(ops, param, h):
        return _zero_moments(ops, param, ("exp_avg", "exp_inf"))

    @staticmethod
    def update(ops, param, grad, state, h):
        param, grad = decoupled_decay(param, h), direction(ops, param, grad, h)
        exp_avg = ops.lerp(state["exp_avg"], grad, h.one_minus_beta1)
        exp_inf = ops.maximum(state["exp_inf"] * h.beta2, ops.abs(grad) + h.eps)
        return ops.addcdiv(param, exp_avg, exp_inf, value=-h.clr), {"exp_avg": exp_avg, "exp_inf": exp_inf}


class NAdam(Optimizer):
    r"""Adam with Nesterov momentum (Dozat): torch.optim.NAdam.

    With the momentum schedule :math:`\mu_t = \beta_1 (1 - \tfrac12 \, 0.96^{t\psi})`
    (:math:`\psi` = momentum_decay) and :math:`\Pi_t = \prod_{i \le t} \mu_i`:

    .. math::
        \theta_t = \theta_{t-1}
            - \eta \frac{1-\mu_t}{1-\Pi_t} \frac{g_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}
            - \eta \frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}} \frac{m_t}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}

    State: ``step``, ``mu_product`` (:math:`\Pi_t`, a float32 scalar like
    torch's, which keeps its dtype through a checkpoint: torch.optim casts it to
    the parameter's dtype on load), ``exp_avg``, ``exp_avg_sq``.  The schedule is torch's (optax's
    ``nadam`` uses a constant :math:`\mu = \beta_1` and Adam's bias
    correction).  ``decoupled_weight_decay`` turns the L2 term into AdamW's decay.
    """

    counters = {"step": 0.0, "mu_product": 1.0}
    sparse_gradients_error = "NAdam does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: Any = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        _check_adam_family(lr, eps, betas, weight_decay)
        check_nonnegative(momentum_decay, "momentum_decay value")
        super().__init__(**signature_arguments(NAdam.__init__, locals()))

    @staticmethod
    def switches(group):
        return dict(_switches(group), foreach=bool(group["foreach"]))

    @staticmethod
    def coefficients(math, numbers):
        return dict(_coefficients(math, numbers), momentum_decay=numbers["momentum_decay"])

    @staticmethod
    def schedule(math, h, counters):
        step = counters["step"] + 1
        t = math.float(step)
        mu = h.beta1 * (1.0 - 0.5 * (0.96 ** (t * h.momentum_decay)))
        mu_next = h.beta1 * (1.0 - 0.5 * (0.96 ** ((t + 1) * h.momentum_decay)))
        # In the counter's float32, as torch's `mu_product *= mu` rounds mu first:
        mu_product = counters["mu_product"] * math.cast_like(mu, counters["mu_product"])
        mu_product_next = math.float(mu_product) * mu_next
        bias_correction2 = 1 - h.beta2**t
        # torch.optim's multi-tensor NAdam reads a tensor lr as a Python float first.
        lr = math.float(h.lr) if h.foreach else h.lr
        return dict(
            {"bias_correction2_sqrt": bias_correction2**0.5} if h.foreach else {"bias_correction2": bias_correction2},
            grad_step=-lr * (1.0 - mu) / (1.0 - math.float(mu_product)),
            momentum_step=(-lr * mu_next) / (1.0 - mu_product_next),
        ), {"step": step, "mu_product": mu_product}

    @staticmethod
    def initial_state(ops, param, h):
        return _zero_moments(ops, param)

    @staticmethod
    def update(ops, param, grad, state, h):
        param, grad = decoupled_decay(param, h), direction(ops, param, grad, h)
        exp_avg, exp_avg_sq = _moments(ops, grad, state, h)
        if h.foreach:  # torch.optim's multi-tensor NAdam: sqrt(v) / sqrt(1 - beta2^t)
            denom = ops.sqrt(exp_avg_sq) / h.bias_correction2_sqrt + h.eps
        else:
            denom = ops.sqrt(exp_avg_sq / h.bias_correction2) + h.eps
        param = ops.addcdiv(param, grad, denom, value=h.grad_step)
        param = ops.addcdiv(param, exp_avg, denom, value=h.momentum_step)
        return param, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


class RAdam(Optimizer):
    r"""Rectified Adam (Liu et al.): torch.optim.RAdam.

    With :math:`\rho_\infty = 2/(1-\beta_2) - 1` and
    :math:`\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)`:

    .. math::
        \hat m_t &= m_t / (1-\beta_1^t) \\
        \theta_t &= \theta_{t-1} - \eta \hat m_t \, r_t \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon}
            \quad \text{if } \rho_t > 5, \qquad
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}} \\
        \theta_t &= \theta_{t-1} - \eta \hat m_t \quad \text{otherwise (SGD with momentum)}

    The threshold is torch's :math:`\rho_t > 5` (the paper uses 4; optax's
    ``radam`` takes it as ``threshold=5``).  It is decided per parameter from its
    own step (on JAX inside the compiled program, so it never recompiles).  State: ``step``, ``exp_avg``,
    ``exp_avg_sq``.
    """

    counters = {"step": 0.0}
    sparse_gradients_error = "RAdam does not support sparse gradients"

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        _check_adam_family(lr, eps, betas, weight_decay)
        super().__init__(**signature_arguments(RAdam.__init__, locals()))

    @staticmethod
    def switches(group):
        return dict(_switches(group), foreach=bool(group["foreach"]))

    coefficients = staticmethod(_coefficients)

    @staticmethod
    def schedule(math, h, counters):
        step = counters["step"] + 1
        t = math.float(step)
        bias_correction2 = 1 - h.beta2**t
        rho_inf = 2 / (1 - h.beta2) - 1
        rho_t = rho_inf - 2 * t * (h.beta2**t) / bias_correction2
        rectify = rho_t > 5.0
        # While rho_t <= 4 the radicand is negative: its root is taken but not used.
        radicand = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        bias_correction1 = 1 - h.beta1**t
        if h.foreach:  # torch.optim's multi-tensor RAdam folds both regimes into two numbers
            rectification = math.where(rectify, radicand**0.5, 0.0)
            unrectified = math.where(rectify, 0.0, 1.0)
            return dict(
                rectified_scale=(bias_correction2**0.5) * (h.lr * rectification / bias_correction1) * -1,
                unrectified_step=(h.lr * unrectified / bias_correction1) * -1,
            ), {"step": step}
        rectification = math.where(rectify, radicand**0.5, 1.0)
        return dict(
            rectify=rectify,
            rectification=rectification,
            bias_correction1=bias_correction1,
            bias_correction2_sqrt=bias_correction2**0.5,
        ), {"step": step}

    @staticmethod
    def initial_state(ops, param, h):
        return _zero_moments(ops, param)

    @staticmethod
    def update(ops, param, grad, state, h):
        param, grad = decoupled_decay(param, h), direction(ops, param, grad, h)
        exp_avg, exp_avg_sq = _moments(ops, grad, state, h)
        new_state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        if h.foreach:  # torch.optim's multi-tensor RAdam: m / ((sqrt(v) + eps) / scale) + unrectified step
            scale = ops.reciprocal((ops.sqrt(exp_avg_sq) + h.eps) / h.rectified_scale) + h.unrectified_step
            return ops.addcmul(param, exp_avg, scale), new_state
        step = exp_avg / h.bias_correction1 * h.lr
        adaptive_lr = h.bias_correction2_sqrt / (ops.sqrt(exp_avg_sq) + h.eps)
        step = ops.where(h.rectify, step * adaptive_lr * h.rectification, step)
        return ops.add(param, step, alpha=-1.0), new_state
