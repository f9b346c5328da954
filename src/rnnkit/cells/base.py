"""What every recurrent cell is: parameters, one time step and its hand-derived backward.

Shapes: B batch, I input size, H hidden size, G number of gate blocks (1 Elman, 4 LSTM, 3 GRU).

A cell never computes its input projection inside the time loop: the engine
(`rnnkit.recurrence`) asks the cell for its ``engine_inputs`` (by default
``gx = x @ weight_ih.T + bias_ih`` for all time steps in one matrix product, or ``x @ weight_ih.T``
with ``bias_ih`` moved into the step's bias where only the sum of the two biases acts; the GRU
hands ``bias_ih`` to its step as a parameter instead), computes
``gh = h @ weight_hh.T + bias_hh`` each step, and leaves the cell only the pointwise math:

- ``step(gx, gh, state, params) -> (new_state, cache)``
- ``step_backward(grad_state, cache, params) -> (grad_gx, grad_gh, grad_state_direct,
  grad_params)``

where ``state`` is a tuple whose first entry is the hidden state ``h``, each entry (B, its own size
from ``state_sizes()``: H for the classic cells, P for h in `ProjectedLSTMCell`), ``params`` the
tensors the step uses beyond gx, gh and the state, as `engine_inputs` returns them (the cell's
``extra_parameters``; the plain GRU's ``bias_ih``; empty for the Elman and LSTM cells),
``grad_state`` the gradient of the loss w.r.t. ``new_state``, and ``grad_state_direct`` the gradient
w.r.t. the previous state *except* the path through ``gh`` (the engine adds
``grad_gh @ weight_hh``); an entry may be None, meaning zero. ``grad_params`` holds one step's
gradient for each of ``params``; the engine sums them over time.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from rnnkit.errors import RnnkitError
from rnnkit.kernels.products import linear

State = tuple[Tensor, ...]
RECURRENT_INITS = ("default", "orthogonal", "identity")


class Cell(nn.Module):
    """Base class: parameters named and shaped as in ``torch.nn.RNNCell/LSTMCell/GRUCell``.

    Args:
        input_size: I, features of each input step.
        hidden_size: H, features of the hidden state.
        bias: learn ``bias_ih`` and ``bias_hh`` (G*H,).
        recurrent_init: ``"default"`` (torch's U(-1/sqrt(H), 1/sqrt(H)) for every parameter),
            ``"orthogonal"`` (each H x H block of ``weight_hh`` orthogonal) or ``"identity"``
            (each block the identity and zero biases: IRNN, Le et al. 2015).
    """

    num_gates: int = 1
    num_states: int = 1
    extra_parameters: tuple[str, ...] = ()  # beyond weight_ih, weight_hh, bias_ih, bias_hh
    # True where the step reads gx + gh only, so that bias_ih and bias_hh act through their sum
    # (`engine_inputs` then adds them once); a new cell keeps each bias where it is unless it
    # says so
    biases_add: bool = False
    # The C++ time loop this class runs on, by name (`rnnkit.kernels.loops` looks it up: "elman",
    # "gru", "lstm", "peephole", "lstmp", "ln_lstm", "ln_gru"), or None: the Python engine
    # (`step`, `step_backward`). A name promises the math of rnnkit's cell of that kernel. Not
    # inherited: a subclass may change the math, so it runs the Python engine unless it
    # declares a kernel itself (`__init_subclass__`).
    kernel: ClassVar[str | None] = None
    # What that kernel computes beyond the plain step: "recurrent_dropout", "zoneout" (also
    # declared per class; without one, a layer with that option runs the Python engine)
    kernel_features: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "kernel" not in cls.__dict__:
            cls.kernel = None
        if "kernel_features" not in cls.__dict__:
            cls.kernel_features = frozenset()

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        recurrent_init: str = "default",
    ) -> None:
        super().__init__()
        if recurrent_init not in RECURRENT_INITS:
            raise RnnkitError(
                f"recurrent_init must be one of {', '.join(RECURRENT_INITS)}, "
                f"got {recurrent_init!r}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.recurrent_init = recurrent_init
        gh = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gh, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gh, self.state_sizes()[0]))  # h feeds W_hh
        self.bias_ih = nn.Parameter(torch.empty(gh)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(gh)) if bias else None
        shapes = self.extra_parameter_shapes()
        unshaped = [name for name in self.extra_parameters if name not in shapes]
        if unshaped:
            raise RnnkitError(
                f"{type(self).__name__}: extra_parameters {', '.join(unshaped)} have no shape; "
                "return each one's shape from extra_parameter_shapes()"
            )
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    def state_sizes(self) -> tuple[int, ...]:
        """Features of each state entry; the first, h, is also the cell's output."""
        return (self.hidden_size,) * self.num_states

    def extra_parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the ``extra_parameters`` (subclasses that have any override this)."""
        return {}

    def parameter_names(self) -> list[str]:
        """Names of this cell's parameters, in torch's order, then the extra ones."""
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        return names + list(self.extra_parameters)

    def named_weights(self) -> dict[str, Tensor | None]:
        """This cell's own parameters by name (None for absent biases)."""
        return {
            n: getattr(self, n, None) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        } | {n: getattr(self, n) for n in self.extra_parameters}

    def reset_parameters(self) -> None:
        self.init_parameters(self.named_weights())

    @torch.no_grad()
    def init_parameters(self, weights: dict[str, Tensor | None]) -> None:
        """Initialise the given tensors in place (layers call this with their own parameters).

        Every tensor gets torch's U(-1/sqrt(H), 1/sqrt(H)); then ``recurrent_init`` applies.
        """
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in weights.values():
            if p is not None:
                p.uniform_(-bound, bound)
        bias_ih, bias_hh = weights["bias_ih"], weights["bias_hh"]
        blocks = weights["weight_hh"].view(self.num_gates, self.hidden_size, -1)
        if self.recurrent_init == "orthogonal":
            for block in blocks:
                nn.init.orthogonal_(block)
        elif self.recurrent_init == "identity":
            for block in blocks:
                block.copy_(torch.eye(*block.shape))
            for p in (bias_ih, bias_hh):
                if p is not None:
                    p.zero_()

    def engine_inputs(
        self, x: Tensor, weights: dict[str, Tensor | None]
    ) -> tuple[Tensor, Tensor, Tensor | None, tuple[Tensor, ...]]:
        """What the engine needs to run this cell over x (T, B, I), given the parameters by name.

        Returns gx (T, B, G*H) for all steps (here one matrix product; autograd differentiates
        it), weight_hh (G*H, size of h), bias_hh (G*H,) or None, and the ``params`` of ``step``
        (here the ``extra_parameters``, in their order). Where the biases act through their sum
        (`biases_add`), gx leaves bias_ih out and the returned bias_hh is bias_ih + bias_hh:
        added once a step with the recurrent product, not over all of gx first, and one sum over
        the steps' gradients serves both biases.
        """
        b_ih, b_hh = weights["bias_ih"], weights["bias_hh"]
        params = tuple(weights[n] for n in self.extra_parameters)  # () for the classic cells
        if self.biases_add and b_ih is not None and b_hh is not None:
            return linear(x, weights["weight_ih"]), weights["weight_hh"], b_ih + b_hh, params
        return linear(x, weights["weight_ih"], b_ih), weights["weight_hh"], b_hh, params

    def step(self, gx: Tensor, gh: Tensor, state: State, params: tuple = ()) -> tuple[State, tuple]:
        """One time step from the projections gx, gh (B, G*H) and the state; see module doc."""
        raise NotImplementedError

    def step_backward(
        self, grad_state: State, cache: tuple, params: tuple = ()
    ) -> tuple[Tensor, Tensor, tuple, tuple]:
        """Gradients of one step: grad_gx, grad_gh (B, G*H), the direct state gradient, and the
        gradients of ``params``."""
        raise NotImplementedError

    def initial_state(self, batch: int, dtype: torch.dtype, device: torch.device) -> State:
        return tuple(
            torch.zeros(batch, size, dtype=dtype, device=device) for size in self.state_sizes()
        )

    def forward(self, input: Tensor, hx: Tensor | State | None = None) -> Tensor | State:
        """One step with autograd, as ``torch.nn.*Cell``: input (B, I) or (I,) -> h' (or (h', c')).

        This is the reference path (plain autograd through ``step``); layers run the engine.
        """
        unbatched = input.dim() == 1
        if unbatched:
            input = input.unsqueeze(0)
        if hx is None:
            state = self.initial_state(input.shape[0], input.dtype, input.device)
        else:
            state = (hx,) if isinstance(hx, Tensor) else tuple(hx)
            if unbatched:
                state = tuple(s.unsqueeze(0) for s in state)
        gx, weight_hh, bias_hh, params = self.engine_inputs(input[None], self.named_weights())
        gh = nn.functional.linear(state[0], weight_hh, bias_hh)
        new_state, _ = self.step(gx[0], gh, state, params)
        if unbatched:
            new_state = tuple(s.squeeze(0) for s in new_state)
        return new_state[0] if self.num_states == 1 else new_state

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.recurrent_init != "default":
            s += f", recurrent_init={self.recurrent_init!r}"
        return s
