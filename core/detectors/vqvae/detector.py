"""``vqvae``: VQ-VAE trained on good images, SSIM and alignment anomaly maps.

Paper: vq-vae-inner-metrics (Gangloff et al., 2022). The model (II-A, III-A) is in
:mod:`.torch_model`, the maps (II-B, II-C) in :mod:`.anomaly_map`; this module is the training
and scoring glue. Trained from scratch on normal images only; no external weights.

Our choices where the paper is silent (each is a setting):
- ``epochs`` (default 100) and ``lr`` (2e-4, Adam): the paper gives neither.
- The loss terms of eq. 4 are each averaged over their elements (pixels, latent entries).
- The image score reduces the final map by ``score_reduce``: ``mean`` is what the paper does
  on CIFAR-10 (III-D); ``max`` is common for localised defects. Both are also written to the
  results as ``score_mean`` and ``score_max``.
- ``reinit_dead_codes`` (on by default, a departure from the paper): after each epoch, codebook
  vectors no training position chose are moved onto random encoder outputs of that epoch's
  last batch. Measured on 32 bottle images at 64 px (hidden 64, 12 epochs): without it only
  17 of 512 codes were used and the alignment term of eq. 4 grew every epoch (1.12 -> 6.27)
  while the reconstruction NLL fell (0.007 -> -0.634); with it 138 codes were used, the
  alignment term fell to 0.032 and the NLL reached -0.711. The AM is only meaningful when the
  codebook follows the encoder, so we keep it on; ``--set reinit_dead_codes=false`` gives the
  paper's plain training.
- ``train_crop`` (0 = whole images, the paper): random crops make a step cheaper, but on bottle
  they cost most of the quality (same steps at 64 px: pixel AUROC 91.7 whole, 45.1 on 32 px crops;
  ``benchmarks/crop_agreement.py``): batch norm and the codebook learnt on pieces of a centred part
  do not describe the whole. On a CPU, train whole images at a lower ``image_size`` instead.
Training uses bfloat16 autocast on CUDA; on the CPU only with ``amp_cpu`` (off by default: float32).
All scoring runs in float32.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.data.images import Skipped
from core.detectors.base import Detector
from core.detectors.common import load_module_state, map_to_input, to_tensor_batch
from core.detectors.config import ConfigError, DetectorConfig
from core.detectors.training import (
    TrainingLoop,
    adam,
    check_crop,
    decode_training_cache,
    random_crops,
    training_autocast,
)
from core.detectors.vqvae.anomaly_map import anomaly_maps
from core.detectors.vqvae.torch_model import VQVAE, VQVAEShape, cb_mean, vqvae_loss
from core.results import ScoreResult
from core.runtime.cancel import CancelToken, check
from core.runtime.progress import ProgressFn, SubProgress

MAP_CHOICES = ("ssim_am", "ssim")
REDUCE_CHOICES = ("mean", "max")


@dataclass
class VQVAEConfig(DetectorConfig):
    image_size: int = field(default=256, metadata={"fixed": True, "help": "working resolution, pixels a side (paper: 256 on MVTec)", "min": 8, "max": 1024})
    map: str = field(default="ssim_am", metadata={"help": "anomaly map: SSIM x alignment map (ssim_am) or SSIM alone (ssim)", "choices": MAP_CHOICES})
    score_reduce: str = field(default="mean", metadata={"help": "image score from the map: mean (paper, CIFAR-10) or max", "choices": REDUCE_CHOICES})
    epochs: int = field(default=100, metadata={"neutral": True, "help": "training epochs (the paper gives no number; ours)", "min": 1, "max": 10000})
    max_minutes: float = field(default=0.0, metadata={"neutral": True, "help": "training time limit in minutes, checked before each step (0 = none; training stops at epochs or max_minutes, whichever first)", "min": 0.0, "max": 100000.0})
    lr: float = field(default=2e-4, metadata={"neutral": True, "help": "Adam learning rate (the paper gives none; ours)", "min": 1e-7, "max": 1.0})
    beta: float = field(default=0.25, metadata={"neutral": True, "help": "commitment weight beta of the loss (eq. 4)", "min": 0.0, "max": 10.0})
    hidden: int = field(default=256, metadata={"fixed": True, "help": "depth of every convolution (paper: 256)", "min": 1, "max": 1024, "advanced": True})
    n_embeddings: int = field(default=512, metadata={"fixed": True, "help": "codebook size M (paper: 512)", "min": 2, "max": 65536, "advanced": True})
    embedding_dim: int = field(default=256, metadata={"fixed": True, "help": "codebook vector length D (paper: 256)", "min": 1, "max": 1024, "advanced": True})
    n_residual: int = field(default=3, metadata={"fixed": True, "help": "residual layers in encoder and decoder (paper: 3)", "min": 0, "max": 16, "advanced": True})
    downsamplings: int = field(default=3, metadata={"fixed": True, "help": "stride-2 convolutions; latent = image / 2^n (paper: 3 on MVTec, 2 on small images)", "min": 1, "max": 5, "advanced": True})
    ssim_window: int = field(default=11, metadata={"help": "SSIM Gaussian window, pixels a side (sigma 1.5)", "min": 3, "max": 63, "advanced": True})
    ssim_c1: float = field(default=0.01, metadata={"help": "SSIM constant c1 (paper: 0.01)", "min": 1e-8, "max": 1.0, "advanced": True})
    ssim_c2: float = field(default=0.03, metadata={"help": "SSIM constant c2 (paper: 0.03)", "min": 1e-8, "max": 1.0, "advanced": True})
    am_dilation: int = field(default=3, metadata={"help": "grey dilation of the alignment map, latent cells a side (1 = none)", "min": 1, "max": 31, "advanced": True})
    sm_dilation: int = field(default=1, metadata={"help": "grey dilation of the SSIM map, pixels a side (1 = none; paper: UCSD only)", "min": 1, "max": 127, "advanced": True})
    train_crop: int = field(default=0, metadata={"neutral": True, "help": "train on random crops of this many pixels of the working-size images (0 = whole images, the paper); scoring always sees whole images. Measured on bottle: crops cost most of the quality (prefer a lower image_size)", "min": 0, "max": 1024, "advanced": True})
    amp_cpu: bool = field(default=False, metadata={"neutral": True, "help": "bfloat16 autocast for training on the CPU too (measured 1.8-1.9x faster a step on a 2-core CPU with bf16 instructions; emulated, and slower, on CPUs without them; quality in docs/benchmarks.md); scoring stays float32", "advanced": True})
    reinit_dead_codes: bool = field(default=True, metadata={"neutral": True, "help": "re-seed unused codebook vectors after each epoch (not in the paper; off = paper)", "advanced": True})

    def validate(self) -> None:
        super().validate()
        stride = 2 ** self.downsamplings
        if self.image_size % stride:
            raise ConfigError(f"image_size={self.image_size} must be a multiple of 2^downsamplings = {stride}")
        check_crop(self.train_crop, self.image_size, stride)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A shuffled split of range(n); a last batch of one joins the previous (batch norm)."""
    perm = torch.randperm(n, generator=gen)
    chunks = list(perm.split(batch_size))
    if len(chunks) > 1 and chunks[-1].numel() == 1:
        chunks[-2] = torch.cat([chunks[-2], chunks.pop()])
    return chunks


