"""The adding and copy-memory generators produce their documented distributions."""

from __future__ import annotations

import math

import pytest
import torch

from rnnkit.data.synthetic import (
    ADDING_BASELINE_MSE,
    adding_problem,
    copy_baseline,
    copy_memory,
)
from rnnkit.errors import RnnkitError


def test_adding_shapes_markers_and_target():
    x, y = adding_problem(500, 21, torch.Generator().manual_seed(0))
    assert x.shape == (21, 500, 2) and y.shape == (500,)
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(markers.unique().tolist()) == {0.0, 1.0}
    assert (markers[:10].sum(0) == 1).all()  # one marker in [0, T//2)
    assert (markers[10:].sum(0) == 1).all()  # one in [T//2, T)
    torch.testing.assert_close(y, (values * markers).sum(0))


def test_adding_marker_positions_cover_each_half_uniformly():
    x, _ = adding_problem(20000, 8, torch.Generator().manual_seed(1))
    counts = x[..., 1].sum(1)  # (T,) markers per position
    torch.testing.assert_close(counts[:4], torch.full((4,), 5000.0), atol=300, rtol=0)
    torch.testing.assert_close(counts[4:], torch.full((4,), 5000.0), atol=300, rtol=0)


def test_adding_baseline_is_one_sixth():
    _, y = adding_problem(200000, 10, torch.Generator().manual_seed(2))
    assert abs(float(y.mean()) - 1.0) < 0.005
    assert abs(float(((y - 1.0) ** 2).mean()) - ADDING_BASELINE_MSE) < 0.002
    assert round(ADDING_BASELINE_MSE, 3) == 0.167


def test_adding_is_reproducible_from_the_generator():
    a = adding_problem(4, 6, torch.Generator().manual_seed(3))
    b = adding_problem(4, 6, torch.Generator().manual_seed(3))
    c = adding_problem(4, 6, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_copy_layout():
    delay, k, c = 7, 10, 8
    x, y = copy_memory(300, delay, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (delay + 2 * k, 300) and x.dtype == torch.long
    head = x[:k]
    assert ((head >= 1) & (head <= c)).all()
    assert (x[k : k + delay - 1] == 0).all()
    assert (x[k + delay - 1] == c + 1).all()  # the delimiter
    assert (x[k + delay :] == 0).all()
    assert (y[: delay + k] == 0).all()
    assert torch.equal(y[delay + k :], head)
    counts = torch.bincount(head.flatten(), minlength=c + 1)[1:].float()
    assert (counts - 3000 / c).abs().max() < 120  # symbols uniform over the categories


def test_copy_baseline_formula_and_value():
    assert copy_baseline(100) == pytest.approx(10 * math.log(8) / 120)
    # The memoryless strategy (blank until the answer, then uniform over 8) scores exactly that.
    delay = 30
    _, y = copy_memory(64, delay, generator=torch.Generator().manual_seed(5))
    logits = torch.full((*y.shape, 10), -1e9)
    logits[: delay + 10, :, 0] = 0.0
    logits[delay + 10 :, :, 1:9] = 0.0
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    assert float(ce) == pytest.approx(copy_baseline(delay), rel=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: adding_problem(4, 1), "T >= 2"),
        (lambda: adding_problem(0, 10), "batch_size must be a positive integer"),
        (lambda: copy_memory(4, 0), "delay"),
        (lambda: copy_memory(4, 5, categories=1), "at least 2 categories"),
    ],
)
def test_bad_arguments_raise_rnnkit_error(call, message):
    with pytest.raises(RnnkitError, match=message):
        call()
