"""Pure-NumPy references: the readable spec, the tests' oracle, and a runnable backend.

* :mod:`minidl.reference.functional` — the textbook versions of every op in
  :mod:`minidl.functional` (same names, signatures and results). ``with
  minidl.backend("reference"):`` runs a whole model on them, so you can step through a
  convolution or BatchNorm in a debugger.
* :mod:`minidl.reference.conv`, :mod:`.winograd`, :mod:`.pooling`, :mod:`.normalization` — the
  layouts and steps of the Cython kernels (im2col/col2im, Winograd's tile transforms, the
  argmax convention, BatchNorm's statistics) and short forms of the ops, used as the kernels'
  test oracles.
"""
from . import conv, functional, normalization, pooling, winograd

__all__ = ["conv", "functional", "normalization", "pooling", "winograd"]
