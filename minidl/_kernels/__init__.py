"""Compiled Cython kernels (private): they trust their inputs; minidl.functional checks them.

OpenMP threads normally spin for a while after each parallel region. Between our kernels run
NumPy's BLAS threads, which spin too, and on a laptop's few cores the two spinning teams steal
each other's time (measured here: a training step of the MNIST CNN twice as slow on 2 cores).
So, unless the user has chosen a policy, the kernels' OpenMP runtime is started with
``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep). The variable is only set while the runtime
loads, so other libraries and child processes see the environment unchanged.
"""
import os

_user_policy = os.environ.get("OMP_WAIT_POLICY")
if _user_policy is None:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
try:
    from . import _activation, _batchnorm, _conv, _pool, _winograd  # noqa: F401  (the first import starts OpenMP)
finally:
    if _user_policy is None:
        del os.environ["OMP_WAIT_POLICY"]
