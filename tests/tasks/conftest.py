"""One intra-op thread: these tests run tiny models, which threads only slow down (and the suite
runs its files in parallel on two cores)."""

import torch

torch.set_num_threads(1)
