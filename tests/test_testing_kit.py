"""``optimizers.testing`` on real third-party pairs, and on pairs built to differ in one known way.

The kit must pass pairs that truly agree and name, for pairs that do not, the first step and
parameter where they part: an optimizer a step ahead, one ulp under a bitwise check, an eps
placed inside the square root instead of outside.
"""

from __future__ import annotations

import jax
import lion_pytorch
import numpy as np
import optax
import pytest
import schedulefree
import torch
from hypothesis import given, settings

import optimizers
from optimizers import testing


def torch_adam(**options):
    return testing.torch(lambda ps: torch.optim.Adam(ps, **options))


# -- third-party pairs that agree, and those that must be told apart --------------------------------


def test_torch_adam_and_optax_adam_agree_in_float64_and_float32():
    report = testing.assert_agree(torch_adam(lr=1e-2), testing.optax(optax.adam(1e-2)), rtol=1e-13)
    assert report.names == ("torch.Adam", "optax")
    assert 0 < report.max_error <= 1e-15  # measured 8.6e-17: sqrt and division rounded apart
    testing.assert_agree(torch_adam(lr=1e-2), testing.optax(optax.adam(1e-2)), dtype="float32")


def test_torch_rmsprop_and_optax_rmsprop_with_defaults_are_told_apart():
    torch_rmsprop = testing.torch(lambda ps: torch.optim.RMSprop(ps, lr=1e-2))
    report = testing.compare(torch_rmsprop, testing.optax(optax.rmsprop(1e-2)))
    # torch averages squares with alpha=0.99, optax with decay=0.9: apart from the first step.
    assert report.first_divergent_step(rtol=1e-3) == 1
    with pytest.raises(AssertionError, match=r"torch.RMSprop and optax diverge at step 1, parameter 0"):
        testing.assert_agree(torch_rmsprop, testing.optax(optax.rmsprop(1e-2)))


def test_an_eps_inside_the_square_root_is_told_from_one_outside():
    torch_rmsprop = testing.torch(lambda ps: torch.optim.RMSprop(ps, lr=1e-2, alpha=0.99, eps=1e-8))
    outside = testing.optax(optax.rmsprop(1e-2, decay=0.99, eps=1e-8, eps_in_sqrt=False))
    testing.assert_agree(torch_rmsprop, outside, rtol=1e-13)
    inside = testing.optax(optax.rmsprop(1e-2, decay=0.99, eps=1e-8, eps_in_sqrt=True))
    report = testing.compare(torch_rmsprop, inside)
    assert report.first_divergent_step(rtol=1e-10) == 1
    # sqrt(v + eps) against sqrt(v) + eps: apart by eps / (2 sqrt(v)) of the denominator, and the
    # first step's v = (1 - 0.99) g**2 is small (measured 2.6e-6), far beyond float64 rounding.
    assert report.max_error > 1e-8


def test_lion_pytorch_is_optax_lion_without_our_classes():
    testing.assert_agree(
        testing.torch(lambda ps: lion_pytorch.Lion(ps, lr=1e-3)),
        testing.optax(optax.lion(1e-3, weight_decay=0.0)),
        rtol=1e-9,
    )


def test_schedule_free_reference_and_optax_agree_on_both_points():
    reference = testing.torch(lambda ps: schedulefree.AdamWScheduleFree(ps, lr=0.01))
    testing.assert_agree(reference, testing.optax(optax.contrib.schedule_free_adamw(0.01)), rtol=1e-12)
    evaluated = testing.torch(lambda ps: schedulefree.AdamWScheduleFree(ps, lr=0.01), eval_params=True)
    averaged = testing.optax(
        optax.contrib.schedule_free_adamw(0.01), eval_params=optax.contrib.schedule_free_eval_params
    )
    testing.assert_agree(evaluated, averaged, rtol=1e-12)
    # y and x are different points (after the first step both are z, the average of one point):
    # the kit sees which one it is shown.
    report = testing.compare(reference, evaluated)
    assert report.names == ("schedulefree.AdamWScheduleFree", "schedulefree.AdamWScheduleFree (eval)")
    assert report.first_divergent_step(rtol=1e-10) == 2


