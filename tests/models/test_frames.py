"""Binary heads (independent Bernoulli, NADE) and the next-frame model's step-by-step sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rnnkit.errors import RnnkitError
from rnnkit.models.frames import FrameModel
from rnnkit.models.heads import BernoulliHead, NADEHead, bernoulli_nll


def test_bernoulli_nll_is_the_hand_computed_sum_over_keys():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0]])
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    p = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    first = -(math.log(p(2.0)) + math.log(1 - p(-1.0)) + math.log(p(0.0)))
    second = -(math.log(1 - p(0.5)) + math.log(p(0.5)) + math.log(1 - p(-3.0)))
    torch.testing.assert_close(bernoulli_nll(logits, target), torch.tensor([first, second]))


def nade(K=5, D=7, F=3):
    torch.manual_seed(0)
    head = NADEHead(F, K, D).double()
    torch.nn.init.normal_(head.W)  # larger than at init, so every term matters
    return head


def test_nade_is_a_distribution_over_all_binary_vectors():
    head = nade()
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=torch.float64)
    features = torch.randn(3, dtype=torch.float64).expand(len(every), 3)
    total = (-head.nll(features, every)).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64))


def test_nade_logits_equal_the_plain_loop_over_keys():
    head = nade()
    features = torch.randn(4, 6, 3, dtype=torch.float64)
    x = (torch.rand(4, 6, 5) < 0.4).double()
    b, c = head.proj(features).split([5, 7], -1)
    expected = []
    for k in range(5):  # a_k = c + sum_{j<k} x_j W_j;  logit_k = b_k + V_k . sigmoid(a_k)
        a = c + sum((x[..., j : j + 1] * head.W[j] for j in range(k)), torch.zeros_like(c))
        expected.append(b[..., k] + torch.sigmoid(a) @ head.V[k])
    torch.testing.assert_close(head.logits(features, x), torch.stack(expected, -1))


@pytest.mark.parametrize("head_cls", [BernoulliHead, NADEHead])
def test_head_sampling_follows_its_probabilities(head_cls):
    torch.manual_seed(1)
    head = head_cls(3, 2).double()
    features = torch.randn(3, dtype=torch.float64).expand(20000, 3)
    draws = head.sample(features, generator=torch.Generator().manual_seed(0))
    every = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    probs = (-head.nll(features[:4], every)).exp()
    counts = torch.stack([(draws == v).all(-1).double().mean() for v in every])
    torch.testing.assert_close(counts, probs, atol=0.015, rtol=0)
    greedy = head.sample(features[:1], temperature=0.0)
    assert set(greedy.flatten().tolist()) <= {0.0, 1.0}
    with pytest.raises(RnnkitError, match="temperature"):
        head.sample(features[:1], temperature=-1.0)


def model(head, cell="lstm"):
    torch.manual_seed(0)
    net = FrameModel(cell, 6, 8, num_layers=2, dropout=0.3, input_dropout=0.2, head=head,
                     nade_hidden=5)  # fmt: skip
    return net.double()


@pytest.mark.parametrize("head", ["bernoulli", "nade"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stepwise_sampling_carries_the_state(head, cell):
    net = model(head, cell)
    prime = (torch.rand(3, 2, 6) < 0.4).double()  # (T0, B, K)
    steps = list(net.stream(5, prime, generator=torch.Generator().manual_seed(1)))
    frames = torch.stack([f for f, _ in steps])  # (5, B, K)
    logits = torch.stack([lg for _, lg in steps])
    assert net.training  # restored
    net.eval()
    full = net(torch.cat([prime, frames]))  # teacher-forced over primer + drawn frames
    torch.testing.assert_close(logits, full[3:], rtol=0, atol=1e-12)
    # a different primer changes what follows: the state, not just the last frame, is used
    other = prime.clone()
    other[0] = 1 - other[0]
    steps = list(net.stream(1, other, generator=torch.Generator().manual_seed(1)))
    assert not torch.allclose(steps[0][1], logits[0])


def test_generate_is_reproducible_and_shaped():
    net = model("nade")
    a = net.generate(7, batch=3, generator=torch.Generator().manual_seed(4))
    b = net.generate(7, batch=3, generator=torch.Generator().manual_seed(4))
    c = net.generate(7, batch=3, generator=torch.Generator().manual_seed(5))
    assert a.shape == (7, 3, 6) and torch.equal(a, b) and not torch.equal(a, c)
    prime = torch.ones(2, 1, 6, dtype=torch.float64)
    out = net.generate(4, prime)
    assert out.shape == (6, 1, 6) and torch.equal(out[:2], prime)


def test_lengths_only_select_where_the_head_runs():
    net = model("nade").eval()
    frames = (torch.rand(5, 2, 6) < 0.5).double()
    logits = net(frames, torch.tensor([5, 3]))
    torch.testing.assert_close(logits[:, 0], net(frames[:, :1])[:, 0])
    torch.testing.assert_close(logits[:3, 1], net(frames[:3, 1:])[:, 0])
    assert logits[3:, 1].abs().sum() == 0
    with pytest.raises(RnnkitError, match=r"expected frames \(T >= 1, B, 6\)"):
        net(torch.zeros(4, 6))
    with pytest.raises(RnnkitError, match="unknown head"):
        FrameModel("lstm", 6, 8, head="rbm")


@pytest.mark.parametrize("head", ["bernoulli", "nade"])
def test_no_logit_sees_its_own_key_or_the_future(head):
    net = model(head).eval()
    frames = (torch.rand(6, 1, 6) < 0.5).double()
    logits = net(frames)
    changed = frames.clone()
    changed[3, 0, 2] = 1 - changed[3, 0, 2]  # flip key 2 of frame 3
    diff = (net(changed) - logits).abs()[:, 0]  # (T, K)
    assert diff[:3].max() == 0 and diff[3, :3].max() == 0  # earlier frames; keys 0..2 of frame 3
    if head == "nade":
        assert diff[3, 3:].min() > 0  # the keys above it in the same frame do see it
    assert diff[4:].min() > 0  # every later frame sees it
