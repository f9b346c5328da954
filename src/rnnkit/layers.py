"""Layers RNN, LSTM, GRU: torch.nn-compatible, stacked, bidirectional, with ``lengths``; and
`Recurrent`, the same layer for any cell (RNN, LSTM and GRU are its specialisations).

Shape legend: T sequence length, B batch, I ``input_size``, H ``hidden_size``,
D = 2 if bidirectional else 1, L ``num_layers``.

    input   (T, B, I), (B, T, I) with batch_first, or unbatched (T, I)
    hx      (L * D, B, H) or (L * D, H) unbatched; LSTM: a tuple (h_0, c_0) of those
    lengths (B,) integers in [1, T]; outputs past each end are zero
    output  (T, B, D * H) (or batch_first / unbatched as the input)
    h_n     (L * D, B, H): the state at each sequence's own last step (reverse: at its start)

LSTM with ``proj_size=P`` (LSTMP): h, and so the output and the next layer's input, have P
features instead of H (h_0, h_n (L * D, B, P), output (T, B, D * P)); c keeps H.

Parameter names, shapes and gate order equal torch's (``weight_ih_l0``, ``bias_hh_l1_reverse``,
...), so a ``state_dict`` loads into the matching ``torch.nn`` module and back.

Two implementations compute the same thing (``impl=``):
    "bptt"  rnnkit's engine (`rnnkit.recurrence`): explicit BPTT, any cell; every feature beyond
            torch runs on it.
    "torch" torch's fused kernel (oneDNN for LSTM on the CPU); only for torch's own cells.
    "auto"  (default) "torch" where it exists for the configuration, else "bptt"; GRU and Elman
            layers on CPU float32/float64 inputs take "bptt" (its C++ loops are 1.4-14x faster
            than torch's step-by-step kernels for these cells there). Second derivatives
            (create_graph=True) need "torch": the engine's backward is first-order only.

Beyond torch, on the engine: ``layer_norm`` (LSTM, GRU), ``peephole`` (LSTM), ``recurrent_init``,
``forget_bias`` (LSTM), and three regularisers active in training mode only:
    recurrent_dropout  one dropout mask per sequence on h before the recurrent product
                       (Gal & Ghahramani 2016)
    weight_dropout     DropConnect on weight_hh, one mask per forward call (Merity et al. 2018)
    zoneout            per step, each state unit keeps its previous value with this probability
                       (a pair (p_h, p_c) for LSTM; Krueger et al. 2017); its expectation in eval
``locked_dropout=True`` makes ``dropout`` (between layers) draw one mask per sequence, the same
at every step (variational dropout on the layers' outputs, Gal & Ghahramani 2016), on either
path (`step` sees one step per call, so in training it draws a new mask each call); by default a
mask per element, as torch's.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.cells import (
    Cell,
    ElmanCell,
    GRUCell,
    LayerNormGRUCell,
    LayerNormLSTMCell,
    LSTMCell,
    PeepholeLSTMCell,
    ProjectedLSTMCell,
)
from rnnkit.cells.projected import check_proj_size
from rnnkit.dropout import dropout, locked_dropout
from rnnkit.errors import RnnkitError, shorten
from rnnkit.kernels import build, loops
from rnnkit.recurrence import Zoneout, lengths_to_mask, reverse_within_lengths, run_cell

IMPLS = ("auto", "bptt", "torch")
TORCH_KERNELS = ("elman", "lstm", "gru", "lstmp")  # the cells' kernels torch's layers compute
TORCH_STEPS = ("elman", "lstm", "gru")  # ... and its one-step cell functions


class Recurrent(nn.Module):
    """A layer of any cell (a `rnnkit.cells.Cell` subclass, yours or rnnkit's), as Keras's
    ``RNN(cell)`` or Flax's ``nn.RNN(cell)``: stacked, bidirectional, with ``lengths``, dropout
    between layers, the regularisers and `step` streaming; shapes as in the module docstring.
    RNN, LSTM and GRU are its specialisations (they name their cell and torch's kernel).

    ``Recurrent(cell_class, input_size, hidden_size, ...)`` builds one cell per layer and
    direction as ``cell_class(size_in, hidden_size, bias=bias, **cell_kwargs)`` and holds its
    parameters under the cell's names with ``_l{k}`` (and ``_reverse``): ``weight_ih_l0``,
    ``leak_l1_reverse``. A cell of yours must define ``step`` and ``step_backward``; it runs on
    rnnkit's Python engine (``impl="bptt"``, checked by ``torch.autograd.gradcheck``: see
    docs/layers.md, "Your own cell"). The layer holds and trains the parameters the cell
    names (`Cell.parameter_names`): a parameter beyond weight_ih, weight_hh, bias_ih and bias_hh
    belongs in its ``extra_parameters``.
    """

    def __init__(
        self,
        cell_class: type[Cell],
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        impl: str = "auto",
        recurrent_dropout: float = 0.0,
        weight_dropout: float = 0.0,
        zoneout: float | tuple[float, float] = 0.0,
        locked_dropout: bool = False,
        **cell_kwargs,
    ) -> None:
        super().__init__()
        cell_options = cell_kwargs
        if "proj_size" in cell_options and isinstance(self, (RNN, GRU)):
            raise RnnkitError("proj_size argument is only supported for LSTM, not RNN or GRU")
        _check_cell_class(cell_class)
        self.cell_class = cell_class
        _check_sizes(input_size, hidden_size, num_layers, impl)
        if impl == "torch" and type(self)._torch_kernel is Recurrent._torch_kernel:
            raise RnnkitError(
                f"Recurrent({cell_class.__name__}): impl='torch' is for torch's own layers "
                "(rnnkit.RNN, LSTM, GRU); any other cell runs on rnnkit's engine: use "
                "impl='bptt' or impl='auto'"
            )
        rates = {
            "dropout": dropout,
            "recurrent_dropout": recurrent_dropout,
            "weight_dropout": weight_dropout,
        }
        rates.update({f"zoneout[{k}]": z for k, z in enumerate(_as_tuple(zoneout))})
        _check_rates(rates)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self._step_names = tuple(  # the parameters `step` passes to C++, layer by layer
            f"{k}_l{layer}" for layer in range(num_layers)
            for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )  # fmt: skip
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.impl = bidirectional, impl
        self.recurrent_dropout, self.weight_dropout = recurrent_dropout, weight_dropout
        self.zoneout, self.locked_dropout = zoneout, bool(locked_dropout)
        self.cell_options = cell_options
        self._cells: list[Cell] = []  # math only; the parameters live on the layer, torch-named
        for layer in range(num_layers):
            for suffix in self._suffixes():
                # the layer below outputs its cells' h: H features, or P with a projection
                size_in = input_size if layer == 0 else self._output_size() * self.num_directions
                cell = self._make_cell(size_in, hidden_size, bias, **cell_options)
                self._cells.append(cell)
                for name in cell.parameter_names():
                    self.register_parameter(f"{name}_l{layer}{suffix}", getattr(cell, name))
        self._step_code = loops.step_code(self._cells)  # None: `step` goes layer by layer

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def _make_cell(self, input_size: int, hidden_size: int, bias: bool, **options) -> Cell:
        """One cell of the stack, ``cell_class(input_size, hidden_size, bias=bias, **options)``
        (RNN, LSTM and GRU choose among their cells instead)."""
        cls = self.cell_class
        try:
            inspect.signature(cls).bind(input_size, hidden_size, bias=bias, **options)
        except TypeError as err:
            raise RnnkitError(
                f"Recurrent({cls.__name__}): cannot build the cell as {cls.__name__}(input_size, "
                f"hidden_size, bias=..., **cell_kwargs) with cell_kwargs {sorted(options)}: "
                f"{err}; give its __init__ that signature, or pass its own arguments as keywords"
            ) from None
        cell = cls(input_size, hidden_size, bias=bias, **options)
        _check_cell_parameters(cell)
        return cell

    def _output_size(self) -> int:
        """Features of h per direction (the cells' first state)."""
        return self._cells[0].state_sizes()[0]

    def _weights(self, layer: int, suffix: str) -> dict[str, Tensor | None]:
        """The parameters of one layer and direction by their cell's names (None: no bias)."""
        cell = self._cells[layer * self.num_directions + (1 if suffix else 0)]
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", *cell.extra_parameters)
        return {k: getattr(self, f"{k}_l{layer}{suffix}", None) for k in names}

    def reset_parameters(self) -> None:
        for index, cell in enumerate(self._cells):
            layer, direction = divmod(index, self.num_directions)
            cell.init_parameters(self._weights(layer, self._suffixes()[direction]))

    def uses_torch_kernel(self, x: Tensor | None = None, lengths: Tensor | None = None) -> bool:
        """True when forward on input like ``x`` (default: an input of torch's default dtype and
        device; (T, B, I) as forward sees it) runs torch's fused kernel rather than the BPTT
        engine. ``impl="auto"`` takes torch's kernel where it computes the same thing, except
        where the engine's C++ loops are faster on input like ``x`` (on the CPU,
        float32/float64): GRU and Elman layers, which torch runs step by step, 1.4-14x slower
        than the loops here, and with ``lengths`` (not all equal to T) every cell, as torch's
        packed kernel grows super-linearly with T on the CPU (10-20x slower than the loops at
        T=300-600; docs/performance.md, "Which path"). Asking may build the C++ extension
        (about a minute, once per machine). `plan` says which path in words."""
        if self.impl != "auto":
            return self.impl == "torch"
        if self._beyond_torch() or self._torch_kernel() is None:
            return False
        return not self._loops_beat_torch(x, lengths)

    def _loops_beat_torch(self, x: Tensor | None, lengths: Tensor | None = None) -> bool:
        """True for a GRU or Elman stack, and with ``lengths`` any stack, that the C++ loops run
        on input like ``x``: under autocast the engine computes in the weights' dtype
        (`_outside_autocast`)."""
        cell = self._cells[0]
        if lengths is None and type(cell).kernel not in ("gru", "elman"):
            return False
        probe = x if x is not None else torch.empty(0)
        if torch.is_autocast_enabled(probe.device.type):
            weight = next(iter(self._parameters.values()))
            probe = probe.new_empty(0, dtype=weight.dtype)
        return build.handles(probe) and loops.supports(cell)

    def _beyond_torch(self) -> bool:
        """True when an option or the cell asks for what torch's kernels do not compute."""
        return type(self._cells[0]).kernel not in TORCH_KERNELS or self._regularised()

    def plan(self, input: Tensor | None = None, lengths: Tensor | None = None) -> str:
        """The path `forward` takes on ``input`` (shaped as forward takes it; default: a
        two-step batch of torch's default dtype and device) with these ``lengths``, in words:
        "torch fused kernel", "torch packed kernel" (torch's, with lengths), "C++ loops
        (<kernel>)" (the engine on the loop its cells name: `Cell.kernel`), "Python engine"
        (the engine on the cells' own ``step``), "one step: ..." (a one-step sequence, through
        `step`'s paths) or "refused under export"; in autograd's current mode. Asking may
        build the C++ extension (about a minute, once per machine)."""
        if input is None:
            input = torch.zeros(2, 1, self.input_size)
            input = input.transpose(0, 1) if self.batch_first else input
        x, state0, lengths, _ = self._prepare(input, None, lengths)
        route = self._route(x, lengths)
        if route == "export":
            if self._records_loops(x):
                return "rnnkit operators (torch.export)"
            if not self._beyond_torch() and self._torch_kernel() is not None:
                return "torch packed kernel" if lengths is not None else "torch fused kernel"
            return "refused under export"
        if route == "torch":
            return "torch packed kernel" if lengths is not None else "torch fused kernel"
        if route == "step":
            p = self._parameters
            grads = torch.is_grad_enabled() and any(p[n].requires_grad for n in p)
            if self._stack_takes() and not grads and build.handles(x) and build._state["enabled"]:
                return "one step: C++ stack step"
            if type(self._cells[0]).kernel in TORCH_STEPS and self._torch_cell() is not None:
                return "one step: torch cell function"
            return "one step: the cells' step"
        context, x, state0 = self._outside_autocast(x, state0)
        kinds = []
        for cell in self._cells:
            if build.handles(x) and loops.supports(cell, self._noise()):
                kinds.append(f"C++ loops ({type(cell).kernel})")
            elif "Python engine" not in kinds:
                kinds.append("Python engine")
        return " + ".join(dict.fromkeys(kinds))

    def _noise(self) -> frozenset[str]:
        """The noise a forward call asks the loops for, as `run_cell` asks."""
        noise = (("recurrent_dropout", self.training and self.recurrent_dropout),
                 ("zoneout", any(_as_tuple(self.zoneout))))  # fmt: skip
        return frozenset(name for name, on in noise if on)

    def _route(self, x: Tensor, lengths: Tensor | None) -> str:
        """The one place that decides forward's path on x (T, B, I) with ``lengths`` (None when
        all equal T): "export" (`_forward_export`), "step" (`_forward_one_step`), "torch"
        (`_forward_torch`) or "engine" (`_forward_bptt`)."""
        if loops.exporting(x):
            return "export"
        if x.shape[0] == 1 and self._steps_one(x):
            return "step"
        return "torch" if self.uses_torch_kernel(x, lengths) else "engine"

    def _regularised(self) -> bool:
        """True with recurrent dropout, DropConnect or zoneout (noise that `step` leaves out)."""
        return bool(self.recurrent_dropout or self.weight_dropout or any(_as_tuple(self.zoneout)))

    def _torch_kernel(self):
        """torch's fused function for this configuration, or None."""
        return None

    def forward(self, input: Tensor, hx=None, lengths: Tensor | None = None):
        """See the module docstring for shapes. Returns (output, h_n), LSTM (output, (h_n, c_n))."""
        x, state0, lengths, unbatched = self._prepare(input, hx, lengths)
        route = self._route(x, lengths)  # the path: `plan` says it in words
        if route == "export":
            output, final = self._forward_export(x, state0, lengths)
        elif route == "step":
            output, final = self._forward_one_step(x, state0)
        elif route == "torch":
            output, final = self._forward_torch(x, state0, lengths)
        else:
            context, x, state0 = self._outside_autocast(x, state0)
            with context:
                output, final = self._forward_bptt(x, state0, lengths)
        if unbatched:
            output, final = output.squeeze(1), tuple(s.squeeze(1) for s in final)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, (final[0] if len(final) == 1 else final)

    def _forward_export(self, x: Tensor, state0: tuple[Tensor, ...], lengths: Tensor | None):
        """Forward while an exporter records the graph for another runtime: under
        ``torch.export`` through rnnkit's loop operators where every cell runs on one (they
        follow the sequence length; torch's own kernels record the example's); else through
        torch's fused kernel, which every exporter knows, where it computes this configuration;
        otherwise refused (a loop of Python steps would record one sequence length)."""
        if self._records_loops(x):
            return self._forward_bptt(x, state0, lengths)
        if not self._beyond_torch() and self._torch_kernel() is not None:
            return self._forward_torch(x, state0, lengths)
        raise RnnkitError(
            f"{self._config_name()} ({type(self._cells[0]).__name__}) cannot be exported to ONNX "
            "or traced: only layers that torch's own kernels compute (rnnkit.LSTM, GRU, RNN "
            "tanh/relu without layer_norm, peephole, recurrent_dropout, weight_dropout or "
            "zoneout) record a graph that follows the input there; torch.export records the "
            "others that run on rnnkit's C++ loops as rnnkit operators; or run it in PyTorch"
        )

    def _records_loops(self, x: Tensor) -> bool:
        """True if ``torch.export`` may record this layer on rnnkit's loop operators: every
        cell runs on one (with the noise asked for), on tensors the loops take."""
        if not loops.records_operators() or not build.handles(x):
            return False
        return all(loops.supports(cell, self._noise()) for cell in self._cells)

    def step(self, input: Tensor, hx=None):
        """One time step for streaming and generation, without the time-loop machinery.

        input (B, I) or (I,); hx as in `forward`. Returns (output (B, H or P), state) with the state
        shaped as in `forward`; equal to ``forward`` on a one-step sequence. Unidirectional only;
        in training mode only dropout between layers applies (zoneout at its expectation).
        """
        if self.bidirectional:
            raise RnnkitError(f"{type(self).__name__}.step needs bidirectional=False")
        size = self.input_size
        self._check_input(input, (1, 2), f"(B, {size}) or unbatched ({size},)")
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input  # (B, I)
        state0 = self._prepare_state(hx, x.shape[0], unbatched, x)
        context, x, state0 = self._outside_autocast(x, state0)
        with context:
            x, final = self._step_stack(x, state0)
        if unbatched:
            x, final = x.squeeze(0), tuple(f.squeeze(1) for f in final)
        return x, (final[0] if len(final) == 1 else final)

    def _steps_one(self, x: Tensor) -> bool:
        """True if a one-step sequence x (1, B, I) goes through `step`'s paths, which compute
        the same; not what they do not cover (a bidirectional stack, training noise that `step`
        leaves out, ``impl="torch"`` and autocast, where torch's kernel computes and errs as it
        does on longer sequences). Decoders and generation loops call forward one step at a
        time, and the loops' setup (packing the weights; torch's LSTM reorders them for oneDNN
        on every call) costs more than the step: 3-4x `step`'s time at (B, H) = (1, 512)."""
        return not (
            self.bidirectional
            or self.impl == "torch"
            or torch.is_autocast_enabled(x.device.type)
            or (self.training and self._regularised())
        )

    def _forward_one_step(self, x: Tensor, state0: tuple[Tensor, ...]):
        """A one-step sequence x (1, B, I) that `_steps_one` takes, through `step`'s paths:
        (output (1, B, H), the final state tuple)."""
        output, final = self._step_stack(x[0], state0)
        return output[None], final

    def _step_stack(self, x: Tensor, state0: tuple[Tensor, ...]):
        """One step of the stack, x (B, I): in one C++ call when `_stack_step` can, else layer by
        layer -> (output (B, H or P), the final state tuple)."""
        stepped = self._stack_step(x, state0)
        return stepped if stepped is not None else self._step_layers(x, state0)

    def _outside_autocast(self, x: Tensor, state0: tuple[Tensor, ...]):
        """(context, x, state0) for the engine, which computes in one dtype: under autocast
        (e.g. bfloat16 training) a context that turns it off and x and the state in the weights'
        dtype; else a context that does nothing (a streaming step notices microseconds)."""
        if not torch.is_autocast_enabled(x.device.type):
            return contextlib.nullcontext(), x, state0
        dtype = next(iter(self._parameters.values())).dtype
        off = torch.autocast(x.device.type, enabled=False)
        return off, x.to(dtype), tuple(s.to(dtype) for s in state0)

    def _step_layers(self, x: Tensor, state0: tuple[Tensor, ...]):
        """`step` layer by layer: x (B, I), state0 as in `forward` -> (output (B, H or P), the
        final state tuple, each (L, B, size))."""
        finals: list[list[Tensor]] = [[] for _ in state0]
        for layer, cell in enumerate(self._cells):
            state = tuple(s[layer] for s in state0)
            new = self._step_layer(layer, cell, x, state)
            rates = self._zoneout_rates(cell)
            if rates is not None:  # zoneout at its expectation
                new = tuple(torch.lerp(n, s, p) for n, s, p in zip(new, state, rates))
            for store, s in zip(finals, new):
                store.append(s)
            x = new[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = dropout(x, self.dropout)
        return x, tuple(torch.stack(f) for f in finals)

    def _stack_step(self, x: Tensor, state0: tuple[Tensor, ...]):
        """The whole stack's step in one C++ call (`rnnkit.kernels.loops.stack_step`) when nothing
        needs autograd, dropout between layers or zoneout: (output (B, H), the final state tuple);
        else None."""
        if (self.training and self.dropout and self.num_layers > 1) or any(_as_tuple(self.zoneout)):
            return None
        p = self._parameters
        weights = [p.get(name) for name in self._step_names]
        if torch.is_grad_enabled() and (
            x.requires_grad or any(s.requires_grad for s in state0)
            or any(w is not None and w.requires_grad for w in weights)
        ):  # fmt: skip
            return None
        return loops.stack_step(self._step_code, x, state0, weights)

    def _stack_takes(self) -> bool:
        """False where `_stack_step` leaves the step to `_step_layers` whatever the tensors
        (`plan`): dropout between layers in training, zoneout, or cells of no plain kernel."""
        if (self.training and self.dropout and self.num_layers > 1) or any(_as_tuple(self.zoneout)):
            return False
        return self._step_code is not None

    def _step_layer(self, layer: int, cell: Cell, x: Tensor, state: tuple[Tensor, ...]):
        """One layer's step: x (B, I), the state tuple -> the new state tuple. Plain cells take
        torch's fused cell function (both products and the pointwise math in one call: the
        cheapest step there is); every other cell (`ProjectedLSTMCell` too) its own `Cell.step`."""
        torch_step = self._torch_cell() if type(cell).kernel in TORCH_STEPS else None
        if torch_step is not None:  # the parameters read directly: getattr costs microseconds here
            p, k = self._parameters, f"_l{layer}"
            new = torch_step(x, state if len(state) > 1 else state[0], p["weight_ih" + k],
                        p["weight_hh" + k], p.get("bias_ih" + k), p.get("bias_hh" + k))  # fmt: skip
            return new if isinstance(new, tuple) else (new,)
        gx, w_hh, b_hh, params = cell.engine_inputs(x[None], self._weights(layer, ""))
        gh = nn.functional.linear(state[0], w_hh, b_hh)
        return cell.step(gx[0], gh, state, params)[0]

    def _torch_cell(self):
        """torch's one-step function for this layer's plain cell, or None."""
        return None

    def _forward_bptt(self, x: Tensor, state0: tuple[Tensor, ...], lengths: Tensor | None):
        mask = None if lengths is None else lengths_to_mask(lengths.to(x.device), x.shape[0])
        finals: list[list[Tensor]] = [[] for _ in state0]
        for layer in range(self.num_layers):
            outputs = []
            for direction, suffix in enumerate(self._suffixes()):
                index = layer * self.num_directions + direction
                cell = self._cells[index]
                x_dir = reverse_within_lengths(x, lengths) if direction else x
                weights = self._weights(layer, suffix)
                if self.weight_dropout and self.training:  # DropConnect, one mask per call
                    weights["weight_hh"] = dropout(weights["weight_hh"], self.weight_dropout)
                h0 = tuple(s[index] for s in state0)
                noise = self._recurrent_noise(cell, h0)
                if loops.takes_input(cell, x_dir, noisy=any(n is not None for n in noise)):
                    out, final = loops.run_on_input(cell, x_dir, weights, h0, mask)
                else:
                    gx, w_hh, b_hh, params = cell.engine_inputs(x_dir, weights)
                    out, final = run_cell(cell, gx, w_hh, b_hh, h0, mask, params, *noise)
                outputs.append(reverse_within_lengths(out, lengths) if direction else out)
                for store, s in zip(finals, final):
                    store.append(s)
            x = torch.cat(outputs, dim=-1) if self.bidirectional else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = self._between_layers(x)
        return x, tuple(torch.stack(f) for f in finals)

    def _recurrent_noise(self, cell: Cell, h0: tuple[Tensor, ...]):
        """The variational recurrent-dropout mask (one per sequence) and the zoneout rates."""
        mask = None
        if self.recurrent_dropout and self.training:
            mask = dropout(torch.ones_like(h0[0]), self.recurrent_dropout)  # 0 or 1 / (1 - p)
        rates = self._zoneout_rates(cell)
        return mask, None if rates is None else Zoneout(rates, self.training)

    def _zoneout_rates(self, cell: Cell) -> tuple[float, ...] | None:
        """One zoneout rate per state of the cell, or None when zoneout is off."""
        rates = _as_tuple(self.zoneout)
        if not any(rates):
            return None
        return rates * cell.num_states if len(rates) == 1 else rates[: cell.num_states]

    def _forward_torch(self, x: Tensor, state0: tuple[Tensor, ...], lengths: Tensor | None):
        """torch's fused kernel over the stack, one layer at a time when dropout between layers
        applies (rnnkit's `dropout` draws the masks several times faster than torch's kernel)."""
        kernel = None if self._beyond_torch() else self._torch_kernel()
        if kernel is None:
            raise RnnkitError(
                f"impl='torch': torch has no fused kernel for {self._config_name()}; "
                "use impl='bptt' or impl='auto'"
            )
        packed = None
        if lengths is not None:
            packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
            order = packed.sorted_indices.to(x.device)
            state0 = tuple(s.index_select(1, order) for s in state0)
        # rnnkit's masks only on the CPU (elsewhere torch's kernel draws them itself)
        split = bool(self.dropout and self.training and self.num_layers > 1) and (
            self.locked_dropout or x.device.type == "cpu"
        )
        layers = range(self.num_layers)
        groups = [[layer] for layer in layers] if split else [layers]  # kernel calls
        data, finals = x if packed is None else packed.data, []
        for group in groups:
            if finals:
                data = self._between_layers(data, packed)
            weights = [w for layer in group for s in self._suffixes()
                       for w in self._weights(layer, s).values() if w is not None]  # fmt: skip
            rows = slice(group[0] * self.num_directions, (group[-1] + 1) * self.num_directions)
            hx = tuple(s[rows] for s in state0)
            flags = (self.bias, len(group), 0.0 if split else self.dropout, self.training,
                     self.bidirectional)  # fmt: skip
            hx = hx if len(hx) > 1 else hx[0]
            if packed is None:
                data, *final = kernel(data, hx, weights, *flags, False)
            else:
                data, *final = kernel(data, packed.batch_sizes, hx, weights, *flags)
            finals.append(final)
        final = tuple(torch.cat(parts) for parts in zip(*finals)) if split else tuple(finals[0])
        if packed is None:
            return data, final
        output, _ = pad_packed_sequence(packed._replace(data=data), total_length=x.shape[0])
        unorder = packed.unsorted_indices.to(x.device)
        return output, tuple(s.index_select(1, unorder) for s in final)

    def _between_layers(self, x: Tensor, packed: PackedSequence | None = None) -> Tensor:
        """Dropout on a layer's output (T, B, F) (or ``packed``'s data) before the next layer:
        a mask per element, or per sequence with ``locked_dropout``."""
        if self.locked_dropout:
            return locked_dropout(x, self.dropout, packed=packed)
        return dropout(x, self.dropout)

    def _config_name(self) -> str:
        if type(self) is Recurrent:
            return f"Recurrent({self.cell_class.__name__})"
        return type(self).__name__

    def _check_input(self, input: Tensor, dims: tuple[int, int], shapes: str) -> None:
        """Refuse an input that is not a floating-point tensor with one of ``dims`` dimensions,
        the last of size input_size (``shapes`` names the shapes accepted)."""
        name = type(self).__name__
        if not isinstance(input, Tensor) or not input.is_floating_point():
            got = input.dtype if isinstance(input, Tensor) else type(input).__name__
            raise RnnkitError(
                f"{name}: input must be a floating-point tensor, got {got}; "
                "convert it with input.float() (token ids go through an nn.Embedding first)"
            )
        if input.dim() not in dims:
            raise RnnkitError(f"{name}: input must have shape {shapes}, got {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise RnnkitError(
                f"{name}: input.size(-1) must equal input_size={self.input_size}, "
                f"got {input.shape[-1]} (input shape {tuple(input.shape)})"
            )

    def _prepare(self, input: Tensor, hx, lengths: Tensor | None):
        """Validate, and bring input to (T, B, I) and the state to a tuple of (L*D, B, H)."""
        name = type(self).__name__
        shapes = f"(T, B, {self.input_size}) or unbatched (T, {self.input_size})"
        self._check_input(input, (2, 3), shapes)
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else input
        if self.batch_first and not unbatched:
            x = x.transpose(0, 1)
        steps, batch = x.shape[0], x.shape[1]
        if steps == 0:
            raise RnnkitError(f"{name}: input is an empty sequence (T=0); give at least one step")
        state0 = self._prepare_state(hx, batch, unbatched, x)
        if lengths is not None:
            lengths = _check_lengths(name, lengths, batch, steps)
            if not torch.compiler.is_exporting() and bool((lengths == steps).all()):
                lengths = None
        return x, state0, lengths, unbatched

    def _prepare_state(self, hx, batch: int, unbatched: bool, x: Tensor) -> tuple[Tensor, ...]:
        name = type(self).__name__
        sizes = self._cells[0].state_sizes()
        shapes = [(self.num_layers * self.num_directions, batch, size) for size in sizes]
        if hx is None:
            return tuple(x.new_zeros(shape) for shape in shapes)
        states = (hx,) if isinstance(hx, Tensor) else tuple(hx)
        if len(states) != len(sizes):
            raise RnnkitError(
                f"{name}: hx must be {'a tuple (h_0, c_0)' if len(sizes) == 2 else 'one tensor'}, "
                f"got {len(states)} tensor(s)"
            )
        out = []
        for label, s, shape, size in zip(("h_0", "c_0"), states, shapes, sizes):
            expected = shape[::2] if unbatched else shape
            if tuple(s.shape) != expected:
                width = "proj_size" if size != self.hidden_size else "hidden_size"
                raise RnnkitError(
                    f"{name}: {label} must have shape {expected} (num_layers * num_directions, "
                    f"batch, {width}), got {tuple(s.shape)}"
                )
            if s.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
                raise RnnkitError(f"{name}: {label} dtype {s.dtype} differs from input {x.dtype}")
            out.append(s.unsqueeze(1) if unbatched else s)
        return tuple(out)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if type(self) is Recurrent:
            s = f"{self.cell_class.__name__}, {s}"
        if getattr(self, "proj_size", 0):
            s += f", proj_size={self.proj_size}"
        defaults = {
            "num_layers": 1,
            "bias": True,
            "batch_first": False,
            "dropout": 0.0,
            "bidirectional": False,
            "impl": "auto",
            "recurrent_dropout": 0.0,
            "weight_dropout": 0.0,
            "locked_dropout": False,
            "zoneout": 0.0,
        }
        for key, default in defaults.items():
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        for key, value in self.cell_options.items():
            s += f", {key}={value!r}"
        return s


def _as_tuple(value: float | tuple[float, ...]) -> tuple[float, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _check_cell_class(cell_class) -> None:
    """Refuse what is not a `Cell` subclass with its own ``step`` and ``step_backward``."""
    if not (isinstance(cell_class, type) and issubclass(cell_class, Cell)):
        what = (
            f"an instance of {type(cell_class).__name__}; pass the class itself and its "
            "arguments as keywords"
            if isinstance(cell_class, nn.Module)
            else shorten(cell_class)
        )
        raise RnnkitError(
            f"Recurrent: cell_class must be a subclass of rnnkit.cells.Cell, got {what}"
        )
    name = cell_class.__name__
    if cell_class.step is Cell.step:
        raise RnnkitError(
            f"Recurrent({name}): {name} defines no step; write "
            f"{name}.step(gx, gh, state, params) -> (new_state, cache) (docs/layers.md, "
            "'Your own cell')"
        )
    if cell_class.step_backward is Cell.step_backward:
        raise RnnkitError(
            f"Recurrent({name}): {name} defines no step_backward, which the engine's "
            f"backward calls at every step; write {name}.step_backward(grad_state, cache, "
            "params) -> (grad_gx, grad_gh, grad_state_direct, grad_params) by hand and check it "
            "with torch.autograd.gradcheck (docs/layers.md, 'Your own cell')"
        )


def _check_cell_parameters(cell: Cell) -> None:
    """Refuse a cell whose parameters differ from those it names (`Cell.parameter_names`):
    the layer holds, initialises and hands to the engine only the named ones."""
    name = type(cell).__name__
    named = cell.parameter_names()
    stray = [n for n, _ in cell.named_parameters() if n not in named]
    if stray:
        raise RnnkitError(
            f"Recurrent({name}): {name} has parameter(s) {', '.join(stray)} that it does not "
            "list in extra_parameters, so the layer would neither hold nor train them; list "
            "them in extra_parameters with their shapes in extra_parameter_shapes (the engine "
            "hands them to step as params)"
        )


def _check_rates(rates: dict[str, float]) -> None:
    for label, value in rates.items():
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise RnnkitError(f"{label} must be in [0, 1), got {value!r}")


def _check_sizes(input_size, hidden_size, num_layers, impl) -> None:
    for label, value in (
        ("input_size", input_size),
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
    ):
        if not isinstance(value, int) or value < 1:
            raise RnnkitError(f"{label} must be a positive integer, got {value!r}")
    if impl not in IMPLS:
        raise RnnkitError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")


def _check_lengths(name: str, lengths, batch: int, steps: int) -> Tensor:
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise RnnkitError(
            f"{name}: lengths must have shape ({batch},), one per sequence, "
            f"got {tuple(lengths.shape)}"
        )
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise RnnkitError(f"{name}: lengths must be integers, got {lengths.dtype}")
    if torch.compiler.is_exporting():  # values unknown while torch.export records
        return lengths.long()
    longest, shortest = int(lengths.max()), int(lengths.min())
    if longest > steps:
        raise RnnkitError(
            f"{name}: lengths[{int(lengths.argmax())}]={longest} is longer than the input "
            f"(T={steps})"
        )
    if shortest < 1:
        raise RnnkitError(
            f"{name}: lengths[{int(lengths.argmin())}]={shortest}; every sequence needs length >= 1"
        )
    return lengths.long()


class RNN(Recurrent):
    """Elman RNN layer, as ``torch.nn.RNN`` plus ``nonlinearity="sigmoid"``, ``lengths``,
    ``recurrent_init`` ("default" | "orthogonal" | "identity") and ``impl``.

    Per step: h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh).
    """

    def __init__(self, *args, nonlinearity: str = "tanh", **kwargs) -> None:
        super().__init__(ElmanCell, *args, nonlinearity=nonlinearity, **kwargs)

    @property
    def nonlinearity(self) -> str:
        return self.cell_options["nonlinearity"]

    def _make_cell(self, input_size, hidden_size, bias, **options) -> Cell:
        return ElmanCell(input_size, hidden_size, bias, **options)

    def _torch_kernel(self):
        return {"tanh": torch.rnn_tanh, "relu": torch.rnn_relu}.get(self.nonlinearity)

    def _torch_cell(self):
        return {"tanh": torch.rnn_tanh_cell, "relu": torch.rnn_relu_cell}.get(self.nonlinearity)

    def _config_name(self) -> str:
        return f"RNN(nonlinearity={self.nonlinearity!r})"


class LSTM(Recurrent):
    """LSTM layer, as ``torch.nn.LSTM`` (``proj_size`` included: `ProjectedLSTMCell`) plus
    ``lengths``, ``recurrent_init``, ``forget_bias``, ``layer_norm`` (`LayerNormLSTMCell`),
    ``peephole`` (`PeepholeLSTMCell`), the regularisers and ``impl``. hx and the final state are
    (h, c); with ``proj_size=P`` h is (.., P) and c (.., H).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        **kwargs,
    ) -> None:
        if isinstance(hidden_size, int) and hidden_size >= 1:  # else _check_sizes says so
            check_proj_size(proj_size, hidden_size)
        self.proj_size = proj_size  # read by _make_cell, during super().__init__
        super().__init__(
            LSTMCell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, **kwargs,
        )  # fmt: skip

    def _make_cell(
        self, input_size, hidden_size, bias, layer_norm=False, peephole=False, **options
    ) -> Cell:
        if layer_norm and peephole:
            raise RnnkitError("LSTM: choose layer_norm=True or peephole=True, not both")
        if self.proj_size:
            if layer_norm or peephole:
                option = "layer_norm" if layer_norm else "peephole"
                raise RnnkitError(
                    f"LSTM: proj_size is not supported with {option}=True; use one or the other"
                )
            return ProjectedLSTMCell(input_size, hidden_size, self.proj_size, bias, **options)
        cls = LayerNormLSTMCell if layer_norm else PeepholeLSTMCell if peephole else LSTMCell
        return cls(input_size, hidden_size, bias, **options)

    def _torch_kernel(self):
        return torch.lstm

    def _torch_cell(self):
        return torch.lstm_cell


class GRU(Recurrent):
    """GRU layer, as ``torch.nn.GRU`` plus ``lengths``, ``recurrent_init``, ``layer_norm``
    (`LayerNormGRUCell`), the regularisers and ``impl``."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(
            GRUCell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, **kwargs,
        )  # fmt: skip

    def _make_cell(self, input_size, hidden_size, bias, layer_norm=False, **options) -> Cell:
        cls = LayerNormGRUCell if layer_norm else GRUCell
        return cls(input_size, hidden_size, bias, **options)

    def _torch_kernel(self):
        return torch.gru

    def _torch_cell(self):
        return torch.gru_cell
