"""Augmentations, letterboxing, normalisation and batching for detection.

Every transform maps ``(image [3, h, w] in [0, 1], boxes [N, 4] xyxy px, index, epoch)`` to
``(image [3, H, W], boxes [M, 4], keep [N] bool, scale)`` with ``(H, W) = input_hw``: boxes in the
returned image's pixels, ``keep`` saying which input boxes survived, and ``scale`` the resize
factor (eval: original box = returned box / scale; the letterbox pads bottom/right only).

Randomness comes from a ``random.Random`` seeded by ``(seed, epoch, index)``: a sample's
augmentation does not depend on worker count, order or what ran before, so runs and resumed runs
are reproducible.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hwnas.errors import HwnasError

# ImageNet statistics; the model side normalises with these (the loaders return [0, 1] images).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MIN_INPUT = 32

HW = tuple[int, int]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """``(images - MEAN) / STD`` per channel, for [3, H, W] or [B, 3, H, W] in [0, 1]."""
    shape = (3, 1, 1) if images.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(MEAN, dtype=images.dtype, device=images.device).view(shape)
    std = torch.tensor(STD, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean) / std


def as_hw(input_hw: int | Sequence[int]) -> HW:
    """``256`` or ``(256, 320)`` -> ``(H, W)``, checked."""
    hw = (int(input_hw), int(input_hw)) if isinstance(input_hw, (int, np.integer)) else tuple(int(v) for v in input_hw)
    if len(hw) != 2 or min(hw) < MIN_INPUT:
        raise HwnasError(f"input_hw {input_hw!r}: give one size or (height, width), each at least {MIN_INPUT} px")
    return hw  # type: ignore[return-value]


def letterbox_scale(h: int, w: int, input_hw: HW) -> float:
    """The factor that makes an h x w image fit inside ``input_hw`` keeping its aspect."""
    return min(input_hw[0] / h, input_hw[1] / w)


def resize(image: torch.Tensor, hw: HW) -> torch.Tensor:
    """Bilinear resize of [3, h, w]; antialiased so downscaled small objects do not alias away."""
    if tuple(image.shape[-2:]) == tuple(hw):
        return image
    return F.interpolate(image[None], size=hw, mode="bilinear", align_corners=False, antialias=True)[0]


def pad_to(image: torch.Tensor, hw: HW) -> torch.Tensor:
    """Zero-pad [C, h, w] at the bottom and right to ``hw`` (keeps box coordinates unchanged)."""
    h, w = image.shape[-2:]
    if (h, w) == tuple(hw):
        return image
    out = image.new_zeros((image.shape[0], hw[0], hw[1]))
    out[:, :h, :w] = image
    return out


def letterbox(image: torch.Tensor, input_hw: HW) -> tuple[torch.Tensor, float]:
    """Resize [3, h, w] keeping aspect so it fits ``input_hw``, pad bottom/right; returns (image, scale)."""
    h, w = image.shape[-2:]
    s = letterbox_scale(h, w, input_hw)
    rh, rw = min(input_hw[0], max(1, round(h * s))), min(input_hw[1], max(1, round(w * s)))
    return pad_to(resize(image, (rh, rw)), input_hw), s


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror [3, h, w] and its xyxy boxes left-right (flipping twice is the identity)."""
    w = image.shape[-1]
    flipped = boxes.clone()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return image.flip(-1), flipped


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The generator of one sample's augmentation: a well-mixed function of (seed, epoch, index)."""
    mask = (1 << 64) - 1
    state = np.random.SeedSequence([seed & mask, epoch & mask, index & mask]).generate_state(2, np.uint64)
    return random.Random(int(state[0]) << 64 | int(state[1]))


@dataclass(frozen=True)
class EvalTransform:
    """Letterbox only: returned boxes = original * scale, all kept."""

    input_hw: HW

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_hw", as_hw(self.input_hw))

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, index: int = 0, epoch: int = 0):
        out, s = letterbox(image, self.input_hw)
        return out, boxes * s, torch.ones(len(boxes), dtype=torch.bool), s


