"""rnnkit.Recurrent with a user's cell: a leaky integrator written here (its step and backward by
hand) against a plain Python loop, gradcheck, step(), parameter names, the refusals, and the
code block of docs/layers.md ("Your own cell"), which holds this same cell."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import rnnkit
import rnnkit.kernels.build
import rnnkit.kernels.loops

T, B, I, H = 6, 4, 3, 5
DOC = Path(__file__).resolve().parents[1] / "docs" / "layers.md"


class LeakyCell(rnnkit.Cell):
    """h' = (1 - a) h + a tanh(gx + gh), a = sigmoid(leak) per unit (a leaky integrator)."""

    biases_add = True  # the step reads gx + gh only: the engine adds the two biases once
    extra_parameters = ("leak",)

    def extra_parameter_shapes(self):
        return {"leak": (self.hidden_size,)}

    def step(self, gx, gh, state, params=()):
        (h,), (leak,) = state, params
        a = torch.sigmoid(leak)
        c = torch.tanh(gx + gh)
        return (h + a * (c - h),), (h, a, c)  # the new state, and what the backward needs

    def step_backward(self, grad_state, cache, params=()):
        (grad,), (h, a, c) = grad_state, cache
        grad_pre = grad * a * (1 - c * c)  # d/d(gx + gh): the same for gx and gh
        grad_leak = (grad * (c - h)).sum(0) * a * (1 - a)  # summed over the batch
        return grad_pre, grad_pre, (grad * (1 - a),), (grad_leak,)


def leaky_layer(**options) -> rnnkit.Recurrent:
    torch.manual_seed(0)
    layer = rnnkit.Recurrent(LeakyCell, I, H, num_layers=2, bidirectional=True, **options)
    layer = layer.double()
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("leak"):
                p.normal_(0, 1)  # leaks spread over (0, 1), not all near a = 0.5
    return layer


def hand_loop(layer, x, lengths, h0):
    """The same stack as plain autograd: each sequence on its own, step by step, forward from
    its start or backward from its own end, zeros past its end."""
    inputs, finals = x, []
    for k in range(layer.num_layers):
        outputs = []
        for d, suffix in enumerate(("", "_reverse")):
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "leak")
            w_ih, w_hh, b_ih, b_hh, leak = (getattr(layer, f"{n}_l{k}{suffix}") for n in names)
            a = torch.sigmoid(leak)
            columns = []
            for b in range(x.shape[1]):
                n = int(lengths[b])
                h, ys = h0[2 * k + d, b], {}
                for t in range(n) if d == 0 else reversed(range(n)):
                    pre = w_ih @ inputs[t, b] + b_ih + w_hh @ h + b_hh
                    h = (1 - a) * h + a * torch.tanh(pre)
                    ys[t] = h
                finals.append(h)
                columns.append(torch.stack([ys.get(t, h.new_zeros(H)) for t in range(T)]))
            outputs.append(torch.stack(columns, dim=1))
        inputs = torch.cat(outputs, dim=-1)
    h_n = torch.stack(finals).view(2 * layer.num_layers, x.shape[1], H)
    return inputs, h_n


def test_leaky_cell_equals_a_hand_loop_with_ragged_lengths_both_directions_two_layers():
    layer = leaky_layer()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, B, H, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5, 1])  # ragged, unsorted
    assert not layer.uses_torch_kernel(x) and not rnnkit.kernels.loops.supports(layer._cells[0])
    output, h_n = layer(x, h0, lengths=lengths)
    ref_output, ref_h_n = hand_loop(layer, x, lengths, h0)
    torch.testing.assert_close(output, ref_output, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_n, ref_h_n, atol=1e-12, rtol=0)
    assert not output[2:, 1].any() and not output[1:, 3].any()

    g_out, g_h = torch.randn_like(output), torch.randn_like(h_n)
    inputs = (x, h0, *layer.parameters())
    ours = torch.autograd.grad((output * g_out).sum() + (h_n * g_h).sum(), inputs)
    theirs = torch.autograd.grad((ref_output * g_out).sum() + (ref_h_n * g_h).sum(), inputs)
    names = ["x", "h0", *(name for name, _ in layer.named_parameters())]
    for name, mine, expected in zip(names, ours, theirs, strict=True):
        torch.testing.assert_close(mine, expected, atol=1e-12, rtol=0, msg=name)


