"""The JAX side as JAX users write it: a pure functional form inside their own jitted step,
optax interoperability, sharded parameters and checkpoints of the state pytree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import optimizers

from .registry import REGISTRY, Entry

# The functional form's update takes the dense gradients jax.grad gives, once per step.
ENTRIES = [entry for entry in REGISTRY.values() if entry.steps_on_given_gradients]


def model_params(dtype=jnp.float64, entry: Entry | None = None):
    rng = np.random.default_rng(0)
    # For an algorithm that takes matrices only, the bias and scale are 1 x n matrices, broadcast alike.
    matrix = (1,) if entry and entry.matrices_only else ()
    return {
        "dense": {"w": jnp.asarray(rng.standard_normal((4, 3)), dtype), "b": jnp.zeros(matrix + (3,), dtype)},
        "scale": jnp.full(matrix * 2, 1.5, dtype),
    }


def batches(count=12):
    rng = np.random.default_rng(1)
    return [(jnp.asarray(rng.standard_normal((8, 4))), jnp.asarray(rng.standard_normal((8, 3)))) for _ in range(count)]


def loss_fn(params, inputs, targets):
    predictions = params["scale"] * jnp.tanh(inputs @ params["dense"]["w"] + params["dense"]["b"])
    return jnp.mean((predictions - targets) ** 2)


def leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def object_oriented_run(entry, data, options):
    optimizer = entry.ours(model_params(entry=entry), **options)
    for inputs, targets in data:
        optimizer.step(jax.grad(loss_fn)(optimizer.params, inputs, targets))
    return optimizer.params


def assert_close_trees(got, expected, rtol=1e-13):
    for a, b in zip(leaves(got), leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
def test_a_jitted_donating_train_step_follows_the_object_step(entry):
    optimizer = entry.ours(model_params(entry=entry), **entry.options)
    init, update, _ = optimizer.functional()

    @jax.jit
    def gradients(params, inputs, targets):
        return jax.grad(loss_fn)(params, inputs, targets)

    # Parameters and state are donated: updated in place, as a JAX training loop does.
    apply = jax.jit(update, donate_argnums=(1, 2))
    params = model_params(entry=entry)
    state = init(params)
    structure = jax.tree_util.tree_structure(state)
    data = batches()
    for inputs, targets in data:
        donated = jax.tree_util.tree_leaves(params)
        params, state = apply(gradients(params, inputs, targets), state, params)
        assert all(leaf.is_deleted() for leaf in donated)
        assert jax.tree_util.tree_structure(state) == structure  # fixed, so it can be a loop carry
    assert_close_trees(params, object_oriented_run(entry, data, entry.options))


@pytest.mark.parametrize(
    "name, options",
    [
        ("SGD", dict(lr=0.1, momentum=0.9)),
        ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
        ("Lars", dict(lr=0.1, momentum=0.9)),
    ],
)
def test_a_donated_update_with_lazily_created_state_updates_every_array_in_place(name, options):
    """A first step without the lazily created entry, and later steps with it, in one program
    that copies no array: XLA writes each new parameter and entry over its donated old one."""
    params = [jnp.ones((64, 32), jnp.float32), jnp.ones((32,), jnp.float32)]
    form = getattr(optimizers, name)(params, **options).functional()
    state = form.init(params)
    step = jax.jit(lambda params, state, grads: form.update(grads, state, params), donate_argnums=(0, 1))
    program = step.lower(params, state, params).compile().as_text()
    copied = [line for line in program.splitlines() if " copy(" in line and "f32[" in line]
    assert not copied, "\n".join(copied)


# (class, options, whether its rule with these options is elementwise: known from its equations)
FLAT_CASES = [(entry.name, entry.options, entry.name not in ("Adafactor", "Muon")) for entry in ENTRIES] + [
    ("Lion", dict(lr=1e-3, weight_decay=0.1), True),
    ("AdEMAMix", dict(lr=1e-2, alpha=2.0), True),
    ("Adan", dict(lr=1e-2, weight_decay=0.02), True),
    ("ScheduleFreeAdamW", dict(lr=1e-2, warmup_steps=2), True),
    ("Prodigy", dict(lr=1.0), True),
    ("Lars", dict(lr=0.1, momentum=0.9), True),  # no weight decay: no trust ratio, torch's SGD
    ("Lars", dict(lr=0.1, momentum=0.9, weight_decay=1e-2), False),
    ("Lamb", dict(lr=1e-2), False),
    ("SOAP", dict(lr=1e-2), False),
]


def mixed_params():
    """Two dtypes, so two flat vectors; a scalar leaf among matrices."""
    params = model_params()
    return {**params, "scale": params["scale"].astype(jnp.float32)}


@pytest.mark.parametrize(
    "name, options, elementwise", FLAT_CASES, ids=[f"{n}-{i}" for i, (n, *_) in enumerate(FLAT_CASES)]
)
def test_the_flat_form_steps_every_leaf_as_the_per_leaf_form(name, options, elementwise):
    cls = getattr(optimizers, name)
    if not elementwise:
        with pytest.raises(ValueError, match="not elementwise|does not step a flat vector"):
            cls.functional(flat=True, **options)
        return
    form, flat_form = cls.functional(**options), cls.functional(flat=True, **options)
    params = mixed_params()
    flat, unravel = flat_form.ravel(params)
    assert {dtype: vector.shape for dtype, vector in flat.items()} == {"float64": (15,), "float32": (1,)}
    state, flat_state = form.init(params), flat_form.init(flat)
    update, flat_update, gradient = jax.jit(form.update), jax.jit(flat_form.update), jax.jit(jax.grad(loss_fn))
    for inputs, targets in batches(6):
        grads = gradient(params, inputs, targets)
        params, state = update(grads, state, params)
        flat, flat_state = flat_update(flat_form.ravel(grads)[0], flat_state, flat)
    # Bit for bit, but for two root causes.  XLA:CPU contracts a multiply and an add into one
    # rounding in some programs and not in others: Lion's flat step fuses p * (1 - lr wd) -
    # lr sign(u), where torch and the per-leaf program round twice (measured 1.5 ulps of the
    # scale).  Prodigy's estimate d sums <g, x0 - x> over every element, one flat sum against a
    # sum of per-leaf sums, and the sum cancels (17 ulps of a zero-started bias's scale).
    ulps = {"Lion": 4, "Prodigy": 100}.get(name, 0)
    for got, expected in zip(leaves(unravel(flat)), leaves(params), strict=True):
        assert got.dtype == expected.dtype
        scale = np.abs(expected).max()
        np.testing.assert_allclose(got, expected, rtol=0, atol=ulps * np.finfo(got.dtype).eps * scale)


def test_a_training_step_differentiates_through_unravel_for_flat_gradients():
    """The README's loop: parameters live flat, the loss unravels them, the gradient comes flat."""
    form = optimizers.Adam.functional(lr=1e-2, flat=True)
    flat, unravel = form.ravel(mixed_params())

    @jax.jit
    def train_step(flat, state, inputs, targets):
        grads = jax.grad(lambda flat: loss_fn(unravel(flat), inputs, targets))(flat)
        return form.update(grads, state, flat)

    state = form.init(flat)
    per_leaf = optimizers.Adam(mixed_params(), lr=1e-2)
    for inputs, targets in batches(4):
        flat, state = train_step(flat, state, inputs, targets)
        per_leaf.step(jax.grad(loss_fn)(per_leaf.params, inputs, targets))
    assert_close_trees(unravel(flat), per_leaf.params, rtol=1e-6)  # float32 "scale": its rounding


