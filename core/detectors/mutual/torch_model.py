"""Patch features at several aggregation degrees and an image-level feature, from PatchCore's
feature module (:class:`core.detectors.patchcore.torch_model.PatchFeatures`), so that both
detectors improve together when its settings do.

MuSc 3.2 (LNAMD, "local neighborhood aggregation with multiple degrees"): the backbone runs once
per image, and each position's feature is aggregated over its r x r neighbourhood for several
degrees r (paper: 1, 3, 5), each degree scored on its own. PatchFeatures' ``aggregate`` does the
aggregation (a mean over the neighbourhood per channel, then the stages brought to one grid and
one dimension as PatchCore does); DEPARTURE: the paper applies LayerNorm to each ViT layer and
scores each layer separately, we score the stages' concatenated feature, as PatchCore does.

Like the authors' code, features are scaled to unit length (``unit``) before the distances, so
the Euclidean distance orders patches as the cosine distance does; ``distance=l2`` leaves them as
they are (PatchCore's).

The image-level feature of RsCIN (3.4) is the deepest stage(s) average-pooled over the image's
valid grid, each stage scaled to unit length, then the whole (the paper takes a ViT's class token,
which a CNN does not have).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.detectors.patchcore.torch_model import PatchFeatures


class MultiDegreeFeatures(nn.Module):
    def __init__(self, features: PatchFeatures, unit: bool = True) -> None:
        super().__init__()
        self.features = features
        self.unit = unit
        strides = tuple(int(s) for s in features.stages.strides)
        #: the maps of the deepest stride (one per network of an ``A+B`` backbone) feed the image feature
        self.deep = tuple(i for i, s in enumerate(strides) if s == max(strides))
        self.strides = strides

    @property
    def stride(self) -> int:
        """Pixels of the working frame per patch (the shallow stage's stride)."""
        return self.features.stride

    @property
    def frame_stride(self) -> int:
        return self.features.frame_stride

    def train(self, mode: bool = True) -> MultiDegreeFeatures:
        super().train(mode)
        self.features.train(mode)  # frozen stages stay in eval mode
        return self

    @torch.no_grad()
    def maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stages' maps of images ``x`` (N, 3, H, W) in [0, 1]: what is cached per image."""
        return [m.float() for m in self.features.stage_maps(x)]

    @torch.no_grad()
    def degree(self, maps: list[torch.Tensor], r: int, layer_norm: bool = False) -> torch.Tensor:
        """(N, h, w, D) patch features aggregated over r x r neighbourhoods (unit length if ``unit``).
        ``layer_norm``: each image's stage map first standardised over all its channels and
        positions (3.2, the paper's LayerNorm of each layer, without affine parameters)."""
        maps = [m.float() for m in maps]
        if layer_norm:
            maps = [F.layer_norm(m, m.shape[1:]) for m in maps]
        f = self.features.aggregate(maps, r)
        return F.normalize(f, dim=-1) if self.unit else f

    @torch.no_grad()
    def image_vector(self, maps: list[torch.Tensor], valid: tuple[int, int] | None = None) -> torch.Tensor:
        """(N, C) unit image-level features: the deepest stages average-pooled over the first
        ``valid`` rows and columns of the shallow grid (all of it when None)."""
        parts = []
        for i in self.deep:
            m = maps[i].float()
            if valid is not None:
                ratio = self.strides[i] // self.strides[0]
                gh = max(1, -(-valid[0] // ratio))
                gw = max(1, -(-valid[1] // ratio))
                m = m[..., :gh, :gw]
            parts.append(F.normalize(m.mean((-2, -1)), dim=-1))
        return F.normalize(torch.cat(parts, dim=-1), dim=-1)
