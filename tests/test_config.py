"""minidl._config: thread settings, the OpenMP wait policy, show_config, and an import free of
side effects."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import minidl
from minidl import _config
from minidl._kernels import _activation, _batchnorm, _conv, _gemm, _optim, _pool, _winograd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(minidl.__file__)))


@pytest.fixture
def fresh_threads(monkeypatch):
    """Forget any thread setting for the test (restored afterwards)."""
    monkeypatch.setitem(_config._state, "num_threads", None)
    monkeypatch.delenv("MINIDL_NUM_THREADS", raising=False)


def _run(code, **env):
    """Run ``code`` in a fresh interpreter that imports this minidl; return stdout and stderr."""
    environ = {**os.environ, "PYTHONPATH": ROOT, **env}
    for name, value in env.items():
        if value is None:
            del environ[name]
    result = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout, result.stderr


# ---------------------------------------------------------------------------------- threads
@pytest.mark.parametrize("n", [1, 2, 7, np.int64(3), _config.MAX_THREADS])
def test_set_num_threads_accepts_integers_in_range(fresh_threads, n):
    minidl.set_num_threads(n)
    assert minidl.get_num_threads() == int(n)
    assert type(minidl.get_num_threads()) is int


@pytest.mark.parametrize("n", [0, -1, _config.MAX_THREADS + 1, 2.0, 1.5, True, "2", None,
                               np.float64(2)])
def test_set_num_threads_rejects_everything_else(fresh_threads, n):
    expected = f"set_num_threads: n must be an integer from 1 to 1024, got {n!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        minidl.set_num_threads(n)
    assert _config._state["num_threads"] is None


def test_default_is_the_cpus_this_process_may_use(fresh_threads):
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert minidl.get_num_threads() == expected == _config.available_cpus()


@pytest.mark.parametrize("value, expected", [("3", 3), (" 4 ", 4), ("1024", 1024)])
def test_minidl_num_threads_is_read_at_first_use(fresh_threads, monkeypatch, value, expected):
    monkeypatch.setenv("MINIDL_NUM_THREADS", value)
    assert minidl.get_num_threads() == expected
    monkeypatch.setenv("MINIDL_NUM_THREADS", "5")  # read once, like torch's OMP_NUM_THREADS
    assert minidl.get_num_threads() == expected


@pytest.mark.parametrize("value", ["abc", "0", "-2", "2.5", "", "1025", "99999999999", "٣"])
def test_bad_minidl_num_threads_names_the_variable_and_value(fresh_threads, monkeypatch, value):
    monkeypatch.setenv("MINIDL_NUM_THREADS", value)
    with pytest.raises(ValueError) as info:
        minidl.get_num_threads()
    message = str(info.value)
    assert "MINIDL_NUM_THREADS" in message and repr(value) in message
    assert "from 1 to 1024" in message
    # set_num_threads overrides the variable, and then it is never read
    minidl.set_num_threads(2)
    assert minidl.get_num_threads() == 2


def test_threads_for_runs_small_calls_on_one_thread(fresh_threads):
    minidl.set_num_threads(3)
    assert _config.threads_for(_config.PARALLEL_MIN_ELEMENTS - 1) == 1
    assert _config.threads_for(_config.PARALLEL_MIN_ELEMENTS) == 3


def test_more_threads_than_cpus_still_compute_the_same(fresh_threads, rng):
    """Above the CPU count threads share cores: slower, never different."""
    x = rng.standard_normal(1 << 17).astype(np.float32)
    expected = np.maximum(x, 0)
    for n in (1, _config.available_cpus() + 3):
        out = np.full_like(x, np.nan)
        _activation.relu_forward(x, out, n)
        np.testing.assert_array_equal(out, expected)


# ------------------------------------------------------------------------------ wait policy
RUN_A_KERNEL = ("import numpy; from minidl._kernels import _activation; "
                "x = numpy.ones(1 << 17); _activation.relu_forward(x, x, 2)")


def test_import_changes_no_environment_variable():
    code = ("import os; before = dict(os.environ); import minidl; " + RUN_A_KERNEL + "; "
            "assert dict(os.environ) == before; print(minidl.get_wait_policy())")
    out, _ = _run(code, OMP_WAIT_POLICY=None)
    assert out.split() == ["default" if _config._build()["openmp"] else "none"]


def test_import_leaves_the_runtime_policy_alone():
    """The OpenMP runtime itself starts with its own defaults (libgomp prints them with
    OMP_DISPLAY_ENV; GOMP_SPINCOUNT is 0 only when the policy is passive)."""
    runtime = _config._openmp_runtime()
    if runtime is None or runtime.prefix != "libgomp":
        # LLVM's runtime: the policy in force is read back with kmp_get_blocktime
        out, _ = _run("import minidl; print(minidl.get_wait_policy())", OMP_WAIT_POLICY=None)
        assert out.split() == ["default" if runtime is not None else "none"]
        return
    code = "import minidl; " + RUN_A_KERNEL
    _, err = _run(code, OMP_WAIT_POLICY=None, OMP_DISPLAY_ENV="verbose", GOMP_SPINCOUNT=None)
    assert "GOMP_SPINCOUNT = '300000'" in err, err
    _, err = _run(code, OMP_WAIT_POLICY="PASSIVE", OMP_DISPLAY_ENV="verbose", GOMP_SPINCOUNT=None)
    assert "GOMP_SPINCOUNT = '0'" in err, err


def test_set_wait_policy_rejects_unknown_policies():
    for policy in ("sleep", "", None, 0, "PASSIVE "):
        with pytest.raises(ValueError, match="set_wait_policy: policy must be 'passive' or "
                                             "'active', got"):
            minidl.set_wait_policy(policy)


def test_set_wait_policy_applies_or_says_why_not():
    """libgomp: only a policy already in force is accepted, anything else is a RuntimeError
    that says what to do; LLVM's libomp: applied at once (read back from the runtime)."""
    code = """
import minidl
try:
    minidl.set_wait_policy("active")
    print("applied", minidl.get_wait_policy())
except RuntimeError as error:
    print("refused", minidl.get_wait_policy(), "|", error)
minidl.set_wait_policy("passive")
print("passive", minidl.get_wait_policy())
"""
    out, _ = _run(code, OMP_WAIT_POLICY="passive")
    first, second = out.strip().splitlines()
    runtime = _config._openmp_runtime()
    if runtime is None:
        assert first == "applied none" and second == "passive none"
    elif _config._has_blocktime(runtime):
        assert first == "applied active" and second == "passive passive"
    else:
        assert first.startswith("refused passive |")
        assert "OMP_WAIT_POLICY=ACTIVE" in first and runtime.prefix in first
        assert second == "passive passive"


