"""The batch-trained fallback (``model=batch``): a small pixel-space DDPM trained on the
unlabelled batch itself.

Not in the paper, which uses Stable Diffusion. No Stable Diffusion weights can be fetched on
an air-gapped plant, so that the detector is still usable this fallback trains a small
diffusers ``UNet2DModel`` with the DDPM objective (Ho et al. 2020: predict ``eps`` from
``sqrt(alpha_t) x + sqrt(1 - alpha_t) eps`` at a uniform random ``t``) on the images to be
inspected, without labels; the same noise-error scoring then runs with it (no VAE, no text:
pixel space, unconditional). The assumption is the paper's: defects are a minority of the
batch, so the model fits normal parts better and predicts their noise better. Results of this
variant are reported separately from the pretrained one.

Images are in [0, 1] and fed as ``2 x - 1`` (DDPM's data range). The U-Net is diffusers' with
plain residual blocks (no attention), small widths by default; the noise schedule is DDPM's
linear one over ``train_timesteps`` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.detectors.common import check_unet_shape


@dataclass(frozen=True)
class BatchNetShape:
    in_channels: int
    sample_size: int
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8

    def check(self) -> None:
        check_unet_shape(self.block_out_channels, self.norm_num_groups, self.sample_size)


class BatchNet(nn.Module):
    """``eps^(x~, t)`` for images in [-1, 1]: a diffusers ``UNet2DModel``."""

    def __init__(self, shape: BatchNetShape) -> None:
        super().__init__()
        from diffusers import UNet2DModel  # heavy import: only when a model is built

        shape.check()
        self.shape = shape
        n = len(shape.block_out_channels)
        self.unet = UNet2DModel(
            sample_size=shape.sample_size,
            in_channels=shape.in_channels,
            out_channels=shape.in_channels,
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            block_out_channels=tuple(shape.block_out_channels),
            layers_per_block=shape.layers_per_block,
            norm_num_groups=shape.norm_num_groups,
            add_attention=False,
        )

    def forward(self, x_noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_noisy, t).sample


def make_scheduler(train_timesteps: int):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=train_timesteps, beta_schedule="linear")


def ddpm_loss(model: BatchNet, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """DDPM's simple objective: mean of ``(eps^(sqrt(a) x + sqrt(1 - a) eps, t) - eps)^2``."""
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return (model(a.sqrt() * x + (1 - a).sqrt() * eps, t).float() - eps).pow(2).mean()


class FeatureLatent(nn.Module):
    """The latent space of the ``batch-latent`` fallback: a frozen ImageNet CNN's stride-8 feature
    map (EfficientNet-Lite0's last stride-8 block: 40 channels), standardised per channel with the
    batch's own statistics.

    The paper runs its diffusion model in Stable Diffusion's VAE latent (4.2) and says any diffusion
    model can be used (4.1). No SD weights exist offline; this frozen encoder plays the VAE's part —
    a compact, semantically organised space where a small denoiser trained on the batch's own latents
    (no labels, no good set) has far less to model than in pixel space. It cannot decode (nothing
    here needs to). The per-channel standardisation is the role of SD's ``scaling_factor``: it brings
    the latent to unit variance so the DDPM noise schedule means what it means for images.
    """

    def __init__(self, backbone: str, weights_file=None) -> None:
        super().__init__()
        from core.detectors.backbones import build_stages

        net, mean, std = build_stages(backbone, weights_file)
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.register_buffer("z_mean", torch.zeros(1, net.channels[0], 1, 1))
        self.register_buffer("z_std", torch.ones(1, net.channels[0], 1, 1))
        self.channels = int(net.channels[0])
        self.stride = int(net.strides[0])

    @torch.no_grad()
    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Unstandardised latents of images ``x`` in [0, 1], (B, 3, H, W) -> (B, C, H/8, W/8)."""
        return self.net((x - self.mean) / self.std)[0].float()

    def fit_stats(self, raw: torch.Tensor) -> None:
        """Per-channel mean and standard deviation of the batch's latents (no labels)."""
        self.z_mean.copy_(raw.mean((0, 2, 3), keepdim=True))
        self.z_std.copy_(raw.std((0, 2, 3), keepdim=True).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.raw(x) - self.z_mean) / self.z_std
