"""rnnkit's three C++ extensions as a whole: build them all ahead of time (`build_all`, what
``rnnkit kernels build`` runs) and report what is built and which paths the layers take
(`report`, ``rnnkit kernels``; like DeepSpeed's ``ds_report``).

The builds themselves, their folder (`rnnkit.kernels.build.kernels_dir`) and their lock are
`rnnkit.kernels.build`'s; this module only names the extensions and reads their state, never
building on its own (a report is instant and changes nothing).
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rnnkit.kernels import build


@dataclass(frozen=True)
class Extension:
    name: str  # as `rnnkit kernels` shows it
    stem: str  # the module's name before its variant suffix
    source: Path
    runs: str  # what it runs, for the report


EXTENSIONS = (
    Extension("fused", "rnnkit_fused", build._SOURCE, "the time loops (GRU, Elman, LSTM variants)"),
    Extension("scan", "rnnkit_scan", build._SOURCE.parent / "scan.cpp", "MinGRU / MinLSTM scans"),
    Extension("dropout", "rnnkit_dropout", build._SOURCE.parent / "dropout.cpp", "Dropout masks"),
)


def variants(ext: Extension) -> list[str]:
    """The names its builds may take, the preferred first (see `rnnkit.kernels.build._build`)."""
    return [f"{ext.stem}_{suffix}" for suffix in (build._cpu_tag(), "generic", "serial")]


def built_variant(ext: Extension) -> str | None:
    """The name of the build of ``ext`` that a first use would load, or None (it would build)."""
    first = variants(ext)[0]
    if build.is_built(first, ext.source):
        return first
    return None


def build_all(echo=print) -> dict[str, float | str]:
    """Build (or check) every extension into `rnnkit.kernels.build.kernels_dir`, saying how long
    each took; returns name -> seconds, or the error's text where one could not be built."""
    from torch.utils.cpp_extension import load

    results: dict[str, float | str] = {}
    for ext in EXTENSIONS:
        already = built_variant(ext) is not None
        start = time.monotonic()
        try:
            build._build(load, ext.source, ext.stem, announce=False)
        except Exception as err:
            results[ext.name] = " ".join(str(err).split())[:300]
            echo(f"{ext.name}: could not be built: {results[ext.name]}")
            continue
        results[ext.name] = time.monotonic() - start
        state = "already built, checked" if already else "built"
        echo(f"{ext.name}: {state} in {results[ext.name]:.1f} s")
    return results


def prepare() -> None:
    """Load the time loops now, building them if this is their first use, unless they are off
    (``RNNKIT_FUSED=0``, `rnnkit.kernels.build.fused_enabled`): what times its work (the demo) calls
    this first, so that no build lands inside its timings."""
    if build._state["enabled"]:
        build.extension()


def report() -> dict:
    """What is built, where, with what, and the path each layer takes as things stand."""
    import torch

    missing = build._missing_tools()
    disabled = os.environ.get("RNNKIT_FUSED", "1") == "0"
    extensions = []
    for ext in EXTENSIONS:
        name = built_variant(ext)
        extensions.append(
            {
                "name": ext.name,
                "runs": ext.runs,
                "built": name is not None,
                "directory": str(build._build_directory(name or variants(ext)[0])),
            }
        )
    usable = {e["name"]: e["built"] and not disabled for e in extensions}
    compiler = os.environ.get("CXX", "c++")
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": f"{platform.machine()} {build._cpu_tag()}",
        "kernels_dir": str(build.kernels_dir()),
        "compiler": shutil.which(compiler) or f"none ({compiler} not found)",
        "can_build": missing is None,
        "disabled": disabled,
        "extensions": extensions,
        "paths": _paths(usable, missing is None and not disabled, torch),
    }


def _paths(usable: dict[str, bool], buildable: bool, torch) -> dict[str, str]:
    """Which code each layer runs on the CPU in float32 (impl="auto"): a C++ kernel already
    built, one that the first use would build (about a minute), or torch's / Python's."""

    def kernel(name: str, theirs: str, ours: str) -> str:
        if usable[name]:
            return ours
        if buildable:
            return f"{ours} once built (the first use builds it, about a minute), else {theirs}"
        return theirs

    onednn = " (oneDNN)" if torch.backends.mkldnn.is_available() else ""
    return {
        "GRU, RNN (Elman)": kernel("fused", "torch's kernel", "rnnkit's C++ loops"),
        "LSTM": f"torch's kernel{onednn}",
        "LSTM with layer_norm, peepholes, recurrent dropout or zoneout; layer-norm GRU": (
            kernel("fused", "rnnkit's Python engine", "rnnkit's C++ loops")
        ),
        "Dropout": kernel("dropout", "torch's dropout", "rnnkit's C++ dropout"),
        "MinGRU, MinLSTM": kernel("scan", "rnnkit's Python loop", "rnnkit's C++ scans"),
    }
