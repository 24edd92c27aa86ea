"""Pure-NumPy reference of the Winograd convolution F(2x2, 3x3): the readable spec of
``minidl/_kernels/_winograd.pyx`` and its test oracle.

Lavin & Gray, 2016, "Fast Algorithms for Convolutional Neural Networks", section 4. A 3x3,
stride-1 cross-correlation computes each 2x2 block of outputs ``Y`` from the 4x4 input tile
``d`` that covers it and the 3x3 filter ``g`` as::

    Y = A^T [(G g G^T) * (B^T d B)] A              (* elementwise, 16 multiplications)

instead of 36 multiplications. Summed over input channels, the 16 elementwise products of all
tiles become 16 matrix products (one per element ``xi = 4*a + b`` of a transformed tile)::

    V[xi, p, c] = (B^T d_{p,c} B)[a, b]            (tiles p of the batch, input channels c)
    U[xi, c, k] = (G g_{k,c} G^T)[a, b]            (output channels k)
    M[xi]       = V[xi] @ U[xi]                    (P, C) @ (C, K) -> (P, K)
    y tile p, channel k = A^T M[:, p, k] A

Tiles: for an output of ``OH x OW`` there are ``TH = ceil(OH/2)`` by ``TW = ceil(OW/2)`` tiles
per image, ``p = (n*TH + th)*TW + tw``; tile ``(th, tw)`` reads input rows ``2*th - pH .. +3``
and columns ``2*tw - pW .. +3`` (zeros outside the image) and writes output rows ``2*th, +1``,
columns ``2*tw, +1`` (those beyond OH, OW are dropped).

Backward: ``sum(dout * y)`` is the trilinear form ``sum over xi, p, c, k of Z * U * V`` with
``Z[xi, p, k] = (A dy_{p,k} A^T)[a, b]`` for the 2x2 tiles of ``dout``, so::

    dU[xi] = V[xi]^T @ Z[xi],   dweight = G^T dU G                      (per c, k)
    dV[xi] = Z[xi] @ U[xi]^T,   dx = sum over tiles of B dV B^T         (overlapping tiles)
    dbias  = sum over p of Z[(1, 1)]                                      (A's row 1 is (1, 1))

Nothing here validates its inputs; the matrices are float64, results take the data's dtype.
"""
import numpy as np

__all__ = [
    "B_T", "G", "A_T", "tiles", "weight_transform", "weight_grad_transform", "input_transform",
    "output_transform", "grad_transform", "input_grad_transform", "conv2d_forward",
    "conv2d_backward",
]

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
G_KRON_G = np.kron(G, G)  # (16, 9): row 4*a + b, column 3*i + j holds G[a, i] * G[b, j]


def tiles(out_h, out_w):
    """``(TH, TW)``: 2x2 output tiles per column and per row of an ``out_h x out_w`` output."""
    return (out_h + 1) // 2, (out_w + 1) // 2


def _tile_grid(x_shape, padding):
    """``(OH, OW, TH, TW)`` of a 3x3 stride-1 convolution of an ``(N, C, H, W)`` input."""
    out_h = x_shape[2] + 2 * padding[0] - 2
    out_w = x_shape[3] + 2 * padding[1] - 2
    return (out_h, out_w) + tiles(out_h, out_w)


def weight_transform(weight):
    """``U[xi, c, k] = (G g G^T)[xi]`` for ``weight`` ``(K, C, 3, 3)``; returns ``(16, C, K)``
    in the weight's dtype (computed in float64).

    One product for all filters: with row-major ``vec``, ``vec(G g G^T) = (G kron G) vec(g)``,
    and ``(G kron G)`` is ``(16, 9)``.
    """
    k, c = weight.shape[:2]
    u = G_KRON_G @ weight.reshape(k * c, 9).T.astype(np.float64)     # (16, K*C)
    return np.ascontiguousarray(u.reshape(16, k, c).transpose(0, 2, 1), dtype=weight.dtype)


def weight_grad_transform(du, dtype):
    """``dweight = G^T dU G`` for ``du`` ``(16, C, K)``; returns ``(K, C, 3, 3)`` in ``dtype``
    (computed in float64): ``vec(G^T dU G) = (G kron G)^T vec(dU)``."""
    c, k = du.shape[1:]
    du = du.transpose(0, 2, 1).reshape(16, k * c).astype(np.float64)
    return (G_KRON_G.T @ du).T.reshape(k, c, 3, 3).astype(dtype)


