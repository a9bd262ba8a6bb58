"""Data-anchor-sampling (PyramidBox, Tang et al. 2018) for training face detectors.

A face detector sees far more small faces than large ones, so the anchors of the upper pyramid
levels get few positives. Data-anchor-sampling takes one face of the sample and rescales the
whole image so that this face takes the size of a randomly chosen anchor that is *not larger than
the next-larger anchor* than its own: large faces are mostly shrunk, which turns large-face
images into small-face training data with context, and small faces are sometimes enlarged by up
to one level.

:class:`DataAnchorSampling` follows the transform call convention of
:mod:`hwnas.data.transforms` and can replace :class:`~hwnas.data.transforms.TrainTransform` in a
dataset. With probability ``1 - p`` (and for images without a usable face) it *is* that
TrainTransform, with the same seed.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from hwnas.data.transforms import HW, TrainTransform, as_hw, hflip, pad_to, resize, sample_rng
from hwnas.errors import HwnasError

__all__ = ["FACE_ANCHOR_SIZES", "DataAnchorSampling"]

# The face head's base anchor per level (2 x stride of P2..P7, strides 4..128). The head's second
# anchor per level (2 * sqrt(2) * stride) sits between two base anchors, so the base sizes alone
# span the head's range for sampling purposes.
FACE_ANCHOR_SIZES = (8.0, 16.0, 32.0, 64.0, 128.0, 256.0)

# DAS decisions draw from a stream of their own. The fallback TrainTransform draws from
# sample_rng(seed, epoch, index); were the DAS-or-not draw taken from that same stream, the samples
# that fall back would all have had their first draw (the scale jitter) above p: a biased jitter.
_DAS_STREAM = 0xDA5_5A4D_0A3C_4011


@dataclass(frozen=True)
class DataAnchorSampling:
    """PyramidBox's data-anchor-sampling, mixed with plain :class:`TrainTransform` samples.

    Per sample (deterministic in ``(seed, epoch, index)``), with probability ``p``:

    1. pick a face at random among the boxes with both sides >= ``min_size_px`` of the fallback
       (and not flagged in ``crowd``, when the caller passes it); none: use the fallback;
    2. ``s_face = sqrt(w * h)``; ``i`` = the index of the anchor closest to it in log space;
    3. draw ``i_target`` uniformly from ``0 .. min(i + 1, len(anchor_sizes) - 1)`` and the target
       size uniformly from ``[anchor / 2, 2 * anchor]`` of that anchor (PyramidBox's rule);
    4. rescale the image by ``s_target / s_face`` (lowered only where the face would not fit in
       ``input_hw`` otherwise), cut an ``input_hw`` window at a random position that contains
       the face (the window is the whole image when that is smaller), clip and drop the other
       boxes like TrainTransform (``min_keep``, ``min_size_px``), flip, photometric jitter and
       pad bottom/right, all with the fallback's settings.

    Otherwise the sample is exactly ``TrainTransform(input_hw, seed=seed)``'s (``fallback``).

    ``anchor_sizes``: the face head's base anchor per level (2 x stride), ascending.
    ``p``: 0.5 by default, the mix of DAS and ordinary crops used by the public PyramidBox / DSFD
    training code (``data_anchor_sampling_prob = 0.5``).
    ``max_side_factor``: pixel budget. The rescale can enlarge a whole image several times (with
    anchors a factor 2 apart, a face at the low edge of its anchor's bin up to 4 * sqrt(2) ~ 5.7x,
    one below the smallest anchor up to 2 * anchor_sizes[1] / s_face, 16x for a 2 px face). Where
    the rescaled image's longest side would exceed ``max_side_factor * max(input_hw)`` (4 x: a
    2560 px side for a 640 input), only the source region under the window is resized, so memory
    stays bounded by the window. The factor itself is not capped: the face still gets its target
    size. (That path places pixels within half a pixel of where the whole-image resize would.)

    Returns ``(image, boxes, keep, scale)`` with ``scale`` the overall rescale factor (original
    box * scale = returned box before the crop offset and flip), as TrainTransform does.
    The dataset API passes no crowd flags; a caller that has them can pass ``crowd=`` so crowd
    boxes are never the chosen face.
    """

    input_hw: HW
    seed: int = 0
    anchor_sizes: tuple[float, ...] = FACE_ANCHOR_SIZES
    p: float = 0.5
    max_side_factor: float = 4.0
    scale_range: tuple[float, float] = (0.5, 1.5)  # the fallback's scale jitter
    fallback: TrainTransform = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_hw", as_hw(self.input_hw))
        sizes = tuple(float(a) for a in self.anchor_sizes)
        if not sizes or any(not math.isfinite(a) or a <= 0 for a in sizes) \
                or any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise HwnasError(f"anchor_sizes {self.anchor_sizes!r}: give positive sizes in strictly ascending "
                             f"order, e.g. {FACE_ANCHOR_SIZES}")
        object.__setattr__(self, "anchor_sizes", sizes)
        if not 0.0 <= self.p <= 1.0:
            raise HwnasError(f"data-anchor-sampling p {self.p} must lie in [0, 1]")
        if not self.max_side_factor >= 1.0:
            raise HwnasError(f"max_side_factor {self.max_side_factor} must be >= 1 (times the input's longest side)")
        object.__setattr__(self, "fallback", TrainTransform(self.input_hw, seed=self.seed,
                                                            scale_range=tuple(self.scale_range)))

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, index: int = 0, epoch: int = 0,
                 crowd: torch.Tensor | None = None):
        rng = sample_rng(self.seed ^ _DAS_STREAM, epoch, index)
        if rng.random() >= self.p:
            return self.fallback(image, boxes, index, epoch)
        face = self._pick_face(boxes, crowd, rng)
        if face is None:
            return self.fallback(image, boxes, index, epoch)
        H, W = self.input_hw
        h, w = image.shape[-2:]
        fw, fh = (boxes[face, 2:] - boxes[face, :2]).tolist()
        f = self._target_size(math.sqrt(fw * fh), rng) / math.sqrt(fw * fh)
        # Keep the face inside the window (1 px slack for the size rounding below).
        f = min(f, (H - 1) / fh, (W - 1) / fw)
        rh, rw = max(1, round(h * f)), max(1, round(w * f))
        fx, fy = rw / w, rh / h  # the factors the pixels get, after rounding the size
        scaled = boxes * torch.tensor([fx, fy, fx, fy], dtype=boxes.dtype)
        ch, cw = min(rh, H), min(rw, W)
        x0 = _window_start(rng, scaled[face, 0].item(), scaled[face, 2].item(), cw, rw)
        y0 = _window_start(rng, scaled[face, 1].item(), scaled[face, 3].item(), ch, rh)
        if max(rh, rw) <= self.max_side_factor * max(H, W):
            window = resize(image, (rh, rw))[:, y0:y0 + ch, x0:x0 + cw]
        else:
            window = _resized_window(image, fx, fy, x0, y0, cw, ch)
        cut, keep = self.fallback._clip(scaled, x0, y0, cw, ch)
        cut = cut[keep]
        if rng.random() < self.fallback.flip_p:
            window, cut = hflip(window, cut)
        window = self.fallback._photometric(window, rng)
        return pad_to(window, self.input_hw), cut, keep, f

    def _pick_face(self, boxes: torch.Tensor, crowd: torch.Tensor | None, rng: random.Random) -> int | None:
        if boxes.numel() == 0:
            return None
        wh = boxes[:, 2:] - boxes[:, :2]
        usable = (wh >= self.fallback.min_size_px).all(1)
        if crowd is not None:
            if crowd.shape != (len(boxes),):
                raise HwnasError(f"crowd flags of shape {list(crowd.shape)} do not match {len(boxes)} boxes; "
                                 f"pass one bool per box")
            usable &= ~crowd.bool()
        candidates = usable.nonzero().flatten().tolist()
        return candidates[rng.randrange(len(candidates))] if candidates else None

    def _target_size(self, s_face: float, rng: random.Random) -> float:
        """PyramidBox: a size around an anchor no larger than the one after the face's nearest."""
        sizes = self.anchor_sizes
        nearest = min(range(len(sizes)), key=lambda k: abs(math.log(sizes[k] / s_face)))
        anchor = sizes[rng.randint(0, min(nearest + 1, len(sizes) - 1))]
        return rng.uniform(anchor / 2, anchor * 2)


