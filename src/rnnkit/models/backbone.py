"""The recurrent layer a model is built on, chosen by name.

``CELLS`` names the configurations a task may ask for:

    "rnn"   Elman RNN, tanh, torch's default initialisation
    "irnn"  Elman RNN, relu, identity recurrent weights and zero biases (Le et al. 2015)
    "lstm"  LSTM (gates i|f|g|o)
    "gru"   GRU (gates r|z|n)
"""

from __future__ import annotations

from torch import nn

from rnnkit.errors import RnnkitError
from rnnkit.layers import GRU, LSTM, RNN

CELLS: dict[str, tuple[type[nn.Module], dict]] = {
    "rnn": (RNN, {"nonlinearity": "tanh"}),
    "irnn": (RNN, {"nonlinearity": "relu", "recurrent_init": "identity"}),
    "lstm": (LSTM, {}),
    "gru": (GRU, {}),
}


def make_rnn(
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    dropout: float = 0.0,
    impl: str = "auto",
    **options,
) -> nn.Module:
    """An rnnkit layer (time-major: (T, B, input_size) -> (T, B, hidden_size)) for ``cell``.

    ``options`` go to the layer (e.g. ``forget_bias=1.0`` for an LSTM) and override the cell's
    preset (e.g. ``recurrent_init="orthogonal"`` for "rnn").
    """
    if cell not in CELLS:
        raise RnnkitError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
    layer, preset = CELLS[cell]
    return layer(
        input_size, hidden_size, num_layers, dropout=dropout, impl=impl, **{**preset, **options}
    )
