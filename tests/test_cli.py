"""``python -m optimizers`` end to end, on a few steps: tables, JSON, CSV, the picture, bad arguments."""

from __future__ import annotations

import csv
import io
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from optimizers.cli import main
from optimizers.cli.plot import figure_pixels
from optimizers.cli.problems import PROBLEM_NAMES
from optimizers.cli.report import Divergence
from optimizers.cli.runs import CONFIGURATIONS, Run

FEW = ["--steps", "4", "--optimizers", "sgd,momentum,adam", "--problem", "rosenbrock,digits"]


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as file:
        header = file.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", header[16:24])


def run_json(capsys, *arguments) -> dict:
    assert main(["compare", "--json", *arguments]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_holds_every_problem_optimizer_and_implementation(capsys):
    report = run_json(capsys, *FEW)
    assert report["schema_version"] == 1
    assert report["settings"]["steps"] == 4 and report["settings"]["dtype"] == "float32"
    assert [problem["name"] for problem in report["problems"]] == ["rosenbrock", "digits"]
    for problem in report["problems"]:
        assert [row["optimizer"] for row in problem["results"]] == ["SGD", "Momentum", "Adam"]
        for row in problem["results"]:
            for field in ("final_loss", "steps_to_target", "median_step_seconds"):
                assert set(row[field]) == {"torch.optim", "torch", "jax"}
            assert all(seconds > 0 for seconds in row["median_step_seconds"].values())
            # The torch backend is bitwise torch.optim, so their runs cannot differ at all.
            assert row["divergence"]["torch_vs_torch_optim"] == {"absolute": 0.0, "ulps": 0.0}
            assert row["final_loss"]["torch"] == row["final_loss"]["torch.optim"]
            jax_vs_torch = row["divergence"]["jax_vs_torch"]
            assert 0 <= jax_vs_torch["absolute"] < 1e-5 and jax_vs_torch["ulps"] < 100
            assert row["final_loss"]["jax"] == pytest.approx(row["final_loss"]["torch"], rel=1e-5)


def test_float64_runs_agree_more_closely_than_float32(capsys):
    arguments = ["--steps", "6", "--optimizers", "adam", "--problem", "beale"]
    divergence = {
        dtype: run_json(capsys, *arguments, "--dtype", dtype)["problems"][0]["results"][0]["divergence"]["jax_vs_torch"]
        for dtype in ("float32", "float64")
    }
    assert divergence["float64"]["absolute"] < 1e-12
    assert divergence["float32"]["absolute"] >= divergence["float64"]["absolute"]


def test_backend_choice_runs_only_that_backend(capsys):
    report = run_json(capsys, "--steps", "2", "--optimizers", "sgd", "--problem", "quadratic", "--backend", "jax")
    row = report["problems"][0]["results"][0]
    assert set(row["final_loss"]) == {"torch.optim", "jax"}
    assert row["divergence"] == {"torch_vs_torch_optim": None, "jax_vs_torch": None}


def test_lr_option_overrides_the_tuned_rates(capsys):
    report = run_json(capsys, "--steps", "2", "--optimizers", "sgd,adam", "--problem", "beale", "--lr", "0.0")
    for row in report["problems"][0]["results"]:
        assert row["lr"] == 0.0
        assert row["steps_to_target"]["torch"] is None  # lr 0 never moves from the start


def test_seed_changes_the_network_and_the_noise(capsys):
    arguments = ["--steps", "2", "--optimizers", "sgd", "--problem", "quadratic,digits"]
    losses = [
        [
            problem["results"][0]["final_loss"]["torch"]
            for problem in run_json(capsys, *arguments, "--seed", seed)["problems"]
        ]
        for seed in ("0", "1")
    ]
    assert losses[0][0] != losses[1][0] and losses[0][1] != losses[1][1]


def test_table_has_a_row_per_optimizer_with_every_column(capsys):
    assert main(["compare", *FEW]) == 0
    output = capsys.readouterr().out
    blocks = output.strip().split("\n\n")
    assert len(blocks) == 2
    for block, title in zip(blocks, ("Rosenbrock", "Handwritten digits")):
        lines = block.splitlines()
        assert lines[0].startswith(title)
        header = lines[4].split("  ")
        assert "optimizer" in lines[4] and "µs/step" in lines[4]
        rows = lines[5:]
        assert [row.split()[0] for row in rows] == ["SGD", "Momentum", "Adam"]
        for row in rows:
            cells = row.split()
            float(cells[1])  # lr
            losses = [float(cell) for cell in cells[2:5]]
            assert losses[0] == losses[1]
            assert cells[6] == "0"  # torch backend vs torch.optim
            assert len(cells[-1].split("/")) == 3  # step times of torch.optim, torch and jax
        assert header[0] == "optimizer"


def test_csv_has_a_line_per_problem_optimizer_and_implementation(capsys):
    assert main(["compare", "--csv", *FEW]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2 * 3 * 3
    for row in rows:
        assert row["reference"] == {"torch.optim": "", "torch": "torch.optim", "jax": "torch"}[row["implementation"]]
        if row["implementation"] == "torch":
            assert float(row["max_abs_diff_vs_reference"]) == 0.0
        float(row["final_loss"]) and float(row["median_step_seconds"])


@pytest.mark.parametrize("problems", [["rosenbrock"], ["rosenbrock", "beale", "quadratic"], list(PROBLEM_NAMES)])
def test_plot_writes_a_png_of_the_expected_size(tmp_path, capsys, problems):
    out = tmp_path / "paths.png"
    arguments = ["plot", "--steps", "3", "--optimizers", "sgd,adam", "--problem", ",".join(problems), "--out", str(out)]
    assert main(arguments) == 0
    assert out.stat().st_size > 10_000
    assert png_size(out) == figure_pixels(len(problems))
    assert capsys.readouterr().out.strip() == f"wrote {out}"


def test_no_subcommand_compares_and_draws(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--steps", "2", "--optimizers", "nesterov", "--problem", "beale"]) == 0
    output = capsys.readouterr().out
    assert output.startswith("Beale") and output.rstrip().endswith("wrote optimizers.png")
    assert png_size(tmp_path / "optimizers.png") == figure_pixels(1)


def test_names_are_case_insensitive_and_deduplicated(capsys):
    report = run_json(capsys, "--steps", "1", "--optimizers", "ADAM,adam,Sgd", "--problem", "BEALE")
    assert [row["optimizer"] for row in report["problems"][0]["results"]] == ["Adam", "SGD"]


@pytest.mark.parametrize(
    "arguments, named",
    [
        (["--optimizers", "sgd,nadamw"], ["'nadamw'", "SGD", "Adadelta"]),
        (["--optimizers", ","], ["no optimizer", "SGD"]),
        (["--problem", "himmelblau"], ["'himmelblau'", "rosenbrock", "digits"]),
        (["--steps", "-5"], ["--steps", "-5"]),
        (["--steps", "0"], ["--steps", "0"]),
        (["--steps", "ten"], ["'ten'"]),
        (["--seed", "-1"], ["--seed", "-1"]),
        (["--lr", "-0.1"], ["-0.1", "Invalid learning rate"]),
        (["--lr", "nan", "--optimizers", "adam"], ["nan", "Adam"]),
        (["--dtype", "float16"], ["'float16'", "float32", "float64"]),
        (["--backend", "numpy"], ["'numpy'", "torch", "jax"]),
        (["plot", "--out", "/no/such/folder/x.png"], ["/no/such/folder"]),
        (["plot", "--out", "picture.jpg"], ["picture.jpg", ".png"]),
        (["compare", "--json", "--csv"], ["--csv", "--json"]),
        (["draw"], ["'draw'", "compare", "plot"]),
    ],
)
def test_bad_arguments_exit_2_with_one_line_naming_them(capsys, arguments, named):
    with pytest.raises(SystemExit) as exited:
        main(arguments)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "error" in lines[0]
    for text in named:
        assert text in lines[0]


@pytest.mark.parametrize("command", [[], ["compare"], ["plot"]])
def test_help_describes_every_option(capsys, command):
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in (
        []
        if not command
        else ["--optimizers", "--problem", "--steps", "--lr", "--dtype", "--backend", "--seed", "--out"]
    ):
        assert option in text
    if not command:
        assert "compare" in text and "plot" in text


def test_module_runs_as_a_program_and_fails_cleanly(tmp_path):
    finished = subprocess.run(
        [sys.executable, "-m", "optimizers", "--steps", "2", "--optimizers", "sgd", "--problem", "rosenbrock"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    assert "Rosenbrock" in finished.stdout and (tmp_path / "optimizers.png").exists()
    assert finished.stderr == ""  # no progress bar when stderr is not a terminal
    bad = subprocess.run(
        [sys.executable, "-m", "optimizers", "--optimizers", "nadamw"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_installed_console_script_is_the_same_program():
    from importlib.metadata import entry_points

    (script,) = [entry for entry in entry_points(group="console_scripts") if entry.name == "optimizers"]
    assert script.load() is main


def run_with_path(path, implementation="jax") -> Run:
    path = np.asarray(path)
    return Run(implementation, np.zeros(len(path)), path, np.ones(len(path) - 1))


def test_divergence_counts_ulps_at_the_parameters_scale():
    one_ulp = np.spacing(np.float32(2.0))
    reference = run_with_path(np.array([[2.0, 0.0], [2.0, 1e-30]], np.float32))
    shifted = run_with_path(np.array([[2.0, 0.0], [2.0 + 3 * one_ulp, 1e-30]], np.float32))
    found = Divergence.between(shifted, reference)
    assert found.absolute == pytest.approx(3 * one_ulp) and found.ulps == 3
    # Near zero floats are dense; measured at the scale of 2.0 the tiny difference is a fraction of an ulp.
    near_zero = run_with_path(np.array([[2.0, 0.0], [2.0, 2e-30]], np.float32))
    assert Divergence.between(near_zero, reference).ulps < 1e-20


def test_divergence_of_equal_nonfinite_paths_is_zero_and_of_a_nan_infinite():
    reference = run_with_path(np.array([[1.0, np.inf], [np.nan, np.inf]]))
    assert Divergence.between(run_with_path(reference.path.copy()), reference) == Divergence(0.0, 0.0)
    diverged = run_with_path(np.array([[1.0, np.inf], [1.0, np.inf]]))
    assert Divergence.between(diverged, reference) == Divergence(np.inf, np.inf)


def test_steps_to_target_is_the_first_iterate_at_or_below_it():
    run = Run("torch", np.array([5.0, 2.0, 1.0, 0.5, 1.5]), np.zeros((5, 1)), np.ones(4))
    assert run.steps_to(1.0) == 2 and run.steps_to(0.5) == 3 and run.steps_to(0.1) is None


def test_every_configuration_has_a_tuned_rate_on_every_problem():
    from optimizers.cli.problems import problems

    for problem in problems(list(PROBLEM_NAMES), seed=0, steps=1):
        assert set(problem.learning_rates) == set(CONFIGURATIONS)


def test_a_difference_below_one_ulp_at_the_scale_is_not_printed_as_zero():
    from optimizers.cli.report import _divergence

    assert _divergence(Divergence(3e-8, 0.25)) == "3.0e-08 (0.25 ulps)"
    assert _divergence(Divergence(1.2e-7, 1.0)) == "1.2e-07 (1 ulp)"
    assert _divergence(Divergence(0.0, 0.0)) == "0"
