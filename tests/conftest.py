"""Test session setup: float64 on JAX, Hypothesis profiles, and the agreement report."""

import os
import shutil
import tempfile

import jax
import pytest
from hypothesis import HealthCheck, settings

# float64 comparisons need 64-bit JAX; float32 cases create float32 arrays explicitly.
jax.config.update("jax_enable_x64", True)

# Each test compiles its programs anew (see _release_compiled_programs), and many tests compile
# the same program (one rule, dtype and shape): one XLA cache for the session, shared by its
# xdist workers (they inherit the variable) and removed at its end, compiles each once.
_CACHE_VARIABLE = "OPTIMIZERS_TEST_XLA_CACHE"
_OWN_CACHE = _CACHE_VARIABLE not in os.environ
if _OWN_CACHE:
    os.environ[_CACHE_VARIABLE] = tempfile.mkdtemp(prefix="optimizers-xla-cache-")
jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_VARIABLE])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# 3 examples per property (20 until the suite ran on optimizers.testing, 15 until the eight
# algorithms beyond torch.optim joined the generic properties, 12 until SOAP, whose every example
# compiles eigendecompositions, and this machine ran the suite in 692 s; 8 until the integration
# tests (Lightning, Transformers, FSDP2, Flax) and their installs joined CI and a clean-clone CI
# run took 14 min 10 s of its 15-minute limit on 2 cores; 6 until a machine ran the same suite
# in 808 s where another had taken 430 s, 16 min 41 s of CI; 4 until that CI still took 15 min
# 38 s with one XLA cache per session); the thorough profile runs 1000.
settings.register_profile(
    "ci",
    max_examples=3,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """Free the XLA programs a test compiled.

    Generated examples compile thousands of distinct programs; each keeps a few
    memory mappings, and a process past the kernel's vm.max_map_count (65530)
    crashes inside XLA's compiler.
    """
    yield
    jax.clear_caches()


def pytest_sessionfinish(session):
    """Under pytest-xdist, send this worker's agreement figures to the controller; the process
    that made the XLA cache removes it."""
    if _OWN_CACHE:
        shutil.rmtree(os.environ[_CACHE_VARIABLE], ignore_errors=True)
    if hasattr(session.config, "workeroutput"):
        from tests.harness import BAD_INPUTS, REPORT

        session.config.workeroutput["agreement"] = REPORT.rows_as_data()
        session.config.workeroutput["bad_inputs"] = BAD_INPUTS.as_data()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    from tests.harness import BAD_INPUTS, REPORT

    output = getattr(node, "workeroutput", {})
    REPORT.merge_data(output.get("agreement", []))
    BAD_INPUTS.merge_data(output.get("bad_inputs", {}))


def pytest_terminal_summary(terminalreporter):
    from tests.harness import BAD_INPUTS, REPORT

    write = terminalreporter.write_line
    if BAD_INPUTS.tried:
        title = "bad inputs tried (distinct; each rejected with an error naming it, the optimizer unchanged)"
        terminalreporter.section(title)
        for kind, inputs in sorted(BAD_INPUTS.tried.items()):
            write(f"{kind:<40} {len(inputs):>6}")
        write(f"{'total':<40} {sum(map(len, BAD_INPUTS.tried.values())):>6}")
    if not REPORT.rows:
        return
    terminalreporter.section("agreement between implementations (measured in this run)")
    write(
        f"{'optimizer':<10} {'comparison':<28} {'dtype':<8} {'examples':>8} {'elements':>10} "
        f"{'bitwise equal':>14} {'max rel err':>12}"
    )
    for (optimizer, pair, dtype), row in sorted(REPORT.rows.items()):
        fraction = row.bitwise / row.elements if row.elements else 1.0
        write(
            f"{optimizer:<10} {pair:<28} {dtype:<8} {row.examples:>8} {row.elements:>10} "
            f"{fraction:>13.2%} {row.max_relative_error:>12.3g}"
        )
