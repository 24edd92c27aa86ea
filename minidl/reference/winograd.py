"""Pure-NumPy reference of the Winograd convolutions F(2x2, 3x3) and F(2x2, 5x5): the readable
spec of ``minidl/_kernels/_winograd.pyx`` and its test oracle.

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

F(2x2, 5x5) is the same with 6x6 tiles (36 elementwise products for 2x2 outputs of a 5x5
filter, instead of 100), ``B_T5``, ``G5``, ``A_T5`` (Cook-Toom points 0, 1, -1, 2, -2 and
infinity) and every function's ``kernel=5``; ``xi = 6*a + b``, ``dbias = sum of Z[7]``.

Nothing here validates its inputs; the matrices are float64, results take the data's dtype.
"""
import numpy as np

__all__ = [
    "B_T", "G", "A_T", "B_T5", "G5", "A_T5", "SCHEMES", "tiles", "weight_transform",
    "weight_grad_transform", "input_transform", "output_transform", "grad_transform",
    "input_grad_transform", "conv2d_forward", "conv2d_backward",
]

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
G_KRON_G = np.kron(G, G)  # (16, 9): row 4*a + b, column 3*i + j holds G[a, i] * G[b, j]

# F(2x2, 5x5): interpolation at 0, 1, -1, 2, -2 and infinity. G's row for a point p is
# (1, p, p^2, p^3, p^4) / prod over the other finite points q of (p - q).
B_T5 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
                dtype=np.float64)
G5 = np.array([[1 / 4, 0, 0, 0, 0], [-1 / 6, -1 / 6, -1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6, 1 / 3, 2 / 3], [1 / 24, -1 / 12, 1 / 6, -1 / 3, 2 / 3],
               [0, 0, 0, 0, 1]], dtype=np.float64)
A_T5 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 1]], dtype=np.float64)
# kernel size -> (B^T, G, A^T, G kron G)
SCHEMES = {3: (B_T, G, A_T, G_KRON_G), 5: (B_T5, G5, A_T5, np.kron(G5, G5))}


def tiles(out_h, out_w):
    """``(TH, TW)``: 2x2 output tiles per column and per row of an ``out_h x out_w`` output."""
    return (out_h + 1) // 2, (out_w + 1) // 2


def _tile_grid(x_shape, padding, kernel=3):
    """``(OH, OW, TH, TW)`` of a ``kernel x kernel`` stride-1 convolution of an ``(N, C, H,
    W)`` input."""
    out_h = x_shape[2] + 2 * padding[0] - kernel + 1
    out_w = x_shape[3] + 2 * padding[1] - kernel + 1
    return (out_h, out_w) + tiles(out_h, out_w)


def weight_transform(weight):
    """``U[xi, c, k] = (G g G^T)[xi]`` for ``weight`` ``(K, C, r, r)`` (r = 3 or 5); returns
    ``(16, C, K)`` (``(36, C, K)`` for 5x5) in the weight's dtype (computed in float64).

    One product for all filters: with row-major ``vec``, ``vec(G g G^T) = (G kron G) vec(g)``,
    and ``(G kron G)`` is ``(16, 9)`` (``(36, 25)``).
    """
    k, c, r = weight.shape[:3]
    g_kron_g = SCHEMES[r][3]
    u = g_kron_g @ weight.reshape(k * c, r * r).T.astype(np.float64)     # (planes, K*C)
    return np.ascontiguousarray(u.reshape(-1, k, c).transpose(0, 2, 1), dtype=weight.dtype)


def weight_grad_transform(du, dtype):
    """``dweight = G^T dU G`` for ``du`` ``(16, C, K)`` or ``(36, C, K)``; returns ``(K, C, r,
    r)`` in ``dtype`` (computed in float64): ``vec(G^T dU G) = (G kron G)^T vec(dU)``."""
    planes, c, k = du.shape
    r = {16: 3, 36: 5}[planes]
    du = du.transpose(0, 2, 1).reshape(planes, k * c).astype(np.float64)
    return (SCHEMES[r][3].T @ du).T.reshape(k, c, r, r).astype(dtype)


