"""A model's self-check result (computed by :mod:`core.engine.selfcheck`): how well it
separates synthetic defects from held-out good images. Plain data, no model code, so the
window can show it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: the per-size AUROC at which a defect size counts as separated
SEPARATES = 0.9


@dataclass
class SelfCheck:
    auroc: float | None
    by_size: dict[str, float | None]
    by_kind: dict[str, float | None]
    smallest_separated: float | None
    n_good: int
    n_synthetic: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SelfCheck:
        return cls(**{k: d.get(k) for k in ("auroc", "by_size", "by_kind", "smallest_separated", "n_good",
                                             "n_synthetic")})

    @property
    def selection_key(self) -> tuple[float, float]:
        """What ``auto`` maximises: the mean of the per-size AUROCs (small defects count as much
        as large ones, and it saturates later than the pooled AUROC), then the pooled AUROC."""
        sizes = [v for v in self.by_size.values() if v is not None]
        return (float(np.mean(sizes)) if sizes else 0.0, self.auroc or 0.0)

    def describe(self) -> str:
        if self.auroc is None:
            return "self-check: not enough images"
        smallest = (f"separates synthetic defects down to {self.smallest_separated:.0%} of the image side"
                    if self.smallest_separated is not None else
                    f"separates none of the synthetic defect sizes at AUROC {SEPARATES}")
        return (f"self-check AUROC {self.auroc:.3f} ({self.n_synthetic} synthetic defects against "
                f"{self.n_good} held-out good images); {smallest}")

    def short(self) -> str:
        """A few words for the model panel."""
        if self.auroc is None:
            return "self-check: too few images"
        down = f", down to {self.smallest_separated:.0%}" if self.smallest_separated is not None else ", no size separated"
        return f"self-check AUROC {self.auroc:.2f}{down}"
