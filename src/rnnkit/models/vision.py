"""Image encoders for the encoder-decoder of `rnnkit.models.seq2seq` (image captioning).

`ConvEncoder`: a small CNN, ``stages`` times [3x3 conv -> ReLU -> 2x2 max-pool], whose feature
map (B, C, h, w) becomes the decoder's memory (B, h * w, C), one vector per image region, read
row by row (region s is row ``s // w``, column ``s % w``). Every region is valid (an all-True
mask). The decoder's initial state is a `Bridge` of the mean feature over the regions.

Convolutions see the same thing wherever it stands, but a caption that goes "left to right" needs
to know where each region is: with ``image_size`` given, a learned position embedding
(h * w, C) is added to the memory (not to the mean the bridge reads), and images of another size
are refused with a clear error.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnkit.dropout import Dropout
from rnnkit.errors import RnnkitError
from rnnkit.models.seq2seq import Bridge, Encoded, _check_positive


class ConvEncoder(nn.Module):
    """Images (B, H, W) or (B, in_channels, H, W) -> `Encoded` (memory (B, h * w, C)).

    Args:
        in_channels: image channels (1: grayscale).
        channels: C, the feature maps of the last stage (earlier stages have half as many).
        stages: conv + ReLU + 2x2 max-pool blocks; each halves H and W (rounding down).
        decoder_hidden: H of the decoder this encoder feeds.
        decoder_layers: L of that decoder.
        decoder_cell: its cell ("gru" or "lstm"), which sets the state's tensors.
        image_size: (H, W) of the images: adds learned position embeddings and checks the size
            of every batch. [default: none, any size, no positions]
        dropout: on the memory (training only).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        stages: int = 3,
        decoder_hidden: int = 256,
        decoder_layers: int = 1,
        decoder_cell: str = "gru",
        image_size: tuple[int, int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, channels=channels, stages=stages)
        self.in_channels, self.stages, self.memory_size = in_channels, stages, channels
        blocks, width = [], in_channels
        for stage in range(stages):
            out = channels if stage == stages - 1 else max(1, channels // 2)
            blocks += [nn.Conv2d(width, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            width = out
        self.features = nn.Sequential(*blocks)
        self.drop = Dropout(dropout)
        self.bridge = Bridge(channels, decoder_hidden, decoder_layers, decoder_cell)
        self.image_size = None if image_size is None else tuple(int(s) for s in image_size)
        self.positions = None
        if self.image_size is not None:
            h, w = self.grid(*self.image_size)
            if h < 1 or w < 1:
                raise RnnkitError(f"images of {self.image_size[0]}x{self.image_size[1]} pixels "
                                  f"are too small for {stages} pooling stages")  # fmt: skip
            self.positions = nn.Parameter(0.1 * torch.randn(h * w, channels))

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(h, w): the regions of the memory of an image of ``height`` x ``width`` pixels."""
        return height >> self.stages, width >> self.stages

    def forward(self, images: Tensor, lengths: Tensor | None = None) -> Encoded:
        """images (B, H, W) or (B, in_channels, H, W), float -> `Encoded`; lengths unused."""
        if images.dim() == 3 and self.in_channels == 1:
            images = images.unsqueeze(1)
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise RnnkitError(f"ConvEncoder takes images (B, {self.in_channels}, H, W), got "
                              f"shape {tuple(images.shape)}")  # fmt: skip
        if self.image_size is not None and tuple(images.shape[2:]) != self.image_size:
            raise RnnkitError(
                f"the images are {images.shape[2]}x{images.shape[3]} pixels; "
                f"this encoder reads {self.image_size[0]}x{self.image_size[1]}"
            )
        grid = self.features(images.float())  # (B, C, h, w)
        memory = grid.flatten(2).transpose(1, 2)  # (B, h * w, C), row by row
        summary = memory.mean(1)
        if self.positions is not None:
            memory = memory + self.positions
        mask = torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
        return Encoded(self.drop(memory), mask, self.bridge(summary))
