"""LAMB: Adam's step scaled per tensor by a trust ratio, for large-batch training (timm's NVLAMB)."""

from __future__ import annotations

from typing import Any

import backends

from .optimizer import Optimizer, signature_arguments
from .terms import trust_ratio
from .validation import check_array_lr, check_betas, check_fused, check_nonnegative

__all__ = ["Lamb"]


def _global_clip(ops: Any, math: Any, groups: list) -> dict[str, Any]:
    """timm's global clip divisor ``max(||(||g_1||, ..., ||g_n||)|| / max_grad_norm, 1)`` over every gradient.

    The options are the last group's (timm reads its constructor's).
    """
    h, grads = groups[-1].h, [grad for group in groups for grad in group.grads]
    if not h.clips or not grads:
        return {"clip": 1.0}
    norms = ops.concat([ops.norm(grad).reshape(1) for grad in grads])
    return {"clip": ops.scalar(ops.clamp(ops.norm(norms) / h.max_grad_norm, low=1.0))}


class Lamb(Optimizer):
    r"""LAMB (You et al., 2019) as ``timm.optim.Lamb`` computes it: the NVLAMB variant of apex's FusedLAMB.

    .. math::
        \hat g_t &= g_t / c, \qquad c = \max\bigl(1, \lVert g\rVert / M\bigr)
            \ \text{(max_grad_norm } M\text{, one norm over every gradient; } c = 1
            \text{ without)} \\
        m_t &= \beta_1 m_{t-1} + \beta_3 \hat g_t \quad (\beta_3 = 1-\beta_1
            \text{ with grad_averaging, else } 1), \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\hat g_t^2 \\
        u_t &= \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}
            + \lambda\theta_{t-1}, \qquad
        r_t = \frac{\lVert\theta_{t-1}\rVert}{\lVert u_t\rVert}
            \ (1 \text{ if either norm is } 0;\ \min(r_t, 1) \text{ with trust_clip}) \\
        \theta_t &= \theta_{t-1} - \eta\, r_t\, u_t

    The trust ratio applies where :math:`\lambda \ne 0` or ``always_adapt``.  With
    ``decoupled_decay`` the decay is AdamW's, :math:`\theta(1 - \eta'\lambda)` before the ratio
    is taken (:math:`\eta' = \eta^2/\eta_{\max}` with ``corrected_weight_decay``,
    :math:`\eta_{\max}` the constructor's lr), instead of :math:`\lambda\theta` in :math:`u_t`.
    ``caution`` (Cautious Optimizers) keeps the components of :math:`u` whose sign agrees
    with the gradient's, rescaled by the kept fraction.  Without ``bias_correction`` both
    corrections are 1.  State: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`); the step
    count :math:`t` is the param group's ``step``, advanced for every group at every step.

    Where definitions differ:

    * timm's multi-tensor path (``foreach=True``) folds the bias corrections into scalars,
      :math:`u = m / (\sqrt{v} + \epsilon\sqrt{1-\beta_2^t})` scaled by
      :math:`\sqrt{1-\beta_2^t}/(1-\beta_1^t)`: the same value rounded another way.  Our
      ``foreach`` follows it, as torch.optim's foreach paths are followed, except that timm
      unfolds a whole group holding a float16 parameter and we unfold that parameter only.
    * timm keeps the group's ``step`` as a float32 tensor, here an int (timm converts either
      on load); it reads ``max_grad_norm`` from the constructor's defaults, here from the
      last param group (the same unless groups override it).
    * ``optax.lamb`` has no clip and always adapts: it equals this rule with
      ``max_grad_norm=None, always_adapt=True``.  pytorch_optimizer's ``Lamb`` clamps the
      weight norm at 10 and bias-corrects differently; cybertronai's pytorch-lamb has no
      bias correction.  The README measures them.
    """

    group_counters = {"step": 0}
    sparse_gradients_error = "Lamb does not support sparse gradients, consider SparseAdam instead."
    complex_parameters_error = "Lamb does not support complex parameters"
    step_scalars = staticmethod(_global_clip)

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        grad_averaging: bool = True,
        max_grad_norm: float | None = 1.0,
        trust_clip: bool = False,
        always_adapt: bool = False,
        caution: bool = False,
        decoupled_decay: bool = False,
        corrected_weight_decay: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        *,
        maximize: bool = False,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
        bucket_view: bool = False,
    ) -> None:
        check_array_lr(lr)
        check_nonnegative(lr, "learning rate")
        check_nonnegative(eps, "epsilon")
        check_nonnegative(weight_decay, "weight_decay")
        check_betas(betas)
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"Invalid max_grad_norm: {max_grad_norm} (a positive norm, or None for no clip)")
        max_lr = float(lr)
        if corrected_weight_decay and max_lr <= 0:
            raise ValueError(
                f"Corrected weight decay requires a positive max lr, got {max_lr}. Construct the optimizer with "
                "the peak lr."
            )
        check_fused(fused, foreach, False)
        super().__init__(**signature_arguments(Lamb.__init__, locals()))
        # timm's snapshot of the constructor's lr, the peak a corrected decay divides by.
        self.defaults["max_lr_snapshot"] = max_lr
        for group in self.param_groups:
            group.setdefault("max_lr_snapshot", max_lr)

    @staticmethod
    def switches(group):
        decays = group["weight_decay"] != 0
        averaging = bool(group["grad_averaging"])
        beta1 = group["betas"][0]
        return dict(
            maximize=bool(group["maximize"]),
            clips=group["max_grad_norm"] is not None,
            averaging=averaging,
            # timm tests its own scalars: beta3 == 1 - beta1 takes the lerp (also when beta1 = 0).
            lerps=(1 - beta1 if averaging else 1.0) == 1 - beta1,
            corrects=bool(group["bias_correction"]),
            caution=bool(group["caution"]),
            l2=decays and not group["decoupled_decay"],
            decoupled=decays and bool(group["decoupled_decay"]),
            corrects_decay=bool(group["corrected_weight_decay"]),
            adapts=decays or bool(group["always_adapt"]),
            trust_clip=bool(group["trust_clip"]),
            folded=bool(group["foreach"]),
        )

    @staticmethod
    def coefficients(math, numbers):
        beta1, beta2 = numbers["betas"]
        lr, weight_decay = numbers["lr"], numbers["weight_decay"]
        # timm reads its float32 step tensor as a Python float; as at step 1 before the first step.
        t = math.where(numbers["step"] > 0, math.float(numbers["step"]), 1.0)
        return dict(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            one_minus_beta1=1 - beta1,
            one_minus_beta2=1 - beta2,
            eps=numbers["eps"],
            weight_decay=weight_decay,
            max_grad_norm=numbers.get("max_grad_norm"),
            clip=numbers.get("clip", 1.0),  # the step's global clip, from step_scalars
            bias_correction1=1 - beta1**t,
            bias_correction2_sqrt=(1 - beta2**t) ** 0.5,
            decay=-lr * weight_decay,
            corrected_decay=-(lr**2 / numbers["max_lr_snapshot"]) * weight_decay,
        )

    @staticmethod
    def advance_group(math, numbers):
        return {"step": numbers["step"] + 1}

    @staticmethod
    def initial_state(ops, param, h):
        return {"exp_avg": ops.zeros_like(param), "exp_avg_sq": ops.zeros_like(param)}

    @staticmethod
    def update(ops, param, grad, state, h):
        if h.maximize:
            grad = -grad
        if h.clips:
            grad = grad / h.clip
        beta3 = h.one_minus_beta1 if h.averaging else 1.0
        if h.lerps:
            exp_avg = ops.lerp(state["exp_avg"], grad, beta3)
        else:
            exp_avg = ops.add(state["exp_avg"] * h.beta1, grad, alpha=beta3)
        exp_avg_sq = ops.addcmul(state["exp_avg_sq"] * h.beta2, grad, grad, value=h.one_minus_beta2)
        bias_correction1, bias_correction2_sqrt = (
            (h.bias_correction1, h.bias_correction2_sqrt) if h.corrects else (1.0, 1.0)
        )
        # timm's multi-tensor path folds the corrections into one scale, except for float16 (where
        # eps * sqrt(bc2) can underflow).
        folded = h.folded and backends.dtype_name(param.dtype) != "float16"
        if folded:
            scale = bias_correction2_sqrt / bias_correction1
            update = exp_avg / (ops.sqrt(exp_avg_sq) + h.eps * bias_correction2_sqrt)
        else:
            scale = 1.0
            update = (exp_avg / bias_correction1) / (ops.sqrt(exp_avg_sq) / bias_correction2_sqrt + h.eps)
        if h.caution:
            agrees = ops.astype(update * grad > 0, backends.dtype_name(grad.dtype))
            update = update * (agrees / ops.clamp(ops.mean(agrees), low=1e-3))
        if h.decoupled:
            param = ops.add(param, param, alpha=h.corrected_decay if h.corrects_decay else h.decay)
        elif h.l2:
            update = ops.add(update, param, alpha=h.weight_decay / scale if folded else h.weight_decay)
        moments = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        step_size = -h.lr * scale if folded else -h.lr
        if not h.adapts:
            return ops.add(param, update, alpha=step_size), moments
        weight_norm, update_norm = ops.norm(param), ops.norm(update)
        if folded:
            update_norm = update_norm * scale
        ratio = trust_ratio(ops, weight_norm, update_norm, weight_norm / update_norm)
        if h.trust_clip:
            ratio = ops.clamp(ratio, high=1.0)
        if folded:
            return ops.addcmul(param, update, ratio * step_size), moments
        return ops.add(param, update * ratio, alpha=step_size), moments
