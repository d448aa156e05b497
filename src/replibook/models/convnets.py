"""Small convolutional networks shared by chapters and zoo entries."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN"]


class DigitsCNN(nn.Module):
    """Small CNN for 28x28 digits: two conv blocks, a 32-d embedding, a linear classifier (about 55k params).

    block = 3x3 conv with stride 2 -> BatchNorm -> ReLU (a strided conv instead of conv +
    max-pool: 4x fewer activations to normalise, which dominates CPU time at this size);
    then flatten -> Linear -> ReLU (the ``features``) -> Linear (logits). Inputs are images in
    [0, 1] ``(B, 1, S, S)``; the fixed MNIST standardisation (mean 0.1307, std 0.3081)
    is part of the model so callers never have to remember it.
    """

    def __init__(self, image_size: int = 28, width: int = 16, feature_dim: int = 32, num_classes: int = 10):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        self.register_buffer("input_mean", torch.tensor(0.1307))
        self.register_buffer("input_std", torch.tensor(0.3081))

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU())

        self.block1 = block(1, width)
        self.block2 = block(width, 2 * width)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim),
                                   nn.ReLU())
        self.linear = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding ``(B, feature_dim)`` (FID-lite features)."""
        x = (x - self.input_mean) / self.input_std
        return self.embed(self.block2(self.block1(x)))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.features(x)
        logits = self.linear(feats)
        return (logits, feats) if return_features else logits
