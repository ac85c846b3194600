"""The JAX backend: the same Optimizer class over pytrees of JAX arrays."""

from __future__ import annotations

import copy
import pickle
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import optimizers
from backends import jax_buckets


def tree():
    return {"dense": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.zeros(3)}, "scale": jnp.asarray(2.0)}


def ones_like(params):
    return jax.tree_util.tree_map(jnp.ones_like, params)


def snapshot(opt):
    """Everything a failed step must leave untouched: values, held gradients and state."""
    params = [p for g in opt.param_groups for p in g["params"]]
    return (
        [np.asarray(p.value).tobytes() for p in params],
        [None if p.grad is None else np.asarray(p.grad).tobytes() for p in params],
        {p.path: {k: np.asarray(v).tobytes() for k, v in s.items()} for p, s in opt.state.items()},
    )


def test_backend_is_inferred_or_forced():
    assert optimizers.SGD(tree()).backend == "jax"
    assert optimizers.SGD([torch.nn.Parameter(torch.zeros(1))]).backend == "torch"
    forced = optimizers.SGD({"w": np.ones(3)}, backend="jax")
    assert forced.backend == "jax" and isinstance(forced.params["w"], jax.Array)
    with pytest.raises(ValueError, match=r"backend must be one of \('torch', 'jax'\), got 'tpu'"):
        optimizers.SGD(tree(), backend="tpu")


@jax.tree_util.register_pytree_node_class
class Module:
    """A registered pytree node that is neither a dict, a list nor a tuple (as Flax nnx's State and
    Variables, equinox modules and registered dataclasses are), with a non-array attribute."""

    def __init__(self, weight, bias, name="module"):
        self.weight, self.bias, self.name = weight, bias, name

    def tree_flatten(self):
        return (self.weight, self.bias), self.name

    @classmethod
    def tree_unflatten(cls, name, children):
        return cls(*children, name=name)


def test_the_backend_is_inferred_from_the_arrays_a_registered_pytree_node_holds():
    """Backend inference once looked inside dicts, lists and tuples only: such a tree went to the
    torch backend, which refused its non-tensor attribute."""
    module = Module(jnp.ones((2, 3)), jnp.zeros(3))
    for params in (module, {"encoder": module}, [module]):
        opt = optimizers.AdamW(params, lr=0.1)
        assert opt.backend == "jax"
        opt.step(ones_like(params))
    stepped = optimizers.AdamW(module, lr=0.1)
    stepped.step(ones_like(module))
    assert isinstance(stepped.params, Module) and stepped.params.name == "module"
    np.testing.assert_allclose(stepped.params.weight, 1.0 - 0.1 - 0.1 * 0.01, rtol=1e-6)


def test_non_array_leaves_are_named():
    with pytest.raises(TypeError, match=r"parameter at \['b'\] is builtins.str"):
        optimizers.SGD({"a": jnp.ones(2), "b": "oops"}, backend="jax")
    with pytest.raises(TypeError, match=r"parameter at \['n'\] has dtype int32"):
        optimizers.SGD({"n": jnp.arange(3, dtype=jnp.int32)})
    with pytest.raises(ValueError, match="optimizer got an empty parameter list"):
        optimizers.SGD({}, backend="jax")


def test_a_step_is_a_range_in_jax_profiler_traces_named_as_torch_optim_names_it(tmp_path):
    opt = optimizers.Adam(tree())
    opt.step(ones_like(opt.params))  # compiled before the trace
    with jax.profiler.trace(str(tmp_path)):
        opt.step(ones_like(opt.params))
    (trace,) = tmp_path.glob("plugins/profile/*/*.xplane.pb")
    assert b"Optimizer.step#Adam.step" in trace.read_bytes()


def test_hyperparameters_are_validated_with_torch_messages():
    with pytest.raises(ValueError, match="^Invalid learning rate: -1.0$"):
        optimizers.SGD(tree(), lr=-1.0)
    with pytest.raises(ValueError, match="^Tensor lr must be 1-element$"):
        optimizers.SGD(tree(), lr=jnp.asarray([0.1, 0.2]))
    with pytest.raises(ValueError, match="^Nesterov momentum requires a momentum and zero dampening$"):
        optimizers.SGD(tree(), nesterov=True)


class Layer(NamedTuple):
    weight: jax.Array
    bias: jax.Array