def codebook_usage(counts: torch.Tensor) -> tuple[int, float]:
    """(codes used, perplexity) from per-code counts."""
    p = counts.double() / counts.sum().clamp_min(1)
    nz = p[p > 0]
    return int((counts > 0).sum()), float(torch.exp(-(nz * nz.log()).sum()))


class VQVAEDetector(Detector):
    name = "vqvae"
    title = "VQ-VAE (SSIM + alignment map)"
    summary = ("VQ-VAE trained on good images; map = 1-SSIM to the reconstruction, times the codebook "
               "alignment map. Shows reconstruction, SSIM and alignment maps.")
    paper = "vq-vae-inner-metrics"
    produces_maps = True
    config_class = VQVAEConfig
    min_train_images = 2
    snapshots = True
    export_refusal = ("its vector quantiser picks each latent's nearest code with an argmin that another runtime's rounding can flip between near-equal codes, changing the reconstruction, so its scores would not agree by construction")

    config: VQVAEConfig

    def __init__(self, config: VQVAEConfig | None = None, device="auto") -> None:
        super().__init__(config, device)
        self.model: VQVAE | None = None

    # ------------------------------------------------------------------ model
    def _shape(self, channels: int) -> VQVAEShape:
        c = self.config
        return VQVAEShape(in_channels=channels, hidden=c.hidden, n_embeddings=c.n_embeddings,
                          embedding_dim=c.embedding_dim, n_residual=c.n_residual, downsamplings=c.downsamplings)

    # ------------------------------------------------------------------ fit
    def _fit(self, images: Sequence[np.ndarray], progress: ProgressFn | None, cancel: CancelToken | None,
             skipped: list[Skipped] | None) -> None:
        cfg = self.config
        t0 = time.perf_counter()

        # Decode and resize once into a CPU cache at the working resolution.
        cache = decode_training_cache(self.name, images, cfg.image_size, cfg.batch_size, self.min_train_images,
                                      SubProgress(progress, 0.0, 0.05, "reading"), cancel,
                                      skipped)  # II-A: inputs in [0, 1] (continuous Bernoulli support)
        data, channels, n = cache.data, cache.channels, cache.n

        model = VQVAE(self._shape(channels)).to(self.device)
        opt = adam(model.parameters(), lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        bs = max(2, cfg.batch_size)  # batch norm needs two samples where the latent grid is 1x1
        loop = TrainingLoop(self.name, opt, epochs=cfg.epochs,
                            steps_per_epoch=len(_batches(n, bs, torch.Generator().manual_seed(0))),
                            max_minutes=cfg.max_minutes, budget="step",
                            progress=SubProgress(progress, 0.05, 0.97, "training"), cancel=cancel,
                            **self._snapshots(lambda: (model, {"channels": int(channels), "n_train": int(n),
                                                               "train_seconds": time.perf_counter() - t0 - loop.paused, "steps": loop.steps})))
        # Per-epoch bookkeeping of the two loss terms and of codebook use (for dead-code re-seeding).
        epoch_state: dict[str, Any] = {}
        parts_history: list[tuple[float, float]] = []  # (reconstruction NLL, alignment term) per epoch

        def new_epoch(_epoch: int) -> list[torch.Tensor]:
            epoch_state.update(rec=0.0, align=0.0, seen=0, last_z=None,
                               counts=torch.zeros(cfg.n_embeddings, dtype=torch.long, device=self.device))
            return _batches(n, bs, gen)

        crops = torch.Generator().manual_seed(cfg.seed + 2)

        def step(bidx: torch.Tensor) -> tuple[torch.Tensor, int]:
            x = random_crops(data, bidx, cfg.train_crop, crops).to(self.device, non_blocking=True)
            with training_autocast(self.device, cpu=cfg.amp_cpu):
                out = model(x)
            loss, parts = vqvae_loss(out, x, cfg.beta)
            epoch_state["rec"] += parts["rec"] * x.shape[0]
            epoch_state["align"] += parts["align"] * x.shape[0]
            epoch_state["seen"] += x.shape[0]
            epoch_state["counts"] += torch.bincount(out.codes.flatten(), minlength=cfg.n_embeddings)
            epoch_state["last_z"] = out.z_e.detach()
            return loss, x.shape[0]

        def end_epoch(_epoch: int, _loss: float) -> str:
            seen = epoch_state["seen"]
            parts_history.append((epoch_state["rec"] / seen, epoch_state["align"] / seen))
            used, perplexity = codebook_usage(epoch_state["counts"])
            if cfg.reinit_dead_codes and used < cfg.n_embeddings and epoch_state["last_z"] is not None:
                self._reinit_dead(model, epoch_state["counts"], epoch_state["last_z"], gen)
            return (f"reconstruction {parts_history[-1][0]:.4f}, alignment {parts_history[-1][1]:.4f}, "
                    f"codes used {used}/{cfg.n_embeddings} (perplexity {perplexity:.1f})")

        run = loop.run(new_epoch, step, on_epoch_end=end_epoch, module=model)
        history = run.history

        # Codebook usage of the trained model on the training set (eval mode).
        counts = torch.zeros(cfg.n_embeddings, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            for bidx in torch.arange(n).split(cfg.batch_size):
                check(cancel)
                counts += torch.bincount(model(data[bidx].to(self.device)).codes.flatten(), minlength=cfg.n_embeddings)
        used, perplexity = codebook_usage(counts)
        self.model = model  # only now: a cancelled fit leaves no half-trained model behind
        self.meta = {
            "channels": int(channels),
            "n_train": int(n),
            "epochs": int(cfg.epochs),
            **run.record(),
            "rec_nll_history": [round(r, 6) for r, _ in parts_history],
            "alignment_history": [round(a, 6) for _, a in parts_history],
            "codes_used": used,
            "codes_used_fraction": used / cfg.n_embeddings,
            "codebook_perplexity": perplexity,
            "fit_seconds": time.perf_counter() - t0,
        }
        if progress:
            progress(1000, 1000, f"fitted: loss {history[-1]:.4f}, codes used {used}/{cfg.n_embeddings}")

    @staticmethod
    def _reinit_dead(model: VQVAE, counts: torch.Tensor, z_e: torch.Tensor, gen: torch.Generator) -> None:
        dead = (counts == 0).nonzero().flatten()
        flat = z_e.float().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=gen).to(flat.device)
        with torch.no_grad():
            model.quantizer.codebook.weight[dead] = flat[pick]

    # ------------------------------------------------------------------ score
    def _score_batch(self, images: list[np.ndarray]) -> list[ScoreResult]:
        cfg = self.config
        model = self.model
        model.eval()
        x = to_tensor_batch(images, cfg.image_size, self.meta["channels"]).to(self.device).clamp_(0.0, 1.0)
        out = model(x)
        recon = cb_mean(out.logits)
        maps = anomaly_maps(x, recon, out.alignment, variant=cfg.map, window=cfg.ssim_window, c1=cfg.ssim_c1,
                            c2=cfg.ssim_c2, am_dilation=cfg.am_dilation, sm_dilation=cfg.sm_dilation)
        flat = maps.final.flatten(1)
        s_mean, s_max = flat.mean(1).tolist(), flat.amax(1).tolist()
        final = maps.final.cpu().numpy().astype(np.float32)
        sm = maps.ssim_anomaly.cpu().numpy().astype(np.float32)
        am = maps.alignment.cpu().numpy().astype(np.float32)
        rec = recon.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
        am_max = out.alignment.flatten(1).amax(1).tolist()
        results = []
        for i, img in enumerate(images):
            score = s_mean[i] if cfg.score_reduce == "mean" else s_max[i]
            results.append(ScoreResult(
                score=float(score),
                anomaly_map=map_to_input(final[i], img.shape),
                extras={"reconstruction": rec[i], "ssim_map": sm[i], "alignment_map": am[i]},
                columns={"score_mean": s_mean[i], "score_max": s_max[i], "am_max": am_max[i]},
            ))
        return results

    # ------------------------------------------------------------------ save / load
    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        model = VQVAE(self._shape(int(meta["channels"])))
        load_module_state(model, tensors)
        self.model = model.to(self.device).eval()

    def _moved(self) -> None:
        if self.model is not None:
            self.model = self.model.to(self.device)
