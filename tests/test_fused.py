"""``fused=True`` on the torch backend: the rule compiled into one loop (backends/torch_fused.py).

The compiled loop rounds differently from ATen's eager kernels (correctly rounded ``sqrt``,
no fused multiply-add inside ``add``/``addcmul``/``lerp``), as torch.optim's own fused kernels
differ from its for-loop, so it is held to the across-implementation tolerance against our
reference path and against torch.optim's fused kernels.  Everything else -- state layout,
checkpoints, identity of state tensors, errors -- is held to the reference path exactly.
"""

from __future__ import annotations

import copy
import io
import pickle
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import optimizers
from backends import torch_fused
from tests.harness import REPORT, Run, raised
from tests.registry import REGISTRY
from tests.test_properties import ACROSS_FRAMEWORKS, DTYPES, draw_case, secondary

FUSED = [entry for entry in REGISTRY.values() if entry.fused]
# LARGE at its default puts every generated parameter into a bucket; at 4, those of 4 or more
# elements step in place and the rest share a bucket.
THRESHOLDS = [torch_fused.LARGE, 4]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("entry", FUSED, ids=repr)
@secondary
@given(data=st.data())
def test_fused_agrees_with_the_reference_path_and_torch_optims_fused(entry, dtype, data):
    problem, kwargs = draw_case(data, entry, dtype)
    lr_array = data.draw(st.booleans(), label="lr as a one-element array")
    threshold = data.draw(st.sampled_from(THRESHOLDS), label="LARGE")
    with mock.patch.object(torch_fused, "LARGE", threshold):
        run = Run(entry, "torch fused", problem, kwargs, lr_array)
        fused = run.trajectory()
    precision = "float32" if lr_array else dtype  # the steps are float32 numbers then
    for reference in ("torch", "torch.optim fused"):
        expected = Run(entry, reference, problem, kwargs, lr_array)
        REPORT.compare(
            entry.name,
            f"torch fused vs {reference}",
            dtype,
            fused,
            expected.trajectory(),
            ACROSS_FRAMEWORKS[precision],
        )
        if reference == "torch":
            state, expected_state = run.state(), expected.state()
            assert state.keys() == expected_state.keys()
            for index, entries in expected_state.items():
                assert list(state[index]) == list(entries)  # the same entries, in the same order


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.Tanh(), torch.nn.Linear(40, 3)).to(dtype)


def _train(model, optimizer, steps, seed=1, between=None):
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        inputs = torch.randn(16, 6, generator=generator, dtype=next(model.parameters()).dtype)
        optimizer.zero_grad()
        model(inputs).pow(2).mean().backward()
        optimizer.step()
        if between:
            between(step)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_state_tensors_keep_their_identity_and_checkpoints_resume_exactly(threshold):
    with mock.patch.object(torch_fused, "LARGE", threshold):
        model = _model()
        opt = optimizers.Adam(model.parameters(), lr=0.01, fused=True)
        _train(model, opt, 1)
        held = {p: dict(opt.state[p]) for p in model.parameters()}
        expected = _train(model, opt, 3)
        for p in model.parameters():
            assert all(opt.state[p][key] is tensor for key, tensor in held[p].items())
        # The held tensors are the live state: a bucket's state is a view of its flat buffer.
        assert all(held[p]["exp_avg"].abs().sum() > 0 for p in model.parameters())

        first = _model()
        opt = optimizers.Adam(first.parameters(), lr=0.01, fused=True)
        _train(first, opt, 1)
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        resumed = optimizers.Adam(first.parameters(), lr=0.01, fused=True)
        resumed.load_state_dict(torch.load(buffer, weights_only=True))
        got = _train(first, resumed, 3)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_copies_continue_exactly():
    model = _model()
    opt = optimizers.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, fused=True)
    _train(model, opt, 2)
    copies = [copy.deepcopy((model, opt)), pickle.loads(pickle.dumps((model, opt)))]
    expected = _train(model, opt, 3)
    for model_copy, opt_copy in copies:
        for a, b in zip(_train(model_copy, opt_copy, 3), expected):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize(("threshold", "bucket_view"), [(torch_fused.LARGE, False), (4, False), (4, True)])
