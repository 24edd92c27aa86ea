"""Process-wide settings of minidl's kernels, and what the build contains.

One module, one idiom: each setting has a ``set_*`` call (named as in PyTorch where PyTorch has
one) and a ``get_*`` call; environment variables are read at first use, never written. Importing
minidl changes nothing that other libraries can see: no environment variable, no OpenMP setting.

* :func:`set_num_threads` / :func:`get_num_threads`: the OpenMP threads of minidl's kernels
  (``$MINIDL_NUM_THREADS``, else the CPUs this process may use).
* :func:`set_wait_policy` / :func:`get_wait_policy`: whether idle OpenMP threads sleep or spin
  between kernel calls (``OMP_WAIT_POLICY``).
* :func:`show_config`: compiler, OpenMP, SIMD, threads, BLAS and debug build, as text and dict.

minidl's matrix products run on its own OpenMP team, not in NumPy's BLAS (which has its own
threads): see :mod:`minidl._blas`.
"""
import ctypes
import numbers
import os
import platform
import sys
import warnings

__all__ = ["set_num_threads", "get_num_threads", "set_wait_policy", "get_wait_policy",
           "show_config", "threads_for", "MAX_THREADS", "PARALLEL_MIN_ELEMENTS"]

#: The largest thread count minidl accepts (far above any CPU it runs on; a typo such as
#: 10000 is refused instead of starting 10000 threads).
MAX_THREADS = 1024

# Below this many elements a kernel runs on one thread: starting and joining an OpenMP team
# costs more than it saves (and far more when other processes compete for the cores).
PARALLEL_MIN_ELEMENTS = 1 << 16

WAIT_POLICIES = ("passive", "active")

_state = {"num_threads": None, "runtime": None}


# ---------------------------------------------------------------------------------- threads
def available_cpus():
    """The number of CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _thread_count(value, what, text=False):
    """``value`` (an integer, or with ``text`` a string of digits) as an int from 1 to
    MAX_THREADS.

    Raises:
        ValueError: anything else; the message names ``what`` and shows ``value``.
    """
    number = None
    if text and isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            number = int(text)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    if number is None or not 1 <= number <= MAX_THREADS:
        raise ValueError(f"{what} must be an integer from 1 to {MAX_THREADS}, got {value!r}")
    return number


def set_num_threads(n):
    """Set the number of OpenMP threads minidl's kernels use (like ``torch.set_num_threads``).

    The setting is minidl's own: it is passed to each kernel call and changes nothing in the
    OpenMP runtime, NumPy or other libraries. More threads than :func:`available_cpus` are
    allowed, but then threads share cores and every parallel kernel waits for the slowest one,
    which is usually slower than one thread per CPU.

    Args:
        n (int): 1 to :data:`MAX_THREADS` (1024). The default, before any call, is
            ``$MINIDL_NUM_THREADS`` if set, else the CPUs this process may use.

    Raises:
        ValueError: ``n`` is not an integer from 1 to 1024.

    Warns:
        RuntimeWarning: ``n > 1`` but minidl was built without OpenMP (its kernels run on one
            thread; :func:`show_config` says why).
    """
    n = _thread_count(n, "set_num_threads: n")
    if n > 1 and not _build()["openmp"]:
        warnings.warn("minidl.set_num_threads: minidl was built without OpenMP, so its kernels "
                      "run on one thread (see minidl.show_config())", RuntimeWarning, stacklevel=2)
    _state["num_threads"] = n


def _default_num_threads():
    """(threads, where the number comes from) before any :func:`set_num_threads` call."""
    env = os.environ.get("MINIDL_NUM_THREADS")
    if env is not None:
        what = "the environment variable MINIDL_NUM_THREADS"
        return _thread_count(env, what, text=True), "MINIDL_NUM_THREADS"
    return min(available_cpus(), MAX_THREADS), "the CPUs this process may use"


def get_num_threads():
    """The number of OpenMP threads minidl's kernels use (see :func:`set_num_threads`).

    Raises:
        ValueError: ``$MINIDL_NUM_THREADS`` is set but is not an integer from 1 to 1024 (the
            message names the variable and its value).
    """
    if _state["num_threads"] is None:
        _state["num_threads"] = _default_num_threads()[0]
    return _state["num_threads"]


def threads_for(size):
    """OpenMP threads for a kernel call that touches ``size`` elements.

    Returns 1 below :data:`PARALLEL_MIN_ELEMENTS`, else :func:`get_num_threads`.
    """
    return 1 if size < PARALLEL_MIN_ELEMENTS else get_num_threads()


# ------------------------------------------------------------------------------ wait policy
def _build():
    """The build facts compiled into the kernels (see ``minidl/_kernels/_common.pxd``)."""
    from ._kernels import _activation
    return _activation.BUILD


def _openmp_runtime():
    """The OpenMP runtime minidl's kernels call, as a threadpoolctl library controller, or None.

    Several runtimes can be loaded at once (e.g. PyTorch ships its own libgomp): ours is the one
    whose ``omp_get_max_threads`` the kernel module itself resolves to.
    """
    if _state["runtime"] is None:
        from threadpoolctl import ThreadpoolController
        from ._kernels import _activation
        runtimes = [lib for lib in ThreadpoolController().lib_controllers
                    if lib.internal_api == "openmp"]
        found = runtimes[0] if len(runtimes) == 1 else None
        try:
            ours = ctypes.cast(ctypes.CDLL(_activation.__file__).omp_get_max_threads,
                               ctypes.c_void_p).value
            for lib in runtimes:
                if ctypes.cast(lib.dynlib.omp_get_max_threads, ctypes.c_void_p).value == ours:
                    found = lib
        except (OSError, AttributeError):  # e.g. Windows: the .pyd exports no OpenMP symbol
            pass
        _state["runtime"] = [found]
    return _state["runtime"][0]


def _has_blocktime(runtime):
    """Whether the runtime has LLVM/Intel's ``kmp_set_blocktime`` (a run-time wait policy)."""
    return runtime is not None and hasattr(runtime.dynlib, "kmp_set_blocktime")


