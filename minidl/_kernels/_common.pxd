# What every kernel module shares: the fused float type, small index helpers and the build facts
# of _portable.h. Cimported (``from ._common cimport floating, ...``); nothing here is compiled
# on its own. The compiler directives (boundscheck, wraparound, cdivision, ...) are set once, in
# setup.py, for every kernel module alike.

ctypedef fused floating:
    float
    double


cdef extern from "_portable.h" nogil:
    const char* MINIDL_COMPILER         # e.g. "gcc 12.2.0"
    int MINIDL_OPENMP                   # the OpenMP version compiled in (yyyymm), 0 without
    const char* MINIDL_CLONE_TARGETS    # the SIMD clones' instruction sets ("avx512f avx2 baseline")
    const char* MINIDL_GEMM_TARGETS     # the Winograd products' ("... | vector16 | scalar")
    int MINIDL_DEBUG_BUILD              # 1: built with MINIDL_DEBUG_BUILD=1 (bounds checks on)
    int MINIDL_PORTABLE_BUILD           # 1: built with MINIDL_PORTABLE_C=1 (plain C99 paths only)
    int minidl_cpu_isa()                # the best of those instruction sets this CPU has
    const char* minidl_isa_name(int isa)


cdef inline Py_ssize_t ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """``a / b`` rounded up, for ``a >= 0`` and ``b >= 1``."""
    return (a + b - 1) // b


cdef inline Py_ssize_t round_up(Py_ssize_t value, Py_ssize_t step) noexcept nogil:
    """``value`` rounded up to a multiple of ``step``, for ``value >= 0`` and ``step >= 1``."""
    return ceil_div(value, step) * step


cdef inline dict build_facts():
    """What the calling extension was compiled with, for ``minidl.show_config()``."""
    return {
        "compiler": MINIDL_COMPILER.decode().strip(),
        "openmp": MINIDL_OPENMP,
        "clone_targets": MINIDL_CLONE_TARGETS.decode().split(),
        "gemm_targets": MINIDL_GEMM_TARGETS.decode().split(),
        "cpu_isa": minidl_isa_name(minidl_cpu_isa()).decode(),
        "debug_build": bool(MINIDL_DEBUG_BUILD),
        "portable_build": bool(MINIDL_PORTABLE_BUILD),
    }
