"""The kernels on other compilers and in other build modes (issues 8 and 10).

What is built and run here, on Linux x86-64 (about 2-3 minutes on 2 cores; the C files Cython
generated for the main build are reused, so Cython runs once more, for the debug build only):

* clang (installed with apt, with LLVM's libomp, if missing): the package is copied into a
  temporary folder, built there with ``CC=clang``, and the kernel tests run against that build.
  The SIMD clones and the AVX-512/AVX2 Winograd products must be in both the GCC and the clang
  build (symbol names, ``nm``).
* the debug build (``MINIDL_DEBUG_BUILD=1``, Cython's bounds checks on), which also compiles only
  the plain C99 paths (``MINIDL_PORTABLE_C=1``, what MSVC compiles), so that one run checks both
  the kernels' indexing and the fallbacks' results; an out-of-bounds index raises IndexError.
  The hypothesis fuzz tests (``tests/test_fuzz_*.py``) run against it too, with fewer examples.
* compile-only, with zig's clang (``ziglang`` from the ``test`` extra): every generated .c file
  for aarch64 Linux, x86-64 Linux with musl, and aarch64 and x86-64 macOS.
* the C headers as MSVC would see them: ``_MSC_VER`` set, neither ``__GNUC__`` nor ``__clang__``
  (clang targeting x86_64-pc-windows-msvc), as strict C99 (``-pedantic-errors``), and no
  GCC-only token (``__attribute__``, ``__builtin_*``, vector types, statement expressions) in
  what they expand to; and with GCC as strict C99 in the portable mode.
"""
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import minidl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(minidl.__file__)))
KERNELS = os.path.join(ROOT, "minidl", "_kernels")
MODULES = ["_activation", "_batchnorm", "_conv", "_gemm", "_optim", "_pool", "_winograd"]
# the test modules that exercise the compiled modules (matched by name, so new ones are included)
KERNEL_TESTS = re.compile(
    r"test_(conv|winograd|im2col|direct|pool|avg_pool|norm|batchnorm|activation|relu|layers|"
    r"config|memory|blas|optim)\w*\.py$")
# the hypothesis fuzz tests, run once more against the bounds-checked debug build
FUZZ_TESTS = re.compile(r"test_fuzz_\w+\.py$")
DEBUG_FUZZ_EXAMPLES = "15"
CROSS_TARGETS = ["aarch64-linux-gnu", "x86_64-linux-musl", "aarch64-macos", "x86_64-macos"]

pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
         and os.path.exists(os.path.join(ROOT, "setup.py"))),
    reason="the build checks run on Linux x86-64, from a source checkout")


