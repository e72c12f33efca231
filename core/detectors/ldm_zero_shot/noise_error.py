"""The noise estimation error of a diffusion model (paper: zero-shot-latent-diffusion-
normalized-cut, section 4.2) and the heat map made from it.

For a latent ``z`` (or an image, for a pixel-space model) and each of T timesteps ``t``:

    z~_t = sqrt(alpha_t) z + sqrt(1 - alpha_t) eps_t,     eps^_t = f(z~_t, t, null),
    E_t  = MSE(eps_t, eps^_t),

with ``alpha_t`` the scheduler's cumulative product of ``1 - beta`` (the paper's "scaling value
from the noise schedule"); the image score is the mean of ``E_t`` over the T timesteps.

Our choices where the paper is silent:
- which timesteps: the scheduler's own spacing for T inference steps (``set_timesteps(T)``,
  e.g. 980, 960, ..., 0 for T = 50 of 1000 with "leading" spacing), so that T means what it
  means when sampling;
- the noise: one draw ``eps_t`` per timestep from a CPU generator seeded with ``seed``, the
  same draws for every image of the batch (lower variance between images; scores do not
  depend on the batch's order or the device), as the issue asks;
- the heat map: the squared error averaged over channels and timesteps, per latent pixel,
  upsampled to the image (the score is the mean of this map);
- a model trained to predict ``v`` (``prediction_type="v_prediction"``, e.g. SD 2.x 768) is
  compared with the true ``v = sqrt(alpha) eps - sqrt(1 - alpha) z``, one predicting the
  sample with ``z``; the paper's SD 1.x predicts ``eps``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def pick_timesteps(scheduler, n: int) -> torch.Tensor:
    """The scheduler's T inference timesteps (a copy is set, the model's scheduler is left alone)."""
    from diffusers import DDPMScheduler

    s = DDPMScheduler.from_config(scheduler.config, clip_sample=False)  # never steps: no clipping
    s.set_timesteps(min(n, s.config.num_train_timesteps))
    return s.timesteps.to(torch.long).clone()


def draw_noise(shape: tuple[int, ...], n: int, seed: int) -> torch.Tensor:
    """(T, C, h, w) standard normal draws, one per timestep, from a seeded CPU generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g)


def noise_errors(
    denoise: Denoiser,
    z: torch.Tensor,
    timesteps: torch.Tensor,
    eps: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
    chunk: int = 32,
    step: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-timestep errors (B, T) and per-pixel error maps (B, h, w) of latents ``z`` (B, C, h, w).

    All B x T noisy versions run through ``denoise`` in chunks of ``chunk`` (one batch on the
    GPU); ``step(done, of)`` (the detector's cancel and progress hook) runs before each chunk.
    """
    b, t_n = z.shape[0], timesteps.numel()
    dev = z.device
    a = alphas_cumprod.to(dev, torch.float32)[timesteps.to(dev)]  # (T,)
    sa, sb = a.sqrt().view(1, t_n, 1, 1, 1), (1 - a).sqrt().view(1, t_n, 1, 1, 1)
    eps = eps.to(dev, torch.float32).unsqueeze(0)  # (1, T, C, h, w)
    zz = z.float().unsqueeze(1)  # (B, 1, C, h, w)
    if prediction_type == "epsilon":
        target = eps.expand(b, *eps.shape[1:])
    elif prediction_type == "v_prediction":
        target = sa * eps - sb * zz
    elif prediction_type == "sample":
        target = zz.expand(b, t_n, *zz.shape[2:])
    else:
        raise ValueError(f"unknown prediction type '{prediction_type}'")
    noisy = (sa * zz + sb * eps).reshape(b * t_n, *z.shape[1:])
    target = target.reshape(b * t_n, *z.shape[1:])
    steps = timesteps.to(dev).repeat(b)
    maps = torch.empty(b * t_n, *z.shape[2:], device=dev)
    for s in range(0, b * t_n, chunk):
        if step is not None:
            step(s, b * t_n)
        pred = denoise(noisy[s:s + chunk], steps[s:s + chunk]).float()
        maps[s:s + chunk] = (pred - target[s:s + chunk]).pow(2).mean(1)
    maps = maps.view(b, t_n, *z.shape[2:])
    return maps.mean((2, 3)), maps.mean(1)