@pytest.mark.parametrize("entry", ENTRIES, ids=repr)
def test_the_state_pytree_holds_torch_optims_entries_per_leaf(entry):
    optimizer = entry.ours(model_params(entry=entry), **entry.options)
    form = optimizer.functional()
    params = model_params(entry=entry)
    state = form.init(params)
    new_params, new_state = form.update(jax.grad(loss_fn)(params, *batches(1)[0]), state, params)
    leaves_ = jax.tree_util.tree_leaves(params)
    tensors = [torch.zeros(leaf.shape, dtype=torch.float64, requires_grad=True) for leaf in leaves_]
    reference = entry.reference(tensors, **entry.options)
    for tensor in tensors:
        tensor.grad = torch.ones_like(tensor)
    reference.step()
    for tensor, leaf_state in zip(tensors, jax.tree_util.tree_structure(params).flatten_up_to(new_state)):
        assert set(leaf_state) - {"initialized"} == set(reference.state[tensor])  # a pytree's dicts sort their keys
        for key, value in reference.state[tensor].items():
            assert np.shape(leaf_state[key]) == tuple(value.shape), key
    assert form.hyperparams == {k: v for k, v in optimizer.param_groups[0].items() if k in form.hyperparams}


@pytest.mark.parametrize("entry", [REGISTRY[name] for name in ("SGD", "Adam", "RAdam", "NAdam", "Adagrad")], ids=repr)
def test_a_schedule_of_hyperparameters_as_data_compiles_once(entry):
    form = entry.ours(model_params(), **entry.options).functional()
    traces = []

    @jax.jit
    def train_step(params, state, inputs, targets, lr):
        traces.append(1)  # runs only while tracing
        grads = jax.grad(loss_fn)(params, inputs, targets)
        return form.update(grads, state, params, {"lr": lr})

    params = model_params()
    state = form.init(params)
    schedule = optax.cosine_decay_schedule(entry.options["lr"], 100)
    inputs, targets = batches(1)[0]
    with jax.log_compiles():
        for step in range(100):
            params, state = train_step(params, state, inputs, targets, schedule(step))
    assert len(traces) == 1
    # The value passed is the one used: a step with lr 0 moves nothing.
    final = form.update(jax.grad(loss_fn)(params, inputs, targets), state, params, {"lr": 0.0})[0]
    assert_close_trees(final, params, rtol=0)


