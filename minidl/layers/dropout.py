"""Dropout: a regularizer that zeroes random elements in training, the identity in evaluation."""
import numbers

import numpy as np

from .._random import get_rng
from ..functional.dropout import dropout_backward, dropout_forward, dropout_probability
from ._op import OpLayer

__all__ = ["Dropout"]


def _own_generator(rng):
    """The Dropout's generator: ``rng`` itself, a new one from an int seed, or (None) a child
    of minidl's global generator."""
    if rng is None:
        # Generator.spawn derives an independent stream from the global generator's seed
        # without drawing from it, so adding a Dropout does not change the initialization of
        # the layers built after it; after minidl.manual_seed(s) the masks are reproducible.
        return get_rng().spawn(1)[0]
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, (bool, np.bool_)) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise TypeError(f"Dropout: rng must be a numpy.random.Generator, an int seed >= 0 or None, "
                    f"got {rng!r:.60}")


class Dropout(OpLayer):
    """Inverted dropout, like ``torch.nn.Dropout`` (Srivastava et al. 2014, JMLR 15, section 4).

    In training mode each element is zeroed with probability ``p`` and the others are scaled
    by ``1 / (1 - p)``, so the expected output equals the input; in evaluation mode (and for
    ``p = 0``) the layer returns its input unchanged (the same array). ``p = 1`` zeroes
    everything, as in PyTorch. The backward pass multiplies ``dout`` by the same mask. See
    :mod:`minidl.functional.dropout`.

    The masks come from the layer's own generator, the attribute ``rng`` (a
    ``numpy.random.Generator``): :class:`minidl.Trainer` saves and restores its state in
    checkpoints (a resumed run draws the same masks), and :func:`minidl.gradcheck` resets it
    before every forward pass (every perturbed forward drops the same elements).

    Args:
        p (float): probability of zeroing an element, in [0, 1]. Default 0.5.
        rng (np.random.Generator or int or None): the generator to draw masks from (used as
            given, not copied), a seed for a new one, or None (default): a child of minidl's
            global generator (``minidl.manual_seed`` makes it reproducible; it draws nothing
            from the global generator, so the initialization of other layers is unchanged).

    Shape:
        any input, float32 or float64; output of the same shape and dtype.

    Raises:
        ValueError: ``p`` is not a number in [0, 1]; a gradient of the wrong shape.
        TypeError: a bad ``rng``; a non-float input or gradient.
        RuntimeError: ``backward`` before ``forward``, or after a forward under
            :class:`minidl.no_grad`.

    Example::

        drop = Dropout(0.5, rng=0)
        y = drop(np.ones((2, 4), np.float32))   # entries 0.0 or 2.0
        drop.eval()
        drop(x) is x                             # True: the identity in evaluation
    """

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        self.p = dropout_probability(p, "Dropout")
        self.rng = _own_generator(rng)

    def _forward(self, x):
        """Drop elements of ``x`` (training) or return ``x`` itself (evaluation, ``p = 0``)."""
        return dropout_forward(x, self.p, self.training, self.rng, layer="Dropout")

    def _backward(self, dout, cache):
        return dropout_backward(dout, cache, layer="Dropout")

    def extra_repr(self):
        return f"p={self.p}"