def _window_start(rng: random.Random, lo_edge: float, hi_edge: float, win: int, full: int) -> int:
    """A random integer start of a ``win``-long window within ``[0, full]`` covering ``[lo_edge, hi_edge]``.

    Where the span is longer than the window (only by rounding, given the fit cap) the window lies
    inside the span instead. The tolerance keeps float noise on an integer edge from costing a pixel.
    """
    lo = math.ceil(hi_edge - 1e-3) - win
    hi = math.floor(lo_edge + 1e-3)
    if lo > hi:
        lo, hi = hi, lo
    lo, hi = (max(0, min(v, full - win)) for v in (lo, hi))
    return rng.randint(lo, hi)


def _resized_window(image: torch.Tensor, fx: float, fy: float, x0: int, y0: int, cw: int, ch: int) -> torch.Tensor:
    """The ``[y0, y0 + ch) x [x0, x0 + cw)`` window of ``image`` resized by (fx, fy), without resizing
    the rest: the source region under the window (plus a 2 px margin for the interpolation kernel)
    is cut, resized by the same factors, and the window sliced from it."""
    h, w = image.shape[-2:]
    sx0, sy0 = max(0, math.floor(x0 / fx) - 2), max(0, math.floor(y0 / fy) - 2)
    sx1, sy1 = min(w, math.ceil((x0 + cw) / fx) + 2), min(h, math.ceil((y0 + ch) / fy) + 2)
    out_h, out_w = max(ch, round((sy1 - sy0) * fy)), max(cw, round((sx1 - sx0) * fx))
    part = resize(image[:, sy0:sy1, sx0:sx1], (out_h, out_w))
    # The source cut starts at a whole source pixel, which lands at a fractional position of the
    # rescaled image: rounding the offset is the half-pixel this path may be off by.
    ox = min(max(0, round(x0 - sx0 * fx)), out_w - cw)
    oy = min(max(0, round(y0 - sy0 * fy)), out_h - ch)
    return part[:, oy:oy + ch, ox:ox + cw]
