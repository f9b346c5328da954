"""Wrong input to a layer: an RnnkitError (a ValueError) naming argument, expected, actual."""

from __future__ import annotations

import re

import pytest
import torch

import rnnkit

T, B, I, H = 7, 3, 5, 11  # primes, so a swapped dimension shows


def check(layer, message, *args, **kwargs):
    with pytest.raises(rnnkit.RnnkitError, match=re.escape(message)) as info:
        layer(*args, **kwargs)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("impl", ["bptt", "torch"])
def test_wrong_feature_size(impl):
    layer = rnnkit.LSTM(I, H, impl=impl)
    check(
        layer,
        "LSTM: input.size(-1) must equal input_size=5, got 4 (input shape (7, 3, 4))",
        torch.randn(T, B, 4),
    )


def test_wrong_rank():
    check(
        rnnkit.GRU(I, H),
        "GRU: input must have shape (T, B, 5) or unbatched (T, 5), got (5,)",
        torch.randn(I),
    )


def test_integer_input():
    check(
        rnnkit.RNN(I, H),
        "RNN: input must be a floating-point tensor, got torch.int64",
        torch.ones(T, B, I, dtype=torch.long),
    )


def test_empty_sequence():
    check(rnnkit.GRU(I, H), "GRU: input is an empty sequence (T=0)", torch.randn(0, B, I))


def test_wrong_hx_shape():
    layer = rnnkit.GRU(I, H, num_layers=2)
    check(
        layer,
        "GRU: h_0 must have shape (2, 3, 11) (num_layers * num_directions, batch, "
        "hidden_size), got (1, 3, 11)",
        torch.randn(T, B, I),
        torch.zeros(1, B, H),
    )


def test_lstm_hx_must_be_a_pair():
    layer = rnnkit.LSTM(I, H)
    check(
        layer,
        "LSTM: hx must be a tuple (h_0, c_0), got 1 tensor(s)",
        torch.randn(T, B, I),
        torch.zeros(1, B, H),
    )
    check(
        layer,
        "LSTM: c_0 must have shape (1, 3, 11)",
        torch.randn(T, B, I),
        (torch.zeros(1, B, H), torch.zeros(1, B, 2)),
    )


def test_hx_dtype():
    check(
        rnnkit.RNN(I, H),
        "RNN: h_0 dtype torch.float64 differs from input torch.float32",
        torch.randn(T, B, I),
        torch.zeros(1, B, H, dtype=torch.float64),
    )


@pytest.mark.parametrize(
    "lengths,message",
    [
        ([7, 8, 2], "RNN: lengths[1]=8 is longer than the input (T=7)"),
        ([7, 0, 2], "RNN: lengths[1]=0; every sequence needs length >= 1"),
        ([7, 2], "RNN: lengths must have shape (3,), one per sequence, got (2,)"),
        (torch.tensor([7.0, 1.0, 2.0]), "RNN: lengths must be integers, got torch.float32"),
    ],
)
def test_bad_lengths(lengths, message):
    check(rnnkit.RNN(I, H), message, torch.randn(T, B, I), lengths=lengths)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
        ({"num_layers": 1.5}, "num_layers must be a positive integer, got 1.5"),
        ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
        ({"impl": "cuda"}, "impl must be one of auto, bptt, torch, got 'cuda'"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    args = {"input_size": I, "hidden_size": H, **kwargs}
    with pytest.raises(rnnkit.RnnkitError, match=re.escape(message)):
        rnnkit.LSTM(**args)