def test_parameters_given_new_memory_between_steps_are_followed(threshold, bucket_view):
    """``module.to()`` and ``p.data = ...`` give a parameter new memory; the step must land there
    (with ``bucket_view``, the next step takes the parameters into a new bucket)."""

    def move(step):
        if step == 1:
            for p in model.parameters():
                p.data = p.data.clone()
        if step == 2:
            first = next(model.parameters())
            first.data = first.data.clone()

    with mock.patch.object(torch_fused, "LARGE", threshold):
        model = _model()
        opt = optimizers.Adagrad(model.parameters(), lr=0.1, fused=True, bucket_view=bucket_view)
        got = _train(model, opt, 4, between=move)
        reference = _model()
        expected = _train(reference, optimizers.Adagrad(reference.parameters(), lr=0.1, fused=True), 4)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_changing_hyperparameters_every_step_never_recompiles():
    """Numbers enter the compiled loop as data: a beta1 that CyclicLR cycles is not compiled in
    (Dynamo would compile a variant per value and give up after eight)."""
    model, reference = _model(), _model()
    ours = optimizers.Adam(model.parameters(), lr=0.01, fused=True)
    theirs = optimizers.Adam(reference.parameters(), lr=0.01)
    schedules = [
        torch.optim.lr_scheduler.CyclicLR(opt, 1e-3, 1e-2, step_size_up=3, cycle_momentum=True, base_momentum=0.8)
        for opt in (ours, theirs)
    ]
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for step in range(12):
        for opt in (ours, theirs):
            opt.param_groups[0]["eps"] = 1e-8 * (step + 1)
            opt.param_groups[0]["weight_decay"] = 0.01 * step
        _train(model, ours, 1, seed=step, between=lambda _: schedules[0].step())
        _train(reference, theirs, 1, seed=step, between=lambda _: schedules[1].step())
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames <= 2  # one graph, a first compile
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=ACROSS_FRAMEWORKS["float32"], atol=1e-7)


def test_low_precision_parameters_with_float32_state():
    model, reference = _model(torch.bfloat16), _model(torch.bfloat16)
    ours = optimizers.AdamW(model.parameters(), lr=0.01, fused=True, state_dtype=torch.float32)
    theirs = optimizers.AdamW(reference.parameters(), lr=0.01, state_dtype=torch.float32)
    got, expected = _train(model, ours, 5), _train(reference, theirs, 5)
    for p in model.parameters():
        assert p.dtype == torch.bfloat16 and ours.state[p]["exp_avg"].dtype == torch.float32
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.float(), b.float(), rtol=2**-7, atol=1e-3)  # a bfloat16 ulp


@pytest.mark.parametrize("entry", FUSED, ids=repr)
def test_grad_scalers_scale_and_inf_are_handled_as_by_torch_optims_fused_kernels(entry):
    """GradScaler leaves a fused optimizer's step to unscale and skip (``grad_scale``,
    ``found_inf``): an inf step changes nothing, gradients included; otherwise the step reads
    and leaves the gradients unscaled, in place, and agrees with torch.optim's to rounding."""
    sides = []
    for cls in (entry.ours, entry.reference):
        model = _model()
        optimizer = cls(model.parameters(), **dict(entry.options, fused=True))
        assert optimizer._step_supports_amp_scaling
        generator, history = torch.Generator().manual_seed(1), []
        for step in range(4):
            optimizer.zero_grad()
            (1024 * model(torch.randn(16, 6, generator=generator)).pow(2).mean()).backward()
            before = [(p.detach().clone(), p.grad.clone()) for p in model.parameters()]
            optimizer.grad_scale, optimizer.found_inf = torch.tensor(1024.0), torch.tensor(float(step == 1))
            optimizer.step()
            if step == 1:
                for p, (value, grad) in zip(model.parameters(), before):
                    assert torch.equal(p, value) and torch.equal(p.grad, grad)
            history.append([t.detach().clone() for p in model.parameters() for t in (p, p.grad)])
        del optimizer.grad_scale, optimizer.found_inf
        sides.append((history, [optimizer.state[p] for p in model.parameters()]))
    (ours, our_state), (theirs, their_state) = sides
    for a, b in zip([t for step in ours for t in step], [t for step in theirs for t in step], strict=True):
        torch.testing.assert_close(a, b, rtol=ACROSS_FRAMEWORKS["float32"], atol=1e-7)
    for held, expected in zip(our_state, their_state, strict=True):
        assert held.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(held[key], value, rtol=ACROSS_FRAMEWORKS["float32"], atol=1e-7)