def test_reading_the_evaluation_point_leaves_the_run_unchanged():
    """eval() then train() would round y twice; the kit reads x from a copy."""
    shown_y = testing.torch(lambda ps: schedulefree.SGDScheduleFree(ps, lr=0.1, momentum=0.9))
    shown_x = testing.torch(lambda ps: schedulefree.SGDScheduleFree(ps, lr=0.1, momentum=0.9), eval_params=True)
    problem = testing.quadratic()
    run = shown_x.start(problem.params)
    for step in range(10):
        run.step(problem, step)
        run.values()
    untouched = testing.trajectory(shown_y, problem, 10)[-1]
    for a, b in zip(run.current(), untouched):
        np.testing.assert_array_equal(a, b)


def test_closures_sparse_gradients_and_our_jax_backend():
    testing.assert_agree(
        testing.torch(lambda ps: optimizers.LBFGS(ps, lr=0.5, history_size=4)),
        testing.torch(lambda ps: torch.optim.LBFGS(ps, lr=0.5, history_size=4)),
        steps=5,
        rtol=0,
    )
    testing.assert_agree(
        testing.jax(lambda leaves: optimizers.LBFGS(leaves, lr=0.5, history_size=4)),
        testing.torch(lambda ps: torch.optim.LBFGS(ps, lr=0.5, history_size=4)),
        steps=5,
    )
    testing.assert_agree(
        testing.torch(lambda ps: optimizers.SparseAdam(ps, lr=1e-2), sparse=True),
        testing.torch(lambda ps: torch.optim.SparseAdam(ps, lr=1e-2), sparse=True),
        rtol=0,
    )
    testing.assert_agree(testing.jax(lambda leaves: optimizers.Adam(leaves, lr=1e-2)), torch_adam(lr=1e-2), rtol=1e-14)


# -- pairs built to differ in one known way ---------------------------------------------------------


class AdamOneStepAhead(torch.optim.Adam):
    """Adam whose step count starts at 1: its bias corrections are a step off."""

    def __init__(self, params, **options):
        super().__init__(params, **options)
        for group in self.param_groups:
            for p in group["params"]:
                zeros = torch.zeros_like(p, memory_format=torch.preserve_format)
                self.state[p] = {"step": torch.tensor(1.0), "exp_avg": zeros, "exp_avg_sq": zeros.clone()}


def test_an_optimizer_a_step_ahead_diverges_at_the_first_step():
    ahead = testing.torch(lambda ps: AdamOneStepAhead(ps, lr=1e-2))
    report = testing.compare(torch_adam(lr=1e-2), ahead)
    assert report.first_divergent_step(rtol=1e-3) == 1
    assert report.max_error > 1e-3
    with pytest.raises(AssertionError, match="diverge at step 1, parameter 0"):
        testing.assert_agree(torch_adam(lr=1e-2), ahead)


class NudgedSGD(torch.optim.SGD):
    """SGD that moves one element one ulp up after its third step."""

    def step(self, closure=None):
        super().step(closure)
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 3:
            with torch.no_grad():
                p = self.param_groups[0]["params"][1]
                p.view(-1)[2] = torch.nextafter(p.view(-1)[2], torch.tensor(np.inf, dtype=p.dtype))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_one_ulp_fails_a_bitwise_check_and_passes_a_tolerance(dtype):
    plain = testing.torch(lambda ps: torch.optim.SGD(ps, lr=0.1))
    nudged = testing.torch(lambda ps: NudgedSGD(ps, lr=0.1), name="nudged SGD")
    with pytest.raises(AssertionError) as raised:
        testing.assert_agree(plain, nudged, rtol=0, dtype=dtype)
    message = str(raised.value)
    assert message.startswith("torch.SGD and nudged SGD diverge at step 3, parameter 1 (shape (5,)), element (2,)")
    assert "(1 ulps apart;" in message and "bit for bit" in message
    report = testing.assert_agree(plain, nudged, dtype=dtype)  # default rtol: 1e-10 or 1e-5
    assert report.first_divergent_step() == 3 and report.max_ulps >= 1


