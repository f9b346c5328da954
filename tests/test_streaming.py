"""Layer.step: one step at a time equals the full forward pass (streaming and generation)."""

from __future__ import annotations

import pytest
import torch

import rnnkit

T, B, I, H = 7, 2, 3, 5
CONFIGS = [
    (rnnkit.LSTM, {}),
    (rnnkit.GRU, {}),
    (rnnkit.RNN, {"nonlinearity": "relu"}),
    (rnnkit.LSTM, {"layer_norm": True, "zoneout": (0.2, 0.4)}),
    (rnnkit.LSTM, {"peephole": True}),
    (rnnkit.GRU, {"layer_norm": True, "recurrent_dropout": 0.3}),
]


@pytest.mark.parametrize("cls,options", CONFIGS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_step_equals_forward(cls, options, batch_first):
    torch.manual_seed(0)
    layer = cls(I, H, num_layers=2, batch_first=batch_first, **options).double().eval()
    x = torch.randn(T, B, I, dtype=torch.float64)
    out, final = layer(x.transpose(0, 1) if batch_first else x)
    state, steps = None, []
    for x_t in x:
        y, state = layer.step(x_t, state)
        steps.append(y)
    stepped = torch.stack(steps, dim=1 if batch_first else 0)
    torch.testing.assert_close(stepped, out, atol=1e-12, rtol=0)
    for mine, ref in zip(
        state if isinstance(state, tuple) else (state,),
        final if isinstance(final, tuple) else (final,),
        strict=True,
    ):
        torch.testing.assert_close(mine, ref, atol=1e-12, rtol=0)


def test_unbatched_step_and_errors():
    layer = rnnkit.GRU(I, H, num_layers=3).double()
    y, h = layer.step(torch.randn(I, dtype=torch.float64))
    assert y.shape == (H,) and h.shape == (3, H)
    with pytest.raises(rnnkit.RnnkitError, match="step needs bidirectional=False"):
        rnnkit.LSTM(I, H, bidirectional=True).step(torch.randn(B, I))
    with pytest.raises(rnnkit.RnnkitError, match=r"input.size\(-1\) must equal input_size=3"):
        layer.step(torch.randn(B, 4, dtype=torch.float64))