def test_hyperparameters_for_the_update_are_checked():
    form = optimizers.Adam(model_params()).functional()
    params = model_params()
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) 'momentum'.*betas, eps, lr, weight_decay"):
        form.update(jax.grad(loss_fn)(params, *batches(1)[0]), form.init(params), params, {"momentum": 0.9})
    with pytest.raises(ValueError, match="gradients do not match the parameters' tree"):
        form.update({"dense": params["dense"]}, form.init(params), params)


def test_a_none_gradient_leaves_its_leaf_and_state_alone():
    form = optimizers.Adam(model_params(), lr=0.1).functional()
    params = model_params()
    state = form.init(params)
    grads = jax.grad(loss_fn)(params, *batches(1)[0])
    new_params, new_state = form.update({**grads, "scale": None}, state, params)
    assert float(new_params["scale"]) == float(params["scale"]) and int(new_state["scale"]["step"]) == 0
    assert int(new_state["dense"]["w"]["step"]) == 1


# -- optax --------------------------------------------------------------------------------


def optax_counterparts(same: bool) -> list:
    """Each algorithm with the optax transformations that define it as torch does (or otherwise)."""
    return [
        pytest.param(entry, counterpart, id=entry.name)
        for entry in REGISTRY.values()
        for counterpart in entry.optax
        if counterpart.same is same
    ]


def optax_transformation(counterpart):
    return getattr(optax, counterpart.transformation)(**counterpart.arguments)


