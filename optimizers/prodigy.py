"""Prodigy: Adam whose learning rate is scaled by a running estimate of the distance to the solution."""

from __future__ import annotations

from typing import Any

from .optimizer import Optimizer, signature_arguments
from .terms import direction
from .validation import check_array_lr, check_betas

__all__ = ["Prodigy"]


def _sliced(array: Any, every: int) -> Any:
    """Every ``every``-th element of the flattened array: the reference's memory-saving subsample."""
    return array.reshape(-1)[::every]


def _advanced_s(ops: Any, s: Any, sliced_grad: Any, h: Any, d: Any, dlr: Any) -> Any:
    """``s_t = beta3 s_{t-1} + (d / d0) * (d or d * lr * bias_correction) * g``, on the sliced gradient."""
    weight = d / h.d0 * (d if h.safeguard_warmup else dlr)
    return ops.add(s * h.beta3, sliced_grad, alpha=weight)


def _estimate(ops: Any, math: Any, groups: list) -> dict[str, Any]:
    """The step's new distance estimate ``d``, from every parameter of every group.

    The reference reads ``d``, ``d_max``, ``d_numerator``, ``d_coef``, ``growth_rate`` and the
    bias correction from the first group, the largest ``lr`` of all groups, and sums
    ``(d / d0) dlr <g, p0 - p>`` and ``|s_t|_1`` on the host, one ``.item()`` per parameter.
    """
    first = groups[0].h
    lr = first.lr
    for group in groups[1:]:
        lr = math.where(group.h.lr > lr, group.h.lr, lr)
    dlr = first.d * lr * (first.bias_correction if first.corrects else 1.0)
    numerator, denominator = 0.0, 0.0
    for h, params, grads, states in groups:
        if not h.active:
            continue
        for param, grad, state in zip(params, grads, states):
            sliced_grad = _sliced(direction(ops, param, grad, h), h.slice_p)
            distance = ops.dot(sliced_grad, state["p0"] - _sliced(param, h.slice_p))
            numerator = numerator + first.d / h.d0 * dlr * ops.scalar(distance)
            s = _advanced_s(ops, state["s"], sliced_grad, h, first.d, dlr)
            denominator = denominator + ops.scalar(ops.sum(ops.abs(s)))
    # No progress yet (every sliced gradient and s zero): the reference returns before moving
    # anything, and leaves the groups' numbers as they were.
    stalled = denominator == 0
    numerator = first.d_numerator * first.beta3 + numerator
    d_hat = first.d_coef * numerator / math.where(stalled, 1.0, denominator)
    # Python's max(a, b) and min(a, b), as the reference computes them; it compares with the
    # last group's d0 (its loop variable).
    d = math.where(first.d == groups[-1].h.d0, math.where(d_hat > first.d, d_hat, first.d), first.d)
    d_max = math.where(d_hat > first.d_max, d_hat, first.d_max)
    grown = d * first.growth_rate
    d = math.where(grown < d_max, grown, d_max)
    return dict(
        step_d=first.d,
        dlr=dlr,
        stalled=math.where(stalled, 1.0, 0.0),
        next_d=d,
        next_d_max=d_max,
        next_d_numerator=numerator,
        next_d_denom=denominator,
        next_d_hat=d_hat,
    )


