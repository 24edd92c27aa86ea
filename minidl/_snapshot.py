"""Save and restore the state a forward pass may change: modes, buffers, random generators.

:func:`minidl.gradcheck` runs a module's forward hundreds of times and :func:`minidl.summary`
runs it once; neither may leave a trace. A forward in training mode updates buffers in place
(BatchNorm's running statistics) and draws from random generators (Dropout's masks), so both
are saved once and put back, before every forward (gradcheck) or at the end (summary).
"""
import numpy as np

from ._random import get_rng


def _unique_modules(module):
    seen, modules = set(), []
    for _, m in module.named_modules():
        if id(m) not in seen:
            seen.add(id(m))
            modules.append(m)
    return modules


def _generator_state(generator):
    if isinstance(generator, np.random.Generator):
        return generator.bit_generator.state
    return generator.get_state()


def _set_generator_state(generator, state):
    if isinstance(generator, np.random.Generator):
        generator.bit_generator.state = state
    else:
        generator.set_state(state)


class Snapshot:
    """The training flags, buffers and random generator states of ``module`` (and its
    descendants), plus minidl's and NumPy's global generators.

    Args:
        module (Module or None): the module tree; None saves only the global generators.

    Every NumPy ``Generator`` or ``RandomState`` stored as an attribute of a module is saved,
    whatever its name (``rng``, ``_rng``, ...), so a Dropout layer draws the same mask after
    :meth:`restore_state`.
    """

    def __init__(self, module=None):
        modules = [] if module is None else _unique_modules(module)
        self._training = [(m, m.training) for m in modules]
        self._buffers = []
        for m in modules:
            for name in m._buffers:
                value = getattr(m, name)
                saved = value.copy() if isinstance(value, np.ndarray) else value
                self._buffers.append((m, name, value, saved))
        generators = [get_rng()]
        for m in modules:
            generators.extend(v for v in vars(m).values()
                              if isinstance(v, (np.random.Generator, np.random.RandomState)))
        unique = {id(g): g for g in generators}.values()
        self._generators = [(g, _generator_state(g)) for g in unique]
        self._numpy_global = np.random.get_state()  # np.random.rand & co.

    def restore_state(self):
        """Put back the buffers (the same array objects, with the saved values) and the
        generator states."""
        for module, name, original, saved in self._buffers:
            if isinstance(original, np.ndarray):
                np.copyto(original, saved)
            if getattr(module, name) is not original:
                object.__setattr__(module, name, original)
        for generator, state in self._generators:
            _set_generator_state(generator, state)
        np.random.set_state(self._numpy_global)

    def restore_modes(self):
        """Put back every module's ``training`` flag."""
        for module, training in self._training:
            object.__setattr__(module, "training", training)

    def restore(self):
        """:meth:`restore_state` and :meth:`restore_modes`."""
        self.restore_state()
        self.restore_modes()
