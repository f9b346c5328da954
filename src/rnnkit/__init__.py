"""rnnkit: recurrent neural networks with explicit BPTT and torch-compatible layers."""

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
from rnnkit.fused import tune_process
from rnnkit.layers import GRU, LSTM, RNN, Recurrent
from rnnkit.recurrence import run_cell
from rnnkit.scan import MinGRU, MinLSTM

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Recurrent",
    "Cell",
    "Dropout",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "LayerNormGRUCell",
    "LayerNormLSTMCell",
    "MinGRU",
    "MinLSTM",
    "PeepholeLSTMCell",
    "ProjectedLSTMCell",
    "RnnkitError",
    "dropout",
    "run_cell",
    "tune_process",
]
__version__ = "0.1.0"
