"""Running a script under ``mpiexec -n 2`` from a test (tests/test_distributed.py, test_examples.py).

Open MPI refuses to run as root unless told, and needs ``--oversubscribe`` to start more
processes than the machine has free cores; the variables that allow it are set here, in the
tests' environment, never by minidl. ``OMPI_MCA_mpi_yield_when_idle=1`` makes a rank that waits
in a collective give its core away instead of spinning: on this shared 2-core machine that made
the two-process example 2-3 times faster (see the README's distributed section).
"""
import os
import shutil
import subprocess
import sys

import pytest

from minidl.distributed.collectives import LAUNCHER_VARIABLES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "mpi_worker.py")


def run_mpi(*args, timeout=120, script=WORKER, env=None):
    """Run ``script`` (default tests/mpi_worker.py) with ``args`` under ``mpiexec -n 2
    --oversubscribe``, adding ``env`` to the environment; returns the CompletedProcess. A hang
    fails the test after ``timeout`` seconds (subprocess.TimeoutExpired)."""
    pytest.importorskip("mpi4py", reason='MPI tests need mpi4py: pip install "minidl[mpi]"')
    beside_python = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = beside_python if os.path.exists(beside_python) else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip('MPI tests need mpiexec: pip install "minidl[mpi]" (Open MPI)')
    variables = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    variables.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                     OMPI_MCA_mpi_yield_when_idle="1", MINIDL_NUM_THREADS="1",
                     PYTHONPATH=REPO + os.pathsep + variables.get("PYTHONPATH", ""), **(env or {}))
    cmd = [mpiexec, "-n", "2", "--oversubscribe", sys.executable, script, *args]
    return subprocess.run(cmd, env=variables, capture_output=True, text=True, timeout=timeout)
