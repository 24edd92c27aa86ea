"""Experiment building blocks: the reference networks used by examples, experiments and benchmarks."""
from .networks import mnist_cnn

__all__ = ["mnist_cnn"]
