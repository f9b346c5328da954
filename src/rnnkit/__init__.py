"""rnnkit: recurrent neural networks with explicit BPTT and torch-compatible layers."""

from rnnkit.cells import Cell, ElmanCell, GRUCell, LSTMCell
from rnnkit.errors import RnnkitError
from rnnkit.layers import GRU, LSTM, RNN
from rnnkit.recurrence import run_cell

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Cell",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "RnnkitError",
    "run_cell",
]
__version__ = "0.1.0"
