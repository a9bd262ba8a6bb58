"""Copy-paste augmentation on real files: the boxes it returns lie on the pixels of their objects."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hwnas.data.coco import CocoDetection
from hwnas.data.copy_paste import MIN_VISIBLE, CopyPaste, paste
from hwnas.data.transforms import TrainTransform
from hwnas.errors import HwnasError

SIZE = 96
# One colour per object; its category says which, so every returned box names the colour it must sit on.
COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20), (230, 20, 230), (20, 230, 230),
           (250, 140, 20), (140, 20, 250), (20, 250, 140), (250, 250, 250), (120, 60, 10), (10, 120, 60)]


@pytest.fixture(scope="module")
def painted(tmp_path_factory) -> Path:
    """Six images of a black ground, each with two objects painted in their own flat colour."""
    root = tmp_path_factory.mktemp("painted")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(6):
        h, w = (90, 120) if i % 2 else (110, 80)
        arr = np.zeros((h, w, 3), np.uint8)
        for k in range(2):
            obj = 2 * i + k
            bw, bh = int(rng.integers(18, 40)), int(rng.integers(18, 40))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            if k == 1:  # the second object of an image does not overlap the first
                x0, y0, w0, h0 = anns[-1]["bbox"]
                x = int(x0 + w0 + 2) if x0 + w0 + 2 + bw <= w else 0
                y = y0 if x else (int(y0 + h0 + 2) if y0 + h0 + 2 + bh <= h else 0)
            arr[y:y + bh, x:x + bw] = COLOURS[obj]
            anns.append({"id": obj + 1, "image_id": i + 1, "category_id": obj + 1, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
        Image.fromarray(arr).save(root / "images" / f"im{i}.png")
        images.append({"id": i + 1, "file_name": f"im{i}.png", "height": h, "width": w})
    cats = [{"id": c + 1, "name": f"c{c}"} for c in range(len(COLOURS))]
    (root / "train.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def _own_colour_share(image: torch.Tensor, box: list[float], label: int) -> float:
    """Share of the pixels inside ``box`` that carry the colour of object ``label``."""
    x1, y1, x2, y2 = (round(v) for v in box)
    region = image[:, y1:y2, x1:x2]
    want = torch.tensor(COLOURS[label], dtype=image.dtype).view(3, 1, 1) / 255
    return ((region - want).abs().amax(0) < 0.1).float().mean().item()


def test_returned_boxes_sit_on_their_objects(painted) -> None:
    # The training transform's geometry (scale jitter, crop, flip, padding) without its colour jitter,
    # so that each object keeps the colour that identifies it.
    t = TrainTransform(SIZE, seed=3, scale_range=(0.7, 1.4), brightness=0, contrast=0, saturation=0, hue=0)
    ds = CocoDetection.from_dir(painted, "train", t)
    cp = CopyPaste(ds, p=1.0, seed=1)
    pasted_any = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            image, target = cp[i]
            base_image, base = ds[i]
            pasted_any += len(target["labels"]) > len(base["labels"])
            base_labels = base["labels"].tolist()
            for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
                # a pasted box carries its whole object (less the resize's antialiased edges), a kept
                # one at least MIN_VISIBLE of it
                least = MIN_VISIBLE - 0.1 if label in base_labels else 0.85
                assert _own_colour_share(image, box, label) >= least, (epoch, i, box, label)
            # a box of the sample is dropped only when the pasted rectangles cover most of its object
            for label in set(base_labels) - set(target["labels"].tolist()):
                x1, y1, x2, y2 = base["boxes"][base_labels.index(label)].tolist()
                shown = _own_colour_share(image, [x1, y1, x2, y2], label)
                assert shown < MIN_VISIBLE + 0.1, (epoch, i, label, shown)
    assert pasted_any >= 10  # p=1 with two objects a partner, each pasted with probability 1/2


def test_paste_drops_covered_boxes_and_copies_pixels() -> None:
    image = torch.zeros(3, 40, 40)
    src_image = torch.ones(3, 40, 40)
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]),
              "labels": torch.tensor([0, 1]), "crowd": torch.tensor([False, False]), "image_id": 7}
    # covers the first box by 60 % (6 of its 10 columns), the second not at all
    src = {"boxes": torch.tensor([[0.0, 0.0, 6.0, 12.0]]), "labels": torch.tensor([2]), "crowd": torch.tensor([False])}
    out, t = paste(image, target, src_image, src)
    assert t["labels"].tolist() == [1, 2] and t["image_id"] == 7
    assert t["boxes"].tolist() == [[20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 6.0, 12.0]]
    assert out[:, :12, :6].eq(1).all() and out[:, :, 6:].eq(0).all() and out[:, 12:, :].eq(0).all()
    assert image.eq(0).all()  # the input is not modified
    # 40 % covered: the box stays
    src["boxes"] = torch.tensor([[0.0, 0.0, 4.0, 12.0]])
    assert paste(image, target, src_image, src)[1]["labels"].tolist() == [0, 1, 2]


def test_deterministic_and_off_at_zero(painted) -> None:
    t = TrainTransform(SIZE, seed=0)
    ds = CocoDetection.from_dir(painted, "train", t)
    ds.set_epoch(2)
    a, b = CopyPaste(ds, p=0.5, seed=4), CopyPaste(ds, p=0.5, seed=4)
    for i in range(len(ds)):
        (ia, ta), (ib, tb) = a[i], b[i]
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"])
        i0, t0 = CopyPaste(ds, p=0.0)[i]
        i1, t1 = ds[i]
        assert torch.equal(i0, i1) and torch.equal(t0["boxes"], t1["boxes"])
    with pytest.raises(HwnasError, match="--copy-paste 1.5"):
        CopyPaste(ds, p=1.5)


def test_training_uses_it(tiny_shapes, tmp_path) -> None:
    from hwnas.spec.arch import Arch
    from hwnas.train.checkpoint import load_checkpoint
    from hwnas.train.loop import TrainConfig, train

    arch = Arch.parse("i64/basic_c8_1-2-2/fpn_p3-4_c16/retina_d1_c16/bn")
    weights = {}
    for p in (0.0, 1.0):
        res = train(arch, tiny_shapes, tmp_path / str(p), TrainConfig(epochs=1, batch_size=8, copy_paste=p))
        ck = load_checkpoint(res.checkpoint)
        assert ck.config["copy_paste"] == p
        weights[p] = ck.state_dict
    # the same seed, so only the pasted objects can make the weights differ
    assert any(not torch.equal(weights[0.0][k], weights[1.0][k]) for k in weights[0.0])
