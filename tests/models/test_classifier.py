"""SequenceClassifier: every pooling respects lengths, attention weights, shapes, ManyToOne."""

from __future__ import annotations

import pytest
import torch

from rnnkit.errors import RnnkitError
from rnnkit.models.classifier import POOLINGS, SequenceClassifier

torch.set_num_threads(1)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_never_changes_the_prediction(pooling, bidirectional, cell):
    torch.manual_seed(0)
    model = SequenceClassifier(cell, 5, 6, 3, num_layers=2, bidirectional=bidirectional,
                               pooling=pooling).eval()  # fmt: skip
    x = torch.randn(4, 1, 5)  # one sequence of 4 steps, alone
    alone, _ = model.predict(x)
    for pad in (1, 6):  # the same sequence padded with garbage, in a batch with a longer one
        batch = torch.randn(4 + pad, 2, 5) * 10
        batch[:4, 0] = x[:, 0]
        probs, _ = model.predict(batch, torch.tensor([4, 4 + pad]))
        torch.testing.assert_close(probs[0], alone[0], rtol=1e-5, atol=1e-6)


def test_attention_weights_sum_to_one_over_valid_steps():
    torch.manual_seed(1)
    model = SequenceClassifier("lstm", 7, 8, 2, embedding_size=4, bidirectional=True,
                               pooling="attention")  # fmt: skip
    ids = torch.randint(0, 7, (9, 3))
    lengths = torch.tensor([9, 5, 1])
    probs, alpha = model.predict(ids, lengths)
    assert probs.shape == (3, 2) and alpha.shape == (9, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    torch.testing.assert_close(alpha.sum(0), torch.ones(3))
    for b, n in enumerate(lengths.tolist()):
        assert (alpha[n:, b] == 0).all() and (alpha[:n, b] > 0).all()
    assert model.predict(ids, lengths)[1] is not None
    assert (
        SequenceClassifier("gru", 7, 8, 2, pooling="mean").predict(torch.randn(3, 1, 7))[1] is None
    )


def test_forward_gives_logits_and_gradients_reach_the_embedding():
    model = SequenceClassifier("gru", 10, 6, 4, embedding_size=3, pooling="max")
    logits = model(torch.randint(0, 10, (5, 2)), torch.tensor([5, 2]))
    assert logits.shape == (2, 4)
    logits.sum().backward()
    assert model.embedding.weight.grad.abs().sum() > 0


def test_bad_settings_and_inputs_are_rnnkit_errors():
    with pytest.raises(RnnkitError, match="pooling must be one of"):
        SequenceClassifier("lstm", 3, 4, 2, pooling="median")
    model = SequenceClassifier("lstm", 10, 4, 2, embedding_size=3)
    with pytest.raises(RnnkitError, match="token ids"):
        model(torch.randn(4, 2, 3))


def test_many_to_one_is_the_same_model():
    from rnnkit.models.classifier import ManyToOne

    model = ManyToOne("lstm", 2, 4, 1, 2)
    assert model(torch.randn(6, 3, 2)).shape == (3, 1)
    assert {"head.weight", "rnn.weight_hh_l1"} <= set(model.state_dict())