class Prodigy(Optimizer):
    r"""Prodigy (Mishchenko and Defazio, 2023) as ``prodigyopt.Prodigy`` 1.1.2 computes it.

    With :math:`d` the current estimate of the distance to the solution,
    :math:`\hat\eta = d\,\eta\,\rho_k` (:math:`\rho_k = \sqrt{1-\beta_2^{k+1}}/(1-\beta_1^{k+1})`
    with ``use_bias_correction``, else 1) and :math:`g` the gradient (plus :math:`\lambda\theta`
    unless ``decouple``):

    .. math::
        m_t &= \beta_1 m_{t-1} + d(1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + d^2(1-\beta_2) g_t^2 \\
        s_t &= \beta_3 s_{t-1} + \tfrac{d}{d_0}\hat\eta\, g_t, \qquad
        r_t = \beta_3 r_{t-1} + \tfrac{d}{d_0}\hat\eta \langle g_t, \theta_0 - \theta_{t-1}\rangle \\
        d' &= \min\bigl(d_{\max}, \gamma \max(d, \hat d)\bigr), \qquad
        \hat d = c\, \frac{r_t}{\sum \lVert s_t\rVert_1}, \qquad d_{\max} \leftarrow \max(d_{\max}, \hat d) \\
        \theta_t &= \theta_{t-1}(1 - \lambda\hat\eta) - \hat\eta\, \frac{m_t}{\sqrt{v_t} + d'\epsilon}

    (:math:`\beta_3 = \sqrt{\beta_2}` by default, :math:`c` = d_coef, :math:`\gamma` =
    growth_rate; the max over :math:`\hat d` applies while :math:`d = d_0`.)  :math:`r_t` and
    :math:`\sum\lVert s_t\rVert_1` run over every parameter of every group, on every
    ``slice_p``-th element; ``safeguard_warmup`` uses :math:`d` for :math:`\hat\eta` in
    :math:`s_t`.  With :math:`\beta_1 = 0` the step is :math:`d' g_t` in place of :math:`m_t`.
    While :math:`\sum\lVert s_t\rVert_1 = 0` (no gradient yet) the step moves no parameter.
    State: ``s``, ``p0`` (:math:`\theta_0` sliced), ``exp_avg`` (:math:`\beta_1 > 0`),
    ``exp_avg_sq``, ``step``; the groups hold ``d``, ``d_max``, ``d_numerator`` (:math:`r`),
    ``d_denom``, ``d_hat`` and ``k``, as the reference keeps them.

    Where definitions differ:

    * The reference adds the coupled decay into ``p.grad`` in place (it stays there after
      ``step()``); here gradients are not written.  It reads ``betas``, ``beta3``, ``decouple``
      and ``use_bias_correction`` from the first group for every group; here each group's
      (the same unless groups override them).  For an all-zero parameter it stores ``p0`` as
      a 0-d zero, here the sliced zeros (a checkpoint of either loads into the other).
      ``d_denom`` and ``d_hat`` are in the groups from the start here, after the first step
      there.  It raises "different lr values" in the middle of a step; here before anything
      changes.  The step's ``s`` is computed twice here: once for the estimate, before any
      parameter moves, once for the state.
    * ``fsdp_in_use`` all-reduces the two sums across processes in the reference (on CUDA);
      here the option is kept and must be False: sharded parameters need those sums reduced.
    * ``optax.contrib.prodigy`` always bias-corrects: it equals ``use_bias_correction=True``.
      Where the reference returns early (a zero denominator) optax divides by zero.
    """

    # d and d_max start at the group's d0 (set in __init__).
    group_counters = {"d": None, "d_max": None, "d_numerator": 0.0, "d_denom": 0.0, "d_hat": 0.0, "k": 0}
    counters = {"step": 0}
    sparse_gradients_error = "Prodigy does not support sparse gradients"
    complex_parameters_error = "Prodigy does not support complex parameters"
    step_scalars = staticmethod(_estimate)
    scalar_state_entries = ("p0",)

    def __init__(
        self,
        params: Any,
        lr: Any = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0,
        decouple: bool = True,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float = 1e-6,
        d_coef: float = 1.0,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        slice_p: int = 1,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        check_array_lr(lr)
        if not 0.0 < d0:
            raise ValueError(f"Invalid d0 value: {d0}")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        check_betas(betas)
        if not (isinstance(slice_p, int) and slice_p >= 1):
            raise ValueError(f"Invalid slice_p value: {slice_p} (every slice_p-th element: an int >= 1)")
        if fsdp_in_use:
            raise ValueError(
                "fsdp_in_use=True: Prodigy here sums its estimate over the parameters this process holds; "
                "with sharded parameters run one Prodigy over unsharded ones"
            )
        super().__init__(**signature_arguments(Prodigy.__init__, locals()))
        # The distance estimate starts at the constructor's d0, as the reference's defaults hold it.
        self.defaults.update(d=d0, d_max=d0)
        for group in self.param_groups:
            for key in ("d", "d_max"):
                if group[key] is None:
                    group[key] = d0

    def _check_step(self, stepping):
        super()._check_step(stepping)
        largest = max(group["lr"] for group in self.param_groups)
        for group in self.param_groups:
            if group["lr"] not in (largest, 0.0):
                raise RuntimeError(
                    "Setting different lr values in different parameter groups is only supported for values of 0"
                )

    @staticmethod
    def switches(group):
        decays = group["weight_decay"] != 0
        return dict(
            maximize=bool(group["maximize"]),
            l2=decays and not group["decouple"],
            decoupled=decays and bool(group["decouple"]),
            averages=group["betas"][0] > 0,
            corrects=bool(group["use_bias_correction"]),
            safeguard_warmup=bool(group["safeguard_warmup"]),
            active=group["lr"] > 0,
            slice_p=int(group["slice_p"]),
        )

    @staticmethod
    def coefficients(math, numbers):
        beta1, beta2 = numbers["betas"]
        k = numbers["k"]
        beta3 = numbers.get("beta3")
        return dict(
            lr=numbers["lr"],
            beta1=beta1,
            beta2=beta2,
            beta3=math.sqrt(beta2) if beta3 is None else beta3,
            eps=numbers["eps"],
            weight_decay=numbers["weight_decay"],
            d=numbers["d"],
            d0=numbers["d0"],
            d_max=numbers["d_max"],
            d_numerator=numbers["d_numerator"],
            d_coef=numbers["d_coef"],
            growth_rate=numbers["growth_rate"],
            bias_correction=((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)),
            # The step's, from step_scalars (before a step: as if stalled at d).
            step_d=numbers.get("step_d", numbers["d"]),
            dlr=numbers.get("dlr", 0.0),
            stalled=numbers.get("stalled", 1.0),
        )

    @staticmethod
    def advance_group(math, numbers):
        held = {key: numbers[key] for key in ("d", "d_max", "d_numerator", "d_denom", "d_hat")}
        moved = {key: numbers["next_" + key] for key in held}
        stalled = numbers["stalled"] > 0
        return {
            **{key: math.where(stalled, held[key], moved[key]) for key in held},
            "k": math.where(stalled, numbers["k"], numbers["k"] + 1),
        }

    @staticmethod
    def schedule(math, h, counters):
        return {}, {"step": math.where(h.stalled > 0, counters["step"], counters["step"] + 1)}

    @staticmethod
    def initial_state(ops, param, h):
        state = {"s": ops.zeros_like(_sliced(param, h.slice_p)), "p0": ops.copy(_sliced(param, h.slice_p))}
        if h.averages:
            state["exp_avg"] = ops.zeros_like(param)
        return {**state, "exp_avg_sq": ops.zeros_like(param)}

    @staticmethod
    def update(ops, param, grad, state, h):
        grad = direction(ops, param, grad, h)
        new_state = dict(state)
        if h.active:
            step_d = h.step_d
            if h.averages:
                new_state["exp_avg"] = ops.add(state["exp_avg"] * h.beta1, grad, alpha=step_d * (1 - h.beta1))
            new_state["exp_avg_sq"] = ops.addcmul(
                state["exp_avg_sq"] * h.beta2, grad, grad, value=step_d * step_d * (1 - h.beta2)
            )
            new_state["s"] = _advanced_s(ops, state["s"], _sliced(grad, h.slice_p), h, step_d, h.dlr)
        # The estimate after this step (the groups' d has advanced; step_d is the one it began with).
        denom = ops.sqrt(new_state["exp_avg_sq"]) + h.d * h.eps
        stepped = param
        if h.decoupled:
            stepped = ops.add(stepped, stepped, alpha=-h.weight_decay * h.dlr)
        if h.averages:
            stepped = ops.addcdiv(stepped, new_state["exp_avg"], denom, value=-h.dlr)
        else:
            stepped = ops.addcdiv(stepped, grad, denom, value=-h.dlr * h.d)
        return ops.where(h.stalled > 0, param, stepped), new_state