def _run(cmd, timeout=900, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _tail(result, lines=40):
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


# ------------------------------------------------------------------------------------ tools
def _clang_openmp_works():
    clang = shutil.which("clang")
    if clang is None:
        return None
    source = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
    result = _run([clang, "-fopenmp", "-x", "c", "-", "-o", os.devnull], input=source)
    return clang if result.returncode == 0 else None


@pytest.fixture(scope="module")
def clang():
    """A clang that builds OpenMP code, installed with apt (clang, libomp-dev) if missing."""
    found = _clang_openmp_works()
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("clang with OpenMP is missing and apt-get cannot install it (not root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "clang", "libomp-dev"]
    if _run(install, env=env).returncode != 0:
        _run(["apt-get", "update", "-q"], env=env)
        result = _run(install, env=env)
        assert result.returncode == 0, _tail(result)
    found = _clang_openmp_works()
    assert found, "clang was installed but cannot compile an OpenMP program"
    return found


@pytest.fixture(scope="module")
def zig():
    """The command that runs zig's C compiler (from the ``ziglang`` package)."""
    command = [sys.executable, "-m", "ziglang"]
    if _run(command + ["version"]).returncode != 0:
        pytest.skip("ziglang is not installed (pip install ziglang; it is in the [test] extra)")
    return command + ["cc"]


# ----------------------------------------------------------------------------------- builds
def _copy_package(dest):
    """Copy setup.py, the package (with any generated .c files, without compiled modules) and
    the tests into ``dest``, keeping modification times so that Cython sees up-to-date C."""
    shutil.copy2(os.path.join(ROOT, "setup.py"), dest)
    skip = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.html", ".hypothesis")
    shutil.copytree(os.path.join(ROOT, "minidl"), os.path.join(dest, "minidl"), ignore=skip)
    shutil.copytree(os.path.join(ROOT, "tests"), os.path.join(dest, "tests"), ignore=skip)


def _build(dest, **env):
    """Build the kernels in place in a copy of the package at ``dest``; return the build log."""
    _copy_package(dest)
    environ = {**os.environ, **env}
    result = _run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", "2"], cwd=dest,
                  env=environ)
    assert result.returncode == 0, _tail(result)
    return result.stdout + result.stderr


def _build_facts(dest):
    """``(minidl.__file__, _activation.BUILD)`` as seen by a fresh interpreter using ``dest``."""
    code = ("import json, minidl; from minidl._kernels import _activation; "
            "print(json.dumps([minidl.__file__, _activation.BUILD]))")
    result = _run([sys.executable, "-c", code], cwd=dest, env={**os.environ, "PYTHONPATH": dest})
    assert result.returncode == 0, _tail(result)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _run_kernel_tests(dest, fuzz=False):
    """Run the kernel test modules of the copy at ``dest`` against its build (and, with
    ``fuzz``, the fuzz tests, with ``DEBUG_FUZZ_EXAMPLES`` examples each)."""
    tests = sorted(name for name in os.listdir(os.path.join(dest, "tests"))
                   if KERNEL_TESTS.match(name) or (fuzz and FUZZ_TESTS.match(name)))
    assert "test_conv.py" in tests or "test_winograd.py" in tests, tests
    assert not fuzz or "test_fuzz_conv.py" in tests, tests
    result = _run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                   *(os.path.join("tests", name) for name in tests)],
                  cwd=dest, env={**os.environ, "PYTHONPATH": dest,
                                 "MINIDL_FUZZ_EXAMPLES": DEBUG_FUZZ_EXAMPLES})
    assert result.returncode == 0, _tail(result)
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary, summary
    return summary


def _symbols(path):
    result = _run(["nm", path])
    assert result.returncode == 0, result.stderr
    return result.stdout


def _assert_simd_variants(kernels_dir):
    """Every kernel module has AVX-512 and AVX2 clones, and the Winograd products and the GEMM
    micro-kernels all three variants: the vector paths are still chosen on GCC/clang x86-64."""
    for name in MODULES:
        (path,) = [os.path.join(kernels_dir, f) for f in os.listdir(kernels_dir)
                   if f.startswith(name + ".") and f.endswith(".so")]
        symbols = _symbols(path)
        if name == "_gemm":  # no SIMD clones: the micro-kernels are dispatched at import
            for isa in ("avx512", "avx2", "base"):
                assert f"minidl_gemm_micro_f_{isa}" in symbols, isa
            continue
        for isa in ("avx512f", "avx2"):
            assert re.search(rf"^\S+ [tT] minidl_\w+\.{isa}", symbols, re.M), f"{name}: no {isa}"
        if name == "_winograd":
            for isa in ("avx512", "avx2", "base"):
                assert f"minidl_wino_gemm_f_{isa}" in symbols, isa


@pytest.fixture(scope="module")
def clang_build(clang, tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("clang-build"))
    _build(dest, CC=clang)
    return dest


@pytest.fixture(scope="module")
def debug_build(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("debug-build"))
    _build(dest, MINIDL_DEBUG_BUILD="1", MINIDL_PORTABLE_C="1")
    return dest


# ------------------------------------------------------------------------------------ tests
def test_build_under_test_has_the_simd_variants():
    """The build the other tests use (GCC in CI) kept its AVX-512/AVX2 clones and products."""
    from minidl._kernels import _activation
    if _activation.BUILD["portable_build"] or not re.match(r"(gcc|clang) ",
                                                            _activation.BUILD["compiler"]):
        pytest.skip(f"a portable or non-GCC/clang build: {_activation.BUILD}")
    _assert_simd_variants(os.path.dirname(_activation.__file__))