# ------------------------------------------------------------------------------ show_config
def test_show_config_prints_and_returns_the_build_facts(capsys, fresh_threads):
    facts = minidl.show_config()
    text = capsys.readouterr().out
    build = _activation.BUILD
    for module in (_batchnorm, _conv, _gemm, _optim, _pool, _winograd):
        assert module.BUILD == build  # one build, one set of facts
    assert "warning" not in facts
    assert facts["minidl"] == minidl.__version__
    assert facts["numpy"] == np.__version__
    assert facts["compiler"] == build["compiler"] and build["compiler"] in text
    assert facts["debug_build"] is build["debug_build"]
    assert facts["openmp"]["enabled"] == bool(build["openmp"])
    assert facts["simd"]["cpu"] in ("avx512f", "avx2", "baseline")
    assert facts["simd"]["cpu"] == _winograd.ISA
    assert facts["threads"]["num_threads"] == minidl.get_num_threads()
    assert facts["threads"]["source"] == "the CPUs this process may use"
    assert all(lib["user_api"] == "blas" for lib in facts["blas"]) and facts["blas"]
    for label in ("compiler", "OpenMP", "wait policy", "SIMD", "threads", "BLAS", "debug build"):
        assert label in text
    if build["openmp"]:
        assert facts["openmp"]["runtime"] and facts["openmp"]["runtime"] in text
    else:
        assert "OFF" in text and "ONE thread" in text


def test_show_config_reports_a_bad_minidl_num_threads(capsys, fresh_threads, monkeypatch):
    monkeypatch.setenv("MINIDL_NUM_THREADS", "lots")
    facts = minidl.show_config()
    assert facts["threads"]["num_threads"] is None
    assert "MINIDL_NUM_THREADS" in facts["threads"]["error"]
    assert "ERROR" in capsys.readouterr().out
