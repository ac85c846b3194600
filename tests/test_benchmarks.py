"""A tiny run of the benchmark program, so it never rots.  No timing is asserted: machines are noisy."""

import json

from benchmarks import step_time


def test_the_benchmark_reports_every_contender_against_every_anchor(capsys):
    assert step_time.main(["--sets", "tiny", "--algorithms", "SGD,Adam", "--rounds", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(r["set"], r["algorithm"]) for r in report["results"]] == [("tiny", "SGD"), ("tiny", "Adam")]
    for result in report["results"]:
        assert result["parameters"] == 3 * 16 * 16 and result["stream_bytes_per_s"] > 0
        contenders = result["contenders"]
        torch_side = {
            "ours default",
            "ours foreach",
            "ours fused",
            "ours fused bucket_view",
            "torch.optim for-loop",
            "torch.optim foreach",
            "torch.optim fused",
        }
        expected = torch_side | {
            "ours jax",
            "ours jax program",
            "ours jax flat",
            "ours jax functional",
            "ours jax functional flat",
            "optax jit donated",
        }
        assert set(contenders) == expected
        for name, figures in contenders.items():
            assert figures["median_s"] > 0 and figures["bytes_per_s"] > 0
            assert set(figures["ratio_to"]) == {k for k in expected if not k.startswith("ours")}
            if not name.startswith("ours"):
                assert figures["ratio_to"][name] == 1.0
            assert (figures["allocated_bytes_per_step"] is None) == (name not in torch_side)
        # The planned default step and the fused step keep their buffers between steps (less
        # than one parameter's worth is allocated); Adam's for-loop allocates its temporaries.
        allocated = {name: contenders[name]["allocated_bytes_per_step"] for name in torch_side}
        assert all(allocated[name] < 16 * 16 * 4 for name in ("ours default", "ours fused", "ours fused bucket_view"))
        if result["algorithm"] == "Adam":
            assert allocated["torch.optim for-loop"] >= 16 * 16 * 4
    breakdown = {(b["set"], b["algorithm"]): b for b in report["jax_step_breakdown_s"]}
    assert set(breakdown) == {("tiny", "SGD"), ("tiny", "Adam")}
    for (_, algorithm), figures in breakdown.items():
        result = next(r for r in report["results"] if r["algorithm"] == algorithm)
        assert figures["program"] == result["contenders"]["ours jax program"]["median_s"]
        assert figures["python"] == result["contenders"]["ours jax"]["median_s"] - figures["program"]


def test_the_table_names_each_set_and_contender(capsys):
    assert step_time.main(["--sets", "tiny", "--algorithms", "SGD", "--rounds", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("SGD on tiny: 768 float32 parameters in 3 tensors")
    assert "optax jit donated" in text and "torch.optim fused" in text


def test_the_scaling_table_follows_each_contender_across_sizes(capsys):
    assert step_time.main(["--sets", "scale-1M,tiny", "--algorithms", "SGD", "--rounds", "1"]) == 0
    text = capsys.readouterr().out
    scaling = text[text.index("SGD scaling: ms per step at 768, 1,048,576 parameters (growth x1365.3)") :]
    for contender in ("ours default", "ours foreach", "ours jax", "torch.optim fused", "optax jit donated"):
        assert f"\n  {contender} " in scaling


def test_only_the_chosen_contenders_are_built_and_timed(capsys):
    chosen = {"ours fused bucket_view", "torch.optim fused", "optax jit donated"}
    arguments = ["--sets", "tiny", "--algorithms", "Adam", "--rounds", "1", "--json", "--contenders"]
    assert step_time.main([*arguments, ",".join(sorted(chosen))]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert set(result["contenders"]) == chosen


def test_every_planned_algorithm_is_a_contender_without_jax(capsys):
    assert step_time.main(["--sets", "tiny", "--algorithms", "all", "--rounds", "1", "--no-jax", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["algorithm"] for r in report["results"]] == list(step_time.OPTIONS)
    for result in report["results"]:
        assert {"ours default", "ours foreach", "torch.optim for-loop", "torch.optim foreach"} <= set(
            result["contenders"]
        )


def test_the_compiled_step_graph_count_is_reported(capsys):
    assert step_time.main(["--graphs", "--algorithms", "SGD", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results["SGD"]) == {"training step", "opt.step"}
    for sides in results["SGD"].values():
        assert set(sides) == {"ours", "torch.optim"} and all(figures["graphs"] >= 1 for figures in sides.values())


def test_the_first_fused_step_is_timed_cold_and_warm(capsys):
    assert step_time.main(["--compile-latency", "--sets", "tiny", "--algorithms", "SGD,Rprop", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert list(results) == ["tiny"] and list(results["tiny"]) == ["SGD"]  # torch.optim's Rprop has no fused
    figures = results["tiny"]["SGD"]
    assert set(figures) == {"cold_first_step_s", "warm_first_step_s", "third_step_s"}
    assert all(seconds > 0 for seconds in figures.values())


def test_the_jax_program_contender_calls_the_program_the_step_compiled():
    """``ours jax program`` steps again with the arguments of the step's own program, whose values
    are those of parameters in no bucket (here a large one between two small ones): no new
    compilation, no mismatched shapes."""
    from backends import jax_functional

    contenders = step_time._jax_contenders("Adam", [(8,), (256, 128), (8,)], seed=0)
    compiled = jax_functional.step._cache_size()
    for _ in range(2):
        contenders["ours jax program"]()
    assert jax_functional.step._cache_size() == compiled
