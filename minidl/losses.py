"""Loss functions: a fused, numerically stable softmax cross-entropy on logits.

The math (for one sample with logits ``x`` of length ``K`` and label ``y``)::

    m          = max_k x_k                                  (shift for stability)
    logsumexp  = m + log(sum_k exp(x_k - m))
    log p_k    = x_k - logsumexp                            (log-softmax)
    loss       = -log p_y = logsumexp - x_y                 (negative log-likelihood)
    dloss/dx_k = softmax(x)_k - [k == y]

Subtracting the row maximum before exponentiating makes every exponent ``<= 0``, so ``exp``
cannot overflow (and the largest term is exactly 1, so the sum cannot underflow to 0): logits
of size 1e4 give finite, correct losses. Fusing log-softmax with the negative log-likelihood
avoids ``log(softmax(x))``, which returns ``-inf`` as soon as a probability underflows. This is
the same computation as PyTorch's ``torch.nn.functional.cross_entropy`` (``log_softmax``
followed by ``nll_loss``); see also Goodfellow, Bengio & Courville, *Deep Learning* (2016),
section 4.1 on softmax overflow and underflow.

Precision: the log-sum-exp, the loss and the softmax are computed in float64 whatever the
logits' dtype (the copy costs ``N * K`` doubles, small next to the layers), so a float32 loss is
correctly rounded and the float32 gradient is the float64 gradient rounded once. The gradient is
returned in the logits' dtype.

The functional pair follows the ``forward -> (out, cache)``, ``backward(cache) -> grad`` layout
of the rest of minidl; :class:`CrossEntropyLoss` is a thin stateful wrapper around it.
"""
import numpy as np

from ._checks import check_input, check_number

__all__ = ["CrossEntropyLoss", "cross_entropy", "cross_entropy_backward"]

REDUCTIONS = ("mean", "sum")


def _check_reduction(name, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: expected reduction 'mean' or 'sum', got {reduction!r}")
    return reduction


def _check_labels(name, labels, num_samples, num_classes):
    """Return ``labels`` as an int64 array of shape ``(N,)`` with values in ``[0, K)``."""
    if isinstance(labels, np.ndarray):
        array = labels
    else:
        try:
            array = np.asarray(labels)
        except (TypeError, ValueError):  # ragged lists and the like
            raise TypeError(
                f"{name}: expected labels to be an integer array of shape ({num_samples},), "
                f"got {type(labels).__name__}"
            ) from None
    if array.dtype.kind not in "iu":
        raise TypeError(
            f"{name}: expected integer labels (an int or uint dtype), got dtype {array.dtype}"
        )
    if array.ndim != 1 or array.shape[0] != num_samples:
        raise ValueError(
            f"{name}: expected labels of shape ({num_samples},) to match logits of shape "
            f"({num_samples}, {num_classes}), got shape {array.shape}"
        )
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name}: expected labels in [0, {num_classes}) for {num_classes} classes, "
            f"got a label {bad}"
        )
    return array.astype(np.int64, copy=False)


def cross_entropy(logits, labels, reduction="mean"):
    """Softmax cross-entropy of integer labels given raw scores (logits).

    Args:
        logits (np.ndarray): ``(N, K)`` float32 or float64 unnormalized scores, any strides.
        labels (array-like): ``(N,)`` integer class indices in ``[0, K)`` (any int/uint dtype).
        reduction (str): ``"mean"`` (default; the average over the ``N`` samples) or ``"sum"``.
    Returns:
        tuple: ``(loss, cache)`` where ``loss`` is a Python float and ``cache`` is the opaque
        object :func:`cross_entropy_backward` needs (it holds the float64 softmax ``(N, K)``).
    Raises:
        TypeError: ``logits`` is not a float32/float64 ndarray, or ``labels`` are not integers.
        ValueError: ``logits`` is not ``(N, K)`` with ``N, K >= 1``; ``labels`` is not ``(N,)``;
            a label is outside ``[0, K)``; an unknown ``reduction``.

    The error messages name ``CrossEntropyLoss`` and state what was expected and received.
    Logits of any magnitude are fine (the row maximum is subtracted before ``exp``); NaN or
    ``+inf`` logits propagate to a NaN loss, as in PyTorch.
    """
    name = "CrossEntropyLoss"
    _check_reduction(name, reduction)
    check_input(name, logits, "NK", arg="logits")
    num_samples, num_classes = logits.shape
    labels = _check_labels(name, labels, num_samples, num_classes)

    shifted = logits.astype(np.float64)  # a fresh float64 copy, modified in place below
    shifted -= shifted.max(axis=1, keepdims=True)
    rows = np.arange(num_samples)
    target_shifted = shifted[rows, labels]  # x_y - m, taken before shifted is overwritten
    probs = np.exp(shifted, out=shifted)
    sum_exp = probs.sum(axis=1)
    # loss_i = logsumexp_i - x_{i,y_i} = log(sum_exp_i) - (x_{i,y_i} - m_i)
    losses = np.log(sum_exp) - target_shifted
    probs /= sum_exp[:, None]

    total = float(losses.sum())
    loss = total / num_samples if reduction == "mean" else total
    cache = (probs, labels, reduction, logits.dtype)
    return loss, cache


