"""Recurrent cells: one time step and its hand-derived backward each."""

from rnnkit.cells.base import Cell
from rnnkit.cells.elman import ElmanCell
from rnnkit.cells.gru import GRUCell
from rnnkit.cells.layernorm import LayerNormGRUCell, LayerNormLSTMCell
from rnnkit.cells.lstm import LSTMCell
from rnnkit.cells.peephole import PeepholeLSTMCell
from rnnkit.cells.projected import ProjectedLSTMCell

__all__ = [
    "Cell",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "LayerNormGRUCell",
    "LayerNormLSTMCell",
    "PeepholeLSTMCell",
    "ProjectedLSTMCell",
]
