"""rnnkit's C++ kernels as torch operators.

- `rnnkit.kernels.ops`: the ``torch.ops.rnnkit.*`` operators' schemas and fake kernels;
- `rnnkit.kernels.build`: building and loading the extensions that implement them (``csrc/``);
- `rnnkit.kernels.loops`: the time loops with their autograd, as the engine runs them;
- `rnnkit.kernels.products`: the engine's big matrix products;
- `rnnkit.kernels.report`: ``rnnkit kernels [build]``, what is built and which path runs.
"""

from __future__ import annotations

import importlib


def __getattr__(name: str):
    """A submodule by name (``rnnkit.kernels.loops``), imported the first time it is asked for."""
    if name in ("build", "loops", "ops", "products", "report"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'rnnkit.kernels' has no attribute {name!r}")