def test_leaky_layer_passes_gradcheck():
    layer = leaky_layer(batch_first=True)
    x = torch.randn(3, 4, I, dtype=torch.float64, requires_grad=True)  # (B, T, I)
    h0 = torch.randn(4, 3, H, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([2, 4, 3])
    names = [name for name, _ in layer.named_parameters()]
    weights = [p.detach().clone().requires_grad_() for p in layer.parameters()]

    def run(x, h0, *weights):
        parameters = dict(zip(names, weights))
        return torch.func.functional_call(layer, parameters, (x, h0), {"lengths": lengths})

    assert torch.autograd.gradcheck(run, (x, h0, *weights))


def test_step_streaming_equals_forward():
    torch.manual_seed(0)
    layer = rnnkit.Recurrent(LeakyCell, I, H, num_layers=2).double().eval()
    x = torch.randn(T, B, I, dtype=torch.float64)
    output, h_n = layer(x)
    state, steps = None, []
    for x_t in x:
        y, state = layer.step(x_t, state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps), output, atol=1e-12, rtol=0)
    torch.testing.assert_close(state, h_n, atol=1e-12, rtol=0)
    one, h_1 = layer(x[:1], h_n)  # a one-step forward goes through step's path
    y, h = layer.step(x[0], h_n)
    torch.testing.assert_close(one[0], y, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_1, h, atol=1e-12, rtol=0)


def test_parameter_names_shapes_and_state_dict():
    layer = leaky_layer()
    expected = [
        f"{name}_l{k}{suffix}"
        for k in range(2)
        for suffix in ("", "_reverse")
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "leak")
    ]
    assert [name for name, _ in layer.named_parameters()] == expected
    assert layer.weight_ih_l0.shape == (H, I) and layer.weight_ih_l1_reverse.shape == (H, 2 * H)
    assert layer.leak_l1_reverse.shape == (H,)
    no_bias = rnnkit.Recurrent(LeakyCell, I, H, bias=False)
    assert [n for n, _ in no_bias.named_parameters()] == ["weight_ih_l0", "weight_hh_l0", "leak_l0"]
    assert repr(no_bias) == f"Recurrent(LeakyCell, {I}, {H}, bias=False)"

    other = rnnkit.Recurrent(LeakyCell, I, H, num_layers=2, bidirectional=True).double()
    other.load_state_dict(layer.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(other(x)[0], layer(x)[0], atol=0, rtol=0)


def test_options_run_with_a_users_cell():
    """Dropout between layers, the regularisers and batch_first reach a user's cell."""
    layer = leaky_layer(
        dropout=0.2, recurrent_dropout=0.2, weight_dropout=0.2, zoneout=0.1, locked_dropout=True
    ).train()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    output, h_n = layer(x, lengths=torch.tensor([6, 3, 4, 2]))
    (output.sum() + h_n.sum()).backward()
    assert x.grad is not None and all(p.grad is not None for p in layer.parameters())
    with pytest.raises(rnnkit.RnnkitError, match="first derivatives only"):
        out, _ = leaky_layer(impl="bptt")(x)
        torch.autograd.grad(out.sum(), x, create_graph=True)


def test_rnnkit_cells_in_recurrent_equal_their_layers():
    torch.manual_seed(0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 5, 1])
    for cell_class, layer_class in ((rnnkit.LSTMCell, rnnkit.LSTM), (rnnkit.GRUCell, rnnkit.GRU)):
        ours = rnnkit.Recurrent(cell_class, I, H, num_layers=2, bidirectional=True).double()
        theirs = layer_class(I, H, num_layers=2, bidirectional=True).double()
        theirs.load_state_dict(ours.state_dict())
        for mine, expected in zip(ours(x, lengths=lengths), theirs(x, lengths=lengths)):
            torch.testing.assert_close(mine, expected, atol=1e-12, rtol=0)


class NoBackwardCell(rnnkit.Cell):
    def step(self, gx, gh, state, params=()):
        return (torch.tanh(gx + gh),), ()


