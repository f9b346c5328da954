"""Issue 10's reference: a plain PyTorch character model trained for a time budget; prints JSON.

    python -m benchmarks.charlm_reference [--text FILE] [--minutes 15] [--bf16]

torch.nn.LSTM 2 x 512, embedding 128, dropout 0.2, AdamW 2e-3 with cosine decay over the budget,
clipping 1.0, batches of 64 random 128-character windows; the first 90% of the text trains, the
last 10% validates. The validation loss is scored as `rnnkit train charlm` scores it: every
validation character once, in consecutive 128-character windows from a zero state (nats/char).
It shows what the hand-written recipe reaches on this machine, against rnnkit's defaults.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 128)
        self.lstm = nn.LSTM(128, 512, 2, dropout=0.2)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(512, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (T, B) ids -> (T, B, vocab)
        return self.head(self.drop(self.lstm(self.embed(x))[0]))


@torch.no_grad()
def validation_loss(model: Model, ids: torch.Tensor, window: int = 128) -> float:
    model.eval()
    usable = (ids.numel() - 1) // window * window
    x = ids[:usable].view(-1, window).t()  # (window, windows)
    y = ids[1 : usable + 1].view(-1, window).t()
    total = sum(
        float(nn.functional.cross_entropy(model(x[:, i : i + 256]).flatten(0, 1),
                                          y[:, i : i + 256].flatten(), reduction="sum"))
        for i in range(0, x.shape[1], 256)
    )  # fmt: skip
    model.train()
    return total / usable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default="../shared/data/text/tinyshakespeare.txt")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--bf16", action="store_true", help="forward pass under bf16 autocast")
    args = parser.parse_args()
    text = Path(args.text).read_text(encoding="utf-8")
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    split = int(0.9 * len(ids))
    train, valid = ids[:split], ids[split:]
    torch.manual_seed(0)
    model = Model(len(chars))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    budget, start, steps = 60 * args.minutes, time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < budget:
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        starts = torch.randint(0, len(train) - 129, (64,))
        window = train[starts[None] + torch.arange(129)[:, None]]  # (129, 64)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(window[:-1])
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), window[1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps += 1
    result = {
        "benchmark": "charlm_reference",
        "minutes": args.minutes,
        "bf16": args.bf16,
        "threads": torch.get_num_threads(),
        "steps": steps,
        "train_loss_last_step": round(loss.item(), 4),
        "valid_loss": round(validation_loss(model, valid), 4),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
