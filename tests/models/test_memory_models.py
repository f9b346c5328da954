"""The many-to-one model and the cell-name factory."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.errors import RnnkitError
from rnnkit.models.backbone import make_rnn
from rnnkit.models.classifier import ManyToOne


def test_make_rnn_presets():
    irnn = make_rnn("irnn", 3, 5)
    assert isinstance(irnn, rnnkit.RNN) and irnn.nonlinearity == "relu"
    torch.testing.assert_close(irnn.weight_hh_l0.detach(), torch.eye(5))
    assert isinstance(make_rnn("gru", 3, 5), rnnkit.GRU)
    lstm = make_rnn("lstm", 3, 5, forget_bias=1.0)
    assert float(lstm.bias_ih_l0.detach()[5:10].min()) == 1.0
    with pytest.raises(RnnkitError, match="unknown cell 'lsmt'; choose one of rnn, irnn"):
        make_rnn("lsmt", 3, 5)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_many_to_one_reads_each_sequence_at_its_own_end(cell):
    torch.manual_seed(0)
    model = ManyToOne(cell, 2, 6, 1, num_layers=2)
    x = torch.randn(7, 3, 2)
    lengths = torch.tensor([7, 4, 1])
    out = model(x, lengths)
    assert out.shape == (3, 1)
    alone = model(x[:4, 1:2])  # sequence 1 cut at its length, alone in its batch
    torch.testing.assert_close(out[1:2], alone)
