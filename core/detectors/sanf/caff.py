"""Class-attention feature fusion (CAFF), paper section 2.3, Fig. 2(b).

The subnet of one affine coupling direction: from the conditioning half ``h`` of the class
token (the query) and the patch tokens (the condition), regress the scale and shift
``[s, t]`` of the other half (eq. 11).

Departures and our choices:
- Eqs. 6-8 embed one token set ``m = concat(y_sem, y_patches)`` of a single width. Here the
  class-token half is D/2 wide and the patch tokens D_p wide, so the keys and values of the
  half and of the patches come from their own linear layers (to width ``d``); a product of
  linear layers is linear, so this is the paper's ``W_k m`` with the embedding folded in.
- Eq. 9 is typeset ``Softmax(QK^T)/sqrt(d)``; we scale inside the softmax, as usual for
  attention (and as the issue specifies). One head, as the paper.
- The MLP of eq. 11 is ``Linear(D/2, d) -> ReLU -> Linear(d, d) -> ReLU`` (the paper does not
  give its depth or activation). The last projection starts at zero, so every coupling starts
  as the identity (common for flows; not in the paper).
- ``attention=False`` is the paper's ablation "without CAFF" (Table 5): the MLP of the half
  alone, no patch tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


class CAFF(nn.Module):
    """``forward(h (N, c_in), tokens (N, P, token_dim)) -> (N, c_out)``.

    After each call, ``last_attention`` holds the attention of the query over the patch tokens,
    ``(N, P)`` (the class-half's own weight left out), for the attention map (our addition).
    """

    def __init__(self, c_in: int, c_out: int, token_dim: int, width: int, attention: bool = True) -> None:
        super().__init__()
        self.width = width
        self.attention = attention
        self.mlp = nn.Sequential(nn.Linear(c_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        if attention:
            self.q = nn.Linear(c_in, width)  # eq. 6
            self.k_sem = nn.Linear(c_in, width)  # eq. 7, class half
            self.k_tok = nn.Linear(token_dim, width)  # eq. 7, patch tokens
            self.v_sem = nn.Linear(c_in, width)  # eq. 8, class half
            self.v_tok = nn.Linear(token_dim, width)  # eq. 8, patch tokens
            self.out = nn.Linear(width, width)  # eq. 10
        self.proj = nn.Linear(2 * width if attention else width, c_out)  # eq. 11
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.last_attention: torch.Tensor | None = None

    def forward(self, h: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.mlp(h)
        if not self.attention:
            return self.proj(feats)
        if tokens is None:
            raise ValueError("CAFF with attention needs the patch tokens")
        q = self.q(h)[:, None]  # (N, 1, d)
        k = torch.cat([self.k_sem(h)[:, None], self.k_tok(tokens)], dim=1)  # (N, 1 + P, d)
        v = torch.cat([self.v_sem(h)[:, None], self.v_tok(tokens)], dim=1)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.width), dim=-1)  # eq. 9: (N, 1, 1 + P)
        out_ca = self.out((a @ v)[:, 0])  # eq. 10
        self.last_attention = a[:, 0, 1:].detach()
        return self.proj(torch.cat([feats, out_ca], dim=1))  # eq. 11


def caff_constructor(width: int, attention: bool = True) -> Callable[[int, int, int], CAFF]:
    """FrEIA-style subnet factory ``make(c_in, c_out, token_dim)``, so tests can pass tiny ones."""

    def make(c_in: int, c_out: int, token_dim: int) -> CAFF:
        return CAFF(c_in, c_out, token_dim, width, attention)

    return make
