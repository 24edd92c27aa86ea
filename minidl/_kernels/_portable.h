/* The one place where minidl's C kernels meet the compilers.
 *
 * Every kernel header includes this file and uses only the MINIDL_* macros below for what is
 * not plain C99: SIMD clones, `restrict`, `omp simd` pragmas, vector extensions and run-time
 * CPU dispatch. Each of those has a plain C99 fallback, which is what MSVC compiles (and what
 * any compiler compiles with -DMINIDL_PORTABLE_C, the "portable" build of setup.py that the
 * tests use to check the fallbacks' results):
 *
 *   MINIDL_GNU           GCC or clang (not clang-cl, not MINIDL_PORTABLE_C): GNU attributes
 *                        and vector extensions may be used, under #ifdef only.
 *   MINIDL_CLONES        before a function definition: compile it for AVX-512, AVX2 and the
 *                        baseline, the loader picks the best one the CPU has (target_clones;
 *                        GCC >= 8 or clang >= 14 on x86-64 glibc Linux, which has ifunc).
 *                        Empty elsewhere: one baseline version.
 *   restrict             C99's keyword; defined as `__restrict` for MSVC's C compiler when it
 *                        does not know it (before /std:c11).
 *   MINIDL_SIMD          `#pragma omp simd` before a loop; MINIDL_SIMD_SUM(a, b, ...) the same
 *                        with a `reduction(+ : a, b, ...)`, which lets the compiler reorder the
 *                        additions. Honoured with -fopenmp or -fopenmp-simd; empty for MSVC,
 *                        whose /openmp (OpenMP 2.0) has no `simd`.
 *   MINIDL_VECTOR_EXT    GCC/clang vector types (`vector_size`) may be used.
 *   MINIDL_X86_DISPATCH  `target("...")` attributes and __builtin_cpu_supports may be used.
 *   MINIDL_INLINE        `inline` (`__inline` for MSVC's C compiler).
 *
 * and the build facts that minidl.show_config() reports (MINIDL_COMPILER, MINIDL_OPENMP,
 * MINIDL_CLONE_TARGETS, MINIDL_GEMM_TARGETS, MINIDL_DEBUG_BUILD, MINIDL_PORTABLE_BUILD and
 * minidl_cpu_isa()).
 */
#ifndef MINIDL_PORTABLE_H
#define MINIDL_PORTABLE_H

#include <stddef.h>
#include <stdint.h> /* also defines __GLIBC__ on glibc (needed for the ifunc test below) */

#if defined(__GNUC__) && !defined(MINIDL_PORTABLE_C)
#define MINIDL_GNU 1
#endif

#if defined(_MSC_VER)
#define MINIDL_INLINE __inline
#define MINIDL_PRAGMA(x) __pragma(x)
#else
#define MINIDL_INLINE inline
#define MINIDL_PRAGMA(x) _Pragma(#x)
#endif
#if defined(_MSC_VER) && !defined(__clang__) && !defined(restrict) \
    && (!defined(__STDC_VERSION__) || __STDC_VERSION__ < 199901L)
#define restrict __restrict
#endif

#if defined(_MSC_VER) && !defined(__clang__)
#define MINIDL_SIMD
#define MINIDL_SIMD_SUM(...)
#else
#define MINIDL_SIMD MINIDL_PRAGMA(omp simd)
#define MINIDL_SIMD_SUM(...) MINIDL_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#endif

#if defined(MINIDL_GNU) && defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) \
    && ((defined(__clang__) && __clang_major__ >= 14) || (!defined(__clang__) && __GNUC__ >= 8))
#if defined(__clang__)
#define MINIDL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else /* GCC fuses a * b + c across statements (-ffp-contract=fast) where the target has FMA,
         i.e. in the AVX-512 clone only: that clone would then round differently from the
         others, and its vectorized loop differently from its scalar remainder, so results would
         depend on the CPU and on how a loop is split among threads. clang fuses only within one
         expression, which the kernels avoid. */
#define MINIDL_CLONES                                                                          \
    __attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=off")))
#endif
#define MINIDL_CLONE_TARGETS "avx512f avx2 baseline"
#else
#define MINIDL_CLONES
#define MINIDL_CLONE_TARGETS "baseline"
#endif

#if defined(MINIDL_GNU)
#define MINIDL_VECTOR_EXT 1
#endif
#if defined(MINIDL_GNU) && defined(__x86_64__)
#define MINIDL_X86_DISPATCH 1
#define MINIDL_TARGET(isa) __attribute__((target(isa)))
#define MINIDL_GEMM_TARGETS "avx512f avx2 baseline"
#elif defined(MINIDL_VECTOR_EXT)
#define MINIDL_GEMM_TARGETS "vector16"
#else
#define MINIDL_GEMM_TARGETS "scalar"
#endif

/* The best of the instruction sets above that this CPU has (the one the target clones and
   the dispatched kernels run), and its name. */
enum { MINIDL_ISA_BASELINE = 0, MINIDL_ISA_AVX2 = 1, MINIDL_ISA_AVX512F = 2 };

static MINIDL_INLINE int minidl_cpu_isa(void) {
#if defined(MINIDL_X86_DISPATCH)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return MINIDL_ISA_AVX512F;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return MINIDL_ISA_AVX2;
#endif
    return MINIDL_ISA_BASELINE;
}

static MINIDL_INLINE const char* minidl_isa_name(int isa) {
    return isa == MINIDL_ISA_AVX512F ? "avx512f" : isa == MINIDL_ISA_AVX2 ? "avx2" : "baseline";
}

/* ---- build facts -------------------------------------------------------------------------- */
#define MINIDL_STR_(x) #x
#define MINIDL_STR(x) MINIDL_STR_(x)

#if defined(__clang__) && defined(__apple_build_version__)
#define MINIDL_COMPILER "apple clang " __clang_version__
#elif defined(__clang__)
#define MINIDL_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define MINIDL_COMPILER "gcc " __VERSION__
#elif defined(_MSC_VER)
#define MINIDL_COMPILER "msvc " MINIDL_STR(_MSC_FULL_VER)
#else
#define MINIDL_COMPILER "unknown"
#endif

#if defined(_OPENMP)
#define MINIDL_OPENMP _OPENMP /* the OpenMP version, yyyymm */
#else
#define MINIDL_OPENMP 0
#endif

#ifndef MINIDL_DEBUG_BUILD /* setup.py defines it to 1 for MINIDL_DEBUG_BUILD=1 builds */
#define MINIDL_DEBUG_BUILD 0
#endif
#if defined(MINIDL_PORTABLE_C)
#define MINIDL_PORTABLE_BUILD 1
#else
#define MINIDL_PORTABLE_BUILD 0
#endif

#endif
