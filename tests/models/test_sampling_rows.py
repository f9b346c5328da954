"""Batched sampling (`draw_rows`, `Sampling`): the filters equal a plain reference, the draws are
torch.multinomial's with the same generator, a row draws the same in any batch, and the draws
follow the filtered probabilities."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chi2

from rnnkit.errors import RnnkitError
from rnnkit.models.heads import Sampling, draw_rows, filtered_probs, sample_logits

SETTINGS = list(
    itertools.product([0.0, 0.3, 0.8, 1.7], [None, 1, 5, 40, 1000], [None, 0.2, 0.9, 1.0])
)


def reference_probs(row: list[float], temperature: float, top_k, top_p) -> list[float]:
    """One row's sampling distribution, the definition spelled out in plain Python."""
    scaled = torch.tensor(row, dtype=torch.float64) / temperature
    order = sorted(range(len(row)), key=lambda i: -row[i])
    kept = order[: top_k or len(row)]
    if top_p is not None:
        probs = scaled[kept].softmax(0).tolist()
        mass, nucleus = 0.0, []
        for i, p in zip(kept, probs):
            if mass >= top_p:  # the classes before this one reach p already
                break
            nucleus.append(i)
            mass += p
        kept = nucleus
    out = [0.0] * len(row)
    for i, p in zip(kept, scaled[kept].softmax(0).tolist()):
        out[i] = p
    return out


def multinomial_reference(logits, temperature, top_k, top_p, generator) -> torch.Tensor:
    """Draws as torch.multinomial makes them from the reference distribution (B, V) -> (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    rows = [reference_probs(r, temperature, top_k, top_p) for r in logits.tolist()]
    probs = torch.tensor(rows, dtype=torch.float32)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def distinct_logits(rows: int, classes: int, seed: int) -> torch.Tensor:
    """Logits without ties (their order, hence top-k and the nucleus, is unambiguous)."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.randperm(classes, generator=g).float() / classes
    return (torch.randn(rows, classes, generator=g) * 2 + spread).round(decimals=3)


@pytest.mark.parametrize("temperature, top_k, top_p", SETTINGS)
def test_filters_equal_the_reference(temperature, top_k, top_p):
    logits = distinct_logits(6, 50, seed=3)
    settings = Sampling.of([(temperature, top_k, top_p)] * 6, 50)
    got = filtered_probs(logits, settings)
    want = [reference_probs(r, temperature or 1.0, top_k, top_p) for r in logits.tolist()]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=0, atol=2e-6)
    assert ((got > 0) == (torch.tensor(want) > 0)).all()  # the same classes kept


def test_draws_are_multinomial_draws_with_the_same_generator():
    for seed, (temperature, top_k, top_p) in enumerate(SETTINGS * 3):
        logits = distinct_logits(4, [65, 27, 300][seed % 3], seed)
        got = sample_logits(logits, temperature, top_k, top_p, torch.Generator().manual_seed(seed))
        want = multinomial_reference(logits, temperature, top_k, top_p,
                                     torch.Generator().manual_seed(seed))  # fmt: skip
        assert torch.equal(got, want), (seed, temperature, top_k, top_p)


def test_a_row_draws_the_same_in_any_batch_and_greedy_rows_draw_nothing():
    rows = [SETTINGS[(7 * b) % len(SETTINGS)] for b in range(40)]
    logits = distinct_logits(40, 65, seed=11)
    generators = [torch.Generator().manual_seed(100 + b) for b in range(40)]
    together = draw_rows(logits, Sampling.of(rows, 65), generators)
    for b, row in enumerate(rows):
        alone = draw_rows(logits[b : b + 1], Sampling.of([row], 65),
                          [torch.Generator().manual_seed(100 + b)])  # fmt: skip
        assert int(together[b]) == int(alone[0]), (b, row)
        fresh = torch.Generator().manual_seed(100 + b)
        drew = not torch.equal(generators[b].get_state(), fresh.get_state())
        assert drew == (row[0] > 0)  # temperature 0: the likeliest, the generator untouched
        if row[0] == 0:
            assert int(together[b]) == int(logits[b].argmax())
    # settings selected or joined as rows leave and join equal settings built afresh
    keep = [3, 4, 17, 30]
    picked = Sampling.of(rows, 65).rows(keep, 65)
    joined = Sampling.cat([Sampling.of(rows[:5], 65), Sampling.of(rows[5:], 65)], 65)
    for settings, want in ((picked, [rows[b] for b in keep]), (joined, rows)):
        fresh = Sampling.of(want, 65)
        assert all(torch.equal(a, b) for a, b in zip(settings[:3], fresh[:3]))
        assert settings[3:5] == fresh[3:5] and settings[6:] == fresh[6:]
        assert torch.equal(settings.kth, fresh.kth)


def test_draws_made_ahead_in_blocks_are_the_draws_step_by_step():
    """The streams' scheduler draws each row's Exp(1) noise for many steps in one call."""
    rows = [SETTINGS[(5 * b) % len(SETTINGS)] for b in range(6)]
    settings = Sampling.of(rows, 65)
    steps = [distinct_logits(6, 65, seed=s) for s in range(9)]
    generators = [torch.Generator().manual_seed(b) for b in range(6)]
    want = [draw_rows(logits, settings, generators) for logits in steps]
    noise = torch.ones(6, 9, 65)  # rows of temperature 0 draw nothing
    for b, row in enumerate(noise):  # the first 4 steps in one call, then the other 5
        if settings.drawn[b]:
            ahead = torch.Generator().manual_seed(b)
            row[:4].exponential_(generator=ahead)
            row[4:].exponential_(generator=ahead)
    got = [draw_rows(logits, settings, noise=noise[:, t]) for t, logits in enumerate(steps)]
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_draws_follow_the_filtered_probabilities():
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.6, 0.3, 0.0, -0.5, -1.0, -2.0, -3.0]])
    settings = (0.7, 6, 0.95)
    probs = torch.tensor(reference_probs(logits[0].tolist(), *settings))
    n = 40_000
    draws = sample_logits(logits.expand(n, -1), *settings, torch.Generator().manual_seed(5))
    counts = torch.bincount(draws, minlength=10).double()
    support = probs > 0
    assert counts[~support].sum() == 0 and int(support.sum()) == 5  # top-p cut the 6th
    expected = n * probs[support].double()
    statistic = float(((counts[support] - expected) ** 2 / expected).sum())
    assert chi2.sf(statistic, df=int(support.sum()) - 1) > 0.001, statistic


def test_bad_settings_and_generator_counts_are_errors():
    with pytest.raises(RnnkitError, match="top_k"):
        Sampling.of([(1.0, None, None), (1.0, 0, None)], 10)
    with pytest.raises(RnnkitError, match="top_p"):
        Sampling.of([(1.0, None, 1.5)], 10)
    with pytest.raises(RnnkitError, match="3 generators for a batch of 2"):
        draw_rows(torch.zeros(2, 10), Sampling.of([(1.0, None, None)] * 2, 10),
                  [torch.Generator()] * 3)  # fmt: skip
    with pytest.raises(RnnkitError, match="NaN"):
        sample_logits(torch.full((1, 4), float("nan")), 1.0, 2, None, torch.Generator())