@pytest.mark.parametrize(
    "params",
    [tree(), [jnp.ones(2), (jnp.ones(3), jnp.ones(()))], Layer(jnp.ones((2, 2)), jnp.zeros(2)), jnp.ones(4)],
    ids=["nested dict", "list and tuple", "NamedTuple", "single array"],
)
def test_params_keep_the_structure_they_were_given_in(params):
    opt = optimizers.SGD(params, lr=0.5)
    opt.step(ones_like(params))
    result = opt.params
    assert jax.tree_util.tree_structure(result) == jax.tree_util.tree_structure(params)
    for new, old in zip(jax.tree_util.tree_leaves(result), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(new, old - 0.5)


def test_param_groups_take_pytrees_and_per_group_hyperparameters():
    groups = [{"params": {"w": jnp.ones(2)}}, {"params": [jnp.ones(3)], "lr": 0.25, "momentum": 0.5}]
    opt = optimizers.SGD(groups, lr=0.5)
    opt.step([{"w": jnp.ones(2)}, [jnp.ones(3)]])
    first, second = opt.params
    np.testing.assert_array_equal(first["w"], 0.5 * jnp.ones(2))
    np.testing.assert_array_equal(second[0], 0.75 * jnp.ones(3))
    (handle,) = opt.param_groups[1]["params"]
    np.testing.assert_array_equal(opt.state[handle]["momentum_buffer"], jnp.ones(3))
    opt.add_param_group({"params": (jnp.zeros(1),), "lr": 1.0})
    assert len(opt.params) == 3 and isinstance(opt.params[2], tuple)


def test_a_none_gradient_leaves_the_leaf_and_its_state_alone():
    opt = optimizers.SGD(tree(), lr=0.1, momentum=0.9)
    opt.step(ones_like(tree()))
    before = snapshot(opt)
    grads = ones_like(tree())
    grads["dense"]["b"] = None
    opt.step(grads)
    after = snapshot(opt)
    b_index = [p.path for p in opt.param_groups[0]["params"]].index("['dense']['b']")
    assert after[0][b_index] == before[0][b_index]
    assert after[2]["['dense']['b']"] == before[2]["['dense']['b']"]
    assert after[0] != before[0]


BAD_GRADIENTS = {
    "a missing leaf": (
        lambda g: {"dense": {"w": g["dense"]["w"]}, "scale": g["scale"]},
        ValueError,
        r"gradients do not match the parameters' tree: no gradient at \['dense'\]\['b'\]",
    ),
    "an extra leaf": (
        lambda g: {**g, "extra": jnp.ones(1)},
        ValueError,
        r"unexpected gradient at \['extra'\]",
    ),
    "another container type": (
        lambda g: [g["dense"]["b"], g["dense"]["w"], g["scale"]],
        ValueError,
        r"gradients do not match the parameters' tree",
    ),
    "a wrong shape": (
        lambda g: {**g, "dense": {**g["dense"], "w": jnp.ones((3, 2))}},
        ValueError,
        r"gradient at \['dense'\]\['w'\] has shape \(3, 2\), but the parameter has shape \(2, 3\)",
    ),
    "an integer gradient": (
        lambda g: {**g, "scale": jnp.asarray(1, dtype=jnp.int32)},
        TypeError,
        r"gradient at \['scale'\] has dtype int32, but the parameter has dtype float",
    ),
    "a complex gradient for a real parameter": (
        lambda g: {**g, "scale": jnp.asarray(1j)},
        TypeError,
        r"gradient at \['scale'\] has dtype complex",
    ),
    "a string": (
        lambda g: {**g, "scale": "x"},
        TypeError,
        r"gradient at \['scale'\] is not an array",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_GRADIENTS))
def test_mismatched_gradients_name_the_leaf_and_change_nothing(case):
    make, error, message = BAD_GRADIENTS[case]
    opt = optimizers.SGD(tree(), lr=0.1, momentum=0.9)
    opt.step(ones_like(tree()))  # state and held gradients exist
    before = snapshot(opt)
    with pytest.raises(error, match=message):
        opt.step(make(ones_like(tree())))
    assert snapshot(opt) == before


def test_gradients_for_several_groups_must_come_one_per_group():
    opt = optimizers.SGD([{"params": [jnp.ones(2)]}, {"params": [jnp.ones(2)]}])
    with pytest.raises(ValueError, match="expected a list of 2 gradient trees, one per param group"):
        opt.step([[jnp.ones(2)]])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64])
