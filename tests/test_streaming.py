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


STACKS = {
    "lstm": lambda i, h: rnnkit.LSTM(i, h, num_layers=3),
    "gru": lambda i, h: rnnkit.GRU(i, h, num_layers=3, bias=False),
    "rnn-sigmoid": lambda i, h: rnnkit.RNN(i, h, num_layers=3, nonlinearity="sigmoid"),
}


def _flat(result) -> tuple[torch.Tensor, ...]:
    out, state = result
    return (out, *(state if isinstance(state, tuple) else (state,)))


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", STACKS)
@pytest.mark.parametrize("sizes", [(I, H), (37, 203)])  # 203: units split over two threads
def test_cpp_stack_step_equals_the_layer_by_layer_step(name, dtype, batch, sizes, monkeypatch):
    """Without autograd a plain stack steps in one C++ call (float32 at B=1: rnnkit's own
    mat-vecs, the units split over threads): the same numbers as torch's cell functions layer
    by layer (taken with the C++ loops off, or with grad on)."""
    from rnnkit.kernels import build, loops

    calls = []
    real = loops.stack_step
    monkeypatch.setattr(loops, "stack_step", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    layer = STACKS[name](*sizes).to(dtype).eval()
    x = torch.randn(batch, sizes[0], dtype=dtype)
    with torch.no_grad():
        state = layer.step(x)[1]
        fast = _flat(layer.step(x, state))
        assert len(calls) == 2
        with build.fused_enabled(False):
            slow = _flat(layer.step(x, state))
    with_grad = _flat(layer.step(x, state))  # the parameters require grad: the per-layer path
    assert len(calls) == 3 and with_grad[0].requires_grad
    tolerance = 1e-6 if dtype == torch.float32 else 1e-13
    for a, b, c in zip(fast, slow, with_grad, strict=True):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)
        torch.testing.assert_close(a, c.detach(), atol=tolerance, rtol=tolerance)
    fast[0].mul_(0)  # the output is the caller's: the state does not change with it
    torch.testing.assert_close(fast[1:], slow[1:], atol=tolerance, rtol=tolerance)


def _count_steps(layer, monkeypatch) -> list:
    """Record each call of the layer's `_step_layers` (step's path with autograd)."""
    steps = []
    real = layer._step_layers
    monkeypatch.setattr(layer, "_step_layers", lambda *a: steps.append(1) or real(*a))
    return steps


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN])
def test_forward_on_one_step_takes_the_step(cls, batch, monkeypatch):
    """A decoder's forward on one step goes through `step`'s paths (the loops' setup costs more
    than a step): without autograd the C++ stack step, with it torch's cell functions; the
    outputs, final states and gradients are torch.nn's."""
    from rnnkit.kernels import loops

    calls = []
    real = loops.stack_step
    monkeypatch.setattr(loops, "stack_step", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    layer = cls(37, 64, num_layers=2, batch_first=True).eval()
    reference = getattr(torch.nn, cls.__name__)(37, 64, num_layers=2, batch_first=True).eval()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(batch, 1, 37)
    with torch.no_grad():
        hx = reference(torch.randn(batch, 4, 37))[1]  # a carried state
    with torch.no_grad():
        out = _flat(layer(x, hx))
        assert calls == [1] and out[0].shape == (batch, 1, 64)
        expected = _flat(reference(x, hx))
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
        out[0].mul_(0)  # the output is the caller's: the final state does not change with it
        torch.testing.assert_close(out[1:], expected[1:], atol=1e-6, rtol=1e-5)
    steps = _count_steps(layer, monkeypatch)
    mine, ref = _flat(layer(x, hx)), _flat(reference(x, hx))
    assert steps == [1] and calls == [1]
    grads = [
        torch.autograd.grad(sum(t.sum() for t in outputs), list(module.parameters()))
        for outputs, module in ((mine, layer), (ref, reference))
    ]
    torch.testing.assert_close(mine, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "option", [{"recurrent_dropout": 0.3}, {"weight_dropout": 0.3}, {"zoneout": 0.2}]
)
def test_forward_on_one_step_keeps_training_noise_on_the_loop(option, monkeypatch):
    """Recurrent dropout, DropConnect and zoneout, which `step` leaves out, keep a training
    forward on one step on the full path; in evaluation (no noise) it takes the step."""
    layer = rnnkit.LSTM(5, 8, **option)
    steps = _count_steps(layer, monkeypatch)
    layer(torch.randn(1, 2, 5))
    assert steps == []
    layer.eval()(torch.randn(1, 2, 5))
    assert steps == [1]


def test_forward_on_one_step_keeps_impl_torch_and_autocast_on_torchs_kernel():
    """``impl="torch"`` refuses what torch lacks at any length, and under autocast a one-step
    forward computes in bfloat16 on torch's kernel as longer ones do."""
    layer = rnnkit.LSTM(5, 8, layer_norm=True, impl="torch").eval()
    for steps in (1, 2):
        with pytest.raises(rnnkit.RnnkitError, match="impl='torch'"):
            layer(torch.randn(steps, 2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, (h, c) = rnnkit.LSTM(5, 8)(torch.randn(1, 2, 5))
    assert output.dtype == h.dtype == torch.bfloat16
