"""Frozen feature extractors: images -> two mid-level feature maps (PatchCore's patch features,
ldm-zero-shot's offline latent space).

Paper: Roth et al., "Towards Total Recall in Industrial Anomaly Detection" (CVPR 2022), 3.1:
features of a frozen ImageNet CNN from two intermediate stages ("layer2 and layer3" of a
WideResNet-50, strides 8 and 16), neither too generic (early) nor too ImageNet-specific (late).

- ``wide-resnet50-2``: the paper's backbone, built with timm (``wide_resnet50_2``, the same
  parameter names as torchvision, so torchvision's ``wide_resnet50_2-95faca4d.pth`` loads
  strictly); used when the weight set ``wide-resnet50-2-imagenet`` is in the store.
- ``efficientnet-lite0/1/2``: DEPARTURE, the offline backbones whose ImageNet weights install
  from the package registry. The stages that play the roles of layer2 / layer3 are the last
  MBConv block at stride 8 and the last at stride 16 (Lite0: 40 and 112 channels; Lite2: 48
  and 120), found from the blocks' strides, not hard-coded.
- ``tiny-random``: a seeded two-stage random CNN, FOR TESTS ONLY; its weights travel in the
  saved model.
- ``A+B`` (``efficientnet-lite0+efficientnet-lite2``): both networks on the same input, their
  stages concatenated (four stages: each network's stride 8 and 16), measured for PatchCore in
  issue 24. Parts must share the input normalisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BACKBONES = ("wide-resnet50-2", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2",
             "efficientnet-lite0+efficientnet-lite2", "tiny-random")
#: The weight set of the store each real backbone loads.
BACKBONE_WEIGHTS = {
    "wide-resnet50-2": "wide-resnet50-2-imagenet",
    "efficientnet-lite0": "efficientnet-lite0-imagenet",
    "efficientnet-lite1": "efficientnet-lite1-imagenet",
    "efficientnet-lite2": "efficientnet-lite2-imagenet",
}
#: timm architecture of each timm backbone (tests map a tiny one here).
TIMM_ARCH = {"wide-resnet50-2": "wide_resnet50_2"}
TEST_ONLY = ("tiny-random",)


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` or a torch ``.pth`` file (``weights_only``)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state


class TimmResNetStages(nn.Module):
    """A timm ResNet up to ``layer3``; returns (layer2, layer3) as in the paper (3.1)."""

    def __init__(self, arch: str, weights_file: Path) -> None:
        super().__init__()
        import timm

        net = timm.create_model(arch, pretrained=False)
        state = load_state_file(weights_file)
        net.load_state_dict(state, strict=True)  # a wrong file fails here, naming the keys
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
        self.channels = (_out_channels(net.layer2), _out_channels(net.layer3))
        self.strides = (8, 16)
        del net  # layer4 and the classifier are never used

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1(self.stem(x))
        f2 = self.layer2(x)
        return [f2, self.layer3(f2)]


def _out_channels(layer: nn.Module) -> int:
    convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
    last = layer[-1]
    for name in ("conv3", "conv2"):  # bottleneck / basic block
        if hasattr(last, name):
            return int(getattr(last, name).out_channels)
    return int(convs[-1].out_channels)


class EfficientNetStages(nn.Module):
    """EfficientNet-Lite up to the last block at stride 16; returns (stride-8, stride-16) maps."""

    def __init__(self, variant: str, weights_file: Path) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        # image_size=None: TF-style "same" padding computed per input size, as trained.
        net = EfficientNet.from_name(variant, image_size=None)
        state = load_state_file(weights_file)
        net.load_state_dict(state, strict=True)
        stride, taps = 2, {}
        for i, block in enumerate(net._blocks):
            s = block._depthwise_conv.stride
            stride *= int(s[0] if isinstance(s, (tuple, list)) else s)
            taps[stride] = i  # the last block at each stride
        if 8 not in taps or 16 not in taps:
            raise ValueError(f"{variant}: no blocks at strides 8 and 16")
        self.taps = (taps[8], taps[16])
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(net._blocks[: taps[16] + 1])
        self.channels = tuple(int(net._blocks[i]._project_conv.out_channels) for i in self.taps)
        self.strides = (8, 16)
        del net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=None)  # eval: no drop connect
            if i in self.taps:
                out.append(x)
        return out


class TinyRandomStages(nn.Module):
    """Two seeded random conv stages (strides 2 and 4). FOR TESTS ONLY."""

    def __init__(self, seed: int = 1234, width: int = 8) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.a = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.channels = (width, 2 * width)
        self.strides = (2, 4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.a(x)
        return [a, self.b(a)]


def backbone_parts(kind: str) -> list[str]:
    """The networks of a backbone: ``A+B`` is two, anything else one."""
    return kind.split("+")


class ConcatStages(nn.Module):
    """Several stage extractors on the same input: their maps in order (each network's shallow
    then deep map), their channels and strides concatenated."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.channels = tuple(c for n in nets for c in n.channels)
        self.strides = tuple(s for n in nets for s in n.strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m for net in self.nets for m in net(x)]


