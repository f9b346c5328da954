"""Gradient flow through time equals what autograd gives on an independent computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rnnkit.diagnostics.gradient_flow import (
    decay_summary,
    fit_decay,
    hidden_gradient_norms,
    record_hidden_states,
)
from rnnkit.errors import RnnkitError
from rnnkit.models.classifier import ManyToOne


@pytest.fixture(autouse=True)
def one_thread():
    """Small recurrent products gain nothing from threads; on a shared CPU extra ones spin."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _loss(model, x, y, lengths=None):
    return lambda m: ((m(x, lengths).squeeze(-1) - y) ** 2).mean()


def _oracle(model, x, y, t):
    """dL/dh_t (top layer) by restarting the fused layer at step t+1 from a leaf state."""
    with torch.no_grad():
        _, state = model.rnn(x[: t + 1])
    state = tuple(s.clone() for s in state) if isinstance(state, tuple) else (state.clone(),)
    h = state[0].requires_grad_(True)
    rest = (h, *state[1:]) if len(state) > 1 else h
    if t + 1 < x.shape[0]:
        _, final = model.rnn(x[t + 1 :], rest)
    else:
        final = rest
    h_n = final[0] if isinstance(final, tuple) else final
    loss = ((model.head(h_n[-1]).squeeze(-1) - y) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, h)
    return float(grad[-1].norm())


@pytest.mark.parametrize("cell, layers", [("rnn", 1), ("lstm", 2), ("gru", 1)])
def test_norms_equal_autograd_from_a_restarted_layer(cell, layers):
    torch.manual_seed(0)
    model = ManyToOne(cell, 2, 5, 1, num_layers=layers).double()
    x, y = torch.randn(9, 3, 2, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    norms = hidden_gradient_norms(model, _loss(model, x, y))
    assert norms.shape == (9,)
    for t in (0, 4, 8):
        assert norms[t].item() == pytest.approx(_oracle(model, x, y, t), rel=1e-9)
    # At the last step only the head is downstream: dL/dh_{T-1} = 2 (y_hat - y) / B * w_head.
    with torch.no_grad():
        residual = model(x).squeeze(-1) - y
    expected = (2 * residual / 3)[:, None] * model.head.weight.detach()  # (B, H)
    assert norms[-1].item() == pytest.approx(float(expected.norm()), rel=1e-9)


def test_stepped_forward_reproduces_the_layer_with_lengths():
    torch.manual_seed(1)
    model = ManyToOne("lstm", 2, 4, 1, num_layers=2)
    x, lengths = torch.randn(6, 3, 2), torch.tensor([6, 2, 4])
    expected = model(x, lengths)
    with record_hidden_states(model.rnn) as states:
        got = model(x, lengths)
    assert len(states) == 6 and states[0].shape == (2, 3, 4)
    torch.testing.assert_close(got, expected)
    # past its end (t >= 2) sequence 1's state no longer changes, and gets no new gradient
    norms = hidden_gradient_norms(model, _loss(model, x, torch.zeros(3), lengths))
    assert torch.all(norms > 0)


def test_batch_first_torch_layer_and_outputs_at_every_step():
    torch.manual_seed(3)
    gru = nn.GRU(2, 4, batch_first=True)
    x = torch.randn(3, 7, 2)  # (B, T, I)
    expected, h_n = gru(x)
    with record_hidden_states(gru) as states:
        got, got_h = gru(x)
    assert len(states) == 7
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_h, h_n)
    norms = hidden_gradient_norms(gru, lambda m: m(x)[0][:, 3].sum())  # loss reads step 3 only
    assert torch.all(norms[4:] == 0) and torch.all(norms[:4] > 0)


def test_tanh_rnn_with_small_weights_vanishes_geometrically():
    torch.manual_seed(2)
    model = ManyToOne("rnn", 2, 16, 1)
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(0.3)
    x, y = torch.rand(40, 8, 2), torch.rand(8)
    norms = hidden_gradient_norms(model, _loss(model, x, y))
    assert norms[0] < 1e-6 * norms[-1]
    assert 0 < fit_decay(norms) < 0.8
    assert "orders of magnitude over 39 steps" in decay_summary("rnn", norms)


def test_fit_decay_recovers_a_geometric_factor():
    t = torch.arange(50, dtype=torch.float64)
    assert fit_decay(3.0 * 0.9 ** (49 - t)) == pytest.approx(0.9)
    assert fit_decay(torch.tensor([0.0, 0.0, 1.0])) != fit_decay(torch.tensor([0.0, 0.0, 1.0]))
    assert math.isnan(fit_decay(torch.tensor([0.0, 0.0, 1.0])))


def test_errors_are_rnnkit_errors():
    two = nn.Sequential(nn.LSTM(2, 3), nn.GRU(3, 3))
    with pytest.raises(RnnkitError, match="exactly one recurrent layer"):
        hidden_gradient_norms(two, lambda m: torch.zeros(()))
    bi = ManyToOne("gru", 2, 3, 1, bidirectional=True)
    with pytest.raises(RnnkitError, match="one direction only"):
        hidden_gradient_norms(bi, lambda m: m(torch.randn(4, 1, 2)).sum())
