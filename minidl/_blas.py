"""NumPy's BLAS, called on one thread while minidl's own kernels run on OpenMP threads.

NumPy's OpenBLAS keeps its own pool of threads, and after every multi-threaded product those
threads busy-wait for more work (by default for about 2**28 cycles, a tenth of a second). The
Cython kernels that run right after (convolution, BatchNorm, pooling) then share the cores
with a spinning thread, and an OpenMP team that loses a core waits at every barrier. Measured
on 2 cores: a training step of the MNIST CNN without BatchNorm took 29.4 ms with NumPy's BLAS
on 2 threads and 18.4 ms with it on 1 (``OPENBLAS_NUM_THREADS=1``). So minidl runs its own
matrix products (Dense layers, the im2col convolution path, Winograd's weight transforms) with
the BLAS limited to one thread for the duration of the call, using threadpoolctl; the user's
own NumPy calls are unaffected.
"""
from threadpoolctl import ThreadpoolController

__all__ = ["one_thread"]

_controller = []  # the ThreadpoolController, made on first use (it scans the loaded libraries)


def one_thread():
    """A context manager that limits the BLAS libraries NumPy loaded to one thread."""
    if not _controller:
        _controller.append(ThreadpoolController())
    return _controller[0].limit(limits=1, user_api="blas")
