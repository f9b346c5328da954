"""Building and loading rnnkit's three C++ extensions (``csrc/``): the time loops
(``fused.cpp``), the linear scans (``scan.cpp``) and the dropout kernel (``dropout.cpp``).

``rnnkit kernels build`` compiles them (with `torch.utils.cpp_extension`) ahead of time into
`kernels_dir` (``$RNNKIT_KERNELS`` or ~/.cache/rnnkit/kernels, one folder per torch, Python, CPU
and installation); else the first use does (about a minute, said in one warning before and one
after; processes building at once take turns on a lock that dies with its holder,
`_build_lock`). Each is built for the CPU it runs on (``-march=native``), so the per-step
pointwise passes, with float32 ``exp``/``tanh`` as vectorisable polynomials, run in SIMD
registers.

Loading an extension registers its functions as the CPU kernels of the ``rnnkit::`` operators
that `rnnkit.kernels.ops` declares (with their fake kernels, so that ``torch.compile`` and
``torch.export`` trace them). If a build fails, rnnkit warns once and runs torch's kernels or
its Python engine (without a C++ compiler: one warning for all three extensions);
``RNNKIT_FUSED=0`` turns the extensions off, and `fused_enabled(False)` the time loops
in-process (the tests run both paths).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no build lock (`_build_lock`)
    fcntl = None

from rnnkit.io import lock_holder, mark_holder, open_fd, try_lock
from rnnkit.kernels import ops  # noqa: F401 - declares the operators the extensions implement

_SOURCE = Path(__file__).parent / "csrc" / "fused.cpp"
_state = {
    "enabled": os.environ.get("RNNKIT_FUSED", "1") != "0",
    "module": None,
    "failed": False,
    "tune_process": False,
}


def extension() -> ModuleType | None:
    """The compiled extension, building it on first use; None if it cannot be built."""
    if _state["module"] is None and not _state["failed"]:
        try:
            from torch.utils.cpp_extension import load

            _state["module"] = _build(load)
            _configure(_state["module"])
        except Exception as err:  # a missing compiler must not stop training: warn, fall back
            _state["failed"] = True
            message = _failure_message(
                err,
                f"rnnkit: the C++ time loops could not be built ({err}); running the Python "
                "engine, which is slower (most for GRU and Elman cells)",
            )
            if message:
                warnings.warn(message, RuntimeWarning, stacklevel=2)
    return _state["module"]


def _configure(module) -> None:
    """The loops' settings: products through oneDNN and rnnkit's kernel unless
    ``RNNKIT_GEMM=aten``; the loops' bigger buffers kept in a pool of their own between calls
    unless ``RNNKIT_MALLOC=default`` (``BufferPool`` in ``csrc/buffers.h``). Nothing of the
    process changes unless it asked (`tune_process`)."""
    module.set_tuned(os.environ.get("RNNKIT_GEMM", "tuned") != "aten")
    module.probe_onednn()  # big float32 products on oneDNN only where it runs (AVX-512 here)
    module.set_pooled(os.environ.get("RNNKIT_MALLOC", "tuned") != "default")
    if _state["tune_process"] or os.environ.get("RNNKIT_MALLOC") == "tuned":
        module.tune_malloc()


def tune_process() -> None:
    """Opt in to tuning glibc's malloc for the whole process: buffers up to 32 MiB kept in its
    heap rather than mapped afresh on every call (``mallopt``; docs/performance.md measures
    what it saves). A library never does this on its own; the ``rnnkit`` command line does,
    and so may an application (or set ``RNNKIT_MALLOC=tuned``)."""
    _state["tune_process"] = True
    if _state["module"] is not None:
        _state["module"].tune_malloc()


def _build(load, source: Path = _SOURCE, stem: str = "rnnkit_fused", announce: bool = True):
    """Compile for this machine's CPU (so GCC vectorises the pointwise passes with its widest
    SIMD); if the compiler rejects ``-march=native``, compile for the generic target instead,
    and without OpenMP if it has none.

    ``-fno-trapping-math`` lets GCC turn the selects in ``vtanh`` into blends (nothing here reads
    floating-point exception flags). ``-fopenmp``: ``at::parallel_for`` in ATen's headers runs
    its chunks on OpenMP threads only when compiled with it (without, serially); the extension
    then shares torch's OpenMP runtime (the one ``libgomp.so.1`` torch has loaded). The build is
    cached per CPU: the name carries a hash of the CPU's feature flags, so a cache directory
    shared between machines never loads a binary built for another CPU's instruction set. torch
    rebuilds when a source or a flag changes, not a header: the hash of the headers in ``csrc``
    rides along as a macro so that editing one rebuilds too.

    A build (nothing built yet, or a source newer than the binary) is announced (``announce``)
    by a warning before it starts and one with the seconds it took; without a compiler, it
    raises `NoCompiler` at once.
    """
    sources = [str(source)]
    headers = b"".join(p.read_bytes() for p in sorted(source.parent.glob("*.h")))
    digest = hashlib.sha256(headers).hexdigest()[:10]
    flags = ["-std=c++20", "-O3", "-fno-trapping-math", f"-DRNNKIT_HEADERS={digest}"]
    attempts = [  # (name suffix, extra flags): the last builds anywhere a C++20 compiler does
        (_cpu_tag(), ["-march=native", "-fopenmp"]),
        ("generic", ["-fopenmp"]),
        ("serial", []),  # no OpenMP (e.g. clang without libomp): at::parallel_for runs serially
    ]
    started = None
    for index, (suffix, extra) in enumerate(attempts):
        links = [f for f in extra if f == "-fopenmp"]
        name = f"{stem}_{suffix}"
        directory = _build_directory(name)
        try:
            with _build_lock(directory):
                if started is None and not is_built(name, source):
                    missing = _missing_tools()
                    if missing:
                        raise NoCompiler(f"no {missing} found to build its C++ kernels")
                    if announce:
                        warnings.warn(
                            f"rnnkit: building its C++ kernels ({stem}) for this CPU, once (about "
                            "a minute; `rnnkit kernels build` builds them all ahead of time)",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                    started = time.monotonic()
                module = load(name=name, sources=sources, extra_cflags=[*flags, *extra],
                              extra_ldflags=links, build_directory=str(directory),
                              verbose=False)  # fmt: skip
        except NoCompiler:
            raise
        except Exception:
            if index == len(attempts) - 1:
                raise
            continue
        if started is not None and announce:
            warnings.warn(
                f"rnnkit: built the C++ kernels ({stem}) in {time.monotonic() - started:.0f} s",
                RuntimeWarning,
                stacklevel=2,
            )
        return module


class NoCompiler(RuntimeError):
    """No C++ compiler (or no ninja) to build a kernel that is not built yet."""


def kernels_dir() -> Path:
    """The folder of this torch's, Python's, CPU's and installation's builds:
    ``$RNNKIT_KERNELS`` or the user's cache (``$XDG_CACHE_HOME``, default ~/.cache)
    ``/rnnkit/kernels``, then ``torch-VERSION-pyXY-CPUTAG-INSTALL``. Not
    ``TORCH_EXTENSIONS_DIR``: a build made ahead of time is found whatever that says. INSTALL
    hashes where rnnkit's sources are: two installations (virtualenvs, checkouts) would
    otherwise rebuild each other's kernels in turn (ninja sees other source paths)."""
    root = os.environ.get("RNNKIT_KERNELS")
    if not root:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(cache) / "rnnkit" / "kernels"
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    install = hashlib.sha256(str(_SOURCE.parent.resolve()).encode()).hexdigest()[:8]
    return Path(root) / f"torch-{torch.__version__}-{python}-{_cpu_tag()}-{install}"