def test_nan_in_one_run_only_is_a_divergence_whatever_the_tolerance():
    class NaNAdam(torch.optim.Adam):
        def step(self, closure=None):
            super().step(closure)
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")

    report = testing.compare(torch_adam(), testing.torch(lambda ps: NaNAdam(ps)))
    found = report.first_divergence(rtol=1.0, atol=1e9)
    assert found is not None and (found.step, found.parameter, found.mismatch) == (1, 0, "NaN in one run only")
    assert report.max_error == float("inf")
    # NaN in the same places on both sides is agreement.
    testing.assert_agree(testing.torch(lambda ps: NaNAdam(ps)), testing.torch(lambda ps: NaNAdam(ps)), rtol=0)


# -- the report ----------------------------------------------------------------------------------


def test_the_report_tabulates_every_step_and_parameter():
    report = testing.compare(torch_adam(lr=1e-2), testing.optax(optax.adam(1e-2)), steps=3)
    lines = str(report).splitlines()
    assert lines[0] == "torch.Adam vs optax: float64, 3 steps on quadratic [(4, 3), (5,)], seed 0"
    assert lines[1].split()[:4] == ["step", "param", "shape", "max"]
    assert [line.split()[:2] for line in lines[2:8]] == [[s, p] for s in "123" for p in "01"]
    assert len(report.differences) == 6 and report.steps == 3
    assert lines[-1].startswith(("first bitwise difference", "bit for bit equal"))


def test_the_error_is_relative_to_the_largest_value_so_far():
    a = [[np.array([1.0, -0.5])], [np.array([0.004, 0.0])]]
    b = [[np.array([1.0, -0.5])], [np.array([0.004 + 1e-8, 0.0])]]
    report = testing.Report.of(a, b)
    assert report.differences[1].scale == 1.0
    assert report.max_error == pytest.approx(1e-8)  # not 2.5e-6, its size against the final 0.004
    assert report.first_divergent_step() == 2 and report.first_divergent_step(rtol=1e-7) is None


def test_ulps_count_representable_numbers_between_the_values_across_zero():
    tiny = np.float32(np.finfo(np.float32).smallest_subnormal)
    a = [[np.array([tiny, -tiny, 1.0], np.float32)]]
    b = [[np.array([-tiny, tiny, np.nextafter(np.float32(1), np.float32(2))], np.float32)]]
    assert testing.Report.of(a, b).max_ulps == 2  # -tiny, -0 | +0, tiny: two steps apart


# -- problems --------------------------------------------------------------------------------------


def test_every_contender_gets_the_gradient_at_its_own_values():
    """Both runs see one NumPy function: feedback from values, so a different rule takes
    different gradients (SGD with and without momentum part after the first step)."""
    seen: dict[str, list] = {"plain": [], "momentum": []}
    bowl = testing.quadratic(seed=1)

    def gradient(step, values, who):
        seen[who].append([v.copy() for v in values])
        return bowl.gradient(step, values)

    plain = testing.torch(lambda ps: torch.optim.SGD(ps, lr=0.1), name="plain")
    momentum = testing.torch(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), name="momentum")
    for who, contender in (("plain", plain), ("momentum", momentum)):
        problem = testing.Problem(bowl.params, lambda s, v, who=who: gradient(s, v, who), steps=3)
        testing.trajectory(contender, problem)
    assert all(np.array_equal(a, b) for a, b in zip(seen["plain"][0], seen["momentum"][0]))
    assert all(np.array_equal(a, b) for a, b in zip(seen["plain"][1], seen["momentum"][1]))  # g0 the same
    assert not all(np.array_equal(a, b) for a, b in zip(seen["plain"][2], seen["momentum"][2]))


@settings(max_examples=10)
@given(problem=testing.problems(max_steps=8))
def test_a_hypothesis_property_built_on_the_kit(problem):
    """Ours against torch.optim, bit for bit, on the kit's problems: both kinds, groups and all."""

    def grouped(cls):
        return lambda ps: cls([{"params": [ps[i] for i in group]} for group in problem.groups], lr=1e-2)

    testing.assert_agree(
        testing.torch(grouped(optimizers.AdamW)),
        testing.torch(grouped(torch.optim.AdamW)),
        problem=problem,
        rtol=0,
    )


