"""PyTorch's own optimizer tests, with every torch.optim class swapped for ours, on CPU.

Not collected by pytest (no ``test_`` prefix): run it by hand, like ``tests/torch_only.py``.

The test files are PyTorch's, not this repository's.  Take them from pytorch/pytorch at the
commit of the installed torch (``python -c "import torch; print(torch.version.git_version)"``),
or the nearest one whose imports the installed ``torch.testing._internal`` provides, and keep
their layout (``test/test_optim.py`` imports ``optim.test_optim``, ``optim.test_lrscheduler`` and
``optim.test_swa_utils``)::

    /tmp/torch_suite/test_optim.py              # test/test_optim.py
    /tmp/torch_suite/optim/test_optim.py        # test/optim/test_optim.py
    /tmp/torch_suite/optim/test_lrscheduler.py  # test/optim/test_lrscheduler.py (or a stub class)
    /tmp/torch_suite/optim/test_swa_utils.py    # test/optim/test_swa_utils.py (or a stub class)

``torch.testing._internal`` needs ``expecttest`` (``pip install expecttest``).  Then::

    python tests/torch_suite.py /tmp/torch_suite/test_optim.py /tmp/torch_suite/optim/test_optim.py -- -n 2
    python tests/torch_suite.py --torch /tmp/torch_suite/test_optim.py -- -n 2   # the baseline: torch.optim

Arguments after ``--`` go to pytest.  Before the test modules are imported (also in every
pytest-xdist worker) each torch.optim class that ``optimizers`` also has is replaced by ours: the
attribute of ``torch.optim`` (``from torch.optim import Adam`` and ``torch.optim.Adam`` in the
tests), ``optim_cls`` of every OptimizerInfo in ``common_optimizers.optim_db`` and that module's
own names.  Device-type tests are instantiated for the CPU only (PYTORCH_TESTING_DEVICE_ONLY_FOR).

The swap is checked twice.  After collection every name the test modules imported from
torch.optim, and every ``optim_db`` class, must be ours (or, with ``--torch``, torch's): otherwise
the run stops before any test.  During the run a global step pre-hook counts the steps taken per
optimizer class; the summary lists them, and the exit status is 1 if a swapped run stepped a
torch.optim class that we replace, or stepped none of ours.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest

MODE = "OPTIMIZERS_TORCH_SUITE"  # "ours" swaps the classes, "torch" leaves torch.optim alone
ROOT = Path(__file__).resolve().parent.parent

steps: Counter[str] = Counter()
swap_problems: list[str] = []


def swapped_names() -> list[str]:
    """The classes of torch.optim that ``optimizers`` replaces."""
    import torch

    import optimizers

    return sorted(
        name
        for name in optimizers.__all__
        if name != "Optimizer" and isinstance(getattr(optimizers, name), type) and hasattr(torch.optim, name)
    )


def swap() -> None:
    """Make torch.optim and PyTorch's optimizer test database hand out our classes."""
    import torch
    from torch.testing._internal import common_optimizers

    import optimizers

    for name in swapped_names():
        ours = getattr(optimizers, name)
        setattr(torch.optim, name, ours)
        if isinstance(getattr(common_optimizers, name, None), type):
            setattr(common_optimizers, name, ours)
    for info in common_optimizers.optim_db:
        if hasattr(optimizers, info.optim_cls.__name__):
            info.optim_cls = getattr(optimizers, info.optim_cls.__name__)


def _count_step(optimizer, args, kwargs) -> None:
    cls = type(optimizer)
    steps[f"{cls.__module__}.{cls.__qualname__}"] += 1


def expected(name: str) -> type:
    """The class a test must get for ``name``: ours, or torch.optim's in a ``--torch`` run."""
    import torch

    import optimizers

    if os.environ.get(MODE, "ours") == "ours":
        return getattr(optimizers, name)
    cls = getattr(torch.optim, name)
    assert cls.__module__.split(".")[0] == "torch", cls  # nothing swapped it
    return cls


