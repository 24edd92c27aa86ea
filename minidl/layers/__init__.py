"""Layers: modules with an explicit forward and backward."""
from .module import Module, Parameter

__all__ = ["Module", "Parameter"]