def optax_run(transformation, data):
    params = model_params()
    state = transformation.init(params)
    for inputs, targets in data:
        updates, state = transformation.update(jax.grad(loss_fn)(params, inputs, targets), state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("entry, counterpart", optax_counterparts(same=True))
def test_the_adapter_reproduces_optax_where_optax_defines_the_same_algorithm(entry, counterpart):
    data = batches()
    ours = optax_run(optimizers.as_optax(entry.ours(model_params(), **counterpart.options)), data)
    # The same mathematics rounded in another order: agreement to float64 rounding.
    assert_close_trees(ours, optax_run(optax_transformation(counterpart), data), rtol=1e-12)


@pytest.mark.parametrize("entry, counterpart", optax_counterparts(same=False))
def test_the_adapter_computes_torchs_rule_where_optax_defines_it_differently(entry, counterpart):
    data = batches()
    ours = optax_run(optimizers.as_optax(entry.ours(model_params(), **counterpart.options)), data)
    assert_close_trees(ours, object_oriented_run(entry, data, counterpart.options), rtol=1e-12)
    theirs = optax_run(optax_transformation(counterpart), data)
    assert max(np.max(np.abs(a - b)) for a, b in zip(leaves(ours), leaves(theirs))) > 1e-6


def test_the_adapter_composes_with_optax_chain_clipping_multisteps_and_schedules():
    """Inside optax's own wrappers it behaves as optax's Adam (the same definition) does there."""
    data = batches(8)

    def wrapped(adam):
        return optax.MultiSteps(optax.chain(optax.clip_by_global_norm(0.5), adam), every_k_schedule=2)

    schedule = optax.linear_schedule(0.02, 0.0, 8)
    ours = optax_run(wrapped(optimizers.as_optax(optimizers.Adam(model_params()), lr=schedule)), data)
    theirs = optax_run(wrapped(optax.adam(schedule)), data)
    assert_close_trees(ours, theirs, rtol=1e-12)
    assert max(np.max(np.abs(a - b)) for a, b in zip(leaves(ours), leaves(model_params()))) > 1e-3  # it trained


@pytest.mark.parametrize("name", ["SGD", "Adafactor"])
def test_the_adapter_keeps_one_tree_per_state_entry_and_follows_the_object_step(name):
    """SGD's momentum buffer appears at the first step, Adafactor's entries differ between a
    matrix and a vector: each entry is a tree shaped like the parameters (a placeholder where a
    leaf has no such entry), whose structure no step changes."""
    entry = REGISTRY[name]
    tx = optimizers.as_optax(entry.ours(model_params(entry=entry), **entry.options))
    params = model_params(entry=entry)
    state = tx.init(params)
    structure = jax.tree_util.tree_structure(state)
    data = batches(4)
    for inputs, targets in data:
        updates, state = jax.jit(tx.update)(jax.grad(loss_fn)(params, inputs, targets), state, params)
        params = optax.apply_updates(params, updates)
        assert jax.tree_util.tree_structure(state) == structure
    for tree in state.inner.values():
        assert jax.tree_util.tree_structure(params).flatten_up_to(tree)
    assert_close_trees(params, object_oriented_run(entry, data, entry.options), rtol=1e-12)


def test_the_adapter_names_each_matrix_of_a_list_entry():
    """SOAP keeps lists of matrices per leaf (``GG``, ``Q``): entries ``GG.0``, ``GG.1``, ...,
    each a tree shaped like the parameters, read back into the functional form's lists."""
    params = model_params()
    form = optimizers.SOAP.functional()
    tx = optimizers.as_optax(optimizers.SOAP)
    inner = tx.init(params).inner
    assert {"GG.0", "GG.1", "Q.0", "Q.1", "exp_avg", "exp_avg_sq"} <= set(inner)
    structure = jax.tree_util.tree_structure(params)
    expected = structure.flatten_up_to(form.init(params))
    for i, leaf_state in enumerate(expected):
        for j, matrix in enumerate(leaf_state["GG"]):
            np.testing.assert_array_equal(structure.flatten_up_to(inner[f"GG.{j}"])[i], matrix)
    assert structure.flatten_up_to(inner["GG.1"])[2].shape == (0,)  # "scale", a scalar: one statistic at most


def test_the_adapter_names_what_it_does_not_know():
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) 'learning_rate' for Adam: choose from betas"):
        optimizers.as_optax(optimizers.Adam(model_params()), learning_rate=0.1)
    tx = optimizers.as_optax(optimizers.Adam(model_params()))
    params = model_params()
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))