def _build_directory(name: str) -> Path:
    """Where torch's `load` builds extension ``name``: `kernels_dir` / ``name``."""
    return kernels_dir() / name


def is_built(name: str, source: Path) -> bool:
    """True if extension ``name`` (of ``source``) has a binary no older than its sources."""
    binary = _build_directory(name) / f"{name}.so"
    try:
        built = binary.stat().st_mtime
    except OSError:
        return False
    sources = [source, *source.parent.glob("*.h")]
    return all(p.stat().st_mtime <= built for p in sources if p.exists())


def _missing_tools() -> str | None:
    """What a build needs and this machine lacks: the C++ compiler (``$CXX``, else ``c++``) or
    ninja; None if both are here."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"C++ compiler ({compiler})"
    from torch.utils.cpp_extension import is_ninja_available

    return None if is_ninja_available() else "ninja"


def _failure_message(err: Exception, message: str) -> str | None:
    """The warning of a failed build: ``message``; for a missing compiler, one warning in all
    (the first), saying what runs instead of every kernel."""
    if not isinstance(err, NoCompiler):
        return message
    if _build_state["compiler_warned"]:
        return None
    _build_state["compiler_warned"] = True
    return (
        f"rnnkit: {err}; running torch's kernels and rnnkit's Python code instead, which is "
        "slower (install a C++ compiler, then run `rnnkit kernels build`)"
    )


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    """Hold the build lock of ``build_dir``: an exclusive `fcntl.flock` on its
    ``rnnkit-build.lock``, which the kernel releases when its holder dies (torch's own lock, a
    marker file named ``lock``, outlives a killed process, and torch then waits for it forever).
    Holding ours, no other rnnkit process is inside torch's `load` here, so a ``lock`` marker
    found then is stale: it is removed, with a warning. Without ``fcntl`` (Windows): no lock."""
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    build_dir.mkdir(parents=True, exist_ok=True)
    path = build_dir / _LOCK_FILE
    fd = open_fd(path, os.O_RDWR | os.O_CREAT)
    try:
        _acquire(fd, path)
        try:
            mark_holder(fd)  # named in the waiters' warning
            _remove_stale_marker(build_dir / "lock")
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _acquire(fd: int, path: Path) -> None:
    """Lock ``fd`` exclusively. While another process holds it, say so (one warning) and try
    again every 0.1 s, each try non-blocking, so that a signal is handled at once."""
    if try_lock(fd):
        return
    warnings.warn(
        f"rnnkit: waiting for {lock_holder(fd)} to finish checking or building the C++ kernels "
        f"({path})",
        RuntimeWarning,
        stacklevel=2,
    )
    while not try_lock(fd):
        time.sleep(0.1)


def _remove_stale_marker(marker: Path) -> None:
    """Remove torch's build marker ``marker`` if present (called holding the build lock)."""
    try:
        marker.unlink()
    except FileNotFoundError:
        return
    warnings.warn(
        f"rnnkit: removed a stale build lock left by a killed process ({marker})",
        RuntimeWarning,
        stacklevel=2,
    )


