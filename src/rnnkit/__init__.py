"""rnnkit: recurrent neural networks with explicit BPTT and torch-compatible layers.

The public names load on first use (PEP 562), so that importing ``rnnkit`` (or running
``rnnkit --help``) does not import torch; ``from rnnkit import GRU`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rnnkit._version import __version__ as __version__

#: public name -> the module that defines it
_WHERE = {
    "Cell": "rnnkit.cells",
    "ElmanCell": "rnnkit.cells",
    "GRUCell": "rnnkit.cells",
    "LayerNormGRUCell": "rnnkit.cells",
    "LayerNormLSTMCell": "rnnkit.cells",
    "LSTMCell": "rnnkit.cells",
    "PeepholeLSTMCell": "rnnkit.cells",
    "ProjectedLSTMCell": "rnnkit.cells",
    "Dropout": "rnnkit.dropout",
    "Forecaster": "rnnkit.forecasting.forecaster",
    "dropout": "rnnkit.dropout",
    "RnnkitError": "rnnkit.errors",
    "tune_process": "rnnkit.kernels.build",
    "GRU": "rnnkit.layers",
    "LSTM": "rnnkit.layers",
    "RNN": "rnnkit.layers",
    "Recurrent": "rnnkit.layers",
    "run_cell": "rnnkit.recurrence",
    "load": "rnnkit.predictor",
    "Predictor": "rnnkit.predictor",
    "MinGRU": "rnnkit.scan",
    "MinLSTM": "rnnkit.scan",
}

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Recurrent",
    "Cell",
    "Dropout",
    "ElmanCell",
    "Forecaster",
    "GRUCell",
    "LSTMCell",
    "LayerNormGRUCell",
    "LayerNormLSTMCell",
    "MinGRU",
    "MinLSTM",
    "PeepholeLSTMCell",
    "Predictor",
    "ProjectedLSTMCell",
    "RnnkitError",
    "dropout",
    "load",
    "run_cell",
    "tune_process",
]


def __getattr__(name: str):
    """Load public ``name`` from its module the first time it is asked for; a submodule's name
    (``rnnkit.kernels.build``) imports it, as the eager imports of old made it an attribute."""
    where = _WHERE.get(name)
    if where is None:
        if not name.startswith("_"):
            try:
                return importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as err:
                if err.name != f"{__name__}.{name}":
                    raise
        raise AttributeError(f"module 'rnnkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs: the names as plain imports
    from rnnkit.cells import (
        Cell,
        ElmanCell,
        GRUCell,
        LayerNormGRUCell,
        LayerNormLSTMCell,
        LSTMCell,
        PeepholeLSTMCell,
        ProjectedLSTMCell,
    )
    from rnnkit.dropout import Dropout, dropout
    from rnnkit.errors import RnnkitError
    from rnnkit.forecasting.forecaster import Forecaster
    from rnnkit.kernels.build import tune_process
    from rnnkit.layers import GRU, LSTM, RNN, Recurrent
    from rnnkit.predictor import Predictor, load
    from rnnkit.recurrence import run_cell
    from rnnkit.scan import MinGRU, MinLSTM
