"""Schedule-Free AdamW and SGD: no learning-rate schedule, an average of the iterates instead."""

from __future__ import annotations

from typing import Any

import backends

from .optimizer import Optimizer, signature_arguments
from .validation import check_array_lr, check_fused, check_nonnegative

__all__ = ["ScheduleFreeAdamW", "ScheduleFreeSGD"]

NOT_IN_TRAIN_MODE = (
    "Optimizer was not in train mode when step is called. Please insert .train() and .eval() calls on the "
    "optimizer. See documentation for details."
)


class _ScheduleFree(Optimizer):
    r"""What both Schedule-Free rules share (Defazio et al., 2024): the averaging and the two modes.

    Three sequences: :math:`z` takes the base optimizer's steps, :math:`x` is their weighted
    average, and the gradient is taken at :math:`y = (1-\beta)z + \beta x`.  With
    :math:`c_{t+1} = w_t / \sum_{i \le t} w_i`, :math:`w_t = t^r \eta_{\max,t}^{p}`
    (:math:`\eta_{\max}` the largest learning rate so far, warmup included):

    .. math::
        y \leftarrow (1-c)\,y + c\,z + \eta(\beta(1-c) - 1)\,u, \qquad z \leftarrow z - \eta\,u

    for the base step :math:`u`.  While training (``train()``) the parameters hold :math:`y`;
    ``eval()`` moves them to :math:`x = y + (1 - 1/\beta)(z - y)` for evaluation and ``train()``
    back.  The optimizer starts in eval mode, as the reference does, and ``step()`` there raises.
    The counters live in the param group (``k``, ``lr_max``, ``weight_sum``, ``scheduled_lr``,
    and ``train_mode``), as the reference keeps them; state: ``z`` per parameter.
    """

    group_counters = {"k": 0, "weight_sum": 0.0, "lr_max": -1.0, "scheduled_lr": 0.0}

    def __init__(self, params: Any, **hyperparameters: Any) -> None:
        super().__init__(params, **hyperparameters, train_mode=False)

    @staticmethod
    def _beta(group: dict[str, Any]) -> Any:
        """The interpolation's beta: SGD's momentum (AdamW's beta1)."""
        return group["momentum"]

    @staticmethod
    def advance_group(math, numbers):
        k, lr, warmup = numbers["k"], numbers["lr"], numbers["warmup_steps"]
        # k < warmup_steps never holds for warmup_steps <= 0, whose quotient is never used
        sched = math.where(k < warmup, (k + 1) / math.where(warmup > 0, warmup, 1.0), 1.0)
        scheduled_lr = lr * sched
        lr_max = math.where(numbers["lr_max"] > scheduled_lr, numbers["lr_max"], scheduled_lr)
        weight = (k + 1) ** numbers["r"] * lr_max ** numbers["weight_lr_power"]
        return dict(k=k + 1, scheduled_lr=scheduled_lr, lr_max=lr_max, weight_sum=numbers["weight_sum"] + weight)

    @staticmethod
    def _averaging(math, numbers, beta):
        """The step's interpolation weight and y's coefficient, from the advanced counters (the
        step's weight is read again from them: the group keeps the counters, not the weight)."""
        lr, weight_sum = numbers["scheduled_lr"], numbers["weight_sum"]
        weight = numbers["k"] ** numbers["r"] * numbers["lr_max"] ** numbers["weight_lr_power"]
        # weight_sum is 0 while every learning rate so far was 0: the reference's ckp1 = 0 there
        ckp1 = math.where(weight_sum != 0, weight / math.where(weight_sum != 0, weight_sum, 1.0), 0.0)
        return dict(ckp1=ckp1, y_step=lr * (beta * (1 - ckp1) - 1), z_step=-lr)

    def step(self, closure: Any = None) -> Any:
        if self.param_groups and not self.param_groups[0]["train_mode"]:
            raise RuntimeError(NOT_IN_TRAIN_MODE)
        return super().step(closure)

    def _move(self, to_train: bool) -> None:
        backend = self._backend
        for group in self.param_groups:
            if bool(group["train_mode"]) == to_train:
                continue
            beta = self._beta(group)
            weight = 1 - beta if to_train else 1 - 1 / beta
            for param in group["params"]:
                z = self.state.get(param, {}).get("z")
                if z is not None:
                    backend.write(param, backend.ops.lerp(backend.value(param), z, weight))
            group["train_mode"] = to_train

    def train(self) -> None:
        """The parameters to :math:`y`, where gradients are taken: call before training steps."""
        self._move(to_train=True)

    def eval(self) -> None:
        """The parameters to the average :math:`x`: call before evaluating or saving the model."""
        self._move(to_train=False)

    @staticmethod
    def eval_params(params: Any, state: Any, beta: float = 0.9) -> Any:
        """The functional form's evaluation parameters :math:`x`, from ``y`` (``params``) and its state.

        As ``optax.contrib.schedule_free_eval_params``; ``beta`` is AdamW's beta1 or SGD's momentum.
        """
        ops = backends.get("jax").ops
        import jax

        # state holds a dict at each of params' leaves: tree_map passes it whole
        return jax.tree_util.tree_map(lambda y, held: ops.lerp(y, held["z"], 1 - 1 / beta), params, state)

    @staticmethod
    def initial_state(ops, param, h):
        return {"z": ops.copy(param)}


