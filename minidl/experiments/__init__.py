"""Experiment building blocks: the reference networks used by examples, experiments and benchmarks."""
from .networks import cifar_cnn, mnist_cnn

__all__ = ["mnist_cnn", "cifar_cnn"]
