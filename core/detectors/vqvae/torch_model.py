"""The VQ-VAE as a plain ``nn.Module`` (paper: vq-vae-inner-metrics, sections II-A and III-A).

Encoder (III-A): ``downsamplings`` convolutions (kernel 4, stride 2, padding 1), each followed
by ReLU and batch norm, then ``n_residual`` residual layers (ReLU, 3x3 conv, ReLU, 1x1 conv).
The paper uses three downsamplings (latent = input / 8) on MVTec and two on UCSD-Ped1 and
CIFAR-10. Codebook (II-A, eq. 2): ``n_embeddings`` vectors of ``embedding_dim``; each latent
position takes its nearest vector; gradients pass the quantisation by the straight-through
estimator. Decoder (III-A): "the reverse of the encoder": residual layers, then transposed
convolutions (kernel 4, stride 2, padding 1), each but the last followed by ReLU and batch
norm; the last outputs one logit per input channel and pixel, the parameter of a continuous
Bernoulli likelihood (III-A, [26]).

Departure: when ``hidden != embedding_dim`` a 1x1 convolution maps between them (the paper has
both at 256, where these are identities, as in the original VQ-VAE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------- continuous Bernoulli
# With logit l and lambda = sigmoid(l) the continuous Bernoulli [26] density on [0, 1] is
#   p(x | lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x),
#   C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda)   (2 at lambda = 1/2).
# Since 1 - 2 lambda = -tanh(l / 2) and atanh(1 - 2 lambda) = -l / 2, C = l / tanh(l / 2): a form
# that is finite everywhere and only needs a Taylor series near l = 0
# (l / tanh(l / 2) = 2 + l^2 / 6 - l^4 / 360 + ...).

_SMALL = 1e-2


def cb_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli, from logits."""
    small = logits.abs() < _SMALL
    safe = torch.where(small, torch.ones_like(logits), logits)
    exact = torch.log(safe / torch.tanh(safe / 2))
    l2 = logits * logits
    taylor = math.log(2.0) + torch.log1p(l2 / 12 - l2 * l2 / 720)
    return torch.where(small, taylor, exact)


