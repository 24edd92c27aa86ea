"""Optimizers and learning-rate schedules, following PyTorch's update rules and interfaces.

``SGD`` (momentum, Nesterov, weight decay) and ``Adam`` update parameters in place from their
gradients; :mod:`minidl.optim.lr_scheduler` changes their learning rates between steps::

    from minidl import optim
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
"""
from . import lr_scheduler
from .adam import Adam
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "lr_scheduler"]