@dataclass(frozen=True)
class TrainTransform:
    """Scale jitter around the letterbox size, a random crop that keeps objects, flip, photometric jitter.

    The image is resized to ``letterbox scale * U(scale_range)`` (log-uniform); where it is
    larger than ``input_hw`` a window of ``input_hw`` is cut, trying ``crop_tries`` positions for
    one that keeps at least one box. Boxes are clipped to the window and dropped when less than
    ``min_keep`` of their area stays or a side falls under ``min_size_px``. Then the content is
    flipped (p = ``flip_p``), colour-jittered and padded bottom/right to ``input_hw``.
    """

    input_hw: HW
    seed: int = 0
    scale_range: tuple[float, float] = (0.5, 1.5)
    crop_tries: int = 10
    min_keep: float = 0.3
    min_size_px: float = 2.0
    flip_p: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.3
    hue: float = 0.05  # per-channel gain: a cheap colour-cast stand-in for a hue rotation

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_hw", as_hw(self.input_hw))
        lo, hi = self.scale_range
        if not 0.1 <= lo <= hi <= 4.0:
            raise HwnasError(f"scale_range {self.scale_range}: need 0.1 <= low <= high <= 4")
        if not 0.0 <= self.min_keep <= 1.0 or not 0.0 <= self.flip_p <= 1.0:
            raise HwnasError(f"min_keep {self.min_keep} and flip_p {self.flip_p} must lie in [0, 1]")
        if self.crop_tries < 1:
            raise HwnasError(f"crop_tries {self.crop_tries} must be >= 1")
        for name in ("brightness", "contrast", "saturation", "hue"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise HwnasError(f"{name} jitter {getattr(self, name)} must lie in [0, 1)")

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, index: int = 0, epoch: int = 0):
        rng = sample_rng(self.seed, epoch, index)
        H, W = self.input_hw
        h, w = image.shape[-2:]
        lo, hi = self.scale_range
        s = letterbox_scale(h, w, self.input_hw) * math.exp(rng.uniform(math.log(lo), math.log(hi)))
        rh, rw = max(1, round(h * s)), max(1, round(w * s))
        image = resize(image, (rh, rw))
        boxes = boxes * torch.tensor([rw / w, rh / h, rw / w, rh / h], dtype=boxes.dtype)
        ch, cw = min(rh, H), min(rw, W)
        tries = self.crop_tries if (rh > H or rw > W) and len(boxes) else 1
        for _ in range(tries):
            y0, x0 = rng.randint(0, rh - ch), rng.randint(0, rw - cw)
            cut, keep = self._clip(boxes, x0, y0, cw, ch)
            if keep.any():
                break
        image = image[:, y0:y0 + ch, x0:x0 + cw]
        cut = cut[keep]
        if rng.random() < self.flip_p:
            image, cut = hflip(image, cut)
        image = self._photometric(image, rng)
        return pad_to(image, self.input_hw), cut, keep, s

    def _clip(self, boxes: torch.Tensor, x0: int, y0: int, cw: int, ch: int) -> tuple[torch.Tensor, torch.Tensor]:
        shifted = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
        cut = torch.stack([shifted[:, 0].clamp(0, cw), shifted[:, 1].clamp(0, ch),
                           shifted[:, 2].clamp(0, cw), shifted[:, 3].clamp(0, ch)], 1)
        bw, bh = cut[:, 2] - cut[:, 0], cut[:, 3] - cut[:, 1]
        full = ((shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])).clamp_min(1e-6)
        keep = (bw >= self.min_size_px) & (bh >= self.min_size_px) & (bw * bh >= self.min_keep * full)
        return cut, keep

    def _photometric(self, image: torch.Tensor, rng: random.Random) -> torch.Tensor:
        b, c, sat = self.brightness, self.contrast, self.saturation
        image = image * rng.uniform(1 - b, 1 + b)
        mean = _gray(image).mean()
        image = (image - mean) * rng.uniform(1 - c, 1 + c) + mean
        gray = _gray(image)
        image = gray + (image - gray) * rng.uniform(1 - sat, 1 + sat)
        gains = torch.tensor([rng.uniform(1 - self.hue, 1 + self.hue) for _ in range(3)], dtype=image.dtype)
        return (image * gains.view(3, 1, 1)).clamp_(0.0, 1.0)


def _gray(image: torch.Tensor) -> torch.Tensor:
    return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """``(images [B, 3, H, W], targets)``; images of different sizes are zero-padded bottom/right."""
    if not batch:
        raise HwnasError("collate got an empty batch")
    images = [im for im, _ in batch]
    H = max(im.shape[-2] for im in images)
    W = max(im.shape[-1] for im in images)
    return torch.stack([pad_to(im, (H, W)) for im in images]), [t for _, t in batch]


class EpochSampler(torch.utils.data.Sampler[int]):
    """Indices in an order fixed by (seed, dataset.epoch): reshuffled each epoch, identical on rerun."""

    def __init__(self, dataset, seed: int, shuffle: bool) -> None:
        self.dataset, self.seed, self.shuffle = dataset, seed, shuffle

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if not self.shuffle:
            return iter(range(n))
        rng = sample_rng(self.seed, getattr(self.dataset, "epoch", 0), -1)
        order = list(range(n))
        rng.shuffle(order)
        return iter(order)


def epoch_batches(samples, order: Sequence[int], batch_size: int, workers: int = 0,
                  pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The collated batches of one epoch over ``samples`` in ``order``: whole batches only (one
    short batch when there are fewer samples than a batch). With ``workers`` > 0 they are
    assembled in that many processes while the model trains; the batches are the same as with 0,
    since every sample's augmentation is seeded by (seed, epoch, index), not by who draws it."""
    chunks = [list(order[i:i + batch_size]) for i in range(0, len(order) - batch_size + 1, batch_size)]
    return torch.utils.data.DataLoader(samples, batch_sampler=chunks or [list(order)], collate_fn=collate,
                                       num_workers=workers, pin_memory=pin_memory)


def build_loader(data_dir: Path, split: str, input_hw: int | Sequence[int], batch_size: int, train: bool,
                 seed: int = 0, workers: int = 0, on_error: str = "raise") -> torch.utils.data.DataLoader:
    """A DataLoader over ``data_dir``'s ``split`` yielding ``collate`` batches.

    ``train``: shuffled, augmented, last partial batch dropped. Call ``loader.dataset.set_epoch(e)``
    before each epoch: it moves both the shuffle and the augmentations on.
    """
    from hwnas.data.coco import CocoDetection

    hw = as_hw(input_hw)
    if batch_size < 1:
        raise HwnasError(f"batch size {batch_size} must be >= 1")
    if workers < 0:
        raise HwnasError(f"workers {workers} must be >= 0")
    transform = TrainTransform(hw, seed=seed) if train else EvalTransform(hw)
    ds = CocoDetection.from_dir(data_dir, split, transform, on_error)
    if len(ds) == 0:
        raise HwnasError(f"{ds.json_path} holds no usable images (skipped: "
                         f"{', '.join(f'{k}={v}' for k, v in ds.skipped.items() if v) or 'none'})")
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=EpochSampler(ds, seed, train),
                                       collate_fn=collate, num_workers=workers,
                                       drop_last=train and len(ds) > batch_size)