def cb_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Element-wise negative log-likelihood of ``x`` in [0, 1] under CB(sigmoid(logits))."""
    logits = logits.float()
    # x log(lambda) + (1 - x) log(1 - lambda) = x l - softplus(l): the Bernoulli part.
    return F.softplus(logits) - x * logits - cb_log_normalizer(logits)


def cb_mean(logits: torch.Tensor) -> torch.Tensor:
    """Mean of CB(sigmoid(logits)): lambda / (2 lambda - 1) + 1 / (2 atanh(1 - 2 lambda)).

    In logits this is ``1 / (1 - exp(-l)) - 1 / l``, with the series ``1/2 + l / 12 - l^3 / 720``
    near l = 0. It is the reconstruction we show and compare with the input; note that it is
    not ``sigmoid(l)`` (the CB mean is pulled towards 1/2 relative to lambda).
    """
    logits = logits.float()
    small = logits.abs() < _SMALL
    safe = torch.where(small, torch.ones_like(logits), logits)
    exact = -1.0 / torch.expm1(-safe) - 1.0 / safe
    taylor = 0.5 + logits / 12 - logits ** 3 / 720
    return torch.where(small, taylor, exact).clamp(0.0, 1.0)


# ---------------------------------------------------------------------- network
@dataclass(frozen=True)
class VQVAEShape:
    in_channels: int = 3
    hidden: int = 256
    n_embeddings: int = 512
    embedding_dim: int = 256
    n_residual: int = 3
    downsamplings: int = 3


class ResidualLayer(nn.Module):
    """III-A: ReLU, 3x3 conv, ReLU, 1x1 conv, added to the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    def __init__(self, s: VQVAEShape) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = s.in_channels
        for _ in range(s.downsamplings):  # III-A: conv (4, 2, 1) -> ReLU -> BatchNorm
            layers += [nn.Conv2d(c, s.hidden, 4, 2, 1), nn.ReLU(), nn.BatchNorm2d(s.hidden)]
            c = s.hidden
        layers += [ResidualLayer(s.hidden) for _ in range(s.n_residual)]
        if s.embedding_dim != s.hidden:  # departure (see module doc); identity in the paper
            layers.append(nn.Conv2d(s.hidden, s.embedding_dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, s: VQVAEShape) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if s.embedding_dim != s.hidden:
            layers.append(nn.Conv2d(s.embedding_dim, s.hidden, 1))
        layers += [ResidualLayer(s.hidden) for _ in range(s.n_residual)]
        for i in range(s.downsamplings):  # the encoder reversed: transposed conv (4, 2, 1)
            last = i == s.downsamplings - 1
            out = s.in_channels if last else s.hidden
            layers.append(nn.ConvTranspose2d(s.hidden, out, 4, 2, 1))
            if not last:
                layers += [nn.ReLU(), nn.BatchNorm2d(s.hidden)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@dataclass
class VQOutput:
    logits: torch.Tensor  # (N, C, H, W) continuous Bernoulli logits
    z_e: torch.Tensor  # (N, D, h, w) encoder output
    z_q: torch.Tensor  # (N, D, h, w) chosen codebook vectors (no straight-through)
    codes: torch.Tensor  # (N, h, w) index of the chosen vector
    alignment: torch.Tensor  # (N, h, w) ||z_e - e||^2 per latent position: the AM (eq. 6)


class VectorQuantizer(nn.Module):
    """II-A, eq. 2: nearest codebook vector per latent position."""

    def __init__(self, n_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.codebook = nn.Embedding(n_embeddings, embedding_dim)
        # The original VQ-VAE's initialisation.
        self.codebook.weight.data.uniform_(-1.0 / n_embeddings, 1.0 / n_embeddings)

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (z_q, codes, squared distance to the chosen vector), all in float32.

        Always in float32, also inside a training step's bf16 autocast (``amp_cpu``, CUDA): the
        expanded distance cancels, and a bf16 matmul here picks wrong codes and collapses the
        codebook (measured: a 64 px bottle model fell from pixel AUROC 92 to 45). The search is a
        small part of a step; the encoder and decoder keep autocast's speed.
        """
        n, d, h, w = z_e.shape
        with torch.autocast(z_e.device.type, enabled=False):
            flat = z_e.float().permute(0, 2, 3, 1).reshape(-1, d)
            e = self.codebook.weight.float()
            dist = (flat * flat).sum(1, keepdim=True) - 2 * flat @ e.t() + (e * e).sum(1)[None]
            codes = dist.argmin(1)
            z_q = e[codes]
            # The exact distance to the chosen vector (not the expanded form, which can cancel).
            align = ((flat - z_q) ** 2).sum(1)
        z_q = z_q.view(n, h, w, d).permute(0, 3, 1, 2).contiguous()
        return z_q, codes.view(n, h, w), align.view(n, h, w)


class VQVAE(nn.Module):
    def __init__(self, shape: VQVAEShape) -> None:
        super().__init__()
        self.shape = shape
        self.encoder = Encoder(shape)
        self.quantizer = VectorQuantizer(shape.n_embeddings, shape.embedding_dim)
        self.decoder = Decoder(shape)

    @property
    def stride(self) -> int:
        return 2 ** self.shape.downsamplings

    def forward(self, x: torch.Tensor) -> VQOutput:
        if x.shape[1] != self.shape.in_channels:
            raise ValueError(f"VQ-VAE built for {self.shape.in_channels} channels got input {tuple(x.shape)}")
        if x.shape[-1] % self.stride or x.shape[-2] % self.stride:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not divisible by the encoder stride {self.stride}")
        z_e = self.encoder(x)
        z_q, codes, align = self.quantizer(z_e)
        # Straight-through estimator (II-A): the decoder's gradient is copied onto z_e.
        z_st = z_e + (z_q.to(z_e.dtype) - z_e).detach()
        logits = self.decoder(z_st)
        return VQOutput(logits=logits, z_e=z_e, z_q=z_q, codes=codes, alignment=align)


def vqvae_loss(out: VQOutput, x: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 4: reconstruction NLL + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2.

    Each term is averaged over its elements (pixels, resp. latent entries), as in the
    original VQ-VAE's implementation; the paper does not say how the terms are weighted.
    """
    rec = cb_nll(out.logits, x).mean()
    z_e = out.z_e.float()
    codebook = F.mse_loss(out.z_q, z_e.detach())  # alignment term: moves e towards z_e
    commit = F.mse_loss(z_e, out.z_q.detach())  # commitment term: moves z_e towards e
    loss = rec + codebook + beta * commit
    return loss, {"rec": float(rec.detach()), "align": float(codebook.detach())}
