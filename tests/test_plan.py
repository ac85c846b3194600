"""The planned torch step (``backends/plan.py``, ``backends/torch_plan.py``).

The default path runs each rule's plan in place, and ``foreach=True`` runs it as multi-tensor
operations: each must be torch.optim's corresponding path bit for bit, in every dtype, through
the events that move parameters and state under a plan (groups added, state loaded, ``p.data``
replaced, parameters skipping steps).  Adafactor runs unplanned, and follows torch.optim's
multi-tensor formula too (its generated cases: tests/test_properties.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import optimizers
from backends import plan as planning
from backends import torch_plan
from backends.torch_backend import TorchBackend
from tests.harness import equal_bits, raised
from tests.registry import REGISTRY
from tests.strategies import problems

# The rules a plan runs: the elementwise ones.
PLANNED = [entry for entry in REGISTRY.values() if entry.elementwise]
# torch.optim's multi-tensor ASGD computes eta in float32 tensor arithmetic and the update as
# p - eta * (g + lambd * p); ours runs its for-loop formula in both modes (README), so with
# foreach=True it is compared with torch.optim's for-loop.
FOREACH_FORMULA_NOT_FOLLOWED = {"ASGD"}
DTYPES = ["float32", "float64", "bfloat16", "float16"]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit.  Complex tensors to 1e-12 of their scale in float64, 1e-5 in float32: on views
    of complex tensors ATen takes other loops than on real ones (scalar instead of vectorized
    sqrt and lerp), and torch.optim views its complex temporaries where our workspaces are
    real, so results differ in the last bits and in the signs of zeros; steps accumulate them,
    and ill-conditioned settings amplify them (measured, thorough profile: Adadelta with
    rho = 1, whose step is g sqrt(u + eps) / sqrt(eps), 4e-15 apart after 11 steps in float64,
    1.1e-6 after 11 in float32)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_complex():
        a, b = torch.view_as_real(a.detach()), torch.view_as_real(b.detach())
        scale = max(float(b.abs().max()), 1e-30) if b.numel() else 1.0
        tolerance = 1e-12 if a.dtype == torch.float64 else 1e-5
        return torch.equal(a.isnan(), b.isnan()) and bool(((a - b).nan_to_num().abs() <= tolerance * scale).all())
    return equal_bits(a, b)


def assert_same_run(ours, reference, our_params, reference_params, step: int) -> None:
    for index, (a, b) in enumerate(zip(our_params, reference_params)):
        assert same_bits(a, b), f"step {step}, parameter {index}: {a} != {b}"
    for index, (a, b) in enumerate(zip(our_params, reference_params)):
        ours_state, expected = ours.state.get(a, {}), reference.state.get(b, {})
        assert list(ours_state) == list(expected), (step, index, list(ours_state), list(expected))
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert same_bits(ours_state[key], value), f"step {step}, parameter {index}, {key}"


@st.composite
def events(draw, steps: int, groups: int) -> dict:
    """Mid-run events: at which step each happens (None: never)."""
    moment = st.one_of(st.none(), st.integers(1, max(1, steps - 1)))
    return dict(
        add_group=draw(moment) if groups > 1 else None,
        reload=draw(moment),
        new_data=draw(moment),
    )


def build(cls, tensors, groups, kwargs):
    return cls([{"params": [tensors[i] for i in g]} for g in groups], **kwargs)


# ASGD with foreach=True runs multi-tensor kernels on its for-loop formula: equal to neither of
# torch.optim's paths in 16 bits (_foreach_mul_ rounds the scalar there), so not compared.
CASES = [
    pytest.param(entry, dtype, foreach, id=f"{entry.name}-{dtype}-{'foreach' if foreach else 'default'}")
    for entry in PLANNED
    for dtype in DTYPES
    for foreach in (False, True)
    if not (foreach and entry.name in FOREACH_FORMULA_NOT_FOLLOWED and dtype in ("bfloat16", "float16"))
]


@pytest.mark.parametrize("entry, dtype, foreach", CASES)
@given(data=st.data())
def test_planned_step_is_torch_optim_bit_for_bit(entry, dtype, foreach, data):
    """Default path = torch.optim ``foreach=False``, ``foreach=True`` = torch.optim ``foreach=True``."""
    wide = "float64" if dtype == "float64" else "float32"
    # When some parameters of a group lack a momentum buffer, torch.optim's multi-tensor SGD steps
    # the whole group with single-tensor mul_, which rounds a 16-bit buffer times momentum
    # differently from _foreach_mul_ (README); ours keeps the multi-tensor kernel.
    mixed_buffers = not (entry.name == "SGD" and foreach and dtype in ("bfloat16", "float16"))
    problem = data.draw(problems(wide, missing_grads=mixed_buffers, **entry.problem_options), label="problem")
    kwargs = data.draw(entry.hyperparameters, label="hyperparameters")
    if entry.name == "ASGD" and dtype in ("bfloat16", "float16"):
        # torch.optim multiplies by its float32 0-d state tensor mu, which a 16-bit kernel rounds
        # to 16 bits; ours by the Python float, as in float32 and float64 (README).
        kwargs["t0"] = 1e6
    torch_dtype = getattr(torch, dtype)
    # torch.optim adds a complex parameter's L2 decay in complex arithmetic (no fused
    # multiply-add), ours on its real view: 1 ulp apart on about a fifth of the elements.
    as_complex = (
        dtype in ("float32", "float64")
        and entry.complex
        and not kwargs.get("weight_decay")
        and data.draw(st.booleans(), label="complex parameters")
    )

    def tensor(array):
        value = torch.from_numpy(np.array(array)).to(torch_dtype)
        return torch.complex(value, 0.5 * value) if as_complex else value

    moments = data.draw(events(problem.steps, len(problem.groups)), label="events")
    if set(entry.ours.counters) - {"step"} and dtype != "float32":
        # torch.optim casts float32 counters other than step (NAdam's mu_product, ASGD's eta and
        # mu) to the parameter's dtype on load; ours keeps a counter's dtype
        # (Optimizer.load_state_dict), so a resumed run is the uninterrupted one.
        moments["reload"] = None
    # A float32 tensor lr against a 0-d 16-bit parameter: torch.optim's in-place operations keep
    # 16 bits where its functional ones promote to float32 (0-d tensors promote each other);
    # a rule is written functionally, so such a parameter follows only the latter (README).
    promotes = dtype in ("bfloat16", "float16") and any(p.ndim == 0 for p in problem.params)
    lr_array = entry.tensor_lr and not promotes and data.draw(st.booleans(), label="lr as a one-element tensor")
    reference_foreach = foreach and entry.name not in FOREACH_FORMULA_NOT_FOLLOWED
    sides = []
    for cls, mode in ((entry.ours, foreach), (entry.reference, reference_foreach)):
        tensors = [tensor(p).requires_grad_() for p in problem.params]
        options = dict(kwargs, foreach=mode)
        if lr_array:
            options["lr"] = torch.tensor(kwargs["lr"])
        present = problem.groups[:-1] if moments["add_group"] is not None else problem.groups
        sides.append([cls, tensors, options, raised(lambda: build(cls, tensors, present, options))])
    if sides[1][3] is not None:  # Adam and AdamW refuse a tensor lr with foreach=True
        assert sides[0][3][:2] == sides[1][3][:2]
        return
    for side in sides:
        side[3] = build(side[0], side[1], present, side[2])
    for step, row in enumerate(problem.rows):
        for side in sides:
            cls, tensors, options, optimizer = side
            if step == moments["add_group"]:
                optimizer.add_param_group({"params": [tensors[i] for i in problem.groups[-1]]})
            if step == moments["reload"]:
                saved = optimizer.state_dict()
                optimizer = side[3] = build(cls, tensors, problem.groups[: len(saved["param_groups"])], options)
                optimizer.load_state_dict(saved)
            if step == moments["new_data"]:
                tensors[0].data = tensors[0].data.clone()
            for t, grad in zip(tensors, row):
                t.grad = None if grad is None else tensor(grad)
            optimizer.step()
        assert_same_run(sides[0][3], sides[1][3], sides[0][1], sides[1][1], step)


@pytest.mark.parametrize("foreach", [False, True])
def test_every_planned_algorithm_runs_a_plan(foreach, monkeypatch):
    """The default and foreach paths of the planned algorithms never reach the unplanned rule."""
    unplanned = []
    unplanned_step = TorchBackend._step_each

    def recording(self, rule, params, h, state):
        unplanned.extend(params)
        unplanned_step(self, rule, params, h, state)

    monkeypatch.setattr(TorchBackend, "_step_each", recording)
    for entry in PLANNED:
        params = [torch.randn(3, 2, requires_grad=True), torch.randn(4, requires_grad=True), torch.randn(())]
        optimizer = entry.ours(params, foreach=foreach)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn_like(p)
            optimizer.step()
        assert unplanned == [], entry.name
    sparse = torch.randn(3, requires_grad=True)
    sparse.grad = torch.sparse_coo_tensor([[0]], [1.0], (3,))
    optimizers.Adagrad([sparse], foreach=foreach).step()
    assert unplanned == [sparse]  # sparse gradients take the unplanned path


@pytest.mark.parametrize("entry", PLANNED, ids=repr)
def test_a_planned_step_allocates_nothing_after_the_first(entry):
    """Intermediates live in workspaces kept between steps (the profiler's count)."""
    params = [torch.randn(64, 64, requires_grad=True) for _ in range(20)]
    optimizer = entry.ours(params)
    for _ in range(3):
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
    with torch.profiler.profile(profile_memory=True) as profile:
        optimizer.step()
    allocated = sum(max(event.self_cpu_memory_usage, 0) for event in profile.events())
    assert allocated < 64 * 64 * 4, (entry.name, allocated)  # less than one parameter's worth


def test_adam_plan_runs_in_place():
    """Adam's plan is torch.optim's for-loop: moments and parameter in place, one workspace for
    the denominator, no copies."""
    params = [torch.randn(5, requires_grad=True)]
    params[0].grad = torch.randn(5)
    optimizers.Adam(params).step()
    switches = {"amsgrad": False, "maximize": False, "l2": False, "decoupled_decay": False}
    (entry,) = [
        v[0]
        for k, v in torch_plan._plans.items()
        if v
        and k[0] is optimizers.Adam.update
        and k[1] == "each"
        and dict(k[3]) == switches
        and k[2][1] == torch.float32
        and not k[2][5]
    ]
    assert len(entry.plan.workspaces) == 1
    assert [i.name for i in entry.plan.instructions] == ["lerp", "mul", "addcmul", "sqrt", "div", "add", "addcdiv"]
    assert [i.dest for i in entry.plan.instructions] == [
        "state:exp_avg",
        "state:exp_avg_sq",
        "state:exp_avg_sq",
        "work0",
        "work0",
        "work0",
        "param",
    ]


# -- trace-level cases ---------------------------------------------------------------------


class _Rule(optimizers.Optimizer):
    """A test rule: ``update`` set per subclass; one state entry ``a`` starting at 1."""

    def __init__(self, params, lr=0.5):
        super().__init__(params, dict(lr=lr, foreach=None, differentiable=False))

    @staticmethod
    def coefficients(math, numbers):
        return dict(lr=numbers["lr"])

    @staticmethod
    def initial_state(ops, param, h):
        return {"a": ops.full_like(param, 1.0)}


class ReadsOldStateLate(_Rule):
    @staticmethod
    def update(ops, param, grad, state, h):
        new_a = ops.add(state["a"], grad)  # its home holds the old a, still read below
        return ops.add(param, state["a"] * h.lr), {"a": new_a}


class Norms(_Rule):
    @staticmethod
    def update(ops, param, grad, state, h):
        return ops.add(param, grad, alpha=-h.lr / (ops.scalar(ops.norm(grad)) + 1)), state


@pytest.mark.parametrize("foreach", [False, True])
def test_a_result_read_after_its_input_is_overwritten_is_right(foreach):
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    p.grad = torch.tensor([10.0, 20.0])
    optimizer = ReadsOldStateLate([p], lr=0.5)
    optimizer.param_groups[0]["foreach"] = foreach
    optimizer.step()
    torch.testing.assert_close(p.detach(), torch.tensor([1.5, 2.5]), rtol=0, atol=0)
    torch.testing.assert_close(optimizer.state[p]["a"], torch.tensor([11.0, 21.0]), rtol=0, atol=0)


def test_an_untraceable_rule_falls_back_and_steps_right():
    p = torch.tensor([1.0, 2.0], requires_grad=True)
    p.grad = torch.tensor([1.0, 2.0])
    optimizer = Norms([p], lr=0.5)
    optimizer.step()
    shrink = 0.5 / (5**0.5 + 1)
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 - shrink, 2.0 - 2 * shrink]))
    assert any(v is None for k, v in torch_plan._plans.items() if k[0] is Norms.update)


