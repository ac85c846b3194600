"""SparseAdam: Adam for sparse gradients, touching only the entries a gradient holds."""

from __future__ import annotations

from math import prod
from typing import Any

import backends

from .optimizer import Optimizer, signature_arguments
from .validation import check_array_lr, check_betas

__all__ = ["SparseAdam"]


class SparseAdam(Optimizer):
    r"""Adam masked to a sparse gradient's entries: torch.optim.SparseAdam.

    For the entries :math:`i` a sparse gradient holds (duplicates summed first):

    .. math::
        m_i &\leftarrow m_i + (1-\beta_1)(g_i - m_i), \qquad
        v_i \leftarrow v_i + (1-\beta_2)(g_i^2 - v_i) \\
        \theta_i &\leftarrow \theta_i - \eta\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
            \frac{m_i}{\sqrt{v_i} + \epsilon}

    Every other entry of :math:`\theta, m, v` is left as it is -- unlike Adam,
    whose moments decay everywhere at every step.  ``t`` counts the steps in
    which the parameter had a gradient, as a Python int (torch.optim's type).

    Gradients must be sparse: torch sparse COO tensors (``nn.Embedding(sparse=True)``
    produces them) on the torch backend, ``jax.experimental.sparse.BCOO`` arrays on
    JAX.  Under ``jax.jit`` a BCOO's number of stored entries is part of its shape:
    a step with a new count compiles anew.

    ``step()`` refuses dense gradients with torch.optim's error.  The functional
    form (:meth:`functional`) takes them as the sparse array of their nonzero entries.

    State: ``step``, ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`), dense.
    """

    counters = {"step": 0}
    dense_gradients_error = "SparseAdam does not support dense gradients, please consider Adam instead"

    def __init__(
        self,
        params: Any,
        lr: Any = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
        *,
        backend: str | None = None,
        skip_nonfinite: bool = False,
        state_dtype: Any = None,
    ) -> None:
        check_array_lr(lr)
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        check_betas(betas)
        super().__init__(**signature_arguments(SparseAdam.__init__, locals()))
        for kind, test, why in (
            ("Sparse", self._backend.is_sparse, "SparseAdam requires dense parameter tensors"),
            ("Complex", self._backend.is_complex, "SparseAdam does not support complex parameters"),
        ):
            found = [
                [group_index, index]
                for group_index, group in enumerate(self.param_groups)
                for index, param in enumerate(group["params"])
                if test(self._backend.value(param))
            ]
            if found:
                raise ValueError(f"{kind} params at indices {found}: {why}")

    @staticmethod
    def switches(group):
        return dict(maximize=bool(group["maximize"]))

    @staticmethod
    def coefficients(math, numbers):
        beta1, beta2 = numbers["betas"]
        return dict(
            lr=numbers["lr"],
            beta1=beta1,
            beta2=beta2,
            one_minus_beta1=1 - beta1,
            one_minus_beta2=1 - beta2,
            eps=numbers["eps"],
        )

    @staticmethod
    def schedule(math, h, counters):
        step = counters["step"] + 1
        t = math.float(step)
        step_size = h.lr * math.sqrt(1 - h.beta2**t) / (1 - h.beta1**t)
        return dict(step_size=step_size), {"step": step}

    @staticmethod
    def initial_state(ops, param, h):
        return {"exp_avg": ops.zeros_like(param), "exp_avg_sq": ops.zeros_like(param)}

    @staticmethod
    def update(ops, param, grad, state, h):
        grad = ops.coalesce(-grad if h.maximize else grad)  # the rule is not linear: one entry per index
        values = ops.sparse_values(grad)
        if prod(values.shape) == 0:  # nothing to apply: torch.optim skips the update too
            return param, state
        old_exp_avg = ops.gather(state["exp_avg"], grad)
        exp_avg_change = (values - old_exp_avg) * h.one_minus_beta1
        old_exp_avg_sq = ops.gather(state["exp_avg_sq"], grad)
        # torch.optim updates the squared values in place: in the gradient's dtype, which
        # differs from the state's after model.to(torch.float64).
        in_gradient_dtype = backends.dtype_name(values.dtype)
        exp_avg_sq_change = ops.astype(values * values - old_exp_avg_sq, in_gradient_dtype) * h.one_minus_beta2
        new_state = {
            "exp_avg": ops.scatter_add(state["exp_avg"], grad, exp_avg_change),
            "exp_avg_sq": ops.scatter_add(state["exp_avg_sq"], grad, exp_avg_sq_change),
        }
        denom = ops.sqrt(ops.astype(exp_avg_sq_change + old_exp_avg_sq, in_gradient_dtype)) + h.eps
        step = -h.step_size * ((exp_avg_change + old_exp_avg) / denom)
        return ops.scatter_add(param, grad, step), new_state