_SPIN_FOREVER_MS = 2 ** 31 - 1  # libomp's "infinite" blocktime


def get_wait_policy():
    """How idle OpenMP threads of minidl's kernels wait between kernel calls.

    Returns:
        str: ``"passive"`` (they sleep at once), ``"active"`` (they spin), ``"default"`` (the
        runtime's own choice: GCC's libgomp spins about 300,000 iterations, LLVM's libomp
        200 ms, then they sleep), or ``"none"`` (a serial build: there are no such threads).
    """
    if not _build()["openmp"]:
        return "none"
    runtime = _openmp_runtime()
    if _has_blocktime(runtime):
        blocktime = runtime.dynlib.kmp_get_blocktime()
        return "passive" if blocktime == 0 else "active" if blocktime >= _SPIN_FOREVER_MS \
            else "default"
    policy = os.environ.get("OMP_WAIT_POLICY", "").strip().lower()
    return policy if policy in WAIT_POLICIES else "default"


def set_wait_policy(policy):
    """Choose whether idle OpenMP threads of minidl's kernels sleep or spin between calls.

    Between two kernel calls minidl's OpenMP threads wait for work. Spinning ("active") makes
    the next call start a few microseconds sooner on an idle machine, but the spinning threads
    take the cores from everything else: NumPy's BLAS threads, other processes, the Python
    thread itself. ``"passive"`` is the better choice on a laptop or a shared machine (measured
    here: a loop of a ReLU kernel call and a 192x192 NumPy product ran 100x faster with passive
    than with libgomp's default spinning when the machine was busy).

    How it takes effect depends on the OpenMP runtime the kernels were linked with
    (:func:`show_config` names it):

    * LLVM's libomp and Intel's libiomp5 (clang builds, macOS): applied at once, for kernel
      calls made from the calling thread (``kmp_set_blocktime``: 0 or infinite).
    * GCC's libgomp and MSVC's vcomp read ``OMP_WAIT_POLICY`` once, when they are loaded (by
      ``import minidl``), and have no call to change it afterwards. Then this function only
      checks: it returns if ``policy`` is already in force and raises RuntimeError otherwise.
      Set the variable before Python starts instead, e.g. ``OMP_WAIT_POLICY=PASSIVE python
      train.py``; it applies to every library sharing that runtime.

    minidl never writes ``OMP_WAIT_POLICY`` (or any environment variable) itself.

    Args:
        policy (str): ``"passive"`` or ``"active"``.

    Raises:
        ValueError: ``policy`` is not ``"passive"`` or ``"active"``.
        RuntimeError: the runtime cannot change its policy now (the message says what to do).
    """
    if not isinstance(policy, str) or policy.lower() not in WAIT_POLICIES:
        raise ValueError(f"set_wait_policy: policy must be 'passive' or 'active', got {policy!r}")
    policy = policy.lower()
    if not _build()["openmp"]:
        return  # a serial build has no waiting threads
    runtime = _openmp_runtime()
    if _has_blocktime(runtime):
        runtime.dynlib.kmp_set_blocktime(ctypes.c_int(0 if policy == "passive"
                                                      else _SPIN_FOREVER_MS))
        return
    current = get_wait_policy()
    if current != policy:
        name = runtime.prefix if runtime is not None else "the OpenMP runtime"
        raise RuntimeError(
            f"minidl.set_wait_policy({policy!r}) cannot take effect: minidl's kernels use {name}, "
            f"which read OMP_WAIT_POLICY once, when it was loaded (at `import minidl`), and "
            f"cannot change it now (policy in force: {current}). Start Python with "
            f"OMP_WAIT_POLICY={policy.upper()} in the environment instead.")