def test_a_trace_records_guards_and_plans_each_outcome():
    """ASGD's ``mu != 1`` is a guard: a plan per outcome, chosen each step."""
    p = torch.randn(4, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    ours, reference = optimizers.ASGD([p], t0=2), torch.optim.ASGD([q], t0=2, foreach=False)
    for _ in range(6):
        grad = torch.randn(4)
        p.grad, q.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
        assert same_bits(p, q) and same_bits(ours.state[p]["ax"], reference.state[q]["ax"])
    outcomes = {c.outcomes for k, v in torch_plan._plans.items() if v and k[0] is optimizers.ASGD.update for c in v}
    assert {(False,), (True,)} <= outcomes


def test_symbolic_numbers_evaluate_as_python_does():
    tracer = planning.Tracer(torch_plan.infer)
    lr = planning.Symbolic("h['lr']", 0.1, tracer)
    expression = (1 - lr * 3) ** 0.5 / -lr
    assert eval(f"lambda h: {expression.source}")({"lr": 0.1}) == (1 - 0.1 * 3) ** 0.5 / -0.1
    assert (lr > 0.05) is True and tracer.guards == [("bool(h['lr'] > 0.05)", True)]
    with pytest.raises(planning.Untraceable):
        float(lr)


# Adafactor is not planned (norms, matrix products), but its foreach=True follows torch.optim's
# _multi_tensor_adafactor as the planned rules follow theirs: that computes each quantity as the
# for-loop does except the last, _foreach_mul_(updates, alphas) then _foreach_add_(params, updates)
# where the for-loop runs param.add_(update, alpha=...) (a fused multiply-add, one rounding), and
# with weight decay _foreach_mul_(params, 1 - lr * weight_decay); on the CPU a
# 16-bit _foreach_mul_ rounds its scalar to 16 bits.  Shapes: factored matrices (2-D and 3-D), a
# vector, a 0-d and a one-element tensor.
ADAFACTOR_SHAPES = [(5, 7), (3, 4, 6), (9,), (), (1,)]
ADAFACTOR_OPTIONS = {
    "plain": {},
    "weight-decay": dict(weight_decay=0.1),
    "maximize": dict(maximize=True),
    "large-lr-decay-maximize": dict(lr=0.5, weight_decay=0.1, maximize=True),
}


def run_adafactor_pair(dtype, ours_options, reference_options, steps=6, device="cpu"):
    """Ours and torch.optim's Adafactor from the same start on the same gradients, compared bit
    for bit (parameters and state) after every step; ``ours`` is returned."""
    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(shape, generator=generator).to(torch_dtype) for shape in ADAFACTOR_SHAPES]
    sides = []
    for cls, options in ((optimizers.Adafactor, ours_options), (torch.optim.Adafactor, reference_options)):
        tensors = [value.clone().to(device).requires_grad_() for value in start]
        # Two groups, matrices apart: torch.optim's multi-tensor path also groups by dimensionality.
        groups = [{"params": tensors[:2]}, {"params": tensors[2:], "lr": 0.03}]
        sides.append((cls(groups, **options), tensors))
    (ours, our_tensors), (reference, reference_tensors) = sides
    for step in range(steps):
        for a, b in zip(our_tensors, reference_tensors):
            grad = torch.randn(a.shape, generator=generator).to(torch_dtype).to(device)
            a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
        assert_same_run(ours, reference, our_tensors, reference_tensors, step)
    return ours


