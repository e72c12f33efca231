"""Locally aware patch features (paper 3.1) as a plain module.

Input: images (N, 3, S, S) in [0, 1]. Output: (N, h, w, D) patch features at the shallower
stage's resolution (stride 8 for the real backbones: 28 x 28 patches at S = 224).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.detectors.backbones import build_stages


def auto_feature_dim(channels: tuple[int, ...]) -> int:
    """Default D: one equal share per stage at the widest stage's width, capped at the paper's 1024."""
    return min(1024, len(channels) * max(channels))


class PatchFeatures(nn.Module):
    """3.1, eq. 1-2: each stage's map is aggregated over every position's 3 x 3 neighbourhood
    (``f_agg``, patch size p = 3), the deeper map is upsampled bilinearly to the shallower one,
    and the result is reduced to ``feature_dim`` channels by adaptive average pooling.

    As in the authors' code, each stage is first pooled to an equal share of ``feature_dim``
    over its channel axis, so both stages weigh the same in the Euclidean distance whatever
    their widths (a narrower stage is repeated, not averaged). DEPARTURE: the aggregation is a
    mean over the 3 x 3 neighbourhood per channel (as anomalib does); the authors' code
    unfolds the C x 3 x 3 patch and pools that flattened vector, which mixes space and channels.
    """

    def __init__(self, backbone: str, weights_file=None, feature_dim: int = 0, patch_size: int = 3) -> None:
        super().__init__()
        self.kind = backbone
        self.stages, mean, std = build_stages(backbone, weights_file)
        # channels-last: measured about twice as fast for EfficientNet's depthwise convolutions
        # on this CPU (docs/benchmarks.md); the values are the same
        self.stages = self.stages.to(memory_format=torch.channels_last)
        self.channels = tuple(self.stages.channels)
        self.stride = int(self.stages.strides[0])
        self.feature_dim = int(feature_dim) or auto_feature_dim(self.channels)
        if self.feature_dim % len(self.channels):
            raise ValueError(f"feature_dim={self.feature_dim} must be a multiple of {len(self.channels)} (the stages)")
        self.patch_size = int(patch_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PatchFeatures:
        super().train(mode)
        self.stages.eval()  # frozen: batch norm keeps its ImageNet statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.stages(((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last))
        h, w = maps[0].shape[-2:]
        share = self.feature_dim // len(maps)
        p = self.patch_size
        out = []
        for m in maps:
            if p > 1:  # eq. 2: aggregate the neighbourhood N_p of each position
                m = F.avg_pool2d(m, p, stride=1, padding=p // 2, count_include_pad=False)
            if m.shape[-2:] != (h, w):  # the deeper map upsampled to the shallower one
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
            n, c = m.shape[:2]
            flat = m.permute(0, 2, 3, 1).reshape(-1, 1, c)
            if c != share:  # adaptive average pooling over the channels to this stage's share
                flat = F.adaptive_avg_pool1d(flat, share)
            out.append(flat.reshape(n, h, w, share))
        return torch.cat(out, dim=-1)
