"""Anomaly-map post-processing of the VQ-VAE (paper: vq-vae-inner-metrics, II-B and II-C).

- SM (II-B, eq. 5): per-pixel SSIM between the input and its reconstruction over a local
  window; the anomaly from it is ``1 - SSIM`` (0 where the reconstruction is perfect).
  The paper does not name its window: we use the Gaussian window of Wang et al. [25]
  (``window`` pixels a side, sigma 1.5) with reflect padding, so the map keeps the image size.
  Colour images: SSIM per channel, averaged over channels. c1 and c2 are the paper's values
  (0.01 and 0.03). Note that [25] squares them ((K L)^2 with K1 = 0.01, K2 = 0.03, L = 1),
  which would give 1e-4 and 9e-4; the paper prints the unsquared values and we follow it.
- AM (II-B, eq. 6): ``||sg[z_e] - e||^2`` per latent position; computed by the model.
- SSIM+AM (II-C): the AM is upsampled to the image size, grey-dilated, and multiplied with
  the SSIM anomaly map. Upsampling is nearest ("just upsampled pixels", II-C), and the
  dilation's square structuring element is ``am_dilation`` latent cells a side, i.e.
  ``am_dilation * stride`` pixels aligned to the cells: dilating in latent cells and then
  upsampling is exactly that, and cheaper, so that is how it is computed.
- The optional grey dilation of the SM (``sm_dilation`` pixels a side) is what the paper did
  on UCSD-Ped1 (III-C); off by default (1), as on MVTec. A dilation size of 1 is no dilation;
  an even size puts the extra row and column after the centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5


def ssim_window(size: int, sigma: float = SSIM_SIGMA, device: torch.device | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian window of ``size`` taps."""
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _filter(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable filtering of (N, C, H, W) with reflect padding (replicate where too small)."""
    r_lo = (k.numel() - 1) // 2
    r_hi = k.numel() - 1 - r_lo
    mode = "reflect" if min(x.shape[-2:]) > max(r_lo, r_hi) else "replicate"
    x = F.pad(x, (r_lo, r_hi, r_lo, r_hi), mode=mode)
    c = x.shape[1]
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: int = 11, c1: float = 0.01, c2: float = 0.03) -> torch.Tensor:
    """Eq. 5 at every pixel of (N, C, H, W) images in [0, 1]; returns (N, H, W), mean over C."""
    if x.shape != y.shape:
        raise ValueError(f"ssim_map needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.float(), y.float()
    k = ssim_window(window, device=x.device)
    mu_x, mu_y = _filter(x, k), _filter(y, k)
    var_x = _filter(x * x, k) - mu_x * mu_x
    var_y = _filter(y * y, k) - mu_y * mu_y
    cov = _filter(x * y, k) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean(1)


def grey_dilate(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Morphological grey dilation of (N, H, W) maps by a flat ``size`` x ``size`` square."""
    if size <= 1:
        return maps
    lo = (size - 1) // 2
    hi = size - 1 - lo
    x = F.pad(maps[:, None], (lo, hi, lo, hi), mode="constant", value=float("-inf"))
    return F.max_pool2d(x, size, stride=1)[:, 0]


def alignment_map(alignment: torch.Tensor, out_size: tuple[int, int], dilation: int) -> torch.Tensor:
    """II-C: (N, h, w) latent AM -> dilated by ``dilation`` cells -> nearest-upsampled (N, H, W)."""
    am = grey_dilate(alignment.float(), dilation)
    return F.interpolate(am[:, None], size=out_size, mode="nearest")[:, 0]


@dataclass
class VQMaps:
    final: torch.Tensor  # (N, H, W) the map the detector reports
    ssim_anomaly: torch.Tensor  # (N, H, W) 1 - SSIM (after the optional SM dilation)
    alignment: torch.Tensor  # (N, H, W) upsampled, dilated AM


def anomaly_maps(x: torch.Tensor, recon: torch.Tensor, alignment: torch.Tensor, *, variant: str = "ssim_am",
                 window: int = 11, c1: float = 0.01, c2: float = 0.03, am_dilation: int = 3,
                 sm_dilation: int = 0) -> VQMaps:
    """The SM, AM and the chosen final map (``variant`` 'ssim' or 'ssim_am', Fig. 1)."""
    sm = 1.0 - ssim_map(x, recon, window, c1, c2)
    sm = grey_dilate(sm, sm_dilation)
    am = alignment_map(alignment, tuple(x.shape[-2:]), am_dilation)
    if variant == "ssim":
        final = sm
    elif variant == "ssim_am":
        final = sm * am
    else:
        raise ValueError(f"unknown map variant {variant!r} (ssim or ssim_am)")
    return VQMaps(final=final, ssim_anomaly=sm, alignment=am)