# -- sharding and checkpoints ---------------------------------------------------------------

SHARDED = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    import optimizers

    mesh = Mesh(np.array(jax.devices()), ("model",))
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((8, 6))), "b": jnp.asarray(rng.standard_normal(8))}
    grads = [{k: jnp.asarray(rng.standard_normal(v.shape)) for k, v in params.items()} for _ in range(5)]
    spec = {"w": PartitionSpec("model", None), "b": PartitionSpec("model")}
    sharding = {k: NamedSharding(mesh, spec[k]) for k in params}
    report = {"devices": len(jax.devices())}
    def placed():
        return {k: jax.device_put(v, sharding[k]) for k, v in params.items()}

    for name, kwargs in json.loads(sys.argv[1]).items():
        sharded = placed()
        form = getattr(optimizers, name)(sharded, **kwargs).functional()
        state = form.init(sharded)
        report[name + " state shardings"] = all(
            leaf.sharding.is_equivalent_to(sharding[key], leaf.ndim)
            for key in params for leaf in jax.tree_util.tree_leaves(state[key]) if leaf.ndim
        )
        step = jax.jit(form.update, donate_argnums=(1, 2))
        p, s = sharded, state
        single_p, single_s = params, form.init(params)
        for g in grads:
            p, s = step({k: jax.device_put(v, sharding[k]) for k, v in g.items()}, s, p)
            single_p, single_s = form.update(g, single_s, single_p)
        report[name + " param shardings"] = all(p[k].sharding.is_equivalent_to(sharding[k], p[k].ndim) for k in p)
        report[name + " kept state shardings"] = all(
            leaf.sharding.is_equivalent_to(sharding[key], leaf.ndim)
            for key in params for leaf in jax.tree_util.tree_leaves(s[key]) if leaf.ndim
        )
        def difference(a, b):
            return max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in a)

        report[name + " max difference"] = difference(p, single_p)
        obj = getattr(optimizers, name)(placed(), **kwargs)
        single_obj = getattr(optimizers, name)(params, **kwargs)
        for g in grads:
            obj.step(g)
            single_obj.step(g)
        report[name + " object shardings"] = all(
            obj.params[k].sharding.is_equivalent_to(sharding[k], obj.params[k].ndim) for k in params
        )
        report[name + " object max difference"] = difference(obj.params, single_obj.params)
    print(json.dumps(report))
    """
)


def test_sharded_parameters_keep_their_sharding_and_match_one_device():
    environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    options = json.dumps({name: REGISTRY[name].options for name in ("SGD", "Adam", "Adagrad")})
    finished = subprocess.run(
        [sys.executable, "-c", SHARDED, options], capture_output=True, text=True, timeout=300, env=environment
    )
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout.strip().splitlines()[-1])
    assert report.pop("devices") == 4
    for key, value in report.items():
        if "difference" in key:
            assert value == 0.0, key  # elementwise rules: every device computes what one device would
        else:
            assert value is True, key


def test_the_state_pytree_round_trips_through_orbax_and_npz(tmp_path):
    import orbax.checkpoint as ocp

    form = optimizers.Adam(model_params(), lr=0.01, amsgrad=True).functional()
    data = batches(6)
    params, state = model_params(), form.init(model_params())
    for inputs, targets in data[:3]:
        params, state = form.update(jax.grad(loss_fn)(params, inputs, targets), state, params)

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "orbax", {"params": params, "state": state})
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "orbax", {"params": params, "state": state})
    flat, structure = jax.tree_util.tree_flatten({"params": params, "state": state})
    np.savez(tmp_path / "state.npz", *[np.asarray(leaf) for leaf in flat])
    with np.load(tmp_path / "state.npz") as archive:
        from_npz = jax.tree_util.tree_unflatten(structure, [jnp.asarray(archive[f"arr_{i}"]) for i in range(len(flat))])

    def finish(checkpoint):
        p, s = checkpoint["params"], checkpoint["state"]
        for inputs, targets in data[3:]:
            p, s = form.update(jax.grad(loss_fn)(p, inputs, targets), s, p)
        return p

    uninterrupted = finish({"params": params, "state": state})
    for checkpoint in (restored, from_npz):
        assert jax.tree_util.tree_structure(checkpoint) == structure
        assert_close_trees(finish(checkpoint), uninterrupted, rtol=0)


def test_an_object_state_dict_round_trips_through_orbax(tmp_path):
    import orbax.checkpoint as ocp

    data = batches(6)
    optimizer = optimizers.NAdam(model_params(), lr=0.01)
    for inputs, targets in data[:3]:
        optimizer.step(jax.grad(loss_fn)(optimizer.params, inputs, targets))
    saved_params = optimizer.params
    arrays = {str(index): entry for index, entry in optimizer.state_dict()["state"].items()}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "orbax", arrays)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "orbax", arrays)
    resumed = optimizers.NAdam(saved_params, lr=0.01)
    template = resumed.state_dict()
    resumed.load_state_dict(
        {"state": {int(k): v for k, v in restored.items()}, "param_groups": template["param_groups"]}
    )
    for inputs, targets in data[3:]:
        optimizer.step(jax.grad(loss_fn)(optimizer.params, inputs, targets))
        resumed.step(jax.grad(loss_fn)(resumed.params, inputs, targets))
    assert_close_trees(resumed.params, optimizer.params, rtol=0)


WITHOUT_X64 = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, torch
    import optimizers

    assert not jax.config.jax_enable_x64
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(8).astype(np.float32) * 1e-3, rng.standard_normal((3, 4)).astype(np.float32)]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in start] for _ in range(5)]
    # No weight decay: a decayed step has a multiply-add XLA may contract in one program and
    # not in another, which would hide what this compares.
    options = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    opt = optimizers.AdamW([jnp.asarray(p) for p in start], **options)
    for step_grads in grads:
        opt.step([jnp.asarray(g) for g in step_grads])
    init, update, _ = opt.functional()

    def run(hyperparams):
        params = [jnp.asarray(p) for p in start]
        state = init(params)
        for step_grads in grads:
            params, state = jax.jit(update)([jnp.asarray(g) for g in step_grads], state, params, hyperparams)
        return params

    tensors = [torch.tensor(p, requires_grad=True) for p in start]
    reference = torch.optim.AdamW(tensors, **options)
    for step_grads in grads:
        for tensor, grad in zip(tensors, step_grads):
            tensor.grad = torch.tensor(grad)
        reference.step()

    def apart(a, b):
        pairs = [(np.asarray(x), np.asarray(y)) for x, y in zip(a, b)]
        return max(float(np.abs(x - y).max() / np.abs(y).max()) for x, y in pairs)

    torch_run = [t.detach().numpy() for t in tensors]
    print(json.dumps({
        "object vs torch": apart(opt.params, torch_run),
        "arguments vs torch": apart(run(options), torch_run),
        "defaults vs torch": apart(run(None), torch_run),
    }))
    """
)


def test_without_x64_the_object_step_and_the_functional_form_follow_torch_optim():
    """JAX's default (x64 off), which the rest of the suite does not run, on a parameter of scale
    1e-3 that five steps of lr 1e-3 move by its own size.  The object step and ``update`` given
    the hyperparameters compute the coefficients (1 - beta2, ...) in float32 inside the program;
    the functional form's own defaults are Python floats closed over, computed in double when
    traced and rounded once, and end furthest from torch.optim (measured, of the parameter's
    scale: object 9.2e-7, hyperparameters given 9.3e-7, defaults 6.9e-6)."""
    environment = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    finished = subprocess.run(
        [sys.executable, "-c", WITHOUT_X64], capture_output=True, text=True, timeout=300, env=environment
    )
    assert finished.returncode == 0, finished.stderr
    apart = json.loads(finished.stdout.strip().splitlines()[-1])
    assert apart["object vs torch"] < 2e-6 and apart["arguments vs torch"] < 2e-6
    assert apart["defaults vs torch"] < 2e-5
