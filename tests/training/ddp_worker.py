"""Run by test_distributed.py under torchrun: train a small batch-first task data-parallel, then
every rank writes its own weights to OUT/rank{RANK}.safetensors."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from test_trainer import SumTask, quiet

from rnnkit.training import Trainer
from rnnkit.training import checkpoint as ckpt


class NoDropout(SumTask):
    """SumTask without dropout: then N processes and one process make the same updates."""

    seen = 0  # rows of the last batch this process trained on

    def build_model(self):
        model = super().build_model()
        model.drop.p = 0.0
        return model

    def loss(self, model, batch, state):
        self.seen = batch[0].shape[0]
        return super().loss(model, batch, state)


def train(run_dir: Path) -> Trainer:
    trainer = Trainer(NoDropout(), quiet(max_steps=12, eval_every=6), run_dir)
    trainer.fit()
    return trainer


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    trainer = train(out / "run")
    rank, meta = trainer.world.rank, {"rows": trainer.task.seen}
    data = ckpt.tensors_to_bytes(trainer.model.state_dict(), meta)
    (out / f"rank{rank}.safetensors").write_bytes(data)
