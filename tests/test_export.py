"""Export is real or refused, never silent: every layer either records a graph that follows its
input (checked in ONNX Runtime against PyTorch at other sequence lengths and batch sizes than
the example's) or raises RnnkitError; torch.export, torch.compile and torch.jit.trace likewise."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.errors import RnnkitError

ort = pytest.importorskip("onnxruntime", reason="the export extra: pip install onnxruntime")

EXPORTED = {
    "gru": lambda: rnnkit.GRU(8, 16),
    "rnn_relu": lambda: rnnkit.RNN(8, 16, nonlinearity="relu", num_layers=2),
    "lstm_bidirectional": lambda: rnnkit.LSTM(8, 16, num_layers=2, bidirectional=True),
    "gru_impl_bptt": lambda: rnnkit.GRU(8, 16, impl="bptt", batch_first=True),
}
REFUSED = {
    "layer_norm_lstm": lambda: rnnkit.LSTM(8, 16, layer_norm=True),
    "peephole_lstm": lambda: rnnkit.LSTM(8, 16, peephole=True),
    "zoneout_gru": lambda: rnnkit.GRU(8, 16, zoneout=0.1),
    "min_gru": lambda: rnnkit.MinGRU(8, 16),
    "min_lstm_log_scan": lambda: rnnkit.MinLSTM(8, 16, mode="log_scan"),
}


def onnx_session(layer: torch.nn.Module, example: torch.Tensor):
    """The layer exported by the TorchScript-based exporter, time and batch dynamic."""
    buffer = io.BytesIO()
    axes = {"x": {0: "T", 1: "B"}, "y": {0: "T", 1: "B"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (example,), buffer, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes=axes)  # fmt: skip
    return ort.InferenceSession(buffer.getvalue())


@pytest.mark.parametrize("name", EXPORTED)
def test_onnx_export_follows_the_input_at_other_lengths_and_batches(name):
    torch.manual_seed(0)
    layer = EXPORTED[name]().eval()
    session = onnx_session(layer, torch.randn(7, 3, 8))
    assert [i.name for i in session.get_inputs()] == ["x"]  # not a constant graph
    for steps in (12, 30):
        for batch in (2, 5):
            x = torch.randn(steps, batch, 8)
            with torch.no_grad():
                expected = layer(x)[0].numpy()
            got = session.run(["y"], {"x": x.numpy()})[0]
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", REFUSED)
def test_what_cannot_be_exported_is_refused_in_one_line(name):
    layer = REFUSED[name]().eval()
    with pytest.raises(RnnkitError, match="cannot be exported to ONNX or traced"):
        onnx_session(layer, torch.randn(7, 3, 8))
    with pytest.raises(RnnkitError, match="cannot be exported to ONNX or traced"):
        torch.jit.trace(layer, (torch.randn(7, 3, 8),))


ON_OPERATORS = {  # torch.export records these on rnnkit's operators, time and batch dynamic
    "gru": lambda: rnnkit.GRU(8, 16),
    "lstm_two_layers": lambda: rnnkit.LSTM(8, 16, num_layers=2),
    "rnn_bidirectional": lambda: rnnkit.RNN(8, 16, bidirectional=True),
    "layer_norm_lstm": lambda: rnnkit.LSTM(8, 16, layer_norm=True),
    "layer_norm_gru": lambda: rnnkit.GRU(8, 16, layer_norm=True),
    "peephole_lstm": lambda: rnnkit.LSTM(8, 16, peephole=True),
    "zoneout_lstm": lambda: rnnkit.LSTM(8, 16, zoneout=0.1),
    "min_gru": lambda: rnnkit.MinGRU(8, 16, num_layers=2),
}


@pytest.mark.parametrize("name", ON_OPERATORS)
def test_torch_export_records_rnnkit_operators_that_follow_the_input(name):
    torch.manual_seed(0)
    layer = ON_OPERATORS[name]().eval()
    dims = {0: torch.export.Dim("T", min=2), 1: torch.export.Dim("B")}
    with torch.no_grad():
        program = torch.export.export(layer, (torch.randn(7, 3, 8),), dynamic_shapes=(dims,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("rnnkit.") for t in targets), targets
    for steps, batch in ((12, 2), (30, 5)):
        x = torch.randn(steps, batch, 8)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x)[0], layer(x)[0])


COMPILED = {
    "gru": lambda: rnnkit.GRU(8, 16, num_layers=2),
    "rnn_bidirectional": lambda: rnnkit.RNN(8, 16, bidirectional=True),
    "layer_norm_lstm": lambda: rnnkit.LSTM(8, 16, layer_norm=True),
    "projected_lstm": lambda: rnnkit.LSTM(8, 16, proj_size=4, impl="bptt"),
    "min_gru": lambda: rnnkit.MinGRU(8, 16),
}


@pytest.mark.parametrize("name", COMPILED)
def test_compile_fullgraph_trains_as_eager_in_float64(name):
    """torch.compile(fullgraph=True) runs the rnnkit operators in its graph: outputs and every
    gradient equal to eager's."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = COMPILED[name]().double().train()
    x = torch.randn(9, 3, 8, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True)
    results = []
    for run in (compiled, layer):
        layer.zero_grad()
        x.grad = None
        output = run(x)[0]
        output.square().sum().backward()
        results.append([output, x.grad, *(p.grad for p in layer.parameters())])
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected)


def test_torch_export_compile_and_trace_of_the_default_gru_equal_eager():
    torch.manual_seed(0)
    layer = rnnkit.GRU(8, 16).eval()
    x, other = torch.randn(7, 3, 8), torch.randn(7, 3, 8)
    with torch.no_grad():
        exported = torch.export.export(layer, (x,)).module()
        torch.testing.assert_close(exported(other)[0], layer(other)[0])
        compiled = torch.compile(layer, fullgraph=True)
        torch.testing.assert_close(compiled(other)[0], layer(other)[0])
        traced = torch.jit.trace(layer, (x,))
        longer = torch.randn(19, 3, 8)
        torch.testing.assert_close(traced(longer)[0], layer(longer)[0])


def test_dropout_records_torch_dropout_under_tracing():
    layer = rnnkit.Dropout(0.5).train()
    traced = torch.jit.trace(layer, (torch.ones(4, 6),), check_trace=False)
    assert "aten::dropout" in str(traced.graph) or "aten::feature_dropout" in str(traced.graph)


def test_the_compile_constant_mark_is_dynamos_own():
    """`constant_to_compile` sets the mark torch.compiler.assume_constant_result sets (it is
    used to keep torch._dynamo out of import time)."""
    from rnnkit.kernels import build

    def a() -> bool:
        return True

    def b() -> bool:
        return True

    torch.compiler.assume_constant_result(a)
    build.constant_to_compile(b)
    assert vars(a) == vars(b) == {"_dynamo_marked_constant": True}
    assert build.loops_loaded._dynamo_marked_constant is True


def test_loading_a_forecaster_imports_neither_torch_dynamo_nor_matplotlib():
    """torch._dynamo and matplotlib take seconds to import: `rnnkit predict` on a forecast run
    pays for neither (they load when a model is compiled or a picture drawn)."""
    import subprocess
    import sys

    code = ("import sys, rnnkit.layers, rnnkit.tasks.forecast, rnnkit.tasks.anomaly; "
            "print(sorted({'torch._dynamo', 'matplotlib'} & set(sys.modules)))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
