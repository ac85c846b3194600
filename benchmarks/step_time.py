"""Time one optimizer step, side by side: our backends against torch.optim and optax.

    python -m benchmarks.step_time                       # few-large and many-small, SGD and Adam
    python -m benchmarks.step_time --algorithms all      # every planned algorithm
    python -m benchmarks.step_time --sets gpt2 --algorithms Adam --json
                                                         # the GPT-2-small-like mix, as JSON
    python -m benchmarks.step_time --sets scale-1M,scale-10M,scale-100M --algorithms Adam
                                                         # per-step time as the model grows
    python -m benchmarks.step_time --graphs              # graphs of a torch.compile'd training step
    python -m benchmarks.step_time --compile-latency     # fused=True's first step, cold and warm cache

Every contender runs in this one process, interleaved round by round, so machine noise
hits them alike; the report gives medians, ratios to each anchor, achieved bytes/s and
the fraction of a streaming bandwidth measured in the same run (a large in-place add).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

# Parameter shapes of each set (float32).
SETS = {
    "few-large": [(1024, 1024)] * 8,
    "many-small": [(64, 64)] * 1000,
    # GPT-2 small: token and position embeddings, 12 blocks (attention, MLP, two layer norms), final norm.
    "gpt2": [(50257, 768), (1024, 768)]
    + [
        s
        for _ in range(12)
        for s in [
            (768,),
            (768,),
            (768, 2304),
            (2304,),
            (768, 768),
            (768,),
            (768,),
            (768,),
            (768, 3072),
            (3072,),
            (3072, 768),
            (768,),
        ]
    ]
    + [(768,), (768,)],
    # A 64-32-10 MLP: a step of almost no arithmetic, where per-call overhead is everything.
    "mlp": [(64, 32), (32,), (32, 10), (10,)],
    "tiny": [(16, 16)] * 3,  # for the test suite's smoke run
    # The scaling sets: 1, 10 and 100 tensors of 1M (1024x1024) parameters.
    "scale-1M": [(1024, 1024)],
    "scale-10M": [(1024, 1024)] * 10,
    "scale-100M": [(1024, 1024)] * 100,
}
OPTIONS = {
    "SGD": dict(lr=1e-3, momentum=0.9),
    "Adam": dict(lr=1e-3),
    "AdamW": dict(lr=1e-3),
    "Adamax": dict(lr=1e-3),
    "NAdam": dict(lr=1e-3),
    "RAdam": dict(lr=1e-3),
    "Adagrad": dict(lr=1e-2),
    "RMSprop": dict(lr=1e-3),
    "Adadelta": dict(lr=1.0),
    "ASGD": dict(lr=1e-3),
    "Rprop": dict(lr=1e-3),
}
# State arrays per parameter (as in OPTIONS).  A step reads the parameter, its gradient and its
# state and writes the parameter and state: bytes moved per float32 element.
STATE_ARRAYS = {"SGD": 1, "Adagrad": 1, "RMSprop": 1, "ASGD": 1, "Rprop": 2}
BYTES_PER_ELEMENT = {name: 4 * (3 + 2 * STATE_ARRAYS.get(name, 2)) for name in OPTIONS}
# Algorithms with an optax counterpart for the JAX contenders.
OPTAX = {"SGD", "Adam"}


def _torch_contenders(name: str, shapes, seed: int, only: set[str] | None = None) -> dict[str, Callable[[], None]]:
    """The torch contenders' steps (those named in ``only``, if given: on GPT-2 shapes each holds
    gigabytes, and the machine may not hold all of them at once)."""
    import torch

    import optimizers

    generator = torch.Generator().manual_seed(seed)

    def make(cls, **extra):
        params = [torch.randn(shape, generator=generator, requires_grad=True) for shape in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator) * 1e-3
        optimizer = cls(params, **OPTIONS[name], **extra)
        optimizer.step()  # state created before timing
        return optimizer.step

    reference = getattr(torch.optim, name)
    ours = getattr(optimizers, name)
    fused = _torch_optim_has_fused(name)
    builders = {"ours default": lambda: make(ours), "ours foreach": lambda: make(ours, foreach=True)}
    if fused:
        builders["ours fused"] = lambda: make(ours, fused=True)
        # Parameters, gradients and state as views into one buffer; the gradients stay in place
        # between steps, as backward() accumulates into them after zero_grad(set_to_none=False).
        builders["ours fused bucket_view"] = lambda: make(ours, fused=True, bucket_view=True)
    builders |= {
        "torch.optim for-loop": lambda: make(reference, foreach=False),
        "torch.optim foreach": lambda: make(reference, foreach=True),
    }
    if fused:
        builders["torch.optim fused"] = lambda: make(reference, fused=True)
    return {label: build() for label, build in builders.items() if only is None or label in only}


def _jax_contenders(name: str, shapes, seed: int) -> dict[str, Callable[[], None]]:
    import jax
    import jax.numpy as jnp
    import optax

    import optimizers

    rng = np.random.default_rng(seed)

    def tree():
        return [jnp.asarray(rng.standard_normal(shape, dtype=np.float32)) for shape in shapes]

    grads = [g * 1e-3 for g in tree()]
    ours = getattr(optimizers, name)(tree(), **OPTIONS[name])
    ours.step(grads)

    def ours_step():
        ours.step(grads)
        jax.block_until_ready(ours.params)

    # The object step on raveled parameters, given flat gradients (a loss written over unravel(flat)).
    flat_grads = optimizers.ravel(grads)[0]
    ours_flat = getattr(optimizers, name)(optimizers.ravel(tree())[0], **OPTIONS[name])
    ours_flat.step(flat_grads)

    def ours_flat_step():
        ours_flat.step(flat_grads)
        jax.block_until_ready(ours_flat.params)

    transformation = {
        "SGD": optax.sgd(OPTIONS["SGD"]["lr"], momentum=OPTIONS["SGD"]["momentum"]),
        "Adam": optax.adam(OPTIONS["Adam"]["lr"]),
    }[name]

    def optax_update(params, state, grads):
        updates, state = transformation.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    form = getattr(optimizers, name)(tree(), **OPTIONS[name]).functional()
    # Parameters, state and gradients as one vector per dtype (the gradient of a loss written
    # over ``unravel(flat)`` comes flat): a few long loops instead of one short one per leaf.
    flat_form = getattr(optimizers, name)(tree(), **OPTIONS[name]).functional(flat=True)

    def in_loop_order(update):  # ours: update(grads, state, params)
        return lambda params, state, grads: update(grads, state, params)

    flat_params = flat_form.ravel(tree())[0]
    contenders = {
        "ours jax": ours_step,
        "ours jax program": _program_of(ours, grads),
        "ours jax flat": ours_flat_step,
        "ours jax functional": _donated_loop(form.init, in_loop_order(form.update), tree(), grads),
        "ours jax functional flat": _donated_loop(
            flat_form.init, in_loop_order(flat_form.update), flat_params, flat_grads
        ),
        "optax jit donated": _donated_loop(transformation.init, optax_update, tree(), grads),
    }
    for step in contenders.values():
        step()  # compile before timing
    return contenders


def _donated_loop(init, update, params, grads) -> Callable[[], None]:
    """A training loop's step: ``update(params, state, grads) -> (params, state)`` jitted with
    the parameters and state donated.

    (params, state) go in and come out in the same order, so XLA pairs each donated buffer with
    its own successor (donating our update's own (state, params) argument order would pair new
    params with old moments' buffers and force copies).
    """
    import jax

    box = {"params": params, "state": init(params)}
    step_update = jax.jit(update, donate_argnums=(0, 1))

    def step():
        box["params"], box["state"] = step_update(box["params"], box["state"], grads)
        jax.block_until_ready(box["params"])

    return step


def _torch_optim_has_fused(name: str) -> bool:
    import torch

    return "fused" in getattr(torch.optim, name).__init__.__code__.co_varnames


#: Run in a fresh interpreter: the first three steps of one of our fused optimizers, timed.
_FIRST_STEPS = """
import json, sys, time, torch, optimizers
name, shapes, options = json.loads(sys.argv[1])
generator = torch.Generator().manual_seed(0)
params = [torch.randn(shape, generator=generator, requires_grad=True) for shape in shapes]
for p in params:
    p.grad = torch.randn(p.shape, generator=generator) * 1e-3
optimizer = getattr(optimizers, name)(params, **options, fused=True)
seconds = []
for _ in range(3):
    began = time.perf_counter()
    optimizer.step()
    seconds.append(time.perf_counter() - began)
print(json.dumps(seconds))
"""


def compile_latency(sets: list[str], algorithms: list[str]) -> dict:
    """Seconds of our ``fused=True`` first step (it compiles the plan), per set and algorithm
    with a fused torch.optim counterpart: in a fresh process with an empty Inductor cache
    ("cold"), then in another with the cache the first left ("warm"), beside the third step.
    torch.optim's fused kernels are compiled ahead of time: their first step compiles nothing."""
    import os
    import subprocess
    import tempfile

    results: dict = {}
    for set_name in sets:
        for name in filter(_torch_optim_has_fused, algorithms):
            arguments = json.dumps([name, SETS[set_name], OPTIONS[name]])
            with tempfile.TemporaryDirectory() as cache:
                environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
                cold, warm = (
                    json.loads(
                        subprocess.run(
                            [sys.executable, "-c", _FIRST_STEPS, arguments],
                            capture_output=True,
                            text=True,
                            env=environment,
                            check=True,
                        ).stdout.splitlines()[-1]
                    )
                    for _ in range(2)
                )
            results.setdefault(set_name, {})[name] = {
                "cold_first_step_s": cold[0],
                "warm_first_step_s": warm[0],
                "third_step_s": warm[2],
            }
    return results


def latency_table(results: dict) -> str:
    lines = [
        "ours fused=True: the first step, which compiles (fresh process; empty, then warm Inductor cache)",
        f"  {'set':<11} {'algorithm':<10} {'cold s':>8} {'warm s':>8} {'third step ms':>14}",
    ]
    for set_name, algorithms in results.items():
        for name, figures in algorithms.items():
            cold, warm, third = figures["cold_first_step_s"], figures["warm_first_step_s"], figures["third_step_s"]
            lines.append(f"  {set_name:<11} {name:<10} {cold:>8.2f} {warm:>8.2f} {1e3 * third:>14.3f}")
    return "\n".join(lines)


def _program_of(optimizer, grads) -> Callable[[], None]:
    """The compiled program of ``optimizer.step(grads)`` alone, called with its own copies of
    the arguments the step gave it: ``ours jax`` less this is the step's time in Python."""
    import jax
    import jax.numpy as jnp

    from backends import jax_buckets, jax_functional

    compiled, captured = jax_functional.step, {}

    def capture(rule, layout, *arrays):  # the static arguments, then the arrays (some donated)
        captured["static"] = rule, layout
        captured["arrays"] = jax.tree_util.tree_map(
            lambda a: jnp.array(a, copy=True) if isinstance(a, jax.Array) else a, arrays
        )
        return compiled(rule, layout, *arrays)

    jax_functional.step = capture
    try:
        optimizer.step(grads)
    finally:
        jax_functional.step = compiled
    rule, layout = captured["static"]
    numbers, values, step_grads, arrays, counters, flats = captured["arrays"]
    box = {"values": values, "arrays": arrays, "flats": flats}
    # The step returns every parameter's new value; it takes those of the parameters in no bucket.
    loose = [jax_buckets.loose(len(sharing), buckets) for _, sharing, buckets in layout]

    def program():
        new_values, box["arrays"], _, box["flats"] = compiled(
            rule, layout, numbers, box["values"], step_grads, box["arrays"], counters, box["flats"]
        )
        box["values"] = [[group[i] for i in indices] for group, indices in zip(new_values, loose)]
        jax.block_until_ready(new_values)

    return program


def streaming_bandwidth(elements: int, repeats: int) -> float:
    """Bytes/s of ``a += b`` on float32 arrays of ``elements`` (reads a and b, writes a)."""
    import torch

    a, b = torch.ones(elements), torch.ones(elements)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        a.add_(b)
        times.append(time.perf_counter() - began)
    return 12 * elements / statistics.median(times)


def allocated_per_step(step: Callable[[], None]) -> int:
    """Bytes the operations of one call of a torch ``step`` newly allocate (the profiler's count).

    It bounds the step's peak extra memory from above: temporaries freed within the step are
    counted as if they were all held at once.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiled:
        step()
    return sum(max(event.self_cpu_memory_usage, 0) for event in profiled.events())


def kept_bytes(step: Callable[[], None]) -> int:
    """Bytes of the workspaces a planned torch step keeps between steps (``step`` is the
    optimizer's bound ``step``)."""
    workspaces = step.__self__._backend_memory.get("workspaces")
    return 0 if workspaces is None else sum(t.numel() * t.element_size() for t in workspaces.flat.values())


def measure(contenders: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each contender, interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, step in contenders.items():
            began = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - began)
    return {name: statistics.median(values) for name, values in times.items()}


def run(
    sets: list[str], algorithms: list[str], rounds: int, jax_too: bool = True, only: set[str] | None = None
) -> dict:
    import torch

    report = {"machine": {"threads": torch.get_num_threads(), "torch": torch.__version__}, "results": []}
    if jax_too:
        import jax

        report["machine"]["jax"] = jax.__version__
    for set_name in sets:
        shapes = SETS[set_name]
        elements = sum(int(np.prod(shape)) for shape in shapes)
        # Arrays of at least 256 MB, far past the caches: the bandwidth of main memory.
        bandwidth = streaming_bandwidth(max(elements, 1 << 26), max(rounds, 5))
        for algorithm in algorithms:
            torch_side = _torch_contenders(algorithm, shapes, 0, only)
            jax_side = _jax_contenders(algorithm, shapes, 0) if jax_too and algorithm in OPTAX else {}
            jax_side = {label: step for label, step in jax_side.items() if only is None or label in only}
            contenders = {**torch_side, **jax_side}
            medians = measure(contenders, rounds)
            allocated = {name: allocated_per_step(step) for name, step in torch_side.items()}
            kept = {name: kept_bytes(step) for name, step in torch_side.items() if name.startswith("ours")}
            moved = BYTES_PER_ELEMENT[algorithm] * elements
            anchors = {k: v for k, v in medians.items() if not k.startswith("ours")}
            if "ours jax program" in medians:  # the per-step breakdown: Python, then the program
                report.setdefault("jax_step_breakdown_s", []).append(
                    {
                        "set": set_name,
                        "algorithm": algorithm,
                        "python": medians["ours jax"] - medians["ours jax program"],
                        "program": medians["ours jax program"],
                    }
                )
            report["results"].append(
                {
                    "set": set_name,
                    "algorithm": algorithm,
                    "parameters": elements,
                    "tensors": len(shapes),
                    "stream_bytes_per_s": bandwidth,
                    "contenders": {
                        name: {
                            "median_s": seconds,
                            "bytes_per_s": moved / seconds,
                            "fraction_of_stream": moved / seconds / bandwidth,
                            "allocated_bytes_per_step": allocated.get(name),  # torch contenders only
                            "workspace_bytes": kept.get(name),  # ours on torch: buffers kept between steps
                            "ratio_to": {
                                anchor: seconds / anchor_seconds for anchor, anchor_seconds in anchors.items()
                            },
                        }
                        for name, seconds in medians.items()
                    },
                }
            )
    return report


def table(report: dict) -> str:
    lines = []
    for result in report["results"]:
        lines.append(
            f"{result['algorithm']} on {result['set']}: {result['parameters']:,} float32 parameters in "
            f"{result['tensors']} tensors; stream {result['stream_bytes_per_s'] / 1e9:.1f} GB/s"
        )
        anchors = [k for k in result["contenders"] if not k.startswith("ours")]
        lines.append(
            f"  {'contender':<22} {'median ms':>10} {'GB/s':>7} {'of stream':>9} {'MB alloc':>9} {'MB kept':>8}  "
            + "  ".join(f"{'÷ ' + a:>22}" for a in anchors)
        )
        for name, c in result["contenders"].items():
            ratios = "  ".join(f"{c['ratio_to'][a]:>22.2f}" for a in anchors)
            allocated = c["allocated_bytes_per_step"]
            allocated = "-" if allocated is None else f"{allocated / 1e6:.2f}"
            kept = "-" if c.get("workspace_bytes") is None else f"{c['workspace_bytes'] / 1e6:.2f}"
            lines.append(
                f"  {name:<22} {1e3 * c['median_s']:>10.3f} {c['bytes_per_s'] / 1e9:>7.2f} "
                f"{c['fraction_of_stream']:>9.0%} {allocated:>9} {kept:>8}  {ratios}"
            )
        lines.append("")
    for breakdown in report.get("jax_step_breakdown_s", []):
        lines.append(
            f"ours jax {breakdown['algorithm']} on {breakdown['set']}: {1e3 * breakdown['python']:.3f} ms of "
            f"Python per step beside its {1e3 * breakdown['program']:.3f} ms program"
        )
    return "\n".join(lines + scaling_table(report))


def scaling_table(report: dict) -> list[str]:
    """Per algorithm, each contender's median step time across the sets of the run, in
    parameter order, and the growth factor from one set to the next beside the growth of
    the parameter count (linear scaling: equal factors)."""
    lines = []
    for algorithm in dict.fromkeys(r["algorithm"] for r in report["results"]):
        results = sorted((r for r in report["results"] if r["algorithm"] == algorithm), key=lambda r: r["parameters"])
        if len(results) < 2 or len({r["parameters"] for r in results}) < len(results):
            continue
        sizes = [r["parameters"] for r in results]
        growth = "  ".join(f"x{b / a:>6.1f}" for a, b in zip(sizes, sizes[1:]))
        lines.append(
            f"{algorithm} scaling: ms per step at "
            + ", ".join(f"{n:,}" for n in sizes)
            + f" parameters (growth {growth})"
        )
        for name in results[0]["contenders"]:
            times = [1e3 * r["contenders"][name]["median_s"] for r in results]
            factors = "  ".join(f"x{b / a:>6.1f}" for a, b in zip(times, times[1:]))
            lines.append(f"  {name:<22} " + " ".join(f"{t:>10.3f}" for t in times) + f"   {factors}")
        lines.append("")
    return lines


def compiled_step_graphs(algorithms: list[str], steps: int = 4) -> dict[str, dict[str, dict[str, int]]]:
    """Graphs, graph breaks and recompilations over ``steps`` steps of a ``torch.compile``'d
    training step (model, loss, backward, ``opt.step()``, ``zero_grad``) and of
    ``torch.compile(opt.step)`` alone, ours against torch.optim.

    The model has 10 parameters, past Dynamo's recompile limit (8) if anything were keyed by a
    parameter's identity.
    """
    import warnings

    import torch
    from torch._dynamo.utils import counters

    import optimizers

    results: dict = {}
    for name in algorithms:
        for label, cls in (("ours", getattr(optimizers, name)), ("torch.optim", getattr(torch.optim, name))):
            for mode in ("training step", "opt.step"):
                torch._dynamo.reset()
                counters.clear()
                torch.manual_seed(0)
                model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(5)])
                optimizer = cls(model.parameters(), **OPTIONS[name])
                data = torch.randn(4, 8)
                step = optimizer.step if mode == "training step" else torch.compile(optimizer.step)

                # Compiled and run within this iteration: the loop variables it reads are this iteration's.
                def train_step():
                    model(data).square().mean().backward()  # noqa: B023
                    step()  # noqa: B023
                    optimizer.zero_grad()  # noqa: B023

                train = torch.compile(train_step) if mode == "training step" else train_step
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for _ in range(steps):
                        train()
                results.setdefault(name, {}).setdefault(mode, {})[label] = {
                    "graphs": int(counters["stats"]["unique_graphs"]),
                    "graph_breaks": int(sum(counters["graph_break"].values())),
                    "recompiles": int(sum(counters["recompiles"].values())),
                }
    torch._dynamo.reset()
    return results