def test_parameter_and_state_dtypes_are_preserved(dtype):
    params = {"w": jnp.ones(3, dtype=dtype)}
    opt = optimizers.SGD(params, lr=jnp.asarray(0.1, jnp.float32), momentum=0.9, weight_decay=0.01)
    for _ in range(2):
        opt.step({"w": jnp.ones(3, dtype=jnp.float32)})  # gradients are cast to the parameter's dtype
    assert opt.params["w"].dtype == dtype
    (handle,) = opt.param_groups[0]["params"]
    assert opt.state[handle]["momentum_buffer"].dtype == dtype


def test_closure_returns_the_loss_and_feeds_the_gradients():
    opt = optimizers.SGD({"x": jnp.asarray([3.0, -1.0])}, lr=0.25)
    loss_and_grad = jax.value_and_grad(lambda p: jnp.sum(p["x"] ** 2))
    assert float(opt.step(closure=loss_and_grad)) == 10.0
    np.testing.assert_array_equal(opt.params["x"], jnp.asarray([1.5, -0.5]))
    with pytest.raises(TypeError, match=r"must return \(loss, grads\)"):
        opt.step(closure=lambda p: 1.0)


def test_zero_grad_clears_or_zeroes_the_held_gradients():
    opt = optimizers.SGD({"x": jnp.ones(2)}, lr=0.5, weight_decay=1.0)
    opt.step({"x": jnp.ones(2)})
    # x: 1 -> 1 - 0.5 * (1 + 1) = 0; the held gradient steps again, as torch's .grad does: 0 - 0.5 * 1
    opt.step()
    np.testing.assert_array_equal(opt.params["x"], jnp.asarray([-0.5, -0.5]))
    opt.zero_grad(set_to_none=False)  # zeros still step: weight decay alone, -0.5 - 0.5 * (0 - 0.5)
    opt.step()
    np.testing.assert_array_equal(opt.params["x"], jnp.asarray([-0.25, -0.25]))
    opt.zero_grad()
    opt.step()  # None: nothing moves
    np.testing.assert_array_equal(opt.params["x"], jnp.asarray([-0.25, -0.25]))
    assert opt.param_groups[0]["params"][0].grad is None


# How often each rule is traced over 100 steps: SGD's state gains its momentum buffer at the
# first step. RAdam's rectification is data (chosen per step inside the program), not a switch.
TRACES = {"SGD": 2, "Adam": 1, "RAdam": 1, "Adagrad": 1}


@pytest.mark.parametrize("name", sorted(TRACES))
def test_changing_hyperparameters_never_recompiles(name):
    traces = []
    algorithm = getattr(optimizers, name)

    class Counting(algorithm):
        @staticmethod
        def update(ops, param, grad, state, h):
            traces.append(type(param).__name__)
            return algorithm.update(ops, param, grad, state, h)

    kwargs = dict(lr=0.1, momentum=0.9) if name == "SGD" else dict(lr=0.1)
    opt = Counting({"w": jnp.ones(5)}, **kwargs)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    for step in range(100):
        if name == "SGD":
            opt.param_groups[0]["momentum"] = 0.5 + step / 400
            opt.param_groups[0]["dampening"] = step / 200
        opt.step({"w": jnp.ones(5)})
        schedule.step()
    assert len(traces) == TRACES[name] and all("Tracer" in t for t in traces)


def test_a_torch_scheduler_drives_both_backends_to_the_same_weights():
    start = np.linspace(-1, 1, 7)
    torch_param = torch.nn.Parameter(torch.tensor(start))
    runs = [
        optimizers.SGD([torch_param], lr=0.2, momentum=0.9),
        optimizers.SGD({"w": jnp.asarray(start)}, lr=0.2, momentum=0.9),
    ]
    schedules = [torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) for opt in runs]
    for step in range(8):
        grad = np.cos(start * step)
        torch_param.grad = torch.tensor(grad)
        runs[0].step()
        runs[1].step({"w": jnp.asarray(grad)})
        for schedule in schedules:
            schedule.step()
    np.testing.assert_array_equal(np.asarray(runs[1].params["w"]), torch_param.detach().numpy())
    assert runs[1].param_groups[0]["lr"] == runs[0].param_groups[0]["lr"] == 0.2 * 0.5**4


