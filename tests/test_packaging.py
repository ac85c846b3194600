"""What a PyTorch user gets from ``pip install optimizers``: torch and NumPy, no JAX.

The torch side must never import JAX, and a JAX feature used without JAX must say which
extra installs it.  CI also installs the built wheel without extras into a fresh virtual
environment and runs ``tests/torch_only.py`` there (``.ci/run``); here the same runs with
JAX and optax made unimportable.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess
import sys
import textwrap

import pytest

import optimizers

ALGORITHMS = len([name for name in optimizers.__all__ if isinstance(getattr(optimizers, name), type)]) - 1

# None in sys.modules makes an import fail, as a missing package does.
BLOCK_JAX = 'sys.modules["jax"] = sys.modules["jaxlib"] = sys.modules["optax"] = None'


def run(code: str) -> str:
    root = pathlib.Path(__file__).parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("jax_installed", [False, True])
def test_every_algorithm_trains_a_torch_model_and_never_imports_jax(jax_installed):
    block = "" if jax_installed else BLOCK_JAX
    assert run(f"import sys\n{block}\nfrom tests import torch_only\ntorch_only.main()").startswith(
        f"{ALGORITHMS} algorithms"
    )


def test_a_jax_feature_without_jax_names_the_extra_to_install():
    code = textwrap.dedent(
        f"""
        import sys
        {BLOCK_JAX}
        import numpy as np
        import torch
        import optimizers

        def message(call):
            try:
                call()
            except ImportError as error:
                return str(error)
            raise AssertionError("no ImportError")

        print(message(lambda: optimizers.Adam([np.zeros(3)], backend="jax")))
        print(message(lambda: optimizers.AdamW.functional(lr=0.1)))
        print(message(lambda: optimizers.Adam([torch.zeros(3)]).functional()))
        print(message(lambda: optimizers.as_optax(optimizers.AdamW, lr=0.1)))
        from optimizers import testing
        print(message(lambda: testing.jax(lambda leaves: None)))
        print(message(lambda: testing.optax(None)))
        """
    )
    lines = run(code).splitlines()
    assert lines[:3] == ["The JAX backend needs jax, which is not installed: pip install 'optimizers[jax]'"] * 3
    assert lines[3] == "as_optax needs optax, which is not installed: pip install 'optimizers[optax]'"
    assert lines[4] == "testing.jax needs jax, which is not installed: pip install 'optimizers[jax]'"
    assert lines[5] == "testing.optax needs optax, which is not installed: pip install 'optimizers[optax]'"


def test_one_version():
    assert importlib.metadata.version("optimizers") == optimizers.__version__
