"""Batches assembled in worker processes (``--workers``) are the batches of the training process:
same images, same boxes, and a training run ends with the same weights."""
from __future__ import annotations

import torch

from hwnas.data.copy_paste import CopyPaste
from hwnas.data.transforms import epoch_batches
from hwnas.data.wider import open_dataset
from hwnas.spec.arch import Arch
from hwnas.train.loop import TrainConfig, train, train_transform

ARCH = Arch.parse("i64/basic_c16_1-2-2-2/fpn_p3-5_c32/retina_d1_c32/bn")


def _epoch(samples, order, workers: int):
    return [(images.clone(), [t["boxes"].clone() for t in targets])
            for images, targets in epoch_batches(samples, order, 4, workers)]


def test_two_workers_give_the_batches_of_none(tiny_shapes) -> None:
    cfg = TrainConfig(seed=3, copy_paste=0.5)
    ds = open_dataset(tiny_shapes, "train", train_transform(ARCH, cfg))
    samples = CopyPaste(ds, cfg.copy_paste, cfg.seed, pool=list(range(len(ds))))
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        alone, two = _epoch(samples, order, 0), _epoch(samples, order, 2)
        assert len(alone) == len(two) == len(ds) // 4
        for (a_img, a_boxes), (b_img, b_boxes) in zip(alone, two):
            assert torch.equal(a_img, b_img) and all(torch.equal(x, y) for x, y in zip(a_boxes, b_boxes))
    ds.set_epoch(0)
    first = _epoch(samples, order, 0)
    assert not torch.equal(first[0][0], alone[0][0])  # the epoch moves the augmentation on


def test_training_with_workers_ends_with_the_same_weights(tiny_shapes, tmp_path) -> None:
    runs = {}
    for workers in (0, 2):
        cfg = TrainConfig(epochs=2, batch_size=4, lr=2e-3, warmup_iters=2, workers=workers)
        res = train(ARCH, tiny_shapes, tmp_path / f"w{workers}", cfg)
        runs[workers] = torch.load(res.checkpoint, map_location="cpu", weights_only=False)
    a, b = (runs[w]["state_dict"] for w in (0, 2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