def input_transform(x, padding):
    """``V`` ``(16, N*TH*TW, C)`` of ``x`` ``(N, C, H, W)`` with zero ``padding`` ``(pH, pW)``."""
    n, c = x.shape[:2]
    _, _, th, tw = _tile_grid(x.shape, padding)
    ph, pw = padding
    # zeros around x so that every 4x4 tile lies inside: rows -pH .. 2*TH - pH + 1 (and
    # 2*TH + 2 >= OH + 2 = H + 2*pH, so x fits)
    x_pad = np.zeros((n, c, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
    x_pad[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
    d = np.empty((n, c, th, tw, 4, 4), dtype=x.dtype)
    for i in range(4):
        for j in range(4):
            d[..., i, j] = x_pad[:, :, i:i + 2 * th:2, j:j + 2 * tw:2]
    v = np.einsum("ai,nctuij,bj->abntuc", B_T, d, B_T)
    return v.reshape(16, n * th * tw, c).astype(x.dtype)


def output_transform(m, n, out_hw):
    """``y`` ``(N, K, OH, OW)`` from ``M`` ``(16, N*TH*TW, K)``: each tile is ``A^T M A``."""
    out_h, out_w = out_hw
    th, tw = tiles(out_h, out_w)
    k = m.shape[2]
    m = m.reshape(4, 4, n, th, tw, k)
    y = np.einsum("ia,abntuk,jb->nktiuj", A_T, m, A_T).reshape(n, k, 2 * th, 2 * tw)
    return y[:, :, :out_h, :out_w].astype(m.dtype)


def grad_transform(dout):
    """``Z`` ``(16, N*TH*TW, K)`` of ``dout`` ``(N, K, OH, OW)``: each 2x2 tile is
    ``A dy A^T`` (zeros beyond OH, OW)."""
    n, k, out_h, out_w = dout.shape
    th, tw = tiles(out_h, out_w)
    g = np.zeros((n, k, 2 * th, 2 * tw), dtype=dout.dtype)
    g[:, :, :out_h, :out_w] = dout
    g = g.reshape(n, k, th, 2, tw, 2)
    z = np.einsum("ai,nktiuj,bj->abntuk", A_T.T, g, A_T.T)
    return z.reshape(16, n * th * tw, k).astype(dout.dtype)


def input_grad_transform(e, x_shape, padding):
    """``dx`` ``(N, C, H, W)`` from ``E`` ``(16, N*TH*TW, C)``: the sum over tiles of
    ``B E B^T`` at each tile's place, the parts in the padding dropped (adjoint of
    :func:`input_transform`)."""
    n, c, h, w = x_shape
    _, _, th, tw = _tile_grid(x_shape, padding)
    ph, pw = padding
    e = e.reshape(4, 4, n, th, tw, c)
    d = np.einsum("ai,abntuc,bj->nctuij", B_T, e, B_T)
    dx_pad = np.zeros((n, c, 2 * th + 2, 2 * tw + 2), dtype=e.dtype)
    for i in range(4):
        for j in range(4):
            dx_pad[:, :, i:i + 2 * th:2, j:j + 2 * tw:2] += d[..., i, j]
    return dx_pad[:, :, ph:ph + h, pw:pw + w]


def conv2d_forward(x, weight, bias, padding):
    """3x3 stride-1 convolution by F(2x2, 3x3): ``(N, C, H, W)`` -> ``(N, K, OH, OW)``."""
    out_h, out_w, _, _ = _tile_grid(x.shape, padding)
    m = np.matmul(input_transform(x, padding), weight_transform(weight))
    out = output_transform(m, x.shape[0], (out_h, out_w))
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


def conv2d_backward(dout, x, weight, has_bias, padding):
    """``(dx, dweight, dbias)`` of :func:`conv2d_forward` by the same tiles."""
    v = input_transform(x, padding)
    z = grad_transform(dout)
    dweight = weight_grad_transform(np.matmul(v.transpose(0, 2, 1), z), weight.dtype)
    dx = input_grad_transform(np.matmul(z, weight_transform(weight).transpose(0, 2, 1)),
                              x.shape, padding)
    dbias = z[5].sum(axis=0) if has_bias else None
    return dx, dweight, dbias
