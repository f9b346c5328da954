"""The engine's time loops for LSTM, GRU and Elman cells in C++ (``csrc/fused.cpp``), used when
present.

Why C++: at the sizes RNNs are trained at on a CPU, a Python step costs as much as its matrix
product (about ten pointwise kernels, each a few microseconds of dispatch), and torch runs only
LSTM through oneDNN. The extension runs the same algorithm as `rnnkit.recurrence` (hoisted input
product, one GEMM per step, BPTT with the weight gradients gathered after the loop) with each
step's pointwise math fused into one pass. ``rnnkit kernels build`` compiles it (with
`torch.utils.cpp_extension`) ahead of time into `kernels_dir` (``$RNNKIT_KERNELS`` or
~/.cache/rnnkit/kernels, one folder per torch, Python and CPU); else the first use does (about
a minute, said in one warning before and one after; processes building at once take turns on a
lock that dies with its holder, `_build_lock`) and covers exactly the
classic cells, the peephole LSTM and the layer-normalised LSTM and GRU, and for the LSTM also
recurrent dropout and zoneout (their masks drawn in Python as the Python engine draws them, so
both paths give the same numbers under one seed); every other configuration runs the Python
engine. It is built for the CPU it runs on (``-march=native``), so the per-step pointwise
passes, with float32 ``exp``/``tanh`` as vectorisable polynomials, run in SIMD registers.

Matrix products (float32): each step's on rnnkit's packed kernel (``csrc/step_gemm.h``), the big
ones outside the loop (`matmul`, `linear`) on oneDNN's matmul where torch runs it, float64 and
``RNNKIT_GEMM=aten`` on ``at::mm``; see docs/performance.md for why and what each costs.

If the build fails, rnnkit warns once and runs the Python engine (without a C++ compiler: one
warning for all three extensions); ``RNNKIT_FUSED=0`` turns the
extension off, and `fused_enabled(False)` does so in-process (the tests run both paths).
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
from torch._subclasses.fake_tensor import is_fake

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no build lock (`_build_lock`)
    fcntl = None

from rnnkit.errors import LAYER_SECOND_ORDER, first_order_only
from rnnkit.io import lock_holder, mark_holder, open_fd, try_lock

_SOURCE = Path(__file__).parent / "csrc" / "fused.cpp"
_NONLINEARITY = {"tanh": 0, "relu": 1, "sigmoid": 2}
_state = {
    "enabled": os.environ.get("RNNKIT_FUSED", "1") != "0",
    "module": None,
    "failed": False,
    "tune_process": False,
}


def exporting(x: Tensor) -> bool:
    """True while a graph is recorded rather than computed: ``torch.jit`` tracing, ONNX export,
    ``torch.export`` and ``torch.compile`` (or a meta or fake tensor), where only operators
    torch knows can be recorded."""
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or x.device.type == "meta"
        or is_fake(x)
    )


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


@contextlib.contextmanager
def fused_enabled(enabled: bool) -> Iterator[None]:
    """Within the block, use (True) or do not use (False) the C++ loops."""
    before = _state["enabled"]
    _state["enabled"] = enabled
    try:
        yield
    finally:
        _state["enabled"] = before


def _tuned_products(x: Tensor) -> bool:
    """True if the extension's products take tensors like ``x`` (CPU float32, loops enabled)."""
    return x.dtype == torch.float32 and handles(x) and _state["enabled"] and extension() is not None


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """a (M, K) @ b (K, N) for the engine's big products (the input projection, the weight
    gradients): big float32 products through oneDNN, whose kernels run them up to twice as fast
    as MKL's on CPUs MKL does not tune for (``csrc/products.h``); else ``@``."""
    if not _tuned_products(a):
        return a @ b
    return _state["module"].matmul(a, b)