def graphs_table(results: dict) -> str:
    lines = [
        "torch.compile over 4 steps (a model of 10 parameters)",
        f"  {'algorithm':<10} {'compiled':<14} {'contender':<12} {'graphs':>7} {'breaks':>7} {'recompiles':>11}",
    ]
    for name, modes in results.items():
        for mode, sides in modes.items():
            for label, figures in sides.items():
                lines.append(
                    f"  {name:<10} {mode:<14} {label:<12} {figures['graphs']:>7} {figures['graph_breaks']:>7} "
                    f"{figures['recompiles']:>11}"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_time", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="few-large,many-small", help=f"comma-separated, from {', '.join(SETS)}")
    parser.add_argument("--algorithms", default="SGD,Adam", help=f"comma-separated, from {', '.join(OPTIONS)}; or all")
    parser.add_argument("--no-jax", action="store_true", help="torch contenders only")
    parser.add_argument("--graphs", action="store_true", help="count a compiled training step's graphs instead")
    parser.add_argument(
        "--compile-latency", action="store_true", help="time fused=True's first step (cold and warm cache) instead"
    )
    parser.add_argument(
        "--contenders", help="comma-separated contenders to run (e.g. 'ours fused,torch.optim fused'); default all"
    )
    parser.add_argument("--rounds", type=int, default=30, help="timed steps per contender (default 30)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    sets = args.sets.split(",")
    algorithms = list(OPTIONS) if args.algorithms == "all" else args.algorithms.split(",")
    for value, valid, what in ((sets, SETS, "set"), (algorithms, OPTIONS, "algorithm")):
        unknown = [v for v in value if v not in valid]
        if unknown:
            parser.error(f"unknown {what} {unknown[0]!r}; choose from {', '.join(valid)}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.graphs:
        results = compiled_step_graphs(algorithms)
        print(json.dumps(results, indent=2) if args.json else graphs_table(results))
        return 0
    if args.compile_latency:
        latencies = compile_latency(sets, algorithms)
        print(json.dumps(latencies, indent=2) if args.json else latency_table(latencies))
        return 0
    only = None if args.contenders is None else set(args.contenders.split(","))
    report = run(sets, algorithms, args.rounds, jax_too=not args.no_jax, only=only)
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
