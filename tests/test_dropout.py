"""rnnkit's dropout: the kernel's mask (distribution, reproducibility, every dtype, odd sizes),
its gradient, the fallback to torch's, and the layers and models that use it."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit.dropout import Dropout, dropout, keep_mask, locked_dropout, torch_masks
from rnnkit.kernels import build
from rnnkit.models.sequence import SequenceModel


def seeded(x: torch.Tensor, p: float, seed: int = 5) -> torch.Tensor:
    torch.manual_seed(seed)
    return dropout(x, p)


def run_both(engine, kernel, x, lengths) -> list[tuple]:
    """Both layers (kernel given engine's weights) under one seed: for each, (output, final
    states, parameter gradients)."""
    kernel.load_state_dict(engine.state_dict())
    results = []
    for layer in (engine, kernel):
        torch.manual_seed(11)
        out, state = layer(x, lengths=lengths)
        states = state if isinstance(state, tuple) else (state,)
        grads = torch.autograd.grad(out.sum() + sum(s.sum() for s in states), layer.parameters())
        results.append((out, states, grads))
    return results


def test_the_kernel_is_built():
    assert build.dropout_extension() is not None


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_and_scale(p):
    x = torch.ones(1_000_003, dtype=torch.float64)
    y = seeded(x, p)
    kept = y != 0
    assert abs(kept.double().mean().item() - (1 - p)) < 0.002
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)), rtol=1e-9, atol=0)


def test_neighbours_are_uncorrelated():
    """Elements share a 64-bit hash in pairs: neither neighbours nor pairs may correlate."""
    kept = (seeded(torch.ones(2_000_000), 0.5) != 0).double()
    for shift in (1, 2, 3):
        corr = torch.corrcoef(torch.stack([kept[:-shift], kept[shift:]]))[0, 1]
        assert abs(corr.item()) < 0.005


def test_same_seed_same_mask_new_draw_new_mask():
    x = torch.randn(301, 17)
    torch.testing.assert_close(seeded(x, 0.3), seeded(x, 0.3), rtol=0, atol=0)
    torch.manual_seed(5)
    first, second = dropout(x, 0.3), dropout(x, 0.3)
    assert not torch.equal(first != 0, second != 0)


def test_the_mask_does_not_depend_on_the_thread_count():
    x = torch.randn(3, 100_001)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = seeded(x, 0.4)
        torch.set_num_threads(2)
        two = seeded(x, 0.4)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(one, two, rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 33, 34])
def test_odd_sizes_extend_the_even_mask(n):
    """Element i's mask is a function of (seed, i): a tensor of n elements gets the first n of
    the n + 1 elements' mask, whether n is odd (the last one alone in its pair) or even."""
    short, long = seeded(torch.ones(n), 0.5), seeded(torch.ones(n + 1), 0.5)
    torch.testing.assert_close(short, long[:n], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_every_dtype_drops_the_same_elements(dtype):
    """Narrow types compute in float32 and round once; float64 keeps the same elements."""
    x = torch.randn(1001, 37).to(dtype)
    expected = seeded(x.float(), 0.3).to(dtype)
    got = seeded(x, 0.3)
    assert got.dtype == dtype
    if dtype == torch.float64:
        torch.testing.assert_close(got != 0, expected != 0)
    else:
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_non_contiguous_input():
    x = torch.randn(40, 30).t()
    torch.testing.assert_close(seeded(x, 0.3), seeded(x.contiguous(), 0.3), rtol=0, atol=0)


def test_gradient_is_the_same_mask():
    x = torch.randn(9, 11, dtype=torch.float64, requires_grad=True)
    y = seeded(x, 0.4)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    torch.testing.assert_close(grad, y.detach() / x.detach(), rtol=1e-12, atol=0)

    def function(t):
        return seeded(t, 0.4)

    assert torch.autograd.gradcheck(function, (x,))
    assert torch.autograd.gradgradcheck(function, (x,))


def test_off_in_eval_and_at_zero_and_one():
    x = torch.randn(5, 6)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.count_nonzero(dropout(x, 1.0)) == 0
    module = Dropout(0.5).eval()
    assert module(x) is x


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_a_probability_outside_zero_one_is_refused(p):
    for call in (lambda: dropout(torch.ones(3), p), lambda: Dropout(p)):
        with pytest.raises(rnnkit.RnnkitError, match=r"dropout probability must be in \[0, 1\]"):
            call()


def test_bad_inputs_get_rnnkits_error():
    with pytest.raises(rnnkit.RnnkitError, match="floating-point tensor, got torch.int64"):
        dropout(torch.ones(3, dtype=torch.int64), 0.5)
    with pytest.raises(rnnkit.RnnkitError, match=r"locked_dropout takes \(T, B, F\)"):
        locked_dropout(torch.ones(5, 5), 0.5)
    with pytest.raises(rnnkit.RnnkitError, match=r"keep probability must be in \[0, 1\]"):
        keep_mask((4,), 1.5, torch.empty(0))


def test_without_the_kernel_it_is_torchs_dropout(monkeypatch):
    """RNNKIT_FUSED=0 or a failed build: torch's masks, under one seed the same as its own."""
    x = torch.randn(50, 20)
    monkeypatch.setattr(build, "dropout_extension", lambda: None)
    ours = seeded(x, 0.3)
    torch.manual_seed(5)
    torch.testing.assert_close(ours, torch.nn.functional.dropout(x, 0.3), rtol=0, atol=0)


def test_within_torch_masks_it_is_torchs_dropout():
    x = torch.randn(50, 20)
    with torch_masks():
        ours = seeded(x, 0.3)
    torch.manual_seed(5)
    torch.testing.assert_close(ours, torch.nn.functional.dropout(x, 0.3), rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_torch_kernel_and_engine_agree_with_dropout_between_layers(cell, ragged, monkeypatch):
    """impl="torch" (one kernel call per layer with rnnkit's dropout between them) against the
    engine: same outputs, states and gradients. On full sequences both draw the same masks in
    the same order; with lengths the kernel drops over the packed steps, the engine over the
    padded ones (different masks, both right), so a fixed scaling stands in for the dropout."""
    if ragged:
        monkeypatch.setattr(rnnkit.layers, "dropout", lambda x, p: x * (1 - p))
    torch.manual_seed(0)
    engine = getattr(rnnkit, cell)(4, 6, num_layers=3, dropout=0.4, impl="bptt").double()
    kernel = getattr(rnnkit, cell)(4, 6, num_layers=3, dropout=0.4, impl="torch").double()
    x = torch.randn(7, 5, 4, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5, 1, 7]) if ragged else None
    results = run_both(engine, kernel, x, lengths)
    torch.testing.assert_close(results[0], results[1], rtol=1e-9, atol=1e-12)
    torch.manual_seed(11)
    assert not torch.equal(kernel(x, lengths=lengths)[0], kernel.eval()(x, lengths=lengths)[0])


def test_models_use_it_and_keep_nn_dropouts_interface():
    """The model's masks are the kernel's (not torch's under the same seed), reproducible."""
    model = SequenceModel("lstm", 10, 8, 10, num_layers=2, dropout=0.3, embedding_size=4)
    assert isinstance(model.drop, Dropout) and isinstance(model.drop, torch.nn.Dropout)
    ids = torch.randint(0, 10, (6, 3))
    outputs = []
    for masks in (contextlib.nullcontext(), contextlib.nullcontext(), torch_masks()):
        torch.manual_seed(2)
        with masks:
            outputs.append(model(ids)[0])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    assert not torch.equal(outputs[2], outputs[0])
    model.eval()
    torch.testing.assert_close(model(ids)[0], model(ids)[0], rtol=0, atol=0)


def test_recurrent_dropout_and_dropconnect_masks_come_from_the_kernel():
    """Layers' masks: exactly 0 or 1 / (1 - p), different from torch's under the same seed."""
    layer = rnnkit.LSTM(4, 200, recurrent_dropout=0.25)
    mask, _ = layer._recurrent_noise(layer._cells[0], (torch.zeros(3, 200),))
    torch.testing.assert_close(mask.unique(), torch.tensor([0.0, 1 / 0.75]))
    x = torch.randn(5, 3, 4)
    for options in ({"recurrent_dropout": 0.25}, {"weight_dropout": 0.25}):
        layer = rnnkit.LSTM(4, 6, **options)
        outputs = []
        for masks in (contextlib.nullcontext(), torch_masks()):
            torch.manual_seed(3)
            with masks:
                outputs.append(layer(x)[0])
        assert not torch.equal(outputs[0], outputs[1]), options


@pytest.mark.parametrize("keep", [0.0, 0.2, 0.7, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_keep_mask_is_ones_at_its_rate(keep, dtype):
    """Zoneout's masks: exactly 1 with probability ``keep``, else exactly 0."""
    torch.manual_seed(0)
    mask = keep_mask((100, 30, 101), keep, torch.empty(0, dtype=dtype))
    assert mask.shape == (100, 30, 101) and mask.dtype == dtype
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert abs(mask.double().mean().item() - keep) < 0.005


def test_locked_dropout_keeps_one_mask_per_sequence():
    x = torch.ones(9, 4, 300)
    torch.manual_seed(0)
    y = locked_dropout(x, 0.4)
    assert torch.equal(y, y[:1].expand_as(y))  # the same at every step
    assert abs((y[0] != 0).float().mean().item() - 0.6) < 0.05
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.6))
    assert locked_dropout(x, 0.4, training=False) is x


def test_locked_dropout_on_packed_rows_gives_each_sequence_its_mask():
    x = torch.randn(6, 5, 7)
    lengths = torch.tensor([3, 6, 1, 6, 4])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    torch.manual_seed(3)
    padded = locked_dropout(x, 0.5)
    torch.manual_seed(3)
    rows = locked_dropout(packed.data, 0.5, packed=packed)
    expected = pack_padded_sequence(padded, lengths, enforce_sorted=False).data
    torch.testing.assert_close(rows, expected, rtol=0, atol=0)


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "lengths"])
def test_locked_dropout_between_layers_on_both_paths(ragged, monkeypatch):
    """torch's kernel (packed rows with lengths) and the engine (padded steps) give each
    sequence the same mask: same outputs and gradients; the mask is the same at every step."""
    torch.manual_seed(0)
    options = {"num_layers": 2, "dropout": 0.5, "locked_dropout": True}
    engine = rnnkit.LSTM(4, 6, impl="bptt", **options).double()
    kernel = rnnkit.LSTM(4, 6, impl="torch", **options).double()
    x = torch.randn(7, 5, 4, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5, 1, 7]) if ragged else None
    results = run_both(engine, kernel, x, lengths)
    torch.testing.assert_close(results[0], results[1], rtol=1e-9, atol=1e-12)
    seen = []
    original = rnnkit.layers.locked_dropout

    def spy(data, p, packed=None):
        seen.append(original(data, p, packed=packed))
        return seen[-1]

    monkeypatch.setattr(rnnkit.layers, "locked_dropout", spy)
    engine(x)
    (dropped,) = [out == 0 for out in seen]
    assert dropped.any() and torch.equal(dropped, dropped[:1].expand_as(dropped))


def test_sequence_model_locks_its_head_dropout_too():
    model = SequenceModel("lstm", 10, 300, 10, dropout=0.5, embedding_size=4, locked_dropout=True)
    assert model.rnn.locked_dropout
    seen = []
    model.head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(torch.randint(0, 10, (6, 3)))
    dropped = seen[0] == 0
    assert dropped.any() and torch.equal(dropped, dropped[:1].expand_as(dropped))
