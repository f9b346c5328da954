"""The NAB scorer on hand-made cases (standard profile: A_TP 1, A_FP 0.11, A_FN 1), and on
Numenta's published results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rnnkit.evaluation.nab import (
    best_threshold,
    corpus_score,
    probation_length,
    row_weights,
    scaled_sigmoid,
    score_flags,
)

# 1000 rows: probation 150; one window, rows 400..499 (width 100)
T = pd.date_range("2020-01-01", periods=1000, freq="5min")
WINDOW = [(T[400], T[499])]
W = row_weights(T, WINDOW)


def flags_at(*rows: int) -> np.ndarray:
    flags = np.zeros(len(T), bool)
    flags[list(rows)] = True
    return flags


def test_scaled_sigmoid_and_probation():
    assert scaled_sigmoid(-1.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)  # 0.98661
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(3.0) == -1.0
    assert probation_length(1000) == 150 and probation_length(22695) == 750


def test_detection_at_the_window_start_is_perfect():
    s = score_flags(W, flags_at(400))
    assert (s.raw, s.tp, s.fp, s.fn) == (pytest.approx(1.0), 1, 0, 0)
    assert s.null == -1.0 and s.perfect == 1.0 and s.normalized == pytest.approx(100.0)


def test_detection_at_the_window_end_scores_little():
    s = score_flags(W, flags_at(499))  # y = -(499 - 499 + 1) / 100 = -0.01
    expected = scaled_sigmoid(-0.01) / scaled_sigmoid(-1.0)
    assert s.raw == pytest.approx(expected) and expected == pytest.approx(0.02534, abs=1e-4)


def test_only_the_earliest_detection_in_a_window_counts():
    assert score_flags(W, flags_at(450, 420, 499)).raw == pytest.approx(W.weight[420])


def test_false_positives_and_a_missed_window():
    s = score_flags(W, flags_at(200))  # before any window: full penalty, and the window missed
    assert s.raw == pytest.approx(-0.11 - 1.0) and (s.tp, s.fp, s.fn) == (0, 1, 1)
    assert s.normalized == pytest.approx(100 * (-1.11 + 1) / 2)
    just_after = score_flags(W, flags_at(400, 509)).raw  # y = (509 - 499) / 99: mild penalty
    assert just_after == pytest.approx(1.0 + 0.11 * scaled_sigmoid(10 / 99))
    assert score_flags(W, flags_at(400, 900)).raw == pytest.approx(1.0 - 0.11)  # y >= 3


def test_probation_is_ignored_and_null_detector_scores_zero():
    assert score_flags(W, flags_at(10, 100)).raw == pytest.approx(-1.0)  # only the miss
    assert score_flags(W, flags_at()).normalized == pytest.approx(0.0)


def test_corpus_sums_before_normalising_and_threshold_sweep():
    other = row_weights(T, [(T[700], T[799])])
    total = corpus_score([W, other], [flags_at(400), flags_at()])
    assert (total.raw, total.null, total.perfect) == (pytest.approx(0.0), -2.0, 2.0)
    assert total.normalized == pytest.approx(50.0)
    scores = [np.where(flags_at(400), 5.0, 1.0), np.where(flags_at(700), 4.0, 1.0)]
    threshold, best = best_threshold([W, other], scores)
    assert threshold == pytest.approx(4.0) and best.normalized == pytest.approx(100.0)


def test_numenta_published_scores_are_reproduced():
    """Numenta's own scorer's figures for its detector (NAB v1.0, standard profile): each
    file's raw score, and the final normalised score 70.1 over the 58 files."""
    fixture = Path(__file__).parents[1] / "fixtures" / "nab_numenta_standard.json"
    published = json.loads(fixture.read_text())
    results = []
    for key, s in published["series"].items():
        t = pd.date_range("2015-01-01", periods=s["rows"], freq="5min")
        weights = row_weights(t, [(t[a], t[b]) for a, b in s["windows"]])
        result = score_flags(weights, flags_of(s["rows"], s["flagged"]))
        assert result.raw == pytest.approx(s["published_raw"], abs=1e-9), key
        results.append(result)
    total = sum(results[1:], results[0])
    assert len(results) == 58 and total.null == -116.0
    assert total.normalized == pytest.approx(published["published_final_standard"], abs=1e-6)


def flags_of(rows: int, flagged: list[int]) -> np.ndarray:
    flags = np.zeros(rows, bool)
    flags[flagged] = True
    return flags
