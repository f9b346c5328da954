"""SequenceModel.generate: step-by-step state equals a full pass; sampling is reproducible."""

from __future__ import annotations

import pytest
import torch

from rnnkit.errors import RnnkitError
from rnnkit.models.heads import sample_logits
from rnnkit.models.sequence import SequenceModel


def lm(cell="lstm", impl="auto", dtype=torch.float64):
    torch.manual_seed(0)
    model = SequenceModel(cell, 11, 16, 11, num_layers=2, dropout=0.3, impl=impl, embedding_size=6)
    return model.to(dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("impl", ["auto", "bptt"])
def test_stepwise_logits_equal_a_full_forward_pass(cell, impl):
    model = lm(cell, impl)
    prompt = torch.randint(0, 11, (5, 3))  # (T0, B)
    gen = torch.Generator().manual_seed(1)
    steps = list(model.stream(prompt, 7, temperature=1.0, generator=gen))
    tokens = torch.stack([t for t, _ in steps])  # (7, B)
    step_logits = torch.stack([lg for _, lg in steps])  # (7, B, V)
    assert model.training  # stream() restores the mode it found
    model.eval()
    with torch.no_grad():
        full, _ = model(torch.cat([prompt, tokens[:-1]]))  # (5 + 6, B, V)
    torch.testing.assert_close(step_logits, full[4:], rtol=0, atol=1e-12)


def test_generate_shapes_and_reproducible_sampling():
    model = lm(dtype=torch.float32)
    prompt = torch.tensor([1, 2, 3])
    a = model.generate(
        prompt, 20, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(3)
    )
    b = model.generate(
        prompt, 20, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(3)
    )
    c = model.generate(
        prompt, 20, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(4)
    )
    assert a.shape == (23,) and torch.equal(a[:3], prompt)
    assert torch.equal(a, b) and not torch.equal(a, c)
    batched = model.generate(torch.randint(0, 11, (4, 2)), 6)
    assert batched.shape == (10, 2)
    assert torch.equal(model.generate(prompt, 0), prompt)


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    assert sample_logits(logits, temperature=0.0).tolist() == [1, 0]
    draws = torch.stack([sample_logits(logits, top_k=2, generator=gen) for _ in range(200)])
    assert set(draws[:, 0].tolist()) == {1, 3}  # only the two likeliest
    draws = torch.stack([sample_logits(logits, top_p=0.3, generator=gen) for _ in range(50)])
    assert set(draws[:, 0].tolist()) == {1} and set(draws[:, 1].tolist()) == {0}
    for kwargs, message in (
        ({"temperature": -1.0}, "temperature must be >= 0"),
        ({"top_k": 0}, "top_k must be >= 1"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ):
        with pytest.raises(RnnkitError, match=message):
            sample_logits(logits, **kwargs)


def test_empty_prompt_is_refused():
    with pytest.raises(RnnkitError, match="prompt is empty"):
        lm().generate(torch.zeros(0, dtype=torch.long), 3)
