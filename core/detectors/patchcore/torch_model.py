"""Locally aware patch features (paper 3.1) as a plain module.

Input: images (N, 3, S, S) in [0, 1]. Output: (N, h, w, D) patch features at the shallower
stage's resolution (stride 8 for the real backbones: 28 x 28 patches at S = 224).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.detectors.backbones import build_stages

#: How the stages share the patch feature (issue 24 measured them; docs/benchmarks.md):
#: ``pool`` (the authors' code: each stage pooled to an equal share of ``feature_dim``),
#: ``concat`` (the stages' channels as they are: the wider stage weighs more) and
#: ``standardize`` (as they are, each channel standardised by its training mean and standard
#: deviation and each stage scaled by 1 / sqrt(its channels), so both weigh the same).
WEIGHTINGS = ("pool", "concat", "standardize")


def channel_pooling(channels: int, share: int) -> torch.Tensor:
    """(channels, share) matrix of adaptive average pooling over the channel axis: ``f @ P`` is
    ``F.adaptive_avg_pool1d(f, share)`` of each patch's ``channels`` features (bin ``j`` averages
    input channels ``floor(j c / s)`` to ``ceil((j + 1) c / s) - 1``). As a matrix product it
    exports to ONNX / OpenVINO for any feature-map size, which ``adaptive_avg_pool1d`` does not."""
    eye = torch.eye(channels, dtype=torch.float64)[:, None, :]
    return F.adaptive_avg_pool1d(eye, share)[:, 0, :].float()


def auto_feature_dim(channels: tuple[int, ...]) -> int:
    """Default D: one equal share per stage at the widest stage's width, capped at the paper's 1024."""
    return min(1024, len(channels) * max(channels))


class PatchHead(nn.Module):
    """What scoring reads of the patch features besides the features themselves: their layout
    (stage channels, strides, dimension) and the standardization of ``weighting=standardize``.
    :class:`PatchFeatures` computes the features with the backbone; :class:`GraphFeatures` stands
    in for it when an exported graph computes them (no backbone weights needed)."""

    def __init__(self, kind: str, channels: tuple[int, ...], strides: tuple[int, ...], feature_dim: int,
                 weighting: str) -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown stage weighting '{weighting}' (known: {', '.join(WEIGHTINGS)})")
        self.kind = kind
        self.weighting = weighting
        self.channels = tuple(int(c) for c in channels)
        self.stride = int(strides[0])
        #: the deepest stage's stride: working frames are multiples of it
        self.frame_stride = int(max(strides))
        if weighting == "pool":
            self.feature_dim = int(feature_dim) or auto_feature_dim(self.channels)
        else:
            if feature_dim and int(feature_dim) != sum(self.channels):
                raise ValueError(f"feature_dim={feature_dim} applies to weighting=pool only ({weighting} keeps the "
                                 f"stages' {sum(self.channels)} channels)")
            self.feature_dim = sum(self.channels)
        if weighting == "pool" and self.feature_dim % len(self.channels):
            raise ValueError(f"feature_dim={self.feature_dim} must be a multiple of {len(self.channels)} (the stages)")
        # weighting=standardize: per-channel shift and scale learned from the training patches
        self.register_buffer("shift", torch.zeros(self.feature_dim), persistent=False)
        self.register_buffer("scale", torch.ones(self.feature_dim), persistent=False)

    def train(self, mode: bool = True) -> PatchHead:
        super().train(mode)
        for m in self.children():
            m.eval()  # frozen: batch norm keeps its ImageNet statistics
        return self

    def set_standardization(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """weighting=standardize: learn each channel's shift and scale from training patch
        features (P, D) as the raw stages give them; returns (shift, scale) to save."""
        if self.weighting != "standardize":
            raise ValueError("standardization applies to weighting=standardize only")
        f = features.double()
        mean, std = f.mean(0), f.std(0).clamp_min(1e-6)
        per_stage = torch.cat([torch.full((c,), 1.0 / c ** 0.5, dtype=torch.float64) for c in self.channels])
        self.shift.copy_(mean.float())
        self.scale.copy_((per_stage / std).float())
        return self.shift.clone(), self.scale.clone()

    def load_standardization(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        if shift.shape != self.shift.shape or scale.shape != self.scale.shape:
            raise ValueError(f"standardization of shape {tuple(shift.shape)} does not fit {self.feature_dim} features")
        if not (torch.isfinite(shift).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("standardization values are not finite positive scales")
        self.shift.copy_(shift.float())
        self.scale.copy_(scale.float())

    def standardize(self, feats: torch.Tensor) -> torch.Tensor:
        """(..., D) raw features to the standardised ones (identity unless weighting=standardize)."""
        if self.weighting != "standardize":
            return feats
        return (feats - self.shift) * self.scale


#: How the neighbourhood mean treats the map's border (issue 24): ``mean`` averages the positions
#: inside the map only (anomalib's choice); ``zeros`` counts the zero padding, as a plain
#: ``avg_pool2d`` does, so border patches are damped and match border patches of the bank: the
#: feature knows it is at the edge. Measured on MTD in docs/benchmarks.md (benchmarks/plain_knn.py --pad).
BORDERS = ("mean", "zeros")


class GraphFeatures(PatchHead):
    """:class:`PatchHead` of a model whose features an exported graph computes (the detector runs
    that graph through its runner); ``saved_stages`` keeps a test backbone's saved tensors, so the
    model's fingerprint is the one of the folder it was exported from."""

    def __init__(self, kind: str, channels: tuple[int, ...], strides: tuple[int, ...], feature_dim: int,
                 weighting: str, saved_stages: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(kind, channels, strides, feature_dim, weighting)
        self.saved_stages = dict(saved_stages or {})

    def forward(self, x: torch.Tensor, raw: bool = False) -> torch.Tensor:
        raise RuntimeError("the features of an exported model are computed by its graph, through its runtime")


class PatchFeatures(PatchHead):
    """3.1, eq. 1-2: each stage's map is aggregated over every position's 3 x 3 neighbourhood
    (``f_agg``, patch size p = 3), the deeper map is upsampled bilinearly to the shallower one,
    and the result is reduced to ``feature_dim`` channels by adaptive average pooling.

    ``weighting`` (:data:`WEIGHTINGS`): as in the authors' code (``pool``), each stage is first
    pooled to an equal share of ``feature_dim`` over its channel axis, so both stages weigh the
    same in the Euclidean distance whatever their widths (a narrower stage is repeated, not
    averaged); or the stages are concatenated as they are (``concat``), or standardised
    (``standardize``, see :meth:`set_standardization`). DEPARTURE: the aggregation is a
    mean over the 3 x 3 neighbourhood per channel (as anomalib does); the authors' code
    unfolds the C x 3 x 3 patch and pools that flattened vector, which mixes space and channels.
    """

    def __init__(self, backbone: str, weights_file=None, feature_dim: int = 0, patch_size: int = 3,
                 weighting: str = "pool", border: str = "mean") -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown stage weighting '{weighting}' (known: {', '.join(WEIGHTINGS)})")
        stages, mean, std = build_stages(backbone, weights_file)
        super().__init__(backbone, tuple(stages.channels), tuple(stages.strides), feature_dim, weighting)
        # channels-last: measured about twice as fast for EfficientNet's depthwise convolutions
        # on this CPU (docs/benchmarks.md); the values are the same
        self.stages = stages.to(memory_format=torch.channels_last)
        self.patch_size = int(patch_size)
        if border not in BORDERS:
            raise ValueError(f"unknown border rule '{border}' (known: {', '.join(BORDERS)})")
        self.border = border
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        # weighting=pool: each stage's channels pooled to its share of feature_dim (a fixed matrix)
        share = self.feature_dim // len(self.channels)
        self.pool_names: list[str | None] = []
        for i, c in enumerate(self.channels):
            if weighting == "pool" and c != share:
                self.register_buffer(f"pool{i}", channel_pooling(c, share), persistent=False)
                self.pool_names.append(f"pool{i}")
            else:
                self.pool_names.append(None)

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen stages' maps of images ``x`` (N, 3, S, S) in [0, 1], shallow first."""
        return self.stages(((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last))

    def aggregate(self, maps: list[torch.Tensor], patch_size: int | None = None) -> torch.Tensor:
        """(N, h, w, D) raw patch features of stage maps, each position aggregated over its
        ``patch_size`` neighbourhood (default: this module's; ``mutual`` asks for several)."""
        h, w = maps[0].shape[-2:]
        p = self.patch_size if patch_size is None else int(patch_size)
        out = []
        for m, pool in zip(maps, self.pool_names):
            if p > 1:  # eq. 2: aggregate the neighbourhood N_p of each position
                m = F.avg_pool2d(m, p, stride=1, padding=p // 2, count_include_pad=self.border == "zeros")
            if m.shape[-2:] != (h, w):  # the deeper map upsampled to the shallower one
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
            f = m.permute(0, 2, 3, 1)  # (N, h, w, c)
            if pool is not None:  # adaptive average pooling over the channels to this stage's share
                f = f @ getattr(self, pool)
            out.append(f)
        return torch.cat(out, dim=-1)

    def forward(self, x: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """(N, h, w, D) patch features; ``raw`` skips the standardization (used to learn it)."""
        feats = self.aggregate(self.stage_maps(x))
        return feats if raw else self.standardize(feats)


class RawFeatures(nn.Module):
    """The network a runtime replaces: working frames (N, 3, H, W) in [0, 1] to the raw patch
    features (N, h, w, D), before the standardization (which stays in Python)."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x, raw=True)
