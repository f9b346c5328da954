"""Training: the generic loop, truncated BPTT, checkpoints and metrics (see trainer.py)."""

from rnnkit.training.checkpoint import FORMAT_VERSION, read_config
from rnnkit.training.tbptt import StreamBatches, StreamChunk, detach_state
from rnnkit.training.trainer import FitResult, StepOutput, Task, TrainConfig, Trainer

__all__ = [
    "FORMAT_VERSION",
    "FitResult",
    "StepOutput",
    "StreamBatches",
    "StreamChunk",
    "Task",
    "TrainConfig",
    "Trainer",
    "detach_state",
    "read_config",
]