class _Linear(torch.autograd.Function):
    """x (N, I) @ w^T + b with every product through `matmul`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = matmul(x, weight.t())
        return out if bias is None else out.add_(bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        # building a graph for a higher-order gradient: torch's own (differentiable) products
        product = torch.mm if torch.is_grad_enabled() else matmul
        grad_x = product(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = product(grad.t(), x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``nn.functional.linear`` over x (..., I) with its products through `matmul` (float32 on
    the CPU with the extension; else ``nn.functional.linear`` itself)."""
    if not _tuned_products(x):
        return torch.nn.functional.linear(x, weight, bias)
    out = _Linear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def handles(x: Tensor) -> bool:
    """True if the C++ loops can take tensors like ``x``: on the CPU, float32 or float64."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def supports(cell, needs: frozenset[str] = frozenset()) -> bool:
    """True if this cell's time loop runs in C++: its class names a kernel here
    (`Cell.kernel`, declared per class, never inherited) that computes ``needs`` too
    (``"recurrent_dropout"``, ``"zoneout"``: `Cell.kernel_features`; only the LSTM's)."""
    cls = type(cell)
    return (
        _state["enabled"]
        and cls.kernel in _KERNELS
        and needs <= cls.kernel_features
        and extension() is not None
    )


def run_fused(
    cell, gx: Tensor, weight_hh: Tensor, bias_hh: Tensor | None, state0, mask,
    params: tuple[Tensor, ...] = (), recurrent_mask: Tensor | None = None, zoneout=None,
) -> tuple[Tensor, tuple[Tensor, ...]]:  # fmt: skip
    """As `rnnkit.recurrence.run_cell` for a cell that `supports`: (output (T, B, H), final
    state), on the loop its class names (`_KERNELS`)."""
    recording = _recording(gx, weight_hh, bias_hh, *state0, *params)
    run = _KERNELS[type(cell).kernel]
    return run(cell, recording, gx, weight_hh, bias_hh, state0, mask, params, recurrent_mask,
               zoneout)  # fmt: skip


def _run_ln_lstm(cell, recording, gx, weight_hh, bias_hh, state0, mask, params, *noise):
    output, h_n, c_n = _FusedLayerNormLSTM.apply(recording, gx, weight_hh, *state0, mask,
                                                 *params)  # fmt: skip
    return output, (h_n, c_n)


def _run_lstmp(cell, recording, gx, weight_hh, bias_hh, state0, mask, params, *noise):
    # params: (weight_hr,)
    output, h_n, c_n = _FusedProjectedLSTM.apply(recording, gx, weight_hh, bias_hh, *params,
                                                 *state0, mask)  # fmt: skip
    return output, (h_n, c_n)


def _run_lstm(cell, recording, gx, weight_hh, bias_hh, state0, mask, params, recurrent_mask,
              zoneout):  # fmt: skip
    # plain or peephole (params: w_ic, w_fc, w_oc)
    keeps = _zoneout_keeps(zoneout, gx.shape[0], state0[0])
    peephole = torch.cat(params) if params else None
    output, h_n, c_n = _FusedLSTM.apply(recording, gx, weight_hh, bias_hh, *state0, mask,
                                        recurrent_mask, *keeps, peephole)  # fmt: skip
    return output, (h_n, c_n)


def _run_loop(cell, recording, gx, weight_hh, bias_hh, state0, mask, params, *noise):
    # GRU, LN-GRU, Elman; params: the GRU's (bias_ih,) or (), the LN-GRU's norms'
    kind = type(cell).kernel
    code = _NONLINEARITY[cell.nonlinearity] if kind == "elman" else 3
    bias_ih, norms = (params[0] if params else None, ()) if kind == "gru" else (None, params)
    output, h_n = _FusedLoop.apply(recording, code, gx, weight_hh, bias_hh, bias_ih, state0[0],
                                   mask, None, *norms)  # fmt: skip
    return output, (h_n,)


def takes_input(cell, x: Tensor, noisy: bool) -> bool:
    """True if `run_on_input` runs this cell over input like ``x``: a plain Elman or GRU cell
    without recurrent dropout or zoneout, on a loop of the extension."""
    return not noisy and type(cell).kernel in ("elman", "gru") and handles(x) and supports(cell)


def run_on_input(
    cell, x: Tensor, weights: dict[str, Tensor | None], state0: tuple[Tensor], mask
) -> tuple[Tensor, tuple[Tensor]]:
    """`Cell.engine_inputs` then `run_fused` for a cell that `takes_input`, in one autograd node:
    x (T, B, I), the cell's weights by name, state0 (h0 (B, H),), mask (T, B, 1) or None ->
    (output (T, B, H), (h_n,)). A layer call then records one node instead of the projection's,
    the biases' sum and the loop's (docs/performance.md, fix 17)."""
    w_ih, w_hh, b_ih, b_hh = (weights[k] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    recording = _recording(x, w_ih, w_hh, b_ih, b_hh, state0[0])
    code = 3 if type(cell).kernel == "gru" else _NONLINEARITY[cell.nonlinearity]
    output, h_n = _FusedLoop.apply(recording, code, x, w_hh, b_hh, b_ih, state0[0], mask, w_ih)
    return output, (h_n,)


def _recording(*inputs: Tensor | None) -> bool:
    """True if autograd records a loop over these inputs (None: an absent tensor)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)


def _outputs(states: Tensor, mask: Tensor | None, recording: bool) -> Tensor:
    """A loop's outputs (T, B, H), h_1 .. h_T of states (T + 1, B, H), zero past each sequence's
    end (mask (T, B, 1)): a tensor of their own when autograd keeps states for the backward (an
    in-place op on the outputs must not change what the backward reads), else states' memory
    itself (no copy: inference), as a plain tensor rather than a view: autograd refuses in-place
    ops with operands that need gradients on views made inside a custom Function's forward
    (a frozen encoder's outputs, reentrant checkpointing's first pass)."""
    if mask is not None:
        return states[1:] * mask
    if recording:
        return states[1:].clone()
    view = states[1:]
    alias = view.new_empty(0)
    return alias.set_(view.untyped_storage(), view.storage_offset(), view.shape, view.stride())


def step_code(cells: list) -> int | None:
    """The code of `stack_step` for a stack whose cells all run one plain kernel (0-2 Elman
    with tanh, relu, sigmoid; 3 GRU; 4 LSTM), else None. Layers compute it once."""
    kind = type(cells[0]).kernel
    if kind not in _STEP_CODES or any(type(c).kernel != kind for c in cells):
        return None
    return _STEP_CODES[kind] if kind != "elman" else _NONLINEARITY[cells[0].nonlinearity]


def stack_step(code: int | None, x: Tensor, state: tuple[Tensor, ...], weights: list):
    """One step of a stack of plain LSTM, GRU or Elman layers in one C++ call (streaming; no
    autograd): ``code`` from `step_code`, x (B, I), state (h,) or (h, c) each (L, B, H), weights
    w_ih, w_hh, b_ih, b_hh per layer (None: no bias) -> (the last layer's h (B, H), the new
    state shaped as ``state``); None when ``code`` is None, the C++ loops are off or the tensors
    are not CPU float32/float64."""
    if code is None or not _state["enabled"] or not handles(x) or extension() is None:
        return None
    weights = [_EMPTY if w is None else w for w in weights]
    c = state[1] if len(state) > 1 else _EMPTY
    h, c, output = _state["module"].stack_step(x, state[0], c, weights, code)
    return output, ((h, c) if len(state) > 1 else (h,))


def _zoneout_keeps(zoneout, steps: int, h0: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Zoneout's (T, B, H) keep masks of h and c, drawn as the Python engine draws them (its
    rates at evaluation), or (None, None) without zoneout."""
    if zoneout is None:
        return None, None
    if not zoneout.training:
        return tuple(h0.new_full((steps, *h0.shape), p) for p in zoneout.rates)
    return zoneout.sample(steps, (h0, h0))


def _incoming(grad_output, grad_finals, flat_mask: Tensor, states: Tensor):
    """What reaches a loop's backward: the outputs' gradient zeroed past each sequence's end (an
    empty tensor when the outputs were not used) and the final states' gradients (zeros when
    unused)."""
    if grad_output is None:
        grad_output = states.new_empty(0)
    elif flat_mask.numel():
        grad_output = grad_output * flat_mask.unsqueeze(-1)
    shape = states.shape[1:]
    return grad_output, [states.new_zeros(shape) if g is None else g for g in grad_finals]


class _FusedLSTM(torch.autograd.Function):
    """The LSTM loop; recurrent_mask (B, H), zoneout's keep_h, keep_c (T, B, H) and the peephole
    weights (3H: w_ic | w_fc | w_oc) may be None."""

    @staticmethod
    def forward(
        ctx, recording, gx, weight_hh, bias_hh, h0, c0, mask, recurrent_mask, keep_h, keep_c, peep
    ):
        ext = extension()
        flat_mask = mask.squeeze(-1).contiguous() if mask is not None else _EMPTY_MASK
        rec = recurrent_mask if recurrent_mask is not None else _EMPTY
        keeps = (keep_h, keep_c) if keep_h is not None else (_EMPTY, _EMPTY)
        bias = bias_hh if bias_hh is not None else _EMPTY
        peep = peep if peep is not None else _EMPTY
        states, cells, cache = ext.lstm_forward(gx, weight_hh, bias, h0, c0, flat_mask, rec,
                                                *keeps, peep)  # fmt: skip
        output = _outputs(states, mask, recording)
        ctx.has_bias = bias_hh is not None
        ctx.save_for_backward(weight_hh, states, cells, cache, flat_mask, rec, *keeps, peep)
        return output, states[-1].clone(), cells[-1].clone()

    @staticmethod
    @first_order_only(LAYER_SECOND_ORDER)
    def backward(ctx, grad_output, grad_h_n, grad_c_n):
        weight_hh, states, cells, cache, flat_mask, rec, *keeps, peep = ctx.saved_tensors
        T, B, H = cache.shape[0], cache.shape[1], states.shape[2]
        grad_output, (grad_h_n, grad_c_n) = _incoming(
            grad_output, (grad_h_n, grad_c_n), flat_mask, states
        )
        grad_pre, grad_h0, grad_c0, grad_bias_hh = extension().lstm_backward(
            grad_output, grad_h_n, grad_c_n, weight_hh, cells, cache, flat_mask, rec, *keeps,
            peep, ctx.has_bias)  # fmt: skip
        h_in = states[:-1] * rec if rec.numel() else states[:-1]
        flat = grad_pre.view(T * B, -1)
        grad_weight_hh = matmul(flat.t(), h_in.reshape(T * B, H))
        grad_peep = None
        if peep.numel():  # d_i, d_f against c_{t-1}; d_o against c_t
            d_i, d_f, _, d_o = grad_pre.chunk(4, dim=-1)
            seen = (cells[:-1], cells[:-1], cells[1:])
            grad_peep = torch.cat([(d * c).sum((0, 1)) for d, c in zip((d_i, d_f, d_o), seen)])
        grads = (grad_pre, grad_weight_hh, grad_bias_hh, grad_h0, grad_c0)
        return None, *grads, None, None, None, None, grad_peep


class _FusedProjectedLSTM(torch.autograd.Function):
    """The LSTMP loop: weight_hh (4H, P), weight_hr (P, H), h0 (B, P), c0 (B, H)."""

    @staticmethod
    def forward(ctx, recording, gx, weight_hh, bias_hh, weight_hr, h0, c0, mask):
        flat_mask = mask.squeeze(-1).contiguous() if mask is not None else _EMPTY_MASK
        bias = bias_hh if bias_hh is not None else _EMPTY
        states, cells, cache = extension().lstmp_forward(
            gx, weight_hh, bias, weight_hr, h0, c0, flat_mask
        )
        output = _outputs(states, mask, recording)
        ctx.has_bias = bias_hh is not None
        ctx.save_for_backward(weight_hh, weight_hr, states, cells, cache, flat_mask)
        return output, states[-1].clone(), cells[-1].clone()

    @staticmethod
    @first_order_only(LAYER_SECOND_ORDER)
    def backward(ctx, grad_output, grad_h_n, grad_c_n):
        weight_hh, weight_hr, states, cells, cache, flat_mask = ctx.saved_tensors
        T, B, P, H = cache.shape[0], cache.shape[1], states.shape[2], cells.shape[2]
        grad_output, (grad_h_n,) = _incoming(grad_output, (grad_h_n,), flat_mask, states)
        grad_c_n = cells.new_zeros(B, H) if grad_c_n is None else grad_c_n
        grad_pre, grad_h, grad_h0, grad_c0 = extension().lstmp_backward(
            grad_output, grad_h_n, grad_c_n, weight_hh, weight_hr, cells, cache, flat_mask
        )
        m = cache[..., 3 * H : 4 * H] * cache[..., 4 * H :]  # o * tanh(c'), what W_hr saw
        grad_weight_hr = matmul(grad_h.view(T * B, P).t(), m.reshape(T * B, H))
        flat = grad_pre.view(T * B, -1)
        grad_weight_hh = matmul(flat.t(), states[:-1].reshape(T * B, P))
        grad_bias_hh = flat.sum(0) if ctx.has_bias else None
        grads = (grad_pre, grad_weight_hh, grad_bias_hh, grad_weight_hr, grad_h0, grad_c0)
        return None, *grads, None


class _FusedLayerNormLSTM(torch.autograd.Function):
    """The LN-LSTM loop; params ln_weight_hh, bias_hh (4H), ln_weight_c, ln_bias_c (H)."""

    @staticmethod
    def forward(ctx, recording, gx, weight_hh, h0, c0, mask, *params):
        flat_mask = mask.squeeze(-1).contiguous() if mask is not None else _EMPTY_MASK
        states, cells, cache, stats = extension().ln_lstm_forward(
            gx, weight_hh, h0, c0, flat_mask, list(params)
        )
        output = _outputs(states, mask, recording)
        ctx.save_for_backward(weight_hh, states, cells, cache, stats, flat_mask, *params)
        return output, states[-1].clone(), cells[-1].clone()

    @staticmethod
    @first_order_only(LAYER_SECOND_ORDER)
    def backward(ctx, grad_output, grad_h_n, grad_c_n):
        weight_hh, states, cells, cache, stats, flat_mask, *params = ctx.saved_tensors
        T, B, H = cache.shape[0], cache.shape[1], states.shape[2]
        grad_output, (grad_h_n, grad_c_n) = _incoming(
            grad_output, (grad_h_n, grad_c_n), flat_mask, states
        )
        grad_gx, grad_raw, grad_h0, grad_c0, gains = extension().ln_lstm_backward(
            grad_output, grad_h_n, grad_c_n, weight_hh, cells, cache, stats, flat_mask, params
        )
        grad_weight_hh = matmul(grad_raw.view(T * B, -1).t(), states[:-1].reshape(T * B, H))
        grad_params = gains.split([4 * H, 4 * H, H, H])  # gathered in the C++ pass
        return None, grad_gx, grad_weight_hh, grad_h0, grad_c0, None, *grad_params


class _FusedLoop(torch.autograd.Function):
    """code 3: GRU (bias_ih (3H) or None: added in the steps, not over gx first; with ``params``
    ln_weight_hh, bias_hh (3H): the layer-normalised GRU, whose bias_hh is then None); 0, 1, 2:
    Elman with tanh, relu, sigmoid (bias_ih, if given, added with bias_hh). With weight_ih,
    ``gx`` is the input x (T, B, I) and the input projection gx = x @ weight_ih^T runs here, its
    gradients too: one autograd node for a layer where `run_cell` makes three (`run_on_input`)."""

    @staticmethod
    def forward(ctx, recording, code, gx, weight_hh, bias_hh, bias_ih, h0, mask, weight_ih,
                *params):  # fmt: skip
        ext = extension()
        x = None
        if weight_ih is not None:
            x = gx.reshape(-1, gx.shape[-1])
            gx = matmul(x, weight_ih.t()).view(*gx.shape[:2], -1)
        flat_mask = mask.squeeze(-1).contiguous() if mask is not None else _EMPTY_MASK
        ctx.has_bias_ih = bias_ih is not None
        if code == 3:
            bias, bias_in = (_EMPTY if b is None else b for b in (bias_hh, bias_ih))
            states, cache, stats = ext.gru_forward(gx, weight_hh, bias, h0, flat_mask,
                                                   list(params), bias_in)  # fmt: skip
        else:
            if bias_ih is not None:  # an Elman layer has both biases or neither
                bias_hh = bias_hh + bias_ih
            bias = _EMPTY if bias_hh is None else bias_hh
            states = ext.elman_forward(gx, weight_hh, bias, h0, flat_mask, code)
            cache, stats = None, None
        output = _outputs(states, mask, recording)
        ctx.code, ctx.has_bias = code, bias_hh is not None
        ctx.save_for_backward(weight_hh, states, cache, stats, flat_mask, x, weight_ih, *params)
        return output, states[-1].clone()

    @staticmethod
    @first_order_only(LAYER_SECOND_ORDER)
    def backward(ctx, grad_output, grad_h_n):
        weight_hh, states, cache, stats, flat_mask, x, weight_ih, *params = ctx.saved_tensors
        ext = extension()
        T, B, H = states.shape[0] - 1, states.shape[1], states.shape[2]
        grad_output, (grad_h_n,) = _incoming(grad_output, (grad_h_n,), flat_mask, states)
        if ctx.code == 3:
            grad_gx, grad_gh, grad_raw, grad_h0, grad_bias_hh, grad_bias_ih = ext.gru_backward(
                grad_output, grad_h_n, weight_hh, states, cache, stats, flat_mask, params,
                ctx.has_bias, ctx.has_bias_ih)  # fmt: skip
        else:
            grad_gx, grad_h0, grad_bias_hh = ext.elman_backward(
                grad_output, grad_h_n, weight_hh, states, flat_mask, ctx.code, ctx.has_bias
            )
            grad_gh = grad_raw = grad_gx
            grad_bias_ih = grad_bias_hh.clone() if ctx.has_bias_ih else None
        through = grad_raw if params else grad_gh  # what multiplied W_hh h_{t-1}
        grad_weight_hh = matmul(through.view(T * B, -1).t(), states[:-1].reshape(T * B, H))
        grad_params = ()
        if params:  # the normalisation's gain and shift
            flat_gh = grad_gh.view(T * B, -1)
            grad_params = ((grad_gh * cache[..., 4 * H :]).sum((0, 1)), flat_gh.sum(0))
        grad_weight_ih = None
        if weight_ih is not None:  # grad_gx becomes the gradients of x and weight_ih
            flat = grad_gx.view(T * B, -1)
            grad_weight_ih = matmul(flat.t(), x) if ctx.needs_input_grad[8] else None
            grad_gx = matmul(flat, weight_ih).view(T, B, -1) if ctx.needs_input_grad[2] else None
        grads = (grad_gx, grad_weight_hh, grad_bias_hh, grad_bias_ih, grad_h0)
        return None, None, *grads, None, grad_weight_ih, *grad_params


_EMPTY_MASK = torch.empty(0, dtype=torch.bool)
_EMPTY = torch.empty(0)  # an absent bias or cell state for the C++ functions (never read)
_STEP_CODES = {"lstm": 4, "gru": 3, "elman": None}  # kernel -> code of `stack_step`
# kernel name (`Cell.kernel`) -> its run function, (cell, recording, gx, weight_hh, bias_hh,
# state0, mask, params, recurrent_mask, zoneout) -> (output, final state)
_KERNELS = {
    "lstm": _run_lstm,
    "peephole": _run_lstm,
    "lstmp": _run_lstmp,
    "ln_lstm": _run_ln_lstm,
    "gru": _run_loop,
    "ln_gru": _run_loop,
    "elman": _run_loop,
}
_small_states: dict[str, dict] = {}  # stem -> {"module", "failed"}
_build_state = {"compiler_warned": False}  # `_failure_message`
_LOCK_FILE = "rnnkit-build.lock"  # in each extension's build directory: `_build_lock`