@pytest.mark.parametrize("entry", FUSED, ids=repr)
def test_non_floating_parameters_get_torchs_error_and_nothing_changes(entry):
    def attempt(cls):
        p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
        p.grad = torch.ones_like(p)
        opt = cls([p], lr=0.1, fused=True)
        before = copy.deepcopy(opt.state_dict())
        return raised(opt.step), p.detach().clone(), before, opt.state_dict()

    (error, message), value, before, after = attempt(entry.ours)
    assert (error, message) == attempt(entry.reference)[0]
    assert torch.equal(value, torch.zeros(3, dtype=torch.complex64))
    assert before["state"].keys() == after["state"].keys()
    for index, entries in before["state"].items():
        assert all(torch.equal(tensor, after["state"][index][key]) for key, tensor in entries.items())


@pytest.mark.parametrize("entry", FUSED, ids=repr)
def test_without_a_compiler_the_step_runs_eagerly_with_a_warning(entry):
    """Every fused algorithm, counters included (Adam's and Adagrad's ``step`` once crashed here
    advancing an empty list of counters)."""

    def unavailable(function, **options):
        def fail(*args):
            raise RuntimeError("no C++ compiler")

        return fail

    model, reference = _model(), _model()
    with (
        mock.patch.multiple(torch_fused, _kernels={}, _compiled=set(), _failed=set()),
        mock.patch.object(torch, "compile", unavailable),
    ):
        ours = entry.ours(model.parameters(), **entry.options, fused=True)
        with pytest.warns(UserWarning, match="could not be compiled here, so it runs eagerly"):
            got = _train(model, ours, 3)
    expected_optimizer = entry.ours(reference.parameters(), **entry.options)
    expected = _train(reference, expected_optimizer, 3)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(ours.state.values(), expected_optimizer.state.values()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("entry", FUSED, ids=repr)
def test_fused_on_an_unsupported_device_raises_torchs_error_before_any_change(entry):
    """torch's test_fused_error_on_params_on_meta: parameters on the meta device."""
    errors = []
    for cls in (entry.ours, entry.reference):
        param = torch.empty(3, device="meta", requires_grad=True)
        param.grad = torch.empty(3, device="meta")
        optimizer = cls([param], lr=0.1, fused=True)
        before = {id(p): dict(entries) for p, entries in optimizer.state.items()}  # Adagrad's exists already
        with pytest.raises(RuntimeError) as raised:
            optimizer.step()
        errors.append(str(raised.value))
        if cls.__module__.startswith("optimizers"):
            assert {id(p): dict(entries) for p, entries in optimizer.state.items()} == before
    assert errors[0] == errors[1] and "requires all the params to be floating point Tensors" in errors[0]


@pytest.mark.parametrize("entry", [entry for entry in FUSED if "sparse" in entry.gradients], ids=repr)
def test_sparse_gradients_take_the_eager_path(entry):
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    reference = copy.deepcopy(embedding)
    for module, fused in ((embedding, True), (reference, None)):
        opt = entry.ours(module.parameters(), lr=0.1, fused=fused)
        for step in range(3):
            opt.zero_grad()
            module(torch.tensor([1, 3, step])).sum().backward()
            opt.step()
    torch.testing.assert_close(embedding.weight, reference.weight, rtol=0, atol=0)


def test_a_fused_step_allocates_nothing_per_parameter():
    """After the first steps, a bucket step gathers into buffers it keeps: no new tensors of
    the parameters' size (measured as the allocations the profiler records)."""
    with mock.patch.object(torch_fused, "LARGE", 1 << 30):
        params = [torch.randn(64, 64, requires_grad=True) for _ in range(50)]
        for p in params:
            p.grad = torch.randn_like(p)
        opt = optimizers.Adam(params, lr=1e-3, fused=True)
        opt.step()
        opt.step()
        with torch.profiler.profile(profile_memory=True) as profile:
            opt.step()
    allocated = sum(max(event.cpu_memory_usage, 0) for event in profile.events())
    assert allocated < 64 * 64 * 4, allocated  # less than one parameter's worth
    assert np.isfinite([p.detach().sum().item() for p in params]).all()


# Every class with fused=True: torch.optim's (the registry's options) and those beyond it.
BUCKET_VIEW_CASES = [(entry.name, entry.options) for entry in FUSED] + [
    ("Lion", {"lr": 1e-3, "weight_decay": 0.1}),
    ("Adan", {"lr": 1e-2, "weight_decay": 0.02}),
    ("AdEMAMix", {"lr": 1e-2}),
    ("ScheduleFreeAdamW", {"lr": 1e-2, "warmup_steps": 2}),
    ("ScheduleFreeSGD", {"lr": 1e-2}),
    ("Lamb", {"lr": 1e-2}),  # not elementwise: bucket_view changes nothing
    ("Lars", {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0}),
]


def _storages(tensors):
    return {t.untyped_storage().data_ptr() for t in tensors}


@pytest.mark.parametrize(("name", "options"), BUCKET_VIEW_CASES, ids=[name for name, _ in BUCKET_VIEW_CASES])
def test_bucket_views_step_exactly_as_the_bucket_and_keep_every_tensor_in_it(name, options):
    """``bucket_view=True`` runs the bucket's own kernel on the parameters' own memory: bit for
    bit the plain fused step, with ``zero_grad()`` (a new gradient, copied into its place), with
    ``zero_grad(set_to_none=False)`` (backward accumulates into the view), and after a step
    without one parameter (whose step count then differs: buckets by count, as without views)."""
    cls, trained = getattr(optimizers, name), []
    for bucket_view in (False, True):
        model = _model()
        opt = cls(model.parameters(), **options, fused=True, bucket_view=bucket_view)
        getattr(opt, "train", lambda: None)()  # Schedule-Free steps in train mode
        generator = torch.Generator().manual_seed(1)
        for step in range(5):
            opt.zero_grad(set_to_none=step < 2)
            model(torch.randn(16, 6, generator=generator)).pow(2).mean().backward()
            if step == 2:  # from here on its step count differs from the others'
                model[2].bias.grad = None
            opt.step()
        params = list(model.parameters())
        arrays = [value for p in params for value in opt.state[p].values() if torch.is_tensor(value) and value.dim()]
        trained.append([p.detach().clone() for p in params] + [a.clone() for a in arrays])
    for a, b in zip(*trained, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if name == "Lamb":  # its trust ratio is a per-tensor norm: each parameter steps in its own memory
        assert len(_storages(params)) == len(params)
    else:  # a bucket per set of parameters that count alike: their step's scalars are the same
        counts = {tuple(float(opt.state[p][key]) for key in cls.counters) for p in params}
        assert len(_storages(params)) == len(_storages([p.grad for p in params])) == len(counts)
        assert _storages(params).isdisjoint(_storages([p.grad for p in params]))


def test_a_non_contiguous_parameter_keeps_its_memory_beside_a_bucket_view():
    trained = []
    for bucket_view in (False, True):
        torch.manual_seed(0)
        transposed = torch.nn.Parameter(torch.randn(8, 4).t())
        params = [transposed, torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3, 3))]
        opt = optimizers.AdamW(params, lr=0.01, fused=True, bucket_view=bucket_view)
        for step in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step)).to(p.dtype)
            opt.step()
        trained.append([p.detach().clone() for p in params])
    for a, b in zip(*trained, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not transposed.is_contiguous() and transposed.untyped_storage().nbytes() == 32 * 4
    assert params[1].untyped_storage().data_ptr() == params[2].untyped_storage().data_ptr()


def test_bucket_views_save_and_resume_through_every_checkpoint_format(tmp_path):
    """Parameters sharing one storage: ``torch.save`` and safetensors' ``save_file`` of the model
    load back equal, the optimizer's ``state_dict`` is the plain fused one, and it resumes exactly."""
    from safetensors.torch import load_file, save_file

    sides = []
    for bucket_view in (False, True):
        model = _model()
        opt = optimizers.Adam(model.parameters(), lr=0.01, fused=True, bucket_view=bucket_view)
        _train(model, opt, 2)
        sides.append((model, opt))
    (model, opt), (plain_model, plain_opt) = sides[1], sides[0]
    assert len(_storages(model.parameters())) == 1
    for a, b in zip(model.parameters(), plain_model.parameters(), strict=True):
        assert torch.equal(a, b)
    buffer = io.BytesIO()
    torch.save((model.state_dict(), opt.state_dict()), buffer)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    for loaded in (
        torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)[0],
        load_file(tmp_path / "model.safetensors"),
    ):
        assert loaded.keys() == model.state_dict().keys()
        for key, value in model.state_dict().items():
            assert torch.equal(loaded[key], value)
    # torch saves whole storages: one parameter alone writes the bucket (as the README warns)
    alone, cloned = io.BytesIO(), io.BytesIO()
    torch.save(model[0].bias, alone)
    torch.save(model[0].bias.clone(), cloned)
    assert len(alone.getvalue()) > len(cloned.getvalue()) + 4 * (sum(p.numel() for p in model.parameters()) - 40)
    state, plain_state = opt.state_dict(), plain_opt.state_dict()
    assert state["param_groups"] == plain_state["param_groups"]
    for index, entries in plain_state["state"].items():
        assert list(state["state"][index]) == list(entries)
        for key, value in entries.items():
            assert torch.equal(state["state"][index][key], value)

    model_state, opt_state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    resumed_model = _model(seed=5)
    resumed_model.load_state_dict(model_state)
    resumed = optimizers.Adam(resumed_model.parameters(), lr=0.01, fused=True, bucket_view=True)
    resumed.load_state_dict(opt_state)
    for a, b in zip(_train(resumed_model, resumed, 3), _train(model, opt, 3), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_step_counts_set_by_hand_are_read_from_a_bucket_view():
    """A viewed bucket keeps the step counters in one buffer and reads them from it: a count
    changed in place, or replaced, is stepped with, as without views."""

    def set_counts(step):
        first, last = list(opts[-1].state.values())[0], list(opts[-1].state.values())[-1]
        if step == 1:
            first["step"].fill_(0.0)
        if step == 2:
            last["step"] = torch.tensor(7.0)

    trained, opts = [], []
    for bucket_view in (False, True):
        model = _model()
        opts.append(optimizers.Adam(model.parameters(), lr=0.01, fused=True, bucket_view=bucket_view))
        trained.append(_train(model, opts[-1], 4, between=set_counts))
    for a, b in zip(*trained, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [float(state["step"]) for state in opts[-1].state.values()] == [2.0, 4.0, 4.0, 8.0]


def test_a_bucket_view_step_copies_only_gradients_that_are_not_in_their_place():
    """With the gradients in place between steps (as ``zero_grad(set_to_none=False)`` leaves
    them), a step is the kernel alone: no copy of a parameter's size and no allocation beyond
    scalars.  A new gradient tensor (after ``zero_grad()``) is copied into its place, once."""
    params = [torch.randn(64, 64, requires_grad=True) for _ in range(10)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = optimizers.Adam(params, lr=1e-3, fused=True, bucket_view=True)
    opt.step()

    def profiled_step():
        with torch.profiler.profile(profile_memory=True, record_shapes=True) as profile:
            opt.step()
        copied = [e for e in profile.events() if e.name == "aten::copy_" and e.input_shapes[0] == [64, 64]]
        return len(copied), sum(max(event.cpu_memory_usage, 0) for event in profile.events())

    copies, allocated = profiled_step()
    assert copies == 0 and allocated < 64 * 64 * 4, (copies, allocated)
    for p in params[:3]:
        p.grad = torch.randn_like(p)
    assert profiled_step()[0] == 3
    assert profiled_step()[0] == 0
    assert len(_storages(p.grad for p in params)) == 1


def test_bucket_view_needs_a_fused_torch_optimizer_and_a_bool():
    params = _model().parameters
    with pytest.raises(ValueError, match="bucket_view=True is an option of fused=True on torch tensors"):
        optimizers.Adam(params(), bucket_view=True)
    with pytest.raises(ValueError, match="no fused param group"):
        optimizers.SGD([{"params": list(params()), "fused": False}], lr=0.1, bucket_view=True)
    with pytest.raises(TypeError, match="bucket_view must be a bool, but got int"):
        optimizers.Adam(params(), fused=True, bucket_view=1)
    import jax.numpy as jnp

    with pytest.raises(ValueError, match="but this optimizer has jax arrays"):
        optimizers.Adam([jnp.zeros(3)], fused=True, bucket_view=True)
