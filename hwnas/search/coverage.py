"""Label coverage: the share of a data set's training boxes that a detector's head can learn at all.

A box the head's assignment leaves without a single positive position (no anchor or point of its
levels matches it) never teaches the classifier anything, however long the detector trains. Which
boxes those are follows from the data and the structure alone (input size, pyramid levels, head
kind and its assigner), so the share can be read off before any training: the training images go
through the training transform (epoch 0, the recipe's seed), then through the head's own
assignment (``Head.match_codes``, the codes its loss trains on), nothing re-implemented here.

Why the search wants it (docs/benchmarks.md section 9): on the generated shapes at 128 px, 39 % of
the boxes are under 16 px; levels P4-P6 leave about half of those without a positive, and
P5-P6 take almost no box at all. Over the truth set's 36 detectors the 3-epoch mAP times the share
ranks their 12-epoch mAP better than the 3-epoch mAP alone (``benchmarks/rank_fidelity.py``); the
share alone ranks detectors of one head kind, not across kinds (the two-stage head covers least
and learns most). It costs milliseconds per detector once a resolution's
boxes are transformed (they are kept, per data set and transform, for the life of the process).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hwnas.spec.arch import Arch
    from hwnas.train.loop import TrainConfig

IMAGES = 200  # training images the share is measured on: the generated sets' boxes vary little beyond

_TARGETS: dict[tuple[str, str, int], tuple[list[dict], int]] = {}


def training_targets(arch: "Arch", data: Path, cfg: "TrainConfig", images: int = IMAGES) -> tuple[list[dict], int]:
    """The boxes of the first ``images`` training images (0: all) as training sees them at
    ``arch``'s input size in epoch 0, and the data set's class count."""
    from hwnas.data.wider import open_dataset
    from hwnas.train.loop import train_transform

    transform = train_transform(arch, cfg)
    key = (str(Path(data).resolve()), repr(transform), images)  # the transforms are frozen dataclasses
    if key not in _TARGETS:
        ds = open_dataset(data, "train", transform)
        ds.set_epoch(0)
        n = min(images, len(ds)) if images else len(ds)
        targets = [{k: t[k] for k in ("boxes", "labels", "crowd")} for _, t in (ds[i] for i in range(n))]
        _TARGETS[key] = (targets, len(ds.class_names))
    return _TARGETS[key]


def label_coverage(arch: "Arch", data: Path, cfg: "TrainConfig", images: int = IMAGES) -> float:
    """The share of the usable training boxes (not crowd, positive area) to which ``arch``'s head
    assigns at least one positive position before training. 1.0 for data without usable boxes."""
    import torch

    from hwnas.heads.losses import usable_boxes
    from hwnas.train.loop import training_loss

    targets, k = training_targets(arch, data, cfg, images)
    loss = training_loss(arch, k, cfg)
    boxes = covered = 0
    for t, codes in zip(targets, arch.head.match_codes(loss, targets)):
        usable = usable_boxes(t["boxes"], t["crowd"].bool())
        hit = torch.bincount(codes[codes >= 0], minlength=len(t["boxes"])) > 0
        boxes += int(usable.sum())
        covered += int((hit & usable).sum())
    return covered / boxes if boxes else 1.0


SCREENS = ("none", "coverage")  # hwnas search --screen
# A box share: pyramid levels that leave this much more of the boxes unlearnt than the best levels do
# are not worth a structural trial. At 128 px on generated shapes the choices with P3 cover 0.89 of the
# boxes (mean over the three head kinds), those without P3 0.68 and no neck 0.58; no choice falls in
# between, so the margin only has to sit well inside that gap (and outside the ~0.01 the images drawn
# move a share by).
SCREEN_MARGIN = 0.05


def screen_necks(space, data: Path, cfg: "TrainConfig", margin: float = SCREEN_MARGIN
                 ) -> tuple[list[str], dict[str, float]]:
    """The neck choices of the structural stage (``proposals.neck_choices``) whose pyramid levels
    let the heads see the data's boxes, and every choice's share: the label coverage of the
    choice's structural candidate (narrowest, shallowest, first block family: none of which moves
    the assignment), averaged over the space's head kinds and resolutions. A choice is kept within
    ``margin`` of the best share. Why: the search's short trainings rank a structure by what it has
    learnt in a few epochs, and levels without the stride the small boxes need learn the large
    ones as fast, then stop (docs/benchmarks.md section 9); the modular stage keeps a structure's
    levels, so a front drawn from such structures never recovers them."""
    from hwnas.errors import HwnasError
    from hwnas.search.proposals import neck_choices, structural_arch

    shares = {}
    for neck in neck_choices(space):
        got = []
        for res in space.resolutions:
            for head in space.heads:
                try:
                    arch = structural_arch(space, res, space.blocks[0], "shallow", neck, head, "narrow")
                except HwnasError:  # levels the input is too small for: the structural stage prunes these too
                    continue
                got.append(label_coverage(arch, data, cfg))
        shares[neck] = sum(got) / len(got) if got else 0.0
    best = max(shares.values())
    return [n for n, s in shares.items() if s >= best - margin], shares