def test_torch_backend_rejects_gradients_given_to_step():
    opt = optimizers.SGD([torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(TypeError, match="the torch backend reads gradients from each parameter's .grad"):
        opt.step([torch.ones(2)])


def test_state_dict_format_equals_the_torch_backend_and_loads_there():
    start = {"a": np.ones(3), "b": np.full((2, 2), 2.0)}
    jax_opt = optimizers.SGD({k: jnp.asarray(v) for k, v in start.items()}, lr=0.1, momentum=0.9)
    tensors = [torch.nn.Parameter(torch.tensor(start[k])) for k in sorted(start)]  # JAX orders dict keys
    torch_opt = optimizers.SGD(tensors, lr=0.1, momentum=0.9)
    for _ in range(2):
        jax_opt.step({k: jnp.ones_like(v) for k, v in start.items()})
        for t in tensors:
            t.grad = torch.ones_like(t)
        torch_opt.step()
    jax_sd, torch_sd = jax_opt.state_dict(), torch_opt.state_dict()
    assert jax_sd["param_groups"] == torch_sd["param_groups"]
    assert {k: set(v) for k, v in jax_sd["state"].items()} == {k: set(v) for k, v in torch_sd["state"].items()}
    fresh = optimizers.SGD([torch.nn.Parameter(torch.zeros_like(t)) for t in tensors], lr=1.0)
    fresh.load_state_dict(jax_sd)
    for index, entry in torch_sd["state"].items():
        loaded = fresh.state_dict()["state"][index]["momentum_buffer"]
        assert isinstance(loaded, torch.Tensor)
        torch.testing.assert_close(loaded, entry["momentum_buffer"], rtol=0, atol=0)
    # The loaded tensors own their memory: stepping the torch optimizer leaves the JAX state intact.
    before = np.asarray(jax_sd["state"][0]["momentum_buffer"]).copy()
    for t in fresh.param_groups[0]["params"]:
        t.grad = torch.ones_like(t)
    fresh.step()
    np.testing.assert_array_equal(np.asarray(jax_sd["state"][0]["momentum_buffer"]), before)


def test_bfloat16_state_moves_between_backends():
    jax_opt = optimizers.SGD({"w": jnp.ones(4, jnp.bfloat16)}, lr=0.1, momentum=0.9)
    jax_opt.step({"w": jnp.full(4, 0.3, jnp.bfloat16)})
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    torch_opt = optimizers.SGD([param], lr=0.1, momentum=0.9)
    torch_opt.load_state_dict(jax_opt.state_dict())
    buffer = torch_opt.state[param]["momentum_buffer"]
    assert buffer.dtype == torch.bfloat16
    back = optimizers.SGD({"w": jnp.ones(4, jnp.bfloat16)}, lr=0.1)
    back.load_state_dict(torch_opt.state_dict())
    (handle,) = back.param_groups[0]["params"]
    np.testing.assert_array_equal(np.asarray(back.state[handle]["momentum_buffer"], np.float32), buffer.float().numpy())


def test_deepcopy_and_pickle_of_a_jax_optimizer():
    opt = optimizers.SGD(tree(), lr=0.1, momentum=0.9)
    opt.step(ones_like(tree()))
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        clone.step(ones_like(tree()))
        opt_copy = copy.deepcopy(opt)
        opt_copy.step(ones_like(tree()))
        for a, b in zip(jax.tree_util.tree_leaves(clone.params), jax.tree_util.tree_leaves(opt_copy.params)):
            np.testing.assert_array_equal(a, b)


def test_parameters_that_count_alike_share_one_counter_and_step_as_with_their_own():
    """One counter array per distinct count (one schedule in the program), split when some
    parameters skip a step, joined again by a checkpoint; the trajectory is torch.optim's."""
    params = tree()
    grads = [ones_like(params), {"dense": {"w": jnp.full((2, 3), 0.5), "b": None}, "scale": jnp.asarray(-1.0)}]
    opt = optimizers.Adam(params, lr=0.1)
    tensors = {
        k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in jax.tree_util.tree_leaves_with_path(params)
    }
    reference = torch.optim.Adam(list(tensors.values()), lr=0.1)
    for step_grads in grads + grads:
        opt.step(step_grads)
        for grad, tensor in zip(jax.tree_util.tree_leaves(step_grads, is_leaf=lambda x: x is None), tensors.values()):
            tensor.grad = None if grad is None else torch.tensor(np.asarray(grad))
        reference.step()
    counts = {p.path: s["step"] for p, s in opt.state.items()}
    assert {k: float(v) for k, v in counts.items()} == {"['dense']['b']": 2.0, "['dense']['w']": 4.0, "['scale']": 4.0}
    assert counts["['dense']['w']"] is counts["['scale']"]
    for value, tensor in zip(jax.tree_util.tree_leaves(opt.params), tensors.values()):
        np.testing.assert_allclose(np.asarray(value), tensor.detach().numpy(), rtol=1e-12)
    loaded = optimizers.Adam(tree(), lr=0.1)
    loaded.load_state_dict(reference.state_dict())
    assert len({id(s["step"]) for s in loaded.state.values()}) == 2  # the counts 2 and 4


@pytest.mark.parametrize("bucketed", [False, True], ids=["large leaves", "small leaves"])
def test_a_step_consumes_the_arrays_it_replaces_and_never_the_users(bucketed):
    """The step donates the parameters and state arrays it holds, so XLA updates them in place;
    the arrays the user constructed it with, gradients that alias what it consumes, and the
    step counters (one array for every parameter that counts alike) survive.  Small parameters
    step as a bucket whose flat arrays it consumes instead: what it hands out (each parameter's
    value, its state when read) is split from them and survives."""
    large = jax_buckets.SMALL  # a lone small parameter steps on its own
    given = tree() if bucketed else {"dense": {"w": jnp.ones(large), "b": jnp.zeros(large)}, "scale": jnp.asarray(2.0)}
    kept = jax.tree_util.tree_map(np.asarray, given)
    opt = optimizers.Adam(given, lr=0.1)
    opt.step(ones_like(given))
    held_params = jax.tree_util.tree_leaves(opt.params)
    held_state = [v for s in opt.state_dict()["state"].values() for k, v in s.items() if k != "step"]
    (held_step,) = {id(s["step"]): s["step"] for s in opt.state_dict()["state"].values()}.values()
    opt.step(ones_like(given))
    # The scalar "scale" steps on its own in both (a bucket holds parameters of 2 elements or more).
    assert all(a.is_deleted() == (a.ndim == 0 or not bucketed) for a in held_params + held_state)
    assert not held_step.is_deleted() and float(held_step) == 1.0
    assert len({id(s["step"]) for s in opt.state.values()}) == 1 and float(next(iter(opt.state.values()))["step"]) == 2
    assert not any(a.is_deleted() for a in jax.tree_util.tree_leaves(given))
    for a, b in zip(jax.tree_util.tree_leaves(given), jax.tree_util.tree_leaves(kept)):
        np.testing.assert_array_equal(a, b)
    # opt.step(opt.params): the gradient of |p|^2 / 2 is the parameter array itself.
    expected = copy.deepcopy(opt)
    expected.step(jax.tree_util.tree_map(jnp.copy, expected.params))
    opt.step(opt.params)
    for a, b in zip(jax.tree_util.tree_leaves(opt.params), jax.tree_util.tree_leaves(expected.params)):
        np.testing.assert_array_equal(a, b)


def test_a_loaded_state_dict_is_the_loaders_own():
    """Loading copies: stepping the optimizer the state dict came from leaves the loaded one intact."""
    source = optimizers.Adam(tree(), lr=0.1)
    source.step(ones_like(tree()))
    as_numpy = {
        "state": {k: {n: np.asarray(v) for n, v in s.items()} for k, s in source.state_dict()["state"].items()},
        "param_groups": copy.deepcopy(source.state_dict()["param_groups"]),
    }
    loaded, expected = optimizers.Adam(tree(), lr=0.1), optimizers.Adam(tree(), lr=0.1)
    loaded.load_state_dict(source.state_dict())
    expected.load_state_dict(as_numpy)
    source.step(ones_like(tree()))
    loaded.step(ones_like(tree()))
    expected.step(ones_like(tree()))
    for a, b in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(expected.params)):
        np.testing.assert_array_equal(a, b)
