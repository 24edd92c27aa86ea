"""Build script for minidl's Cython kernels.

Every extension is compiled with ``language_level=3`` against NumPy's headers.
OpenMP (``-fopenmp``) is used only when the C compiler accepts it; otherwise the
kernels are built serially and ``prange`` loops run on one thread.
Set ``MINIDL_NO_OPENMP=1`` to force a serial build.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = ["_activation", "_batchnorm", "_conv", "_pool", "_winograd"]
KERNELS.append("_memory")  # the caching allocator (NEP 49 handler), not a compute kernel


def _compiler_accepts_flag(compiler_cmd, flag, src="int main(void){return 0;}\n"):
    """Return True if ``compiler_cmd`` compiles and links ``src`` with ``flag``."""
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "check.c")
        with open(path, "w") as f:
            f.write(src)
        cmd = list(compiler_cmd) + [flag, path, "-o", os.path.join(tmp, "check")]
        result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return result.returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _compiler_accepts_openmp(compiler_cmd):
    """Return True if ``compiler_cmd`` compiles and links a tiny OpenMP program."""
    if os.environ.get("MINIDL_NO_OPENMP"):
        return False
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    return _compiler_accepts_flag(compiler_cmd, "-fopenmp", src)


class BuildExt(build_ext):
    """build_ext that adds OpenMP flags when the compiler supports them."""

    def build_extensions(self):
        compiler = getattr(self.compiler, "compiler_so", None) or ["cc"]
        use_openmp = sys.platform != "win32" and _compiler_accepts_openmp(compiler[:1])
        # without OpenMP, -fopenmp-simd still honours the `omp simd` loops of _norm_simd.h
        simd_only = not use_openmp and _compiler_accepts_flag(compiler[:1], "-fopenmp-simd")
        for ext in self.extensions:
            ext.extra_compile_args = ["-O3"] + (["-fopenmp"] if use_openmp else []) \
                + (["-fopenmp-simd"] if simd_only else [])
            ext.extra_link_args = ["-fopenmp"] if use_openmp else []
        print(f"minidl: building kernels with OpenMP {'on' if use_openmp else 'off'}")
        super().build_extensions()


extensions = [
    Extension(
        f"minidl._kernels.{name}",
        [f"minidl/_kernels/{name}.pyx"],
        include_dirs=[np.get_include(), "minidl/_kernels"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for name in KERNELS
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
