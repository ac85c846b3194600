"""``python -m optimizers``: every optimizer on torch.optim and both backends, compared and drawn.

python -m optimizers                      # compare everything, write optimizers.png
python -m optimizers compare --json       # the comparison for machines
python -m optimizers plot --problem rosenbrock --optimizers sgd,momentum,adam --out paths.png
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from .problems import PROBLEM_NAMES
from .runs import CONFIGURATIONS

DEFAULT_PICTURE = "optimizers.png"
DEFAULT_STEPS = 300


class _Parser(argparse.ArgumentParser):
    """Bad arguments end in one line naming the bad value and exit status 2, never a traceback."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _choice_list(valid: tuple[str, ...], what: str):
    """A comma-separated list of names from ``valid``, matched case-insensitively, in the order given."""
    by_lower = {name.lower(): name for name in valid}

    def parse(text: str) -> list[str]:
        chosen = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            if item.lower() not in by_lower:
                raise argparse.ArgumentTypeError(f"unknown {what} {item!r}; choose from {', '.join(valid)}")
            if by_lower[item.lower()] not in chosen:
                chosen.append(by_lower[item.lower()])
        if not chosen:
            raise argparse.ArgumentTypeError(f"no {what} given; choose from {', '.join(valid)}")
        return chosen

    return parse


def _whole_number(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _picture_path(text: str) -> str:
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: no folder {folder!r}")
    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a .png file name")
    return text


def _options() -> _Parser:
    """The options every subcommand shares."""
    shared = _Parser(add_help=False)
    shared.add_argument(
        "--optimizers",
        type=_choice_list(tuple(CONFIGURATIONS), "optimizer"),
        default=list(CONFIGURATIONS),
        metavar="NAMES",
        help=f"comma-separated, from: {', '.join(CONFIGURATIONS)} (default: all)",
    )
    shared.add_argument(
        "--problem",
        type=_choice_list(PROBLEM_NAMES, "problem"),
        default=list(PROBLEM_NAMES),
        metavar="NAMES",
        help=f"comma-separated, from: {', '.join(PROBLEM_NAMES)} (default: all)",
    )
    shared.add_argument(
        "--steps",
        type=_whole_number(1),
        default=DEFAULT_STEPS,
        help=f"optimizer steps per run (default: {DEFAULT_STEPS})",
    )
    shared.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate for every optimizer (default: one tuned per optimizer and problem)",
    )
    shared.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="parameter precision (default: float32)"
    )
    shared.add_argument(
        "--backend",
        choices=("torch", "jax", "both"),
        default="both",
        help="which of our backends to run beside torch.optim (default: both)",
    )
    shared.add_argument(
        "--seed",
        type=_whole_number(0),
        default=0,
        help="seed of the network's initial weights and the quadratic's noise (default: 0)",
    )
    return shared


def build_parser() -> argparse.ArgumentParser:
    shared = _options()
    parser = _Parser(
        prog="python -m optimizers",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    commands = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)
    compare = commands.add_parser(
        "compare",
        parents=[shared],
        help="print the comparison tables (the default, which also writes the picture)",
        description="Run the optimizers with torch.optim and our backends and print how they compare.",
    )
    output = compare.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON instead of tables")
    output.add_argument("--csv", action="store_true", help="print CSV instead of tables")
    compare.add_argument("--out", type=_picture_path, default=None, help="also write the picture to this PNG file")
    plot = commands.add_parser(
        "plot",
        parents=[shared],
        help="draw the paths and loss curves to a PNG",
        description="Draw each optimizer's path on the 2-D test functions and the network's loss curves.",
    )
    plot.add_argument(
        "--out", type=_picture_path, default=DEFAULT_PICTURE, help=f"the PNG file to write (default: {DEFAULT_PICTURE})"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        # No subcommand: compare, and draw the picture from the same runs.
        argv = ["compare", "--out", DEFAULT_PICTURE, *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [name for name in ("matplotlib", "sklearn", "tqdm") if importlib.util.find_spec(name) is None]
    if missing:
        parser.exit(1, f"{parser.prog} needs {', '.join(missing)}: pip install 'optimizers[cli]'\n")
    from .runs import check_hyperparameters

    for name in args.optimizers if args.lr is not None else ():
        try:
            check_hyperparameters(name, args.lr)
        except (ValueError, TypeError) as error:
            parser.error(f"--lr {args.lr} is invalid for {name}: {error}")
    results = _run_all(args)
    settings = {key: getattr(args, key) for key in ("optimizers", "problem", "steps", "lr", "dtype", "backend", "seed")}
    from . import report

    if args.command == "compare":
        if args.json:
            print(report.to_json(settings, results))
        elif args.csv:
            print(report.to_csv(results), end="")
        else:
            print("\n\n".join(report.table(problem, rows, args.steps, args.dtype) for problem, rows in results))
    if args.out is not None:
        from .plot import draw

        draw(results, args.out, args.steps, args.dtype)
        print(
            f"wrote {args.out}",
            file=sys.stderr if args.command == "compare" and (args.json or args.csv) else sys.stdout,
        )
    return 0


def _run_all(args: Any) -> list:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 runs need it; float32 arrays stay float32
    from tqdm import tqdm

    from .problems import problems
    from .report import Row
    from .runs import in_torch_optim, run

    implementations = {"torch": ("torch.optim", "torch"), "jax": ("torch.optim", "jax")}.get(
        args.backend, ("torch.optim", "torch", "jax")
    )
    chosen = problems(args.problem, args.seed, args.steps)
    results = []
    # disable=None: a progress bar on a terminal, silence in pipes and logs.
    with tqdm(
        total=len(chosen) * len(args.optimizers) * len(implementations),
        disable=None,
        unit="run",
        file=sys.stderr,
        leave=False,
    ) as progress:
        for problem in chosen:
            rows = []
            for name in args.optimizers:
                lr = args.lr if args.lr is not None else problem.learning_rates[name]
                runs = {}
                for implementation in implementations:
                    if implementation != "torch.optim" or in_torch_optim(name):
                        progress.set_description(f"{problem.name} {name} {implementation}")
                        runs[implementation] = run(problem, name, implementation, lr, args.steps, args.dtype, args.seed)
                    progress.update()
                rows.append(Row(name, lr, runs))
            results.append((problem, rows))
    return results
