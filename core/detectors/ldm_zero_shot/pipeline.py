"""Loading a pretrained (latent) diffusion model with diffusers' own ``from_pretrained``.

``model`` is a local folder or a hub id of a diffusers pipeline (``model_index.json`` with
``unet/``, ``scheduler/`` and, for a latent model, ``vae/``; for a text-conditioned one,
``text_encoder/`` and ``tokenizer/``), e.g. Stable Diffusion, the paper's model (4.2). Each
component is loaded with its class's ``from_pretrained(model, subfolder=...)`` (the pipeline
class itself is not built: no safety checker or image processor is needed). A hub id is
fetched into (or read from) the standard Hugging Face cache; on an offline machine only
what is already cached or on disk works, and the error says so.

What the noise-error scoring needs from it (:class:`DiffusionModel`): an encoder ``E`` (the VAE
encoder's mean latent times the VAE's scaling factor; identity for a pixel-space model), the
noise predictor conditioned on the null condition (the empty prompt's text embedding, paper
4.2: ``f(z~_t, t, null)``), the scheduler's ``alphas_cumprod`` and prediction type, and the
model's native resolution.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class PipelineError(RuntimeError):
    """A pretrained diffusion model that cannot be loaded; the message says why and what to do."""


def model_kind(model: str) -> str:
    """'folder' for an existing local folder, 'hub' for a hub id; raises ValueError otherwise."""
    p = Path(model).expanduser()
    if p.is_dir():
        return "folder"
    if p.exists():
        raise ValueError(f"model '{model}' is a file: give the folder of a diffusers pipeline")
    if HUB_ID.match(model) and not model.startswith((".", "/", "~")):
        return "hub"
    raise ValueError(f"model folder not found: {model} (give 'batch', an existing pipeline folder or a hub id "
                     "like 'org/name')")


@dataclass
class DiffusionModel:
    unet: torch.nn.Module
    scheduler: Any
    vae: Optional[torch.nn.Module]
    null_embedding: Optional[torch.Tensor]  # (1, L, D) or None for an unconditional U-Net
    latent_scale: float
    vae_factor: int
    sample_size: int  # native image size in pixels
    in_channels: int  # image channels the encoder (or pixel-space U-Net) takes
    source: str

    def to(self, device: torch.device) -> DiffusionModel:
        self.unet.to(device)
        if self.vae is not None:
            self.vae.to(device)
        if self.null_embedding is not None:
            self.null_embedding = self.null_embedding.to(device)
        return self

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.scheduler.alphas_cumprod

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler.config.get("prediction_type", "epsilon"))

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W) -> z = E(x): the VAE's mean latent, scaled."""
        x = x01 * 2.0 - 1.0
        if self.vae is None:
            return x
        enc = self.vae.encode(x)
        if hasattr(enc, "latent_dist"):  # AutoencoderKL
            z = enc.latent_dist.mean
        else:  # VQModel
            z = enc.latents
        return z * self.latent_scale

    def denoise(self, z_noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.null_embedding is None:
            return self.unet(z_noisy, t).sample
        cond = self.null_embedding.expand(z_noisy.shape[0], -1, -1).to(z_noisy.dtype)
        return self.unet(z_noisy, t, encoder_hidden_states=cond).sample


def _component_class(library: str, name: str):
    import importlib

    try:
        return getattr(importlib.import_module(library), name)
    except (ImportError, AttributeError):
        raise PipelineError(f"the pipeline needs {library}.{name}, which is not installed here "
                            f"(pip install {library})") from None


def load_diffusion_model(model: str) -> DiffusionModel:
    """Load the pipeline at ``model`` (folder or hub id) for scoring, on the CPU in float32."""
    try:
        kind = model_kind(model)
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    from diffusers import DDPMScheduler

    src = str(Path(model).expanduser()) if kind == "folder" else model
    index = read_model_index(src, kind, model)
    parts = {k: v for k, v in index.items() if isinstance(v, (list, tuple)) and len(v) == 2 and v[0]}
    if "unet" not in parts or "scheduler" not in parts:
        raise PipelineError(f"'{model}' is not a diffusion pipeline with a U-Net and a scheduler "
                            f"(components: {', '.join(sorted(parts)) or 'none'})")

    def load(name: str):
        library, cls_name = parts[name]
        cls = _component_class(library, cls_name)
        try:
            return cls.from_pretrained(src, subfolder=name)
        except (OSError, ValueError) as exc:
            raise PipelineError(f"cannot load the {name} of '{model}': {exc}") from None

    unet = load("unet").eval()
    scheduler = DDPMScheduler.from_config(load_scheduler_config(src, model), clip_sample=False)
    vae = load("vae").eval() if "vae" in parts else None
    null = None
    if getattr(unet.config, "cross_attention_dim", None):
        null = null_text_embedding(load, parts, model)
    if vae is not None:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
        channels = int(vae.config.in_channels)
    else:
        factor, scale, channels = 1, 1.0, int(unet.config.in_channels)
    size = unet.config.sample_size
    size = int(size[0] if isinstance(size, (list, tuple)) else size) * factor
    for m in (unet, vae):
        if m is not None:
            m.requires_grad_(False)
    return DiffusionModel(unet, scheduler, vae, null, scale, factor, size, channels, model)


def read_model_index(src: str, kind: str, model: str) -> dict:
    """The pipeline's ``model_index.json`` (its components), from the folder or the hub cache."""
    try:
        if kind == "folder":
            path = Path(src) / "model_index.json"
            if not path.is_file():
                raise PipelineError(f"cannot load diffusion pipeline '{model}': it holds no model_index.json "
                                    "(give the folder a diffusers pipeline was saved to)")
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(src, "model_index.json"))
        return json.loads(path.read_text(encoding="utf-8"))
    except PipelineError:
        raise
    except Exception as exc:  # hub errors (offline, unknown repo, gated) have many types
        where = ("its model_index.json is not readable JSON" if kind == "folder" else
                 "it is not in the Hugging Face cache and could not be downloaded (no network?); copy the "
                 "pipeline folder onto this machine and give its path")
        raise PipelineError(f"cannot load diffusion pipeline '{model}': {where} ({type(exc).__name__}: {exc})") from None


def load_scheduler_config(src: str, model: str) -> dict:
    from diffusers import DDPMScheduler

    try:
        return DDPMScheduler.load_config(src, subfolder="scheduler")
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot load the scheduler of '{model}': {exc}") from None


@torch.no_grad()
def null_text_embedding(load, parts: dict, model: str) -> torch.Tensor:
    """The null condition of paper 4.2: the text encoder's output for the empty prompt,
    padded to the tokenizer's length as Stable Diffusion's classifier-free guidance does."""
    if "text_encoder" not in parts or "tokenizer" not in parts:
        raise PipelineError(f"'{model}' has a text-conditioned U-Net but no text_encoder/tokenizer to make the "
                            "null (empty-prompt) condition")
    tokenizer, encoder = load("tokenizer"), load("text_encoder").eval()
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    out = encoder(ids)[0].float()
    del encoder
    return out


def quiet_hub_logging() -> None:
    """Keep diffusers / transformers progress bars and advice off the CLI's stderr."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass
