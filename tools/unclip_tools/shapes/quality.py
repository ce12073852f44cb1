"""Quality report for the shapes model: model-free checks of generated images against captions.

Placeholder: the classifier lives here; the report command is added below.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ShapeClassifier(nn.Module):
    """Small CNN over 64x64 images: which of the renderer's shapes is drawn."""

    def __init__(self, n_classes: int = 6):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.net = nn.Sequential(block(3, 32), block(32, 64), block(64, 96), block(96, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def classifier_input(img_uint8: np.ndarray) -> torch.Tensor:
    """uint8 [B,H,W,3] (any H=W) -> float [B,3,64,64] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(img_uint8)).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    if x.shape[-1] != 64:
        x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()