def pytest_configure(config: pytest.Config) -> None:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    if os.environ.get(MODE, "ours") == "ours":
        swap()
    # Registered once, for the whole session; tests remove only the hooks they registered.
    config._torch_suite_hook = register_optimizer_step_pre_hook(_count_step)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop before any test if a test module or optim_db holds a class of the wrong library."""
    from torch.testing._internal import common_optimizers

    names = swapped_names()
    # The collected test modules and what they import from the test folder (optim.test_optim).
    root = str(session.config.rootpath)
    modules = {item.module for item in session.items if getattr(item, "module", None) is not None}
    modules |= {m for m in list(sys.modules.values()) if str(getattr(m, "__file__", None) or "").startswith(root)}
    checked = Counter()
    for module in modules:
        for name in names:
            value = getattr(module, name, None)
            if isinstance(value, type):
                checked[module.__name__] += 1
                if value is not expected(name):
                    swap_problems.append(f"{module.__name__}.{name} is {value.__module__}.{value.__qualname__}")
    for info in common_optimizers.optim_db:
        if info.optim_cls.__name__ in names and info.optim_cls is not expected(info.optim_cls.__name__):
            swap_problems.append(f"optim_db {info.name} is {info.optim_cls.__module__}")
    if swap_problems:
        raise pytest.UsageError("the swap did not take effect: " + "; ".join(swap_problems))
    mode = os.environ.get(MODE, "ours")
    where = ", ".join(f"{module}: {count}" for module, count in sorted(checked.items()))
    session.config._torch_suite_swap_line = (
        f"{mode}: {len(names)} classes ({', '.join(names)}); optim_db and the names imported by {where} checked"
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the counts to the controller
        workeroutput["torch_suite_steps"] = dict(steps)
        workeroutput["torch_suite_swap_line"] = getattr(session.config, "_torch_suite_swap_line", "")


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    output = getattr(node, "workeroutput", {})
    steps.update(output.get("torch_suite_steps", {}))
    if output.get("torch_suite_swap_line"):
        node.config._torch_suite_swap_line = output["torch_suite_swap_line"]


def verdict() -> list[str]:
    """Problems with the steps taken: a swapped class stepped as torch's, or none of ours stepped."""
    if os.environ.get(MODE, "ours") != "ours":
        return []
    names = set(swapped_names())
    torch_steps = {k: v for k, v in steps.items() if k.startswith("torch.") and k.rsplit(".", 1)[1] in names}
    problems = [f"{k} stepped {v} times" for k, v in sorted(torch_steps.items())]
    if not any(k.startswith("optimizers.") for k in steps):
        problems.append("no step of an optimizers class was seen")
    return problems


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    terminalreporter.section("torch_suite")
    terminalreporter.write_line(getattr(config, "_torch_suite_swap_line", "swap line missing"))
    for name, count in sorted(steps.items()):
        terminalreporter.write_line(f"steps {count:>8}  {name}")
    if not config.option.collectonly:
        for problem in verdict():
            terminalreporter.write_line(f"SWAP FAILED: {problem}")


def main(argv: list[str]) -> int:
    if "--" in argv:
        argv, pytest_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    else:
        pytest_args = []
    mode = "ours"
    if "--torch" in argv:
        argv = [a for a in argv if a != "--torch"]
        mode = "torch"
    files = [Path(a).resolve() for a in argv]
    if not files or not all(f.is_file() for f in files):
        print(__doc__)
        return 2
    rootdir = Path(os.path.commonpath([f.parent for f in files]))
    # The xdist workers are new processes: the environment tells them what to import and to swap.
    path = [str(ROOT), *sorted({str(f.parent) for f in files}), str(rootdir)]
    os.environ["PYTHONPATH"] = os.pathsep.join([*path, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    sys.path[:0] = path
    os.environ[MODE] = mode
    os.environ["PYTORCH_TESTING_DEVICE_ONLY_FOR"] = "cpu"
    args = [
        *map(str, files),
        "-p",
        "tests.torch_suite",
        "-p",
        "no:cacheprovider",
        "-c",
        os.devnull,  # none of this repository's pytest settings (addopts, warning filters)
        "--rootdir",
        str(rootdir),
        "--import-mode=importlib",  # two test files are named test_optim.py
        "-ra",
        *pytest_args,
    ]
    status = pytest.main(args)
    plugin = sys.modules.get("tests.torch_suite")
    collecting = "--collect-only" in pytest_args or "--co" in pytest_args
    if plugin is not None and not collecting and plugin.verdict():
        return 1
    return int(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