class ScheduleFreeAdamW(_ScheduleFree):
    r"""Schedule-Free AdamW: ``schedulefree.AdamWScheduleFree`` (schedulefree 1.4.1) on either backend.

    The base step is Adam's without momentum, decayed at :math:`y`:

    .. math::
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad
        u_t = \frac{g_t}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon} + \lambda y

    and the averaging of :class:`ScheduleFreeSGD` with :math:`\beta = \beta_1`; a warmup of
    ``warmup_steps`` scales the learning rate by :math:`t / T` (steps counted from 1).  State:
    ``z``, ``exp_avg_sq``.

    Where definitions differ:

    * ``optax.contrib.schedule_free_adamw`` counts its warmup schedule from 0 where the
      reference counts from 1 (one step behind), computes it in float32, and has no ``r``;
      without warmup and with ``r = 0`` it is the same definition.
    * The reference writes the normalized gradient into ``p.grad`` and validates nothing; here
      gradients are not written and bad hyperparameters raise ValueError.
    * The reference keeps every counter per group and advances them for groups without
      gradients; so does this.  Its foreach path (the default) and ours compute the same.
    """

    sparse_gradients_error = "ScheduleFreeAdamW does not support sparse gradients"
    complex_parameters_error = "ScheduleFreeAdamW does not support complex parameters"

    def __init__(
        self,
        params: Any,
        lr: Any = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
        bucket_view: bool = False,
    ) -> None:
        check_array_lr(lr)
        check_nonnegative(lr, "learning rate")
        check_nonnegative(eps, "epsilon value")
        # beta1 = 0 would make eval() divide by zero
        if not 0.0 < betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        check_nonnegative(weight_decay, "weight_decay value")
        check_fused(fused, foreach, False)
        super().__init__(**signature_arguments(ScheduleFreeAdamW.__init__, locals()))

    @staticmethod
    def _beta(group):
        return group["betas"][0]

    @staticmethod
    def switches(group):
        return dict(maximize=bool(group["maximize"]), decays=group["weight_decay"] != 0)

    @staticmethod
    def coefficients(math, numbers):
        beta1, beta2 = numbers["betas"]
        return dict(
            _ScheduleFree._averaging(math, numbers, beta1),
            beta2=beta2,
            one_minus_beta2=1 - beta2,
            bias_correction2=1 - beta2 ** numbers["k"],
            eps=numbers["eps"],
            weight_decay=numbers["weight_decay"],
        )

    @staticmethod
    def initial_state(ops, param, h):
        return {"z": ops.copy(param), "exp_avg_sq": ops.zeros_like(param)}

    @staticmethod
    def update(ops, param, grad, state, h):
        if h.maximize:
            grad = -grad
        exp_avg_sq = ops.addcmul(state["exp_avg_sq"] * h.beta2, grad, grad, value=h.one_minus_beta2)
        direction = grad / (ops.sqrt(exp_avg_sq / h.bias_correction2) + h.eps)
        if h.decays:
            direction = ops.add(direction, param, alpha=h.weight_decay)
        param = ops.add(ops.lerp(param, state["z"], h.ckp1), direction, alpha=h.y_step)
        return param, {"z": ops.add(state["z"], direction, alpha=h.z_step), "exp_avg_sq": exp_avg_sq}


class ScheduleFreeSGD(_ScheduleFree):
    r"""Schedule-Free SGD: ``schedulefree.SGDScheduleFree`` (schedulefree 1.4.1) on either backend.

    The base step is the gradient, with L2 decay at :math:`y`: :math:`u_t = g_t + \lambda y`,
    and :math:`\beta` = ``momentum``.  State: ``z``.

    Where definitions differ: ``optax.contrib.schedule_free_sgd`` counts its warmup from 0
    (one step behind the reference) and has no ``r``; the reference writes the decayed gradient
    into ``p.grad``, not done here.
    """

    sparse_gradients_error = "ScheduleFreeSGD does not support sparse gradients"
    complex_as_real = False  # linear in the gradient, as the reference steps complex tensors

    def __init__(
        self,
        params: Any,
        lr: Any = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        fused: bool | None = None,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
        bucket_view: bool = False,
    ) -> None:
        check_array_lr(lr)
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if momentum <= 0 or momentum >= 1:
            raise ValueError(f"Momentum must be between 0 and 1 exclusive: {momentum}")
        check_fused(fused, foreach, False)
        super().__init__(**signature_arguments(ScheduleFreeSGD.__init__, locals()))

    @staticmethod
    def switches(group):
        return dict(maximize=bool(group["maximize"]), decays=group["weight_decay"] != 0)

    @staticmethod
    def coefficients(math, numbers):
        return dict(_ScheduleFree._averaging(math, numbers, numbers["momentum"]), weight_decay=numbers["weight_decay"])

    @staticmethod
    def update(ops, param, grad, state, h):
        if h.maximize:
            grad = -grad
        if h.decays:
            grad = ops.add(grad, param, alpha=h.weight_decay)
        param = ops.add(ops.lerp(param, state["z"], h.ckp1), grad, alpha=h.y_step)
        return param, {"z": ops.add(state["z"], grad, alpha=h.z_step)}