def build_stages(kind: str, weights_file) -> tuple[nn.Module, tuple, tuple]:
    """(frozen module: normalised images -> [shallow map, deep map, ...], input mean, input std).

    ``weights_file`` is a path, or one path per part of an ``A+B`` backbone."""
    parts = backbone_parts(kind)
    if len(parts) > 1:
        files = list(weights_file) if isinstance(weights_file, (list, tuple)) else [weights_file] * len(parts)
        if len(files) != len(parts):
            raise ValueError(f"{kind} needs {len(parts)} weight files, got {len(files)}")
        built = [build_stages(p, f) for p, f in zip(parts, files)]
        if len({(b[1], b[2]) for b in built}) != 1:
            raise ValueError(f"the parts of {kind} normalise their input differently: they cannot share one")
        net = ConcatStages([b[0] for b in built])
        return net.eval(), built[0][1], built[0][2]
    if kind in TIMM_ARCH:
        net: nn.Module = TimmResNetStages(TIMM_ARCH[kind], weights_file)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif kind.startswith("efficientnet-lite"):
        net = EfficientNetStages(kind, weights_file)
        # the package documents ImageNet mean/std for its (non-advprop) weights
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif kind == "tiny-random":
        net = TinyRandomStages()
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    else:
        raise ValueError(f"unknown backbone '{kind}' (known: {', '.join(BACKBONES)})")
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), mean, std


class FixedSamePadConv2d(nn.Module):
    """A TF-style "same" convolution with its padding fixed: what EfficientNet-Lite's dynamic
    padding computes for one input size. The dynamic padding is Python arithmetic on the input
    size, which a graph export (ONNX, OpenVINO) bakes in wrongly for every other size; fixed
    padding is right for every size whose parity at this convolution is the same (any frame
    that is a multiple of the backbone's deepest stride, see :func:`fix_same_padding`)."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.conv = conv
        self.pads = tuple(int(p) for p in pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if any(self.pads):
            x = torch.nn.functional.pad(x, self.pads)
        return torch.nn.functional.conv2d(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)


def _same_pads(size: tuple[int, int], conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of a TF "same" convolution for an input of ``size``
    (the arithmetic of ``efficientnet_lite_pytorch``'s ``Conv2dDynamicSamePadding``)."""
    import math

    (ih, iw), (kh, kw) = size, conv.weight.shape[-2:]
    sh, sw = conv.stride if len(conv.stride) == 2 else (conv.stride[0],) * 2
    dh, dw = conv.dilation if len(conv.dilation) == 2 else (conv.dilation[0],) * 2
    pad_h = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
    pad_w = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def fix_same_padding(module: nn.Module, example: torch.Tensor) -> tuple[nn.Module, int]:
    """A copy of ``module`` whose dynamic "same" padding convolutions are fixed for the sizes
    they see when ``example`` goes through it; returns (the copy, how many were fixed). For a
    graph export of any frame of the same parity pattern (a multiple of the deepest stride when
    ``example`` is one). Other modules are shared with ``module``, not copied."""
    import copy

    dynamic = [m for m in module.modules() if type(m).__name__ == "Conv2dDynamicSamePadding"]
    if not dynamic:
        return module, 0
    sizes: dict[int, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args: sizes.__setitem__(id(m), tuple(args[0].shape[-2:])))
             for m in dynamic]
    try:
        with torch.inference_mode():
            module(example)
    finally:
        for h in hooks:
            h.remove()
    memo = {id(p): p for p in module.parameters()} | {id(b): b for b in module.buffers()}
    fixed = copy.deepcopy(module, memo)  # the structure copied, the tensors shared
    source = {id(b): id(a) for a, b in zip(module.modules(), fixed.modules())}
    count = 0
    for parent in list(fixed.modules()):
        for name, child in list(parent.named_children()):
            size = sizes.get(source.get(id(child), -1))
            if size is not None:
                setattr(parent, name, FixedSamePadConv2d(child, _same_pads(size, child)))
                count += 1
    return fixed, count
