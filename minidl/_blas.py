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

_libraries = []  # threadpoolctl's controllers of the BLAS libraries, found on first use


def _blas_libraries():
    if not _libraries:
        _libraries.append(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _libraries[0]


class _OneThread:
    """The context manager :func:`one_thread` returns: on entry, every BLAS library that runs
    more than one thread is set to one; on exit, each gets its previous count back.

    threadpoolctl finds the libraries once (:func:`_blas_libraries`); entering and leaving then
    call their own get/set-thread-count functions, 7 microseconds per use, where
    ``ThreadpoolController.limit`` re-reads every library's settings each time (12 us, 0.2 ms of
    a training step of the MNIST CNN at batch 1).
    """

    __slots__ = ("_previous",)

    def __enter__(self):
        self._previous = []
        for library in _blas_libraries():
            threads = library.get_num_threads()
            if threads is not None and threads != 1:
                library.set_num_threads(1)
                self._previous.append((library, threads))
        return self

    def __exit__(self, *exc_info):
        for library, threads in reversed(self._previous):
            library.set_num_threads(threads)
        self._previous = []
        return False


def one_thread():
    """A context manager that limits the BLAS libraries NumPy loaded to one thread."""
    return _OneThread()