def cross_entropy_backward(cache, dloss=1.0):
    """Gradient of :func:`cross_entropy` with respect to the logits.

    ``d loss / d logits = (softmax(logits) - onehot(labels)) * dloss``, divided by ``N`` for
    ``reduction="mean"``.

    Args:
        cache: the second value returned by :func:`cross_entropy`.
        dloss (float): upstream gradient of the scalar loss (1.0 when the loss is the output).
    Returns:
        np.ndarray: ``(N, K)`` gradient, a new C-contiguous array in the logits' dtype.
    Raises:
        TypeError: ``dloss`` is not a real number. ValueError: ``dloss`` is NaN or infinite.
    """
    dloss = check_number("CrossEntropyLoss.backward", "dloss", dloss, low=-np.inf)
    probs, labels, reduction, dtype = cache
    num_samples = probs.shape[0]
    grad = probs.copy()
    grad[np.arange(num_samples), labels] -= 1.0
    scale = float(dloss) / num_samples if reduction == "mean" else float(dloss)
    if scale != 1.0:
        grad *= scale
    return grad.astype(dtype, copy=False)


class CrossEntropyLoss:
    """Softmax cross-entropy on logits, like ``torch.nn.CrossEntropyLoss`` (no weights, no
    label smoothing).

    ``loss = loss_fn(logits, labels)`` returns the loss as a Python float and caches the softmax;
    ``loss_fn.backward()`` then returns ``d loss / d logits``. See :func:`cross_entropy` for the
    math (a stable log-sum-exp) and the module docstring for the precision notes.

    Args:
        reduction (str): ``"mean"`` (default): the loss averaged over the batch, as in PyTorch;
            ``"sum"``: summed over the batch.

    Shape:
        - logits: ``(N, K)``, float32 or float64.
        - labels: ``(N,)``, integer class indices in ``[0, K)``.
        - output: a Python float.
        - ``backward()``: ``(N, K)`` in the logits' dtype.

    Raises:
        ValueError: an unknown ``reduction`` (at construction); bad shapes or labels out of range
            (in ``forward``).
        TypeError: non-float logits or non-integer labels (in ``forward``).
        RuntimeError: ``backward()`` before any successful ``forward``.

    Example::

        loss_fn = CrossEntropyLoss()
        loss = loss_fn(model(x), y)
        model.backward(loss_fn.backward())
    """

    def __init__(self, reduction="mean"):
        self.reduction = _check_reduction("CrossEntropyLoss", reduction)
        self._cache = None

    def forward(self, logits, labels):
        """Return the loss (a Python float) and remember what :meth:`backward` needs."""
        self._cache = None  # a failed forward must not leave a stale cache behind
        loss, self._cache = cross_entropy(logits, labels, self.reduction)
        return loss

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def backward(self, dloss=1.0):
        """Return ``d loss / d logits`` ``(N, K)`` in the logits' dtype for the last forward.

        Args:
            dloss (float): upstream gradient of the loss (default 1.0), a finite real number.
        Raises:
            RuntimeError: if :meth:`forward` has not been called successfully.
            TypeError/ValueError: ``dloss`` is not a finite real number.
        """
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss: backward() called before forward(logits, labels)")
        return cross_entropy_backward(self._cache, dloss)

    def __repr__(self):
        return f"CrossEntropyLoss(reduction={self.reduction!r})"
