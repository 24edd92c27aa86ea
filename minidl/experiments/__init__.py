"""Experiments: runners that train networks, compare them and write JSON and plots.

The networks themselves are in :mod:`minidl.models`. :mod:`minidl.experiments.comparison` holds
what the BatchNorm examples share (training with periodic evaluation, the comparison table,
JSON and PNG output).
"""
from . import comparison

__all__ = ["comparison"]