# ------------------------------------------------------------------------------ show_config
def _describe_threads():
    explicit = _state["num_threads"] is not None
    try:
        default, source = _default_num_threads()
    except ValueError as error:
        if not explicit:
            return {"num_threads": None, "error": str(error)}
        default, source = None, str(error)
    return {
        "num_threads": _state["num_threads"] if explicit else default,
        "source": "minidl.set_num_threads" if explicit else source,
        "available_cpus": available_cpus(),
        "parallel_min_elements": PARALLEL_MIN_ELEMENTS,
    }


def config():
    """The facts :func:`show_config` prints, as a dict (see there)."""
    import numpy
    from threadpoolctl import threadpool_info

    from . import __version__
    from ._kernels import _activation, _batchnorm, _conv, _gemm, _optim, _pool, _winograd
    modules = (_activation, _batchnorm, _conv, _gemm, _optim, _pool, _winograd)
    build = _build()
    runtime = _openmp_runtime() if build["openmp"] else None
    facts = {
        "minidl": __version__,
        "path": os.path.dirname(os.path.abspath(__file__)),
        "python": platform.python_version(),
        "platform": f"{sys.platform} {platform.machine()}",
        "numpy": numpy.__version__,
        "compiler": build["compiler"],
        "debug_build": build["debug_build"],
        "portable_build": build["portable_build"],
        "openmp": {
            "enabled": bool(build["openmp"]),
            "version": build["openmp"],
            "runtime": runtime.prefix if runtime is not None else None,
            "runtime_path": runtime.filepath if runtime is not None else None,
            "wait_policy": get_wait_policy(),
        },
        "simd": {
            "clones": build["clone_targets"],
            "winograd_products": build["gemm_targets"],
            "cpu": build["cpu_isa"],
        },
        "threads": _describe_threads(),
        "blas": [info for info in threadpool_info() if info["user_api"] == "blas"],
    }
    mixed = [m.__name__ for m in modules if m.BUILD != build]
    if mixed:
        facts["warning"] = f"kernel modules built differently from _activation: {mixed}"
    return facts


def _format(facts):
    """The text of :func:`show_config`."""
    omp = facts["openmp"]
    if omp["enabled"]:
        openmp = f"on (version {omp['version']}), runtime {omp['runtime'] or 'unknown'}"
        if omp["runtime_path"]:
            openmp += f" ({omp['runtime_path']})"
    else:
        openmp = "OFF: serial build, the kernels run on ONE thread (the build output said why)"
    policy = omp["wait_policy"]
    if policy == "default":
        policy += (" (idle threads spin for a while, then sleep; OMP_WAIT_POLICY=PASSIVE "
                   "before start-up makes them sleep at once)")
    threads = facts["threads"]
    if threads["num_threads"] is None:
        thread_text = f"ERROR: {threads['error']}"
    else:
        thread_text = (f"{threads['num_threads']} ({threads['source']}); "
                       f"{threads['available_cpus']} CPUs available; calls on fewer than "
                       f"{threads['parallel_min_elements']} elements use 1")
    simd = facts["simd"]
    blas = "; ".join(f"{b['internal_api']} {b['version']} ({b.get('architecture', '?')}), "
                     f"{b['num_threads']} threads" for b in facts["blas"]) or "none found"
    rows = [
        ("minidl", f"{facts['minidl']} ({facts['path']})"),
        ("python", f"{facts['python']} on {facts['platform']}"),
        ("numpy", facts["numpy"]),
        ("compiler", facts["compiler"]),
        ("debug build", "yes (bounds checks on; slow)" if facts["debug_build"] else "no"),
        ("portable C", "yes (plain C99 paths only)" if facts["portable_build"] else "no"),
        ("OpenMP", openmp),
        ("wait policy", policy),
        ("SIMD", f"elementwise kernels {', '.join(simd['clones'])}; matrix products "
                 f"{', '.join(simd['winograd_products'])}; this CPU runs {simd['cpu']}"),
        ("threads", thread_text),
        ("BLAS", f"{blas} (minidl's matrix products use its own GEMM on its OpenMP threads)"),
    ]
    if "warning" in facts:
        rows.append(("WARNING", facts["warning"]))
    return "\n".join(f"  {name:<12} {value}" for name, value in rows)


def show_config(file=None):
    """Print what minidl was built with and the settings in force, and return them as a dict.

    Like ``numpy.show_config()`` / ``torch.__config__.show()``: the compiler, whether OpenMP is
    on (a serial build says so loudly), the OpenMP runtime and its wait policy, the SIMD
    variants compiled and the one this CPU runs, the thread settings, NumPy's BLAS
    (threadpoolctl) and whether this is a debug build. Nothing is changed.

    Args:
        file: where to print (default ``sys.stdout``).

    Returns:
        dict: the same facts (keys ``minidl``, ``python``, ``numpy``, ``compiler``,
        ``debug_build``, ``portable_build``, ``openmp``, ``simd``, ``threads``, ``blas``).
    """
    facts = config()
    print(_format(facts), file=file if file is not None else sys.stdout)
    return facts
