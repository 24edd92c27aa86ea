"""Compiled Cython kernels (private): they trust their inputs; minidl.functional checks them.

Loading them loads the OpenMP runtime they were linked with, which reads its environment
variables (OMP_WAIT_POLICY, ...) at that moment; minidl sets none of them (see minidl._config).
"""
from . import _activation, _batchnorm, _conv, _pool, _winograd  # noqa: F401
