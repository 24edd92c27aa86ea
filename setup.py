"""Build script for minidl's Cython kernels (``minidl/_kernels``).

``EXTENSIONS`` below is the one list of compiled modules, and ``DIRECTIVES`` the one set of
Cython compiler directives they all share. GCC and clang compile them with ``-O3 -g0`` (no debug
information: a third faster to build, a fifth of the size), MSVC with ``/O2``. OpenMP is used
when the C compiler accepts it, with the flags of that compiler (``-fopenmp`` for GCC and clang,
``/openmp`` for MSVC, Apple clang through ``-Xpreprocessor -fopenmp -lomp`` when Homebrew's libomp
is installed); without it the kernels are built serially and the build says so in a banner
(``minidl.show_config()`` says so too).

Environment variables read here:

``MINIDL_NO_OPENMP=1``       build without OpenMP.
``MINIDL_REQUIRE_OPENMP=1``  fail instead of building serially (used for the wheels).
``MINIDL_DEBUG_BUILD=1``     Cython bounds, wraparound and initialization checks on, so that an
                             out-of-range index in a kernel raises IndexError instead of
                             corrupting memory; C files go to ``build/debug``, objects to
                             ``build/*-debug``; compiled with -O1. For tests, not for use.
``MINIDL_PORTABLE_C=1``      compile only the plain C99 paths of the kernel headers (what MSVC
                             compiles; see ``minidl/_kernels/_portable.h``): no SIMD clones, no
                             vector extensions. For tests.
"""
import os
import shutil
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The compiled modules: one .pyx each in minidl/_kernels (with its C in a .h of the same name).
# _memory is the caching allocator (a NEP 49 memory handler), not a compute kernel.
EXTENSIONS = ["_activation", "_batchnorm", "_conv", "_gemm", "_optim", "_pool", "_winograd",
              "_memory"]

# Cython directives for every kernel module: the kernels trust their inputs (minidl.functional
# validates them), so no bounds or wraparound checks, and C division semantics.
DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "initializedcheck": False,
    "cdivision": True,
}
DEBUG_DIRECTIVES = {"boundscheck": True, "wraparound": True, "initializedcheck": True}


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


DEBUG = _flag("MINIDL_DEBUG_BUILD")
PORTABLE = _flag("MINIDL_PORTABLE_C")

OPENMP_CHECK = """#include <omp.h>
int main(void) { int n = 0;
#pragma omp parallel reduction(+ : n)
    n += 1;
    return n > 0 ? 0 : 1; }
"""


def _banner(lines):
    width = max(len(line) for line in lines) + 4
    print("\n" + "*" * width, *(f"* {line.ljust(width - 4)} *" for line in lines), "*" * width,
          sep="\n", flush=True)


class BuildExt(build_ext):
    """build_ext with per-compiler optimization and OpenMP flags."""

    def finalize_options(self):
        super().finalize_options()
        if DEBUG:  # keep the debug objects and libraries apart from the normal build's
            self.build_temp = self.build_temp.rstrip("/\\") + "-debug"
            self.build_lib = self.build_lib.rstrip("/\\") + "-debug"

    def _links(self, source, compile_args, link_args):
        """Whether the compiler compiles and links ``source`` with these flags."""
        tmp = tempfile.mkdtemp(prefix="minidl-check-")
        try:
            path = os.path.join(tmp, "check.c")
            with open(path, "w") as f:
                f.write(source)
            objects = self.compiler.compile([path], output_dir=tmp, extra_postargs=compile_args)
            self.compiler.link_executable(objects, "check", output_dir=tmp,
                                          extra_postargs=link_args)
            return True
        except Exception:  # CompileError, LinkError, or no compiler at all
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _openmp_candidates(self, msvc):
        """(compile flags, link flags) to try, in order, for this compiler."""
        if msvc:
            return [(["/openmp"], [])]
        candidates = [(["-fopenmp"], ["-fopenmp"])]
        if sys.platform == "darwin":  # Apple clang: the OpenMP runtime is Homebrew's libomp
            for prefix in (os.environ.get("LIBOMP_PREFIX"), "/opt/homebrew/opt/libomp",
                           "/usr/local/opt/libomp"):
                if prefix and os.path.isdir(prefix):
                    candidates.append(
                        (["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"],
                         [f"-L{prefix}/lib", f"-Wl,-rpath,{prefix}/lib", "-lomp"]))
        return candidates

    def _openmp_flags(self, msvc):
        """The first working OpenMP flags, or None (and why) for a serial build."""
        if _flag("MINIDL_NO_OPENMP"):
            return None, "MINIDL_NO_OPENMP is set"
        for compile_args, link_args in self._openmp_candidates(msvc):
            if self._links(OPENMP_CHECK, compile_args, link_args):
                return (compile_args, link_args), None
        if sys.platform == "darwin":
            return None, ("the compiler has no OpenMP (Apple clang needs libomp: "
                          "`brew install libomp`, then rebuild)")
        return None, "the compiler did not compile and link a test program with OpenMP"

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        if msvc:
            optimize = ["/O2"]
        else:  # no debug info (Python's own flags ask for -g): a third faster, 5x smaller
            optimize = ["-O1" if DEBUG else "-O3", "-g0"]
        openmp, reason = self._openmp_flags(msvc)
        compile_args, link_args = openmp or ([], [])
        if openmp is None and not msvc and self._links("int main(void) { return 0; }\n",
                                                        ["-fopenmp-simd"], []):
            compile_args = ["-fopenmp-simd"]  # still honours the kernels' `omp simd` loops
        macros = [("MINIDL_DEBUG_BUILD", "1")] if DEBUG else []
        if PORTABLE:
            macros.append(("MINIDL_PORTABLE_C", "1"))
        for ext in self.extensions:
            ext.extra_compile_args = optimize + compile_args
            ext.extra_link_args = list(link_args)
            ext.define_macros = ext.define_macros + macros
        compiler = (getattr(self.compiler, "compiler_so", None) or [self.compiler.compiler_type])[0]
        print(f"minidl: compiler {compiler}; flags {' '.join(optimize + compile_args)}; OpenMP "
              f"{'on' if openmp else 'OFF'}{'; debug build' if DEBUG else ''}"
              f"{'; portable C paths only' if PORTABLE else ''}", flush=True)
        if openmp is None:
            if _flag("MINIDL_REQUIRE_OPENMP"):
                sys.exit(f"minidl: OpenMP is required (MINIDL_REQUIRE_OPENMP) but {reason}")
            _banner(["minidl: building the kernels WITHOUT OpenMP: they will run on ONE thread.",
                     f"Reason: {reason}.",
                     "minidl.show_config() reports this build as serial."])
        super().build_extensions()


extensions = [
    Extension(
        f"minidl._kernels.{name}",
        [f"minidl/_kernels/{name}.pyx"],
        include_dirs=[np.get_include(), "minidl/_kernels"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for name in EXTENSIONS
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={**DIRECTIVES, **(DEBUG_DIRECTIVES if DEBUG else {})},
        build_dir=os.path.join("build", "debug") if DEBUG else None,
    ),
    cmdclass={"build_ext": BuildExt},
)
