"""L-BFGS: a quasi-Newton method over all parameters at once, driven by a closure."""

from __future__ import annotations

from collections.abc import Callable
from math import prod
from typing import Any

from .optimizer import Optimizer, signature_arguments
from .validation import check_array_lr, check_nonnegative

__all__ = ["LBFGS"]


class LBFGS(Optimizer):
    r"""Limited-memory BFGS (Nocedal), in torch.optim.LBFGS's form (after minFunc).

    The parameters are one flat vector :math:`x` with gradient :math:`g`.  Each of
    up to max_iter iterations per ``step``:

    .. math::
        s_k = x_{k+1} - x_k, \quad y_k = g_{k+1} - g_k \ \text{(kept when } y_k^\top s_k > 10^{-10}),
        \qquad d = -H g

    where :math:`H g` is the two-loop recursion over the last history_size pairs,
    starting from :math:`H_0 = \frac{y^\top s}{y^\top y} I`.  Then
    :math:`x \leftarrow x + t d` with :math:`t` = lr (the first iteration ever:
    :math:`\min(1, 1/\lVert g\rVert_1)\,\text{lr}`), or :math:`t` from a line
    search satisfying the strong Wolfe conditions (``line_search_fn="strong_wolfe"``,
    :math:`c_1 = 10^{-4}, c_2 = 0.9`, cubic interpolation).  A step stops early
    when :math:`\max|g| \le` tolerance_grad, when :math:`\max|t d|` or the loss
    change is below tolerance_change, or after max_eval evaluations.

    ``step(closure)`` needs the closure: on torch it re-evaluates the model and
    calls ``backward()``; on JAX it is ``f(params) -> (loss, grads)``, as
    ``jax.value_and_grad`` returns.  One param group only, as in torch.  The
    iteration is host-driven (its branches read the loss and dot products), so
    on JAX it runs as eager array operations, not one compiled program.

    State (held under the first parameter, as torch.optim does): ``func_evals``,
    ``n_iter``, the direction ``d``, step ``t``, the history ``old_dirs``
    (:math:`y`), ``old_stps`` (:math:`s`), ``ro`` (:math:`1/y^\top s`), ``al``,
    ``H_diag``, ``prev_flat_grad``, ``prev_loss``.
    """

    def __init__(
        self,
        params: Any,
        lr: Any = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
        *,
        backend: str | None = None,
        skip_nonfinite: bool = False,
    ) -> None:
        check_array_lr(lr)
        check_nonnegative(lr, "learning rate")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        super().__init__(**signature_arguments(LBFGS.__init__, locals()))
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")

    # -- the parameters as one vector ----------------------------------------------

    def _lazy_state_shape(self, key: str, value: Any, h: Any) -> tuple | None:
        # The direction and last gradient are flat vectors over all parameters (complex as
        # real pairs); the history lists and scalars have no fixed shape.
        if key not in ("d", "prev_flat_grad"):
            return None
        return (sum(prod(self._real(value).shape) for value in self._values()),)

    def _real(self, array: Any) -> Any:
        """``array``, a complex one as its (real, imag) pairs: how it sits in the flat vectors."""
        return self._backend.as_real(array) if self._backend.is_complex(array) else array

    def _flat_grad(self) -> Any:
        ops, backend = self._backend.ops, self._backend
        pieces = []
        for param in self.param_groups[0]["params"]:
            grad = ops.zeros_like(backend.value(param)) if param.grad is None else ops.dense(param.grad)
            pieces.append(self._real(grad).reshape(-1))
        return ops.concat(pieces)

    def _values(self) -> list:
        return [self._backend.value(p) for p in self.param_groups[0]["params"]]

    def _write(self, values: list) -> None:
        for param, value in zip(self.param_groups[0]["params"], values, strict=True):
            self._backend.write(param, value)

    def _moved(self, values: list, step: Any, direction: Any) -> list:
        """``values + step * direction``, the direction cut into the parameters' shapes."""
        backend, moved, offset = self._backend, [], 0
        for value in values:
            real = self._real(value)
            size = prod(real.shape)
            new = backend.ops.add(real, direction[offset : offset + size].reshape(real.shape), alpha=step)
            moved.append(backend.as_complex(new) if backend.is_complex(value) else new)
            offset += size
        return moved

    def _evaluate(self, closure: Callable) -> tuple[Any, float, Any]:
        """The closure's loss (as returned, and as a float) and the flat gradient."""
        loss = self._run_closure(closure)
        value = self._backend.ops.scalar(loss) if hasattr(loss, "shape") else loss
        return loss, float(value), self._flat_grad()

    # -- the algorithm --------------------------------------------------------------

    def step(self, closure: Callable) -> Any:  # type: ignore[override]
        """Run up to ``max_iter`` L-BFGS iterations; return the closure's first loss.

        If the closure raises, or (with ``skip_nonfinite``) any evaluated gradient is not
        finite, the step is undone: parameters and state return to where it began.
        """
        if len(self.param_groups) != 1:
            raise AssertionError(f"Expected exactly one param_group, but got {len(self.param_groups)}")
        if self.param_groups[0]["line_search_fn"] not in (None, "strong_wolfe"):
            raise RuntimeError("only 'strong_wolfe' is supported")
        # The closure runs many times and the parameters move between runs: keep where the
        # step began, to return there if a run raises (or, opted in, gives non-finite gradients).
        first = self.param_groups[0]["params"][0]
        had_state = first in self.state
        start = [self._backend.ops.copy(value) for value in self._values()]
        held = {k: list(v) if isinstance(v, list) else v for k, v in self.state.get(first, {}).items()}

        def restore():
            self._write(start)
            if had_state:
                self.state[first] = held
            else:
                self.state.pop(first, None)

        finite = []

        def evaluate(closure):
            evaluated = self._evaluate(closure)
            if self.skip_nonfinite:
                finite.append(self._backend.all_finite([evaluated[2]]))
            return evaluated

        try:
            first_loss = self._iterate(closure, evaluate)
        except BaseException:
            restore()
            raise
        if not all(finite):
            restore()
            self.skipped_steps += 1
        return first_loss

    def _iterate(self, closure: Callable, evaluate: Callable) -> Any:
        group = self.param_groups[0]
        ops = self._backend.ops
        lr = group["lr"].reshape(()) if hasattr(group["lr"], "shape") else group["lr"]
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_change, history_size = group["tolerance_change"], group["history_size"]
        state = self.state[group["params"][0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        def converged(gradient):
            return ops.abs(gradient).max() <= group["tolerance_grad"]

        first_loss, loss, flat_grad = evaluate(closure)
        evaluations = 1
        state["func_evals"] += 1
        if converged(flat_grad):
            return first_loss

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        h_diag, prev_flat_grad, prev_loss = state.get("H_diag"), state.get("prev_flat_grad"), state.get("prev_loss")
        iteration = 0
        while iteration < max_iter:
            iteration += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d, old_dirs, old_stps, ro, h_diag = -flat_grad, [], [], [], 1
            else:
                y, s = flat_grad - prev_flat_grad, d * t
                ys = ops.dot(y, s)
                if ys > 1e-10:  # curvature condition: keep the pair
                    if len(old_dirs) == history_size:
                        del old_dirs[0], old_stps[0], ro[0]
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    h_diag = ys / ops.dot(y, y)
                al = state.setdefault("al", [None] * history_size)
                d = _two_loop(ops, -flat_grad, old_dirs, old_stps, ro, al, h_diag)
            prev_flat_grad = flat_grad
            prev_loss = loss
            if state["n_iter"] == 1:
                t = min(1.0, 1.0 / ops.abs(flat_grad).sum()) * lr
            else:
                t = lr
            gtd = ops.dot(flat_grad, d)
            if gtd > -tolerance_change:  # not a descent direction
                break

            spent, optimal = 0, False
            if group["line_search_fn"] is not None:
                start = [self._backend.ops.copy(value) for value in self._values()]

                def at(step_size, direction, start=start):
                    self._write(self._moved(start, step_size, direction))
                    _, value, gradient = evaluate(closure)
                    self._write(start)
                    return value, gradient

                loss, flat_grad, t, spent = _strong_wolfe(
                    ops, at, t, d, loss, flat_grad, gtd, tolerance_change, max_eval - evaluations
                )
                self._write(self._moved(self._values(), t, d))
                optimal = converged(flat_grad)
            else:
                self._write(self._moved(self._values(), t, d))
                if iteration != max_iter:
                    _, loss, flat_grad = evaluate(closure)
                    optimal = converged(flat_grad)
                    spent = 1
            evaluations += spent
            state["func_evals"] += spent

            if (
                iteration == max_iter
                or evaluations >= max_eval
                or optimal
                or ops.abs(d * t).max() <= tolerance_change
                or abs(loss - prev_loss) < tolerance_change
            ):
                break

        state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=h_diag)
        state.update(prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return first_loss


def _two_loop(ops, q, old_dirs, old_stps, ro, al, h_diag):
    """The L-BFGS two-loop recursion: ``H q`` from the stored (y, s) pairs, newest first then oldest first."""
    for i in reversed(range(len(old_dirs))):
        al[i] = ops.dot(old_stps[i], q) * ro[i]
        q = ops.add(q, old_dirs[i], alpha=-al[i])
    r = q * h_diag
    for i in range(len(old_dirs)):
        be_i = ops.dot(old_dirs[i], r) * ro[i]
        r = ops.add(r, old_stps[i], alpha=al[i] - be_i)
    return r


def _cubic_minimum(ops, x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimizer of the cubic through (x1, f1, g1) and (x2, f2, g2), clipped to ``bounds``.

    Without a real minimizer: the middle of the bounds (by default the interval itself).
    """
    low, high = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if not d2_square >= 0:
        return (low + high) / 2.0
    d2 = ops.sqrt(d2_square)
    if x1 <= x2:
        position = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        position = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(position, low), high)


def _strong_wolfe(ops, at, t, d, f, g, gtd, tolerance_change, max_ls, c1=1e-4, c2=0.9):
    """A step ``t`` along ``d`` meeting the strong Wolfe conditions: bracket it, then zoom.

    ``at(t, d) -> (loss, flat gradient)`` evaluates the objective at ``x + t d``.
    Returns ``(loss, gradient, t, evaluations)`` at the chosen step.
    """
    d_norm = ops.abs(d).max()
    f_new, g_new = at(t, d)
    evaluations, iterations = 1, 0
    gtd_new = ops.dot(g_new, d)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    # Bracketing: grow t until the interval [t_prev, t] holds a point meeting the conditions.
    while iterations < max_ls:
        if f_new > (f + c1 * t * gtd) or (iterations > 1 and f_new >= f_prev):
            bracket = [[t_prev, f_prev, g_prev, gtd_prev], [t, f_new, g_new, gtd_new]]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, done = [[t, f_new, g_new, None]], True
            break
        if gtd_new >= 0:
            bracket = [[t_prev, f_prev, g_prev, gtd_prev], [t, f_new, g_new, gtd_new]]
            break
        bounds = (t + 0.01 * (t - t_prev), t * 10)
        t_prev, t = t, _cubic_minimum(ops, t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=bounds)
        f_prev, g_prev, gtd_prev = f_new, g_new, gtd_new
        f_new, g_new = at(t, d)
        evaluations += 1
        gtd_new = ops.dot(g_new, d)
        iterations += 1
    if iterations == max_ls:
        bracket = [[0, f, g, None], [t, f_new, g_new, None]]

    # Zoom: shrink the bracket by cubic interpolation until a point meets the conditions.
    low, high = (0, 1) if bracket[0][1] <= bracket[-1][1] else (1, 0)
    stuck = False  # the last interpolation landed too close to a bracket end
    while not done and iterations < max_ls:
        if abs(bracket[1][0] - bracket[0][0]) * d_norm < tolerance_change:
            break
        (a, f_a, _, g_a), (b, f_b, _, g_b) = bracket
        t = _cubic_minimum(ops, a, f_a, g_a, b, f_b, g_b)
        top, bottom = max(a, b), min(a, b)
        margin = 0.1 * (top - bottom)
        if min(top - t, t - bottom) < margin:
            if stuck or t >= top or t <= bottom:
                t = top - margin if abs(t - top) < abs(t - bottom) else bottom + margin
                stuck = False
            else:
                stuck = True
        else:
            stuck = False
        f_new, g_new = at(t, d)
        evaluations += 1
        gtd_new = ops.dot(g_new, d)
        iterations += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket[low][1]:
            bracket[high] = [t, f_new, g_new, gtd_new]
            low, high = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high][0] - bracket[low][0]) >= 0:
                bracket[high] = bracket[low]
            bracket[low] = [t, f_new, g_new, gtd_new]
    t, f_new, g_new, _ = bracket[low]
    return f_new, g_new, t, evaluations