def test_the_hard_cases_are_drawn():
    shapes, magnitudes, missing, kinds = set(), set(), False, set()

    @settings(max_examples=200, derandomize=True, database=None)
    @given(testing.problems())
    def collect(problem):
        nonlocal missing
        shapes.update(p.shape for p in problem.params)
        kinds.add(type(problem.gradient).__name__)
        row = problem.gradients(0, lambda: list(problem.params))
        missing = missing or any(g is None for g in row)
        magnitudes.update(float(np.max(np.abs(g), initial=0.0)) for g in row if g is not None and g.size)

    collect()
    assert {(), (0,), (4, 0)} <= shapes and missing
    assert kinds == {"GivenGradients", "function"}
    assert min(magnitudes) == 0.0 and any(0 < m < 1e-15 for m in magnitudes) and max(magnitudes) > 1e4


# -- refusals, each naming what is wrong -------------------------------------------------------------


def test_what_a_contender_cannot_take_is_refused_by_name():
    given = testing.given_gradients([np.zeros(3)], [[np.ones(3)]] * 4)
    lbfgs = testing.torch(lambda ps: torch.optim.LBFGS(ps))
    with pytest.raises(ValueError, match=r"torch.LBFGS steps with a closure.*has none: use a problem with a loss"):
        testing.compare(lbfgs, lbfgs, problem=given, steps=4)
    holes = testing.given_gradients([np.zeros(3), np.zeros(2)], [[np.ones(3), None]])
    with pytest.raises(ValueError, match=r"optax takes a gradient for every parameter.*parameters \[1\] at step 0"):
        testing.compare(torch_adam(), testing.optax(optax.adam(1e-3)), problem=holes, steps=1)
    with pytest.raises(ValueError, match=r"eval_params=True .* torch.Adam \(eval\) has no train"):
        testing.compare(testing.torch(lambda ps: torch.optim.Adam(ps), eval_params=True), torch_adam())
    with pytest.raises(TypeError, match="made by testing.torch"):
        testing.compare(torch.optim.Adam, torch_adam())
    with pytest.raises(ValueError, match="defines 4 steps, fewer than the 20 asked"):
        testing.compare(torch_adam(), torch_adam(), problem=given, steps=20)
    assert testing.compare(torch_adam(), torch_adam(), problem=given).steps == 4  # all it defines
    with pytest.raises(ValueError, match="a given problem carries its own"):
        testing.compare(torch_adam(), torch_adam(), problem=given, steps=4, seed=3)
    with pytest.raises(TypeError, match="one of our optimizers on the JAX backend"):
        testing.compare(testing.jax(lambda leaves: torch.optim.Adam([torch.zeros(1)])), torch_adam())
    with pytest.raises(ValueError, match="must split the parameter indices 0..1"):
        testing.Problem((np.zeros(1), np.zeros(2)), given.gradient, groups=[[1], [0]])
    wrong_shape = testing.given_gradients([np.zeros(3)], [[np.ones(2)]])
    with pytest.raises(ValueError, match=r"parameter 0 of shape \(3,\) a gradient of shape \(2,\)"):
        testing.compare(torch_adam(), torch_adam(), problem=wrong_shape, steps=1)


def test_float64_on_jax_without_64_bit_mode_is_refused():
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match=r"jax.config.update\('jax_enable_x64', True\)"):
            testing.compare(testing.optax(optax.adam(1e-3)), torch_adam())
        testing.assert_agree(testing.optax(optax.adam(1e-3)), torch_adam(lr=1e-3), dtype="float32")
    finally:
        jax.config.update("jax_enable_x64", True)


def test_an_error_inside_a_contender_says_which_and_when():
    class Breaks(torch.optim.SGD):
        def step(self, closure=None):
            if self.state.get("calls", 0) == 2:
                raise RuntimeError("out of memory")
            self.state["calls"] = self.state.get("calls", 0) + 1
            return super().step(closure)

    with pytest.raises(RuntimeError, match="out of memory") as raised:
        testing.compare(torch_adam(), testing.torch(lambda ps: Breaks(ps, lr=0.1), name="breaks"))
    assert raised.value.__notes__ == ["raised by breaks at step 3 of 'quadratic [(4, 3), (5,)], seed 0'"]