@pytest.mark.parametrize("options", list(ADAFACTOR_OPTIONS.values()), ids=list(ADAFACTOR_OPTIONS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("foreach", [False, True], ids=["default", "foreach"])
def test_adafactor_is_torch_optims_on_each_path(foreach, dtype, options):
    """Default path = torch.optim's for-loop, ``foreach=True`` = its ``_multi_tensor_adafactor``."""
    options = dict(options, foreach=foreach)
    run_adafactor_pair(dtype, options, options)


def test_adafactor_foreach_none_is_torch_optims_for_loop_where_multi_tensor_is_the_default(monkeypatch):
    """torch.optim's Adafactor has no device-dependent default (``if foreach:``): its ``foreach=None``
    is the for-loop on CUDA too, where the backend resolves None to multi-tensor for the other
    classes.  The CUDA resolution is simulated on the CPU."""
    resolved = []

    def as_on_cuda(self, group, params):
        resolved.append(group["foreach"])
        return group["foreach"] is None or bool(group["foreach"])

    monkeypatch.setattr(TorchBackend, "foreach", as_on_cuda)
    run_adafactor_pair("float32", {}, {})
    assert resolved and set(resolved) == {None}  # every step of ours resolved None to multi-tensor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("foreach", [None, True])
def test_cuda_adafactor_is_torch_optims_on_each_path(foreach):
    options = dict(weight_decay=0.1, foreach=foreach)
    run_adafactor_pair("float32", options, options, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("entry", PLANNED, ids=repr)
def test_cuda_foreach_is_torch_optim_foreach_and_the_default(entry):
    """On CUDA ``foreach=None`` selects the multi-tensor plan, bit for bit torch.optim's."""
    torch.manual_seed(0)
    shapes = [(7, 5), (13,), (4, 4), ()]
    ours_params = [torch.randn(s, device="cuda", requires_grad=True) for s in shapes]
    reference_params = [p.detach().clone().requires_grad_() for p in ours_params]
    reference_foreach = entry.name not in FOREACH_FORMULA_NOT_FOLLOWED
    ours, reference = entry.ours(ours_params), entry.reference(reference_params, foreach=reference_foreach)
    assert ours._backend.foreach(ours.param_groups[0], ours_params)
    for step in range(5):
        for a, b in zip(ours_params, reference_params):
            grad = torch.randn_like(a)
            a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
        assert_same_run(ours, reference, ours_params, reference_params, step)


def compiled_training_graphs(cls, options: dict, whole_step: bool, steps: int = 4) -> dict[str, int]:
    """Graphs and recompilations of a torch.compile'd training step (model, loss, backward,
    ``step``, ``zero_grad``) or of ``torch.compile(optimizer.step)``, over a model of 10
    parameters (past Dynamo's recompile limit of 8 if anything were keyed by a parameter)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(5)])
    optimizer = cls(model.parameters(), **options)
    data = torch.randn(4, 8)
    step = optimizer.step if whole_step else torch.compile(optimizer.step)

    def train():
        model(data).square().mean().backward()
        step()
        optimizer.zero_grad()

    train = torch.compile(train) if whole_step else train
    for _ in range(steps):
        train()
    graphs = {"graphs": counters["stats"]["unique_graphs"], "recompiles": sum(counters["recompiles"].values())}
    torch._dynamo.reset()
    return graphs


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_a_compiled_step_has_torch_optims_graphs_and_never_recompiles(name):
    """A compiled training step: no more graphs than torch.optim's, no recompilation across
    steps or parameters; ``torch.compile(opt.step)`` alone is torch.optim's graph count too
    (one for Adam; SGD's first step, which creates the momentum buffers, is a second)."""
    options = dict(lr=1e-3, momentum=0.9) if name == "SGD" else dict(lr=1e-3)
    ours_cls, reference_cls = getattr(optimizers, name), getattr(torch.optim, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Inductor's own chatter on CPU
        for whole_step in (True, False):
            ours = compiled_training_graphs(ours_cls, options, whole_step)
            reference = compiled_training_graphs(reference_cls, options, whole_step)
            assert ours["recompiles"] == 0, (whole_step, ours)
            assert ours["graphs"] <= reference["graphs"], (whole_step, ours, reference)
    assert ours["graphs"] == (2 if name == "SGD" else 1)
