"""Copy-paste augmentation (Ghiasi et al. 2021, "Simple Copy-Paste"), box level.

Each training sample, with probability ``p``, receives objects of another training sample: both
come out of the dataset's own training transform (so each has its own scale jitter, crop and flip,
as in the paper's large-scale-jitter recipe), and a random subset of the other sample's boxes is
pasted at the same place onto this one. The paper pastes instance masks; detection sets carry
boxes only, so the rectangle under each box is pasted (for tight boxes, faces and most objects, the
rectangle is mostly the object). A box of this sample that the pasted rectangles cover to more
than ``1 - MIN_VISIBLE`` of its area is dropped, a less covered one is kept as it was (the box
still spans the object, partly occluded).

Why not torchvision.transforms.v2: it transforms one sample's boxes with its pixels, but has no
transform that mixes two samples (neither mosaic nor copy-paste), so the mixing is ours.
Mosaic was not chosen: it shrinks each image to a quarter, and the measured limit of learning
here is small objects and few large faces (docs/training.md), both made worse by shrinking.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from hwnas.data.transforms import sample_rng
from hwnas.errors import HwnasError

# A box of the receiving sample survives when at least this share of its area stays uncovered.
MIN_VISIBLE = 0.5
# The copy-paste draws come from a stream of their own (the transform draws from sample_rng too).
_STREAM = 0xC0B7_9A57_E5EE_D001


@dataclass
class CopyPaste:
    """Samples of ``dataset`` (which must carry the training transform and ``epoch``), with the
    boxes of a random partner from ``pool`` (dataset indices; default all) pasted in, with
    probability ``p``. Deterministic in ``(seed, dataset.epoch, index)``."""

    dataset: Any
    p: float = 0.5
    seed: int = 0
    pool: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise HwnasError(f"--copy-paste {self.p}: give the share of samples that get pasted objects, in [0, 1]")
        self.pool = list(range(len(self.dataset))) if self.pool is None else list(self.pool)
        self._at = {j: k for k, j in enumerate(self.pool)}  # where each index sits in the pool

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = self.dataset[index]
        rng = sample_rng(self.seed ^ _STREAM, self.dataset.epoch, index)
        at = self._at.get(index)
        partners = len(self.pool) - (at is not None)  # the pool without this sample
        if rng.random() >= self.p or not partners:
            return image, target
        k = rng.randrange(partners)
        src_image, src = self.dataset[self.pool[k + (at is not None and k >= at)]]
        chosen = [k for k in range(len(src["boxes"])) if not bool(src["crowd"][k]) and rng.random() < 0.5]
        if not chosen:
            return image, target
        return paste(image, target, src_image, {k: src[k][chosen] for k in ("boxes", "labels", "crowd")})


def paste(image: torch.Tensor, target: dict, src_image: torch.Tensor, src: dict) -> tuple[torch.Tensor, dict]:
    """``image`` with the rectangles under ``src["boxes"]`` taken from ``src_image`` (same size, pixel
    coordinates of both), and the target updated: covered boxes dropped, the pasted ones appended."""
    if image.shape != src_image.shape:
        raise HwnasError(f"copy-paste needs samples of one size; got {list(image.shape)} and {list(src_image.shape)} "
                         f"(the training transform pads every sample to the input size)")
    h, w = image.shape[-2:]
    covered = torch.zeros((h, w), dtype=torch.bool)
    image = image.clone()
    for box in src["boxes"].tolist():
        c1, r1, c2, r2 = _pixels(box, h, w)
        image[:, r1:r2, c1:c2] = src_image[:, r1:r2, c1:c2]
        covered[r1:r2, c1:c2] = True
    keep = torch.tensor([_visible(b, covered) >= MIN_VISIBLE for b in target["boxes"].tolist()], dtype=torch.bool)
    out = dict(target)
    for k in ("boxes", "labels", "crowd"):
        out[k] = torch.cat([target[k][keep], src[k].to(target[k].dtype)])
    return image, out


def _pixels(box: Sequence[float], h: int, w: int) -> tuple[int, ...]:
    """The pixel columns and rows ``c1, r1, c2, r2`` of ``box`` inside an ``h`` x ``w`` image: the
    whole pixels it overlaps at least half of (rounding puts the edge where the pixels change)."""
    return tuple(min(max(round(v), 0), lim) for v, lim in zip(box, (w, h, w, h)))


def _visible(box: Sequence[float], covered: torch.Tensor) -> float:
    """Share of ``box``'s pixels left uncovered; 1 for a box of no pixels."""
    c1, r1, c2, r2 = _pixels(box, *covered.shape)
    region = covered[r1:r2, c1:c2]
    return 1.0 if region.numel() == 0 else 1.0 - region.float().mean().item()
