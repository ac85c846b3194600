"""Turning runs into comparisons: divergence in absolute terms and in ulps, tables, JSON and CSV."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from typing import Any

import numpy as np

from .problems import Problem
from .runs import Run

SCHEMA_VERSION = 1


@dataclasses.dataclass
class Divergence:
    """The largest difference between two runs' parameters over all iterates.

    ``ulps`` counts it in units of the last place at the parameters' scale: the spacing of
    floats around the largest parameter magnitude of the reference run at that step.  A plain
    per-element ulp count would be dominated by parameters passing near zero, where floats
    are dense and any difference is millions of ulps.
    """

    absolute: float
    ulps: float

    @classmethod
    def between(cls, run: Run, reference: Run) -> Divergence:
        a, b = run.path, reference.path
        with np.errstate(invalid="ignore", over="ignore"):
            difference = np.abs(a - b)
            # Equal infinities and NaN against NaN are no divergence; NaN against a number is total.
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            difference = np.where(same, 0.0, np.where(np.isnan(difference), np.inf, difference)).max(axis=1)
            scale = np.nan_to_num(np.abs(b), nan=0.0).max(axis=1)
            ulps = np.where(difference == 0, 0.0, difference / np.spacing(scale.astype(b.dtype)))
        ulps = np.where(np.isnan(ulps), np.inf, ulps)
        return cls(float(difference.max()), float(ulps.max()))


@dataclasses.dataclass
class Row:
    """One optimizer on one problem: every implementation's run and how far apart they are."""

    optimizer: str
    lr: float
    runs: dict[str, Run]

    def divergence(self, a: str, b: str) -> Divergence | None:
        if a in self.runs and b in self.runs:
            return Divergence.between(self.runs[a], self.runs[b])
        return None

    def record(self, problem: Problem) -> dict[str, Any]:
        def per_implementation(value):
            return {name: value(run) for name, run in self.runs.items()}

        def divergence(a, b):
            found = self.divergence(a, b)
            return None if found is None else dataclasses.asdict(found)

        return {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "final_loss": per_implementation(lambda run: _finite_or_none(run.losses[-1])),
            "steps_to_target": per_implementation(lambda run: run.steps_to(problem.target)),
            "median_step_seconds": per_implementation(lambda run: float(np.median(run.step_seconds))),
            "divergence": {
                "torch_vs_torch_optim": divergence("torch", "torch.optim"),
                "jax_vs_torch": divergence("jax", "torch"),
            },
        }


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def to_json(settings: dict[str, Any], results: list[tuple[Problem, list[Row]]]) -> str:
    return json.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "settings": settings,
            "problems": [
                {
                    "name": problem.name,
                    "title": problem.title,
                    "target_loss": problem.target,
                    "results": [row.record(problem) for row in rows],
                }
                for problem, rows in results
            ],
        },
        indent=2,
    )


CSV_COLUMNS = (
    "problem",
    "optimizer",
    "implementation",
    "lr",
    "final_loss",
    "steps_to_target",
    "median_step_seconds",
    "max_abs_diff_vs_reference",
    "max_ulps_vs_reference",
    "reference",
)
REFERENCES = {"torch": "torch.optim", "jax": "torch"}


def to_csv(results: list[tuple[Problem, list[Row]]]) -> str:
    """One line per problem, optimizer and implementation; each of ours is compared with its reference."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for problem, rows in results:
        for row in rows:
            for name, run in row.runs.items():
                reference = REFERENCES.get(name)
                found = row.divergence(name, reference) if reference else None
                writer.writerow(
                    [
                        problem.name,
                        row.optimizer,
                        name,
                        row.lr,
                        run.losses[-1],
                        run.steps_to(problem.target),
                        float(np.median(run.step_seconds)),
                        "" if found is None else found.absolute,
                        "" if found is None else found.ulps,
                        reference if found is not None else "",
                    ]
                )
    return out.getvalue()


def _steps_to(run: Run | None, target: float) -> str:
    if run is None:
        return "—"
    reached = run.steps_to(target)
    return "-" if reached is None else str(reached)


def _loss(value: float) -> str:
    return f"{value:.4g}" if np.isfinite(value) else str(value)


def _divergence(found: Divergence | None) -> str:
    if found is None:
        return "n/a"
    if found.absolute == 0:
        return "0"
    if not np.isfinite(found.ulps):
        ulps = "inf"
    else:  # below one ulp at the parameters' scale: the difference sits in a smaller parameter
        ulps = f"{found.ulps:.2g}" if found.ulps < 10 else f"{found.ulps:.0f}"
    return f"{found.absolute:.1e} ({ulps} ulp{'' if found.ulps == 1 else 's'})"


def table(problem: Problem, rows: list[Row], steps: int, dtype: str) -> str:
    """The human-readable comparison of one problem."""
    names = [name for name in ("torch.optim", "torch", "jax") if any(name in row.runs for row in rows)]
    together = "/".join(names)
    header = [
        "optimizer",
        "lr",
        *(f"loss {name}" for name in names),
        f"steps to ≤{problem.target:g}",
        "Δ torch vs torch.optim",
        "Δ jax vs torch",
        "µs/step",
    ]
    body = []
    for row in rows:
        # An algorithm torch.optim does not have has no torch.optim run: "—" in its place.
        runs = [row.runs.get(name) for name in names]
        body.append(
            [
                row.optimizer,
                f"{row.lr:g}",
                *("—" if run is None else _loss(run.losses[-1]) for run in runs),
                "/".join(_steps_to(run, problem.target) for run in runs),
                _divergence(row.divergence("torch", "torch.optim")),
                _divergence(row.divergence("jax", "torch")),
                "/".join("—" if run is None else f"{1e6 * np.median(run.step_seconds):.0f}" for run in runs),
            ]
        )
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        f"{problem.title}: {steps} steps in {dtype}",
        f"  loss: after the last step. steps: until the loss first reached {problem.target:g} ({together}).",
        "  Δ: largest parameter difference over the run, absolute (and in ulps at the parameters' scale).",
        f"  µs/step: median time of one optimizer.step() ({together}).",
    ]
    for line in [header, *body]:
        cells = [
            cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(line, widths))
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)
