"""The noise-conditional score network and its training objective.

Paper: score-based-perturbation-resilience (Shin et al.), sections 4.3 and 5.3.

- Noise schedule (4.3): ``sigma_k = sqrt((sigma^(2k) - 1) / (2 ln sigma))`` for ``k in (0, 1]``
  (the VE-SDE marginal standard deviation of Song et al.); paper: ``sigma = 25``.
- Model (5.3): "a U-net-based network ... with the sinusoidal positional embedding for
  conditioning on time steps". The exact architecture is in the paper's supplementary material,
  which we do not have; we use diffusers' ``UNet2DModel`` with a modest default width (set by the
  detector). ``s_theta(x~, k)`` is trained to approximate ``sigma_k * grad log p(x~)``, i.e.
  ``-eps`` (it has unit scale at every noise level, so the network output is not rescaled).
- Conditioning (our choice): the continuous ``k`` is passed as the U-Net timestep scaled by
  ``TIMESTEP_SCALE = 1000``, so that the sinusoidal embedding (built for integer steps
  0..1000) resolves the inference level ``k = 0.001`` (timestep 1) from ``k = 0`` and ``k = 1``.
- Input scaling (our choice; the paper does not say): images are in [0, 1] and the noise is
  added in that scale, so ``sigma_k`` is in units of the full intensity range (as in Song et
  al.'s score-SDE code, whose VE models take data in [0, 1]). Like their NCSN++, the network
  centres its input internally (``2 x - 1``, diffusers' ``center_input_sample``).
- Objective (4.3, eq. 4): ``||s_theta(x~_k, k) - (x - x~_k) / sigma_k||^2`` with
  ``x~_k = x + sigma_k eps``; the target is ``-eps``. We average over pixels, channels and the
  batch (the paper's sum differs by a constant factor only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from core.detectors.common import check_unet_shape

#: The continuous noise level k in (0, 1] is fed to the U-Net as timestep ``k * TIMESTEP_SCALE``.
TIMESTEP_SCALE = 1000.0


def sigma_k(k: torch.Tensor | float, sigma: float) -> torch.Tensor:
    """Section 4.3: ``sqrt((sigma^(2k) - 1) / (2 ln sigma))``, accurate for tiny ``k`` (expm1)."""
    if not sigma > 1.0:
        raise ValueError(f"sigma must be > 1 (got {sigma})")
    k = torch.as_tensor(k, dtype=torch.float32)
    log_s = math.log(sigma)
    return torch.sqrt(torch.expm1(2.0 * k * log_s) / (2.0 * log_s))


@dataclass(frozen=True)
class ScoreNetShape:
    """Everything that fixes the network's weights' shapes."""

    in_channels: int
    sample_size: int
    block_out_channels: tuple[int, ...] = (64, 128, 256, 256)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    attention: bool = False

    def check(self) -> None:
        check_unet_shape(self.block_out_channels, self.norm_num_groups, self.sample_size)


class ScoreNet(nn.Module):
    """``s_theta(x~, k)``: a diffusers ``UNet2DModel`` conditioned on ``k * TIMESTEP_SCALE``.

    ``attention=False`` (our default, for speed) uses plain residual blocks at every level and
    no attention in the middle block; ``True`` puts self-attention in the two lowest-resolution
    levels and the middle block, as DDPM-style U-Nets do.
    """

    def __init__(self, shape: ScoreNetShape) -> None:
        super().__init__()
        from diffusers import UNet2DModel  # heavy import: only when a model is built

        shape.check()
        self.shape = shape
        levels = len(shape.block_out_channels)
        attn = [shape.attention and i >= levels - 2 and levels > 1 for i in range(levels)]
        down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn)
        up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
        self.unet = UNet2DModel(
            sample_size=shape.sample_size,
            in_channels=shape.in_channels,
            out_channels=shape.in_channels,
            center_input_sample=True,  # data in [0, 1] -> 2 x - 1 inside the network
            time_embedding_type="positional",
            down_block_types=down,
            up_block_types=up,
            block_out_channels=tuple(shape.block_out_channels),
            layers_per_block=shape.layers_per_block,
            norm_num_groups=shape.norm_num_groups,
            attention_head_dim=8 if shape.attention else None,
            add_attention=shape.attention,
        )

    def forward(self, x_noisy: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Score estimate (≈ ``-eps``) for images ``(B, C, H, W)`` and levels ``k`` of shape (B,)."""
        t = (k * TIMESTEP_SCALE).to(x_noisy.device, torch.float32)
        return self.unet(x_noisy, t).sample


def dsm_loss(model: ScoreNet, x: torch.Tensor, k: torch.Tensor, eps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Eq. 4, denoising score matching at levels ``k``: mean of ``(s_theta(x + sigma_k eps, k) + eps)^2``."""
    sk = sigma_k(k, sigma).to(x.device).view(-1, 1, 1, 1)
    s = model(x + sk * eps, k)
    return (s.float() + eps).pow(2).mean()


class EMA:
    """Exponential moving average of a model's parameters (paper 5.3: rate 0.9999).

    Departure (optional, on by default): the effective rate at update ``t`` is
    ``min(decay, (1 + t) / (10 + t))`` (the usual warm-up of diffusers' ``EMAModel``), so that
    short trainings on small data sets are not dominated by the random initial weights; with
    the paper's 3000 epochs the difference vanishes after the first few thousand steps.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        # Float32 parameters are averaged in one fused call; anything else is copied.
        self._names = [k for k, v in model.state_dict().items() if v.dtype == torch.float32]
        self._others = [k for k in self.shadow if k not in set(self._names)]

    def rate(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.rate()
        state = model.state_dict()
        torch._foreach_lerp_([self.shadow[k] for k in self._names], [state[k].detach() for k in self._names], 1.0 - d)
        for k in self._others:
            self.shadow[k].copy_(state[k].detach())
        self.updates += 1

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow, strict=True)
