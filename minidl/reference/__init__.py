"""Pure-NumPy references of every kernel: the readable spec and the tests' oracle.

Import the modules: ``minidl.reference.conv``, ``.pooling``, ``.normalization``.
"""
from . import conv, normalization, pooling

__all__ = ["conv", "normalization", "pooling"]
