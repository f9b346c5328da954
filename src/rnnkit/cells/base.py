"""What every recurrent cell is: parameters, one time step and its hand-derived backward.

Shapes: B batch, I input size, H hidden size, G number of gate blocks (1 Elman, 4 LSTM, 3 GRU).

A cell never computes its input projection: the engine (`rnnkit.recurrence`) hoists
``gx = x @ weight_ih.T + bias_ih`` for all time steps into one matrix product, and computes
``gh = h @ weight_hh.T + bias_hh`` each step, so a cell only writes the pointwise math:

- ``step(gx, gh, state) -> (new_state, cache)``
- ``step_backward(grad_state, cache) -> (grad_gx, grad_gh, grad_state_direct)``

where ``state`` is a tuple whose first entry is the hidden state ``h`` (B, H), ``grad_state`` is
the gradient of the loss w.r.t. ``new_state``, and ``grad_state_direct`` is the gradient w.r.t. the
previous state *except* the path through ``gh`` (the engine adds ``grad_gh @ weight_hh``).
An entry of ``grad_state_direct`` may be None, meaning zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnkit.errors import RnnkitError

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
        self.weight_hh = nn.Parameter(torch.empty(gh, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gh)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(gh)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.init_parameters(self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)

    @torch.no_grad()
    def init_parameters(
        self, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None, bias_hh: Tensor | None
    ) -> None:
        """Initialise the given tensors in place (layers call this with their own parameters)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in (weight_ih, weight_hh, bias_ih, bias_hh):
            if p is not None:
                p.uniform_(-bound, bound)
        blocks = weight_hh.view(self.num_gates, self.hidden_size, self.hidden_size)
        if self.recurrent_init == "orthogonal":
            for block in blocks:
                nn.init.orthogonal_(block)
        elif self.recurrent_init == "identity":
            for block in blocks:
                block.copy_(torch.eye(self.hidden_size))
            for p in (bias_ih, bias_hh):
                if p is not None:
                    p.zero_()

    def step(self, gx: Tensor, gh: Tensor, state: State) -> tuple[State, tuple]:
        """One time step from the projections gx, gh (B, G*H) and the state; see module doc."""
        raise NotImplementedError

    def step_backward(self, grad_state: State, cache: tuple) -> tuple[Tensor, Tensor, tuple]:
        """Gradients of one step: (grad_gx, grad_gh) (B, G*H) and the direct state gradient."""
        raise NotImplementedError

    def initial_state(self, batch: int, dtype: torch.dtype, device: torch.device) -> State:
        return tuple(
            torch.zeros(batch, self.hidden_size, dtype=dtype, device=device)
            for _ in range(self.num_states)
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
        gx = nn.functional.linear(input, self.weight_ih, self.bias_ih)
        gh = nn.functional.linear(state[0], self.weight_hh, self.bias_hh)
        new_state, _ = self.step(gx, gh, state)
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
