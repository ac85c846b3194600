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
        torch_side = {"ours torch", "ours torch fused", "torch.optim for-loop", "torch.optim foreach", "torch.optim fused"}
        expected = torch_side | {"ours jax", "ours jax functional", "optax jit donated"}
        assert set(contenders) == expected
        for name, figures in contenders.items():
            assert figures["median_s"] > 0 and figures["bytes_per_s"] > 0
            assert set(figures["ratio_to"]) == {k for k in expected if not k.startswith("ours")}
            if not name.startswith("ours"):
                assert figures["ratio_to"][name] == 1.0
            assert (figures["allocated_bytes_per_step"] is None) == (name not in torch_side)
        # The eager rule allocates its intermediates; the fused step gathers into buffers it keeps.
        allocated = {name: contenders[name]["allocated_bytes_per_step"] for name in torch_side}
        assert allocated["ours torch fused"] < allocated["ours torch"]


def test_the_table_names_each_set_and_contender(capsys):
    assert step_time.main(["--sets", "tiny", "--algorithms", "SGD", "--rounds", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("SGD on tiny: 768 float32 parameters in 3 tensors")
    assert "optax jit donated" in text and "torch.optim fused" in text


def test_the_scaling_table_follows_each_contender_across_sizes(capsys):
    assert step_time.main(["--sets", "scale-1M,tiny", "--algorithms", "SGD", "--rounds", "1"]) == 0
    text = capsys.readouterr().out
    scaling = text[text.index("SGD scaling: ms per step at 768, 1,048,576 parameters (growth x1365.3)"):]
    for contender in ("ours torch", "ours jax", "torch.optim fused", "optax jit donated"):
        assert f"\n  {contender} " in scaling