def _cpu_tag() -> str:
    """A short hash of the CPU's model and feature flags (Linux), else of the machine type."""
    text = platform.machine() + platform.processor()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        text += "".join(sorted({ln for ln in lines if ln.startswith(("flags", "model name"))}))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def scan_extension() -> ModuleType | None:
    """The linear-scan kernels of minGRU / minLSTM (``csrc/scan.cpp``), a separate small
    extension built on first use like `extension`; None if disabled (``RNNKIT_FUSED=0``,
    `fused_enabled(False)`) or if it cannot be built (then `rnnkit.scan` warns once and runs its
    Python loop)."""
    if not _state["enabled"]:
        return None
    return _small_extension("scan", "minGRU and minLSTM run it as a Python loop, which is slower")


def dropout_extension() -> ModuleType | None:
    """The dropout kernel (``csrc/dropout.cpp``), built like `scan_extension`; None with
    ``RNNKIT_FUSED=0`` (not under `fused_enabled(False)`, which is about the time loops: see
    `rnnkit.dropout.torch_masks`) or if it cannot be built. Without it `rnnkit.dropout` runs
    torch's dropout."""
    if os.environ.get("RNNKIT_FUSED", "1") == "0":
        return None
    return _small_extension("dropout", "dropout runs torch's, which draws its mask slower")


def _small_extension(stem: str, fallback: str) -> ModuleType | None:
    """The extension of ``csrc/{stem}.cpp``, built on first use; None if it cannot be built
    (then a warning, once, says what runs instead: ``fallback``)."""
    state = _small_states.setdefault(stem, {"module": None, "failed": False})
    if state["module"] is None and not state["failed"]:
        try:
            from torch.utils.cpp_extension import load

            state["module"] = _build(load, _SOURCE.parent / f"{stem}.cpp", f"rnnkit_{stem}")
        except Exception as err:
            state["failed"] = True
            message = _failure_message(
                err, f"rnnkit: the C++ {stem} kernels could not be built ({err}); {fallback}"
            )
            if message:
                warnings.warn(message, RuntimeWarning, stacklevel=3)
    return state["module"]


def constant_to_compile(fn):
    """``torch.compiler.assume_constant_result(fn)`` without importing torch._dynamo, which
    takes seconds: the mark it sets, read when torch.compile traces (tests/test_export.py checks
    the two agree)."""
    fn._dynamo_marked_constant = True
    return fn


@constant_to_compile
def loops_loaded() -> bool:
    """True if the time loops' extension is loaded (`extension`, building it on first use).
    ``torch.compile`` takes the answer as a constant rather than tracing the build."""
    return extension() is not None


@constant_to_compile
def scan_loaded() -> bool:
    """True if the scans' extension is loaded (`scan_extension`), a constant to torch.compile."""
    return scan_extension() is not None


@constant_to_compile
def dropout_loaded() -> bool:
    """True if the dropout extension is loaded (`dropout_extension`)."""
    return dropout_extension() is not None


def handles(x: Tensor) -> bool:
    """True if the C++ loops can take tensors like ``x``: on the CPU, float32 or float64."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


@contextlib.contextmanager
def fused_enabled(enabled: bool) -> Iterator[None]:
    """Within the block, use (True) or do not use (False) the C++ loops."""
    before = _state["enabled"]
    _state["enabled"] = enabled
    try:
        yield
    finally:
        _state["enabled"] = before


_small_states: dict[str, dict] = {}  # stem -> {"module", "failed"}
_build_state = {"compiler_warned": False}  # `_failure_message`
_LOCK_FILE = "rnnkit-build.lock"  # in each extension's build directory: `_build_lock`
