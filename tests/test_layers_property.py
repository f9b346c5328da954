"""Property-based: random shapes, lengths, options and dtypes, rnnkit against torch.nn."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit

LAYERS = {
    "rnn_tanh": (rnnkit.RNN, torch.nn.RNN, {}),
    "rnn_relu": (rnnkit.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnnkit.LSTM, torch.nn.LSTM, {}),
    "gru": (rnnkit.GRU, torch.nn.GRU, {}),
}


@st.composite
def configurations(draw):
    batch, steps = draw(st.integers(1, 5)), draw(st.integers(1, 9))
    lengths = draw(
        st.one_of(st.none(), st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
    )
    return {
        "cell": draw(st.sampled_from(sorted(LAYERS))),
        "input_size": draw(st.integers(1, 6)),
        "hidden_size": draw(st.integers(1, 6)),
        "num_layers": draw(st.integers(1, 3)),
        "bidirectional": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "impl": draw(st.sampled_from(["bptt", "torch"])),
        "dtype": draw(st.sampled_from([torch.float32, torch.float64])),
        "batch": batch,
        "steps": steps,
        "lengths": lengths,
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=60, deadline=None, derandomize=True)
@given(configurations())
def test_random_layers_match_torch(c):
    torch.manual_seed(c["seed"])
    ours_cls, torch_cls, options = LAYERS[c["cell"]]
    sizes = (c["input_size"], c["hidden_size"])
    kwargs = {
        "num_layers": c["num_layers"],
        "bidirectional": c["bidirectional"],
        "bias": c["bias"],
        **options,
    }
    ours = ours_cls(*sizes, impl=c["impl"], **kwargs).to(c["dtype"])
    theirs = torch_cls(*sizes, **kwargs).to(c["dtype"])
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(c["steps"], c["batch"], c["input_size"], dtype=c["dtype"], requires_grad=True)
    lengths = None if c["lengths"] is None else torch.tensor(c["lengths"])

    with torch.backends.mkldnn.flags(enabled=False):  # oneDNN: ~1 s a call on tiny stacks
        out, final = ours(x, lengths=lengths)
        if lengths is None:
            ref, ref_final = theirs(x)
        else:
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            ref, ref_final = theirs(packed)
            ref, _ = pad_packed_sequence(ref, total_length=c["steps"])
    tol = 1e-10 if c["dtype"] == torch.float64 else 1e-5  # absolute and relative (relu grows)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    final = final if isinstance(final, tuple) else (final,)
    ref_final = ref_final if isinstance(ref_final, tuple) else (ref_final,)
    for a, b in zip(final, ref_final, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    loss = (out.sum() + sum(s.sum() for s in final), ref.sum() + sum(s.sum() for s in ref_final))
    mine = torch.autograd.grad(loss[0], [x, *ours.parameters()])
    with torch.backends.mkldnn.flags(enabled=False):
        expected = torch.autograd.grad(loss[1], [x, *theirs.parameters()])
    for a, b in zip(mine, expected, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