def test_clang_build_passes_the_kernel_tests(clang_build):
    path, build = _build_facts(clang_build)
    assert path.startswith(clang_build)
    assert build["compiler"].startswith("clang") and build["openmp"] > 0
    assert not build["debug_build"] and not build["portable_build"]
    _assert_simd_variants(os.path.join(clang_build, "minidl", "_kernels"))
    print(_run_kernel_tests(clang_build))


def test_debug_build_passes_the_kernel_tests(debug_build):
    path, build = _build_facts(debug_build)
    assert path.startswith(debug_build)
    assert build["debug_build"] and build["portable_build"]
    assert build["clone_targets"] == ["baseline"] and build["gemm_targets"] == ["scalar"]
    print(_run_kernel_tests(debug_build, fuzz=True))


def test_debug_build_turns_out_of_bounds_access_into_index_error(debug_build):
    """Kernels called directly with buffers too small for their shapes (the functional layer
    never does this): the normal build would write past the end, the debug build raises."""
    code = """
import numpy as np
from minidl._kernels import _conv, _winograd
x = np.zeros((2, 5, 5, 3), np.float32)
cols = np.zeros((2 * 5 * 5 - 1, 27), np.float32)  # one row short
for threads in (1, 2):
    try:
        _conv.im2col(x, cols, 3, 3, 1, 1, 1, 1, threads)
        print("no error")
    except IndexError as error:
        print("IndexError:", error)
x = np.zeros((2, 4, 6, 6), np.float32)
u = np.zeros((16, 4, 32), np.float32)
size = _winograd.scratch_size(4, 8, 6, 6, 1, False)
scratch = np.zeros((1, size), np.float32)  # one thread's scratch, two threads asked for
try:
    _winograd.forward(x, u, np.zeros(8, np.float32), False, np.zeros((2, 8, 6, 6), np.float32),
                      1, 1, 1, scratch, 2)
    print("no error")
except IndexError as error:
    print("IndexError:", error)
"""
    result = _run([sys.executable, "-c", code], cwd=debug_build,
                  env={**os.environ, "PYTHONPATH": debug_build})
    assert result.returncode == 0, _tail(result)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3, result.stdout
    assert all(line.startswith("IndexError: Out of bounds") for line in lines), result.stdout


def _omp_include(clang, tmp_path):
    """A folder holding only LLVM's omp.h (the header the cross-compiles need)."""
    resource = _run([clang, "-print-resource-dir"]).stdout.strip()
    header = os.path.join(resource, "include", "omp.h")
    assert os.path.exists(header), f"no omp.h in {resource}/include (libomp-dev)"
    folder = tmp_path / "omp"
    folder.mkdir()
    shutil.copy(header, folder)
    return str(folder)


def test_every_generated_c_file_compiles_for_arm_macos_and_musl(clang_build, clang, zig,
                                                                 tmp_path):
    """Compile-only (-c -O0, OpenMP on, without zig's default debug info and sanitizers, which
    triple the time): the C files of the clang build, i.e. what Cython
    generated, for each target. Python's and NumPy's headers are this machine's (LP64, as on
    every target), so this checks our code and headers, not a full cross toolchain."""
    folder = os.path.join(clang_build, "minidl", "_kernels")
    sources = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".c"))
    assert {f"{name}.c" for name in MODULES} <= {os.path.basename(f) for f in sources}
    includes = ["-I", sysconfig.get_paths()["include"], "-I", np.get_include(),
                "-I", os.path.join(clang_build, "minidl", "_kernels"),
                "-I", _omp_include(clang, tmp_path)]
    # NumPy's configuration header is this Linux machine's: it says <endian.h> exists, which
    # macOS calls <machine/endian.h> (a module that includes NumPy's headers needs this)
    macos = tmp_path / "macos"
    macos.mkdir()
    (macos / "endian.h").write_text("#include <machine/endian.h>\n")
    jobs = [(target, source) for target in CROSS_TARGETS for source in sources]

    def compile_one(job):
        target, source = job
        out = tmp_path / f"{target}-{os.path.basename(source)}.o"
        extra = ["-I", str(macos)] if "macos" in target else []
        cmd = zig + ["-target", target, "-c", "-O0", "-g0", "-fno-sanitize=all", "-fopenmp",
                     "-Werror=implicit-function-declaration",
                     "-DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION", *includes, *extra, source,
                     "-o", str(out)]
        result = _run(cmd)
        return target, source, result

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [f"{target} {os.path.basename(source)}:\n{_tail(result, 20)}"
                    for target, source, result in pool.map(compile_one, jobs)
                    if result.returncode != 0]
    assert not failures, "\n\n".join(failures)