class NoStepCell(rnnkit.Cell):
    def step_backward(self, grad_state, cache, params=()):
        raise AssertionError


class StrayParameterCell(LeakyCell):
    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__(input_size, hidden_size, bias)
        self.gain = nn.Parameter(torch.ones(hidden_size))  # not in extra_parameters


class UnshapedCell(LeakyCell):
    extra_parameters = ("leak", "gain")  # no shape for gain


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda: rnnkit.Recurrent(NoBackwardCell, I, H),
            "Recurrent(NoBackwardCell): NoBackwardCell defines no step_backward, which the "
            "engine's backward calls at every step; write NoBackwardCell.step_backward(",
        ),
        (
            lambda: rnnkit.Recurrent(NoStepCell, I, H),
            "Recurrent(NoStepCell): NoStepCell defines no step; write NoStepCell.step(",
        ),
        (
            lambda: rnnkit.Recurrent(LeakyCell, I, H, impl="torch"),
            "Recurrent(LeakyCell): impl='torch' is for torch's own layers (rnnkit.RNN, LSTM, "
            "GRU); any other cell runs on rnnkit's engine: use impl='bptt' or impl='auto'",
        ),
        (
            lambda: rnnkit.Recurrent(LeakyCell(I, H), I, H),
            "cell_class must be a subclass of rnnkit.cells.Cell, got an instance of LeakyCell; "
            "pass the class itself",
        ),
        (
            lambda: rnnkit.Recurrent(nn.GRUCell, I, H),
            "cell_class must be a subclass of rnnkit.cells.Cell, got <class",
        ),
        (
            lambda: rnnkit.Recurrent(StrayParameterCell, I, H),
            "Recurrent(StrayParameterCell): StrayParameterCell has parameter(s) gain that it does "
            "not list in extra_parameters",
        ),
        (
            lambda: rnnkit.Recurrent(UnshapedCell, I, H),
            "UnshapedCell: extra_parameters gain have no shape; return each one's shape from "
            "extra_parameter_shapes()",
        ),
        (
            lambda: rnnkit.Recurrent(LeakyCell, I, H, leakage=0.1),
            "Recurrent(LeakyCell): cannot build the cell as LeakyCell(input_size, hidden_size, "
            "bias=..., **cell_kwargs) with cell_kwargs ['leakage']: got an unexpected keyword",
        ),
        (
            lambda: rnnkit.Recurrent(LeakyCell, I, 0),
            "hidden_size must be a positive integer, got 0",
        ),
    ],
    ids=["no-step-backward", "no-step", "impl-torch", "instance", "torch-cell", "stray"]
    + ["unshaped", "kwarg", "size"],
)
def test_refusals_name_the_cell_and_the_fix(make, message):
    with pytest.raises(rnnkit.RnnkitError, match=re.escape(message)):
        make()


def test_rnn_gru_lstm_keep_their_refusals():
    with pytest.raises(rnnkit.RnnkitError, match="proj_size argument is only supported for LSTM"):
        rnnkit.GRU(I, H, proj_size=2)
    with pytest.raises(rnnkit.RnnkitError, match="proj_size argument is only supported for LSTM"):
        rnnkit.RNN(I, H, proj_size=2)
    layer = rnnkit.Recurrent(rnnkit.ProjectedLSTMCell, I, H, proj_size=2)  # the cell's argument
    assert layer(torch.randn(T, B, I))[0].shape == (T, B, 2)
    with pytest.raises(rnnkit.RnnkitError, match=re.escape("for RNN(nonlinearity='sigmoid')")):
        rnnkit.RNN(I, H, nonlinearity="sigmoid", impl="torch")(torch.randn(T, B, I))


def _doc_block() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Your own cell", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_docs_cell_is_this_one_and_its_code_runs():
    """docs/layers.md's block holds LeakyCell as written here, and runs as shown (its
    gradcheck included)."""
    block = _doc_block()
    start = block.index("class LeakyCell")
    end = re.compile(r"^\S", re.MULTILINE).search(block, start + 1).start()
    assert block[start:end].rstrip() == inspect.getsource(LeakyCell).rstrip()
    namespace = {"__name__": "docs_layers_your_own_cell"}
    exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["output"].shape == (5, 3, 8)