def input_transform(x, padding, kernel=3):
    """``V`` ``(alpha^2, N*TH*TW, C)`` of ``x`` ``(N, C, H, W)`` with zero ``padding``
    ``(pH, pW)``, ``alpha = kernel + 1`` (the tile size)."""
    n, c = x.shape[:2]
    _, _, th, tw = _tile_grid(x.shape, padding, kernel)
    ph, pw = padding
    b_t, alpha = SCHEMES[kernel][0], kernel + 1
    # zeros around x so that every alpha x alpha tile lies inside: rows -pH .. 2*TH - pH +
    # kernel - 2 (and 2*TH + kernel - 1 >= OH + kernel - 1 = H + 2*pH, so x fits)
    x_pad = np.zeros((n, c, 2 * th + kernel - 1, 2 * tw + kernel - 1), dtype=x.dtype)
    x_pad[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]] = x
    d = np.empty((n, c, th, tw, alpha, alpha), dtype=x.dtype)
    for i in range(alpha):
        for j in range(alpha):
            d[..., i, j] = x_pad[:, :, i:i + 2 * th:2, j:j + 2 * tw:2]
    v = np.einsum("ai,nctuij,bj->abntuc", b_t, d, b_t)
    return v.reshape(alpha * alpha, n * th * tw, c).astype(x.dtype)


def output_transform(m, n, out_hw):
    """``y`` ``(N, K, OH, OW)`` from ``M`` ``(alpha^2, N*TH*TW, K)``: each tile is ``A^T M
    A``."""
    out_h, out_w = out_hw
    th, tw = tiles(out_h, out_w)
    alpha = {16: 4, 36: 6}[m.shape[0]]
    a_t = SCHEMES[alpha - 1][2]
    k = m.shape[2]
    m = m.reshape(alpha, alpha, n, th, tw, k)
    y = np.einsum("ia,abntuk,jb->nktiuj", a_t, m, a_t).reshape(n, k, 2 * th, 2 * tw)
    return y[:, :, :out_h, :out_w].astype(m.dtype)


def grad_transform(dout, kernel=3):
    """``Z`` ``(alpha^2, N*TH*TW, K)`` of ``dout`` ``(N, K, OH, OW)``: each 2x2 tile is
    ``A dy A^T`` (zeros beyond OH, OW)."""
    n, k, out_h, out_w = dout.shape
    th, tw = tiles(out_h, out_w)
    a_t, alpha = SCHEMES[kernel][2], kernel + 1
    g = np.zeros((n, k, 2 * th, 2 * tw), dtype=dout.dtype)
    g[:, :, :out_h, :out_w] = dout
    g = g.reshape(n, k, th, 2, tw, 2)
    z = np.einsum("ai,nktiuj,bj->abntuk", a_t.T, g, a_t.T)
    return z.reshape(alpha * alpha, n * th * tw, k).astype(dout.dtype)


def input_grad_transform(e, x_shape, padding):
    """``dx`` ``(N, C, H, W)`` from ``E`` ``(alpha^2, N*TH*TW, C)``: the sum over tiles of
    ``B E B^T`` at each tile's place, the parts in the padding dropped (adjoint of
    :func:`input_transform`)."""
    n, c, h, w = x_shape
    alpha = {16: 4, 36: 6}[e.shape[0]]
    kernel = alpha - 1
    b_t = SCHEMES[kernel][0]
    _, _, th, tw = _tile_grid(x_shape, padding, kernel)
    ph, pw = padding
    e = e.reshape(alpha, alpha, n, th, tw, c)
    d = np.einsum("ai,abntuc,bj->nctuij", b_t, e, b_t)
    dx_pad = np.zeros((n, c, 2 * th + kernel - 1, 2 * tw + kernel - 1), dtype=e.dtype)
    for i in range(alpha):
        for j in range(alpha):
            dx_pad[:, :, i:i + 2 * th:2, j:j + 2 * tw:2] += d[..., i, j]
    return dx_pad[:, :, ph:ph + h, pw:pw + w]


def conv2d_forward(x, weight, bias, padding):
    """3x3 (or 5x5) stride-1 convolution by F(2x2, 3x3) (F(2x2, 5x5)): ``(N, C, H, W)`` ->
    ``(N, K, OH, OW)``."""
    kernel = weight.shape[2]
    out_h, out_w, _, _ = _tile_grid(x.shape, padding, kernel)
    m = np.matmul(input_transform(x, padding, kernel), weight_transform(weight))
    out = output_transform(m, x.shape[0], (out_h, out_w))
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


def conv2d_backward(dout, x, weight, has_bias, padding):
    """``(dx, dweight, dbias)`` of :func:`conv2d_forward` by the same tiles."""
    kernel = weight.shape[2]
    v = input_transform(x, padding, kernel)
    z = grad_transform(dout, kernel)
    dweight = weight_grad_transform(np.matmul(v.transpose(0, 2, 1), z), weight.dtype)
    dx = input_grad_transform(np.matmul(z, weight_transform(weight).transpose(0, 2, 1)),
                              x.shape, padding)
    dbias = z[(kernel + 1) + 1].sum(axis=0) if has_bias else None
    return dx, dweight, dbias