GNU_ONLY = re.compile(r"__attribute__|__builtin_|vector_size|__typeof__|\btypeof\b|\(\{|"
                      r"__extension__|__asm__|\basm\b|__int128|_Pragma\(\"GCC")


def _kernel_headers_unit(tmp_path):
    """A C file including every compute kernel's header: those built on _portable.h (not, e.g.,
    the allocator's, which needs Python's headers)."""
    headers = [name for name in sorted(os.listdir(KERNELS)) if name.endswith(".h")
               and '#include "_portable.h"' in open(os.path.join(KERNELS, name)).read()]
    assert {f"{name}.h" for name in MODULES} <= set(headers), headers
    unit = tmp_path / "all_kernel_headers.c"
    unit.write_text("".join(f'#include "{h}"\n' for h in headers))
    return str(unit)


def _own_lines(preprocessed):
    """The lines of preprocessor output that come from minidl's own headers."""
    own, lines = False, []
    for line in preprocessed.splitlines():
        marker = re.match(r'#\s*(?:line\s+)?\d+\s+"([^"]+)"', line)
        if marker:
            own = os.path.dirname(os.path.abspath(marker.group(1))) == KERNELS
        elif own and line.strip():
            lines.append(line)
    return lines


def test_headers_compile_as_msvc_would_see_them(clang, tmp_path):
    """The path MSVC compiles: _MSC_VER defined, __GNUC__ and __clang__ not (clang with the
    MSVC target and __clang__ undefined), strict C99, and nothing GCC-only in the expansion."""
    unit = _kernel_headers_unit(tmp_path)
    stub = tmp_path / "stub"
    stub.mkdir()  # clang ships no string.h for the MSVC target; the headers only need memcpy
    (stub / "string.h").write_text(
        "#include <stddef.h>\nvoid *memcpy(void *restrict, const void *restrict, size_t);\n")
    msvc = [clang, "--target=x86_64-pc-windows-msvc", "-std=c99", "-U__clang__",
            "-Wno-builtin-macro-redefined", "-ffreestanding", "-isystem", str(stub), "-I", KERNELS]
    macros = _run(msvc + ["-E", "-dM", unit]).stdout
    assert "#define _MSC_VER" in macros
    assert "#define __GNUC__" not in macros and "#define __clang__ " not in macros
    assert "#define MINIDL_GNU" not in macros and "#define MINIDL_CLONES \n" in macros + "\n"
    result = _run(msvc + ["-fsyntax-only", "-pedantic-errors", "-Werror", "-Wall",
                          "-Wno-unused-function", unit])
    assert result.returncode == 0, _tail(result)
    expanded = _run(msvc + ["-E", unit])
    assert expanded.returncode == 0, _tail(expanded)
    own = _own_lines(expanded.stdout)
    assert any("minidl_wino_gemm_f_base" in line for line in own)  # the scan sees our code
    offending = [line.strip() for line in own if GNU_ONLY.search(line)]
    assert not offending, offending[:5]
    # the same scan finds the GNU constructs on the GCC path, so it would catch a leak
    gnu = _run(["gcc", "-E", "-I", KERNELS, unit])
    assert any(GNU_ONLY.search(line) for line in _own_lines(gnu.stdout))


def test_headers_are_strict_c99_for_gcc_in_portable_mode(tmp_path):
    unit = _kernel_headers_unit(tmp_path)
    result = _run(["gcc", "-std=c99", "-pedantic-errors", "-Werror", "-Wall",
                   "-Wno-unused-function", "-fopenmp-simd", "-DMINIDL_PORTABLE_C", "-I", KERNELS,
                   "-fsyntax-only", unit])
    assert result.returncode == 0, _tail(result)
