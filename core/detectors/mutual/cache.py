"""What ``mutual`` keeps between runs, keyed by image content, so that re-scoring a batch that grew
(a session re-run with new images) recomputes only what the new images change.

- Per image (by content digest: :func:`content_digest`): the backbone's stage maps in float16 (Lite0 at 224 px: about
  106 KB an image), its working frame and its image-level feature. Every degree's patch features
  are derived from the maps when needed, so the backbone runs once per image content.
- Per ordered image pair (a, b) (by content digests) and aggregation degree r: the distances of
  a's patches to their nearest patches of b, float16 (Lite0 at 224 px: 1.6 KB; three degrees
  4.7 KB a pair). Keyed per degree, so a change of ``patch_sizes`` reuses the degrees it keeps.

Both depend on the feature settings only (:attr:`MutualCache.settings`); a change of those empties
the cache. After each run only the entries the run used are kept (:meth:`MutualCache.keep_only`),
so the cache never holds more than one batch's worth: about N x (106 KB + R x 4.7 KB), 0.35 GB for
1,344 images and R = 32.

Scores do not depend on whether an entry was cached: fresh values go through the same float16
storage before they are used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from core.detectors.patchcore.inputs import Frame


def content_digest(frame: np.ndarray, shape: tuple[int, int]) -> bytes:
    """A 16-byte digest of what the detector sees of an image: its working-frame tensor (the
    features depend on nothing else) and its size (the map's)."""
    a = np.ascontiguousarray(frame, dtype=np.float32)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.shape};{tuple(shape)}".encode())
    h.update(a.view(np.uint8).reshape(-1))
    return h.digest()


@dataclass
class ImageEntry:
    """One image content's cached features."""

    maps: list[torch.Tensor]  # each stage's map (C, h, w), float16, on the CPU
    frame: Frame
    grid: tuple[int, int]  # rows and columns of its patch grid (the frame's valid part)
    vector: np.ndarray  # its unit image-level feature (float32)


@dataclass
class CacheStats:
    """What the last run computed and what it reused."""

    images_computed: int = 0
    images_reused: int = 0
    pairs_computed: int = 0  # (image pair, degree) distance products computed (both directions at once)
    pairs_reused: int = 0  # (image, reference, degree) distances taken from the cache
    pairs_needed: int = 0  # (image, reference, degree) distances the scores used

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class MutualCache:
    settings: tuple = ()
    images: dict[bytes, ImageEntry] = field(default_factory=dict)
    pairs: dict[tuple[bytes, bytes, int], np.ndarray] = field(default_factory=dict)

    def use_settings(self, settings: tuple) -> None:
        """Empty the cache unless it was filled under the same feature settings."""
        if settings != self.settings:
            self.images.clear()
            self.pairs.clear()
            self.settings = settings

    def keep_only(self, digests: Iterable[bytes], pairs: Iterable[tuple[bytes, bytes, int]]) -> None:
        """Drop every image and pair the last run did not use."""
        keep = set(digests)
        self.images = {d: e for d, e in self.images.items() if d in keep}
        want = set(pairs)
        self.pairs = {k: v for k, v in self.pairs.items() if k in want}

    def nbytes(self) -> int:
        maps = sum(m.numel() * m.element_size() for e in self.images.values() for m in e.maps)
        return int(maps + sum(v.nbytes for v in self.pairs.values()))
