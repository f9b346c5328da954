"""CTC decoding on hand-made posteriors, edit distance, and the loss."""

from __future__ import annotations

import math

import torch

from rnnkit.models import ctc


def posterior(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows).log()


def test_greedy_merges_repeats_and_drops_blanks():
    # frames: 1 1 _ 1 2 2 _ _ 3  -> 1 1 2 3 (a blank separates the two 1s)
    best = [1, 1, 0, 1, 2, 2, 0, 0, 3]
    lp = torch.full((len(best), 4), 0.1 / 3)
    for t, k in enumerate(best):
        lp[t, k] = 0.9
    assert ctc.greedy_decode(lp.log()) == [1, 1, 2, 3]
    assert ctc.prefix_beam_search(lp.log(), beam=4) == [1, 1, 2, 3]


def test_prefix_beam_sums_alignments_where_the_best_path_does_not():
    # two frames over {blank, a}: best path is "_ _" (p 0.36) so greedy says "",
    # but "a" has the alignments "a a", "a _", "_ a": 0.16 + 0.24 + 0.24 = 0.64
    lp = posterior([[0.6, 0.4], [0.6, 0.4]])
    assert ctc.greedy_decode(lp) == []
    assert ctc.prefix_beam_search(lp, beam=3) == [1]


def test_edit_distance():
    assert ctc.edit_distance([], [1, 2, 3]) == 3
    assert ctc.edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert ctc.edit_distance([1, 3], [1, 2, 3]) == 1
    assert ctc.edit_distance([2, 1, 3, 4], [1, 2, 3]) == 3  # two swaps + one extra


def test_ctc_loss_of_a_certain_alignment_is_small():
    lp = torch.full((4, 1, 3), 1e-6).log()
    for t, k in enumerate([1, 0, 2, 2]):
        lp[t, 0, k] = 0.0
    loss = ctc.ctc_loss(lp, torch.tensor([4]), [[1, 2]])
    assert float(loss) < 1e-3 and math.isfinite(float(loss))
