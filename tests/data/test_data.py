"""The data layer on real files: synthetic datasets, COCO loading and its validation, transforms, the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from hwnas.cli.app import main
from hwnas.data.coco import SKIP_REASONS, CocoDetection, find_split
from hwnas.data.synth import synth
from hwnas.data.transforms import (MEAN, STD, EvalTransform, TrainTransform, build_loader, collate, hflip, letterbox,
                                   normalize)
from hwnas.errors import HwnasError

SIZE = 128


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A small shapes dataset, generated once (never modify it: copy it)."""
    out = tmp_path_factory.mktemp("shapes")
    synth("shapes", 40, 8, SIZE, 0, out)
    return out


def _coco_doc(tmp: Path) -> dict:
    """A hand-made COCO dataset: gapped category ids, a crowd box, an empty image, a non-square image."""
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    sizes = {1: (100, 160), 2: (80, 80), 5: (64, 96)}  # image id -> (h, w)
    for iid, (h, w) in sizes.items():
        Image.new("RGB", (w, h), (iid * 40, 90, 200)).save(tmp / "images" / f"im{iid}.jpg")
    doc = {
        "images": [{"id": i, "file_name": f"im{i}.jpg", "height": h, "width": w} for i, (h, w) in sizes.items()],
        "categories": [{"id": 11, "name": "kite"}, {"id": 3, "name": "car"}, {"id": 7, "name": "bus"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 11, "bbox": [100, 50, 60, 50], "area": 3000, "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 7, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 1},
            {"id": 13, "image_id": 5, "category_id": 7, "bbox": [5.5, 6.5, 20, 10], "area": 200, "iscrowd": 0},
        ],
    }
    return doc


def _write_coco(tmp: Path, doc: dict) -> Path:
    path = tmp / "train.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def coco(tmp_path) -> tuple[Path, dict]:
    doc = _coco_doc(tmp_path)
    _write_coco(tmp_path, doc)
    return tmp_path, doc


# ----------------------------------------------------------------------------- synth
@pytest.mark.parametrize("kind,ncat", [("shapes", 3), ("faces", 1)])
def test_synth_writes_valid_coco(tmp_path, kind, ncat) -> None:
    synth(kind, 12, 4, SIZE, 1, tmp_path)
    for split, n in (("train", 12), ("val", 4)):
        gt = COCO(str(tmp_path / f"{split}.json"))
        assert len(gt.getImgIds()) == n
        assert gt.getCatIds() == list(range(1, ncat + 1))  # COCO-style ids from 1: the loader remaps them
        for a in gt.loadAnns(gt.getAnnIds()):
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
            assert a["area"] > 0 and a["iscrowd"] == 0 and a["visible"] >= 0.3
        for im in gt.loadImgs(gt.getImgIds()):
            with Image.open(tmp_path / "images" / im["file_name"]) as f:
                assert f.size == (im["width"], im["height"]) == (SIZE, SIZE)


def test_synth_scales_empties_and_occlusion(shapes) -> None:
    doc = json.loads((shapes / "train.json").read_text())
    sides = [max(a["bbox"][2:]) for a in doc["annotations"]]
    assert min(sides) < 16 and max(sides) > 0.4 * SIZE  # small and large objects
    per_image = np.bincount([a["image_id"] for a in doc["annotations"]], minlength=len(doc["images"]) + 1)[1:]
    assert per_image.max() >= 4
    assert any(a["visible"] < 1.0 for a in doc["annotations"])  # some are partly occluded
    assert {a["category_id"] for a in doc["annotations"]} == {1, 2, 3}


def test_synth_is_deterministic(tmp_path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synth("faces", 6, 2, 96, 7, a)
    synth("faces", 6, 2, 96, 7, b)
    synth("faces", 6, 2, 96, 8, c)
    assert (a / "train.json").read_bytes() == (b / "train.json").read_bytes()
    assert (a / "images" / "val_000001.jpg").read_bytes() == (b / "images" / "val_000001.jpg").read_bytes()
    assert (a / "train.json").read_bytes() != (c / "train.json").read_bytes()


@pytest.mark.parametrize("kwargs,msg", [
    ({"kind": "cats"}, "valid kinds are shapes, faces"),
    ({"size": 10}, "--size between 64"),
    ({"n_train": 0}, "--n-train 0"),
])
def test_synth_rejects_bad_arguments(tmp_path, kwargs, msg) -> None:
    args = {"kind": "shapes", "n_train": 2, "n_val": 1, "size": 64, "seed": 0, "out": tmp_path / "d"} | kwargs
    with pytest.raises(HwnasError, match=msg):
        synth(**args)


# ----------------------------------------------------------------------------- loading
def test_category_remapping_crowd_and_empty(coco) -> None:
    root, _ = coco
    ds = CocoDetection(root / "train.json", root / "images")
    assert ds.cat_ids == [3, 7, 11] and ds.class_names == ["car", "bus", "kite"]
    assert len(ds) == 3 and ds.image_ids == [1, 2, 5]  # image 2 has no annotations and is kept
    img, t = ds[0]
    assert img.shape == (3, 100, 160) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    assert t["labels"].tolist() == [0, 2, 1]
    assert t["crowd"].tolist() == [False, False, True]
    assert torch.equal(t["boxes"][0], torch.tensor([10.0, 20.0, 40.0, 60.0]))
    assert t["image_id"] == 1 and t["orig_hw"] == (100, 160) and t["scale"] == 1.0
    _, empty = ds[1]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64 and empty["crowd"].dtype == torch.bool


def test_small_overshoot_is_clipped(coco) -> None:
    root, doc = coco
    doc["annotations"][1]["bbox"] = [100, 50, 60.8, 50.4]  # 0.8 px past the right edge, 0.4 past the bottom
    _write_coco(root, doc)
    t = CocoDetection(root / "train.json", root / "images")[0][1]
    assert t["boxes"][1].tolist() == [100.0, 50.0, 160.0, 100.0]


def _missing_image(root: Path, doc: dict) -> None:
    (root / "images" / "im5.jpg").unlink()


def _box_outside(root: Path, doc: dict) -> None:
    doc["annotations"][1]["bbox"] = [130, 50, 60, 50]


def _zero_width(root: Path, doc: dict) -> None:
    doc["annotations"][1]["bbox"] = [10, 10, 0, 5]


def _unknown_category(root: Path, doc: dict) -> None:
    doc["annotations"][1]["category_id"] = 4


def _unknown_image(root: Path, doc: dict) -> None:
    doc["annotations"][1]["image_id"] = 99


BROKEN = [  # (mutation, reason counted when skipping, what the message must name, images left)
    (_missing_image, "missing_image", "im5.jpg", 2),
    (_box_outside, "box_outside", "annotation id 11", 3),
    (_zero_width, "bad_box", "annotation id 11", 3),
    (_unknown_category, "unknown_category", "annotation id 11", 3),
    (_unknown_image, "unknown_image", "annotation id 11", 3),
]


@pytest.mark.parametrize("mutate,reason,names,_n", BROKEN, ids=[b[1] for b in BROKEN])
def test_broken_entry_raises_naming_file_and_entry(coco, mutate, reason, names, _n) -> None:
    root, doc = coco
    mutate(root, doc)
    _write_coco(root, doc)
    with pytest.raises(HwnasError) as e:
        CocoDetection(root / "train.json", root / "images")
    msg = str(e.value)
    assert str(root / "train.json") in msg and names in msg and "on_error='skip'" in msg and "\n" not in msg


@pytest.mark.parametrize("mutate,reason,_names,n_left", BROKEN, ids=[b[1] for b in BROKEN])
def test_skip_drops_and_counts(coco, mutate, reason, _names, n_left) -> None:
    root, doc = coco
    mutate(root, doc)
    _write_coco(root, doc)
    ds = CocoDetection(root / "train.json", root / "images", on_error="skip")
    assert set(ds.skipped) == set(SKIP_REASONS)
    assert ds.skipped[reason] == 1 and ds.num_skipped() == 1
    assert len(ds) == n_left
    assert sum(len(ds[i][1]["boxes"]) for i in range(len(ds))) == 3  # one of the four went (with its image)


def test_malformed_json_names_file_and_position(coco) -> None:
    root, _ = coco
    path = root / "train.json"
    path.write_bytes(path.read_bytes()[:-40])  # a truncated write
    with pytest.raises(HwnasError, match=r"train\.json is not valid json .* line 1 column \d+"):
        CocoDetection(path, root / "images", on_error="skip")  # whole-file damage is never skipped
    path.write_text('{"images": [], "categories": {}}')
    with pytest.raises(HwnasError, match="non-list 'categories'"):
        CocoDetection(path, root / "images")


def test_image_size_mismatch_is_an_error(coco) -> None:
    root, doc = coco
    doc["images"][1]["width"] = 81
    _write_coco(root, doc)
    ds = CocoDetection(root / "train.json", root / "images")
    with pytest.raises(HwnasError, match=r"im2\.jpg is 80x80 but .* says 81x80"):
        ds[1]


def test_both_layouts(shapes, tmp_path) -> None:
    assert find_split(shapes, "val") == (shapes / "val.json", shapes / "images")
    coco_dir = tmp_path / "coco"
    (coco_dir / "annotations").mkdir(parents=True)
    shutil.copyfile(shapes / "val.json", coco_dir / "annotations" / "instances_val2017.json")
    shutil.copytree(shapes / "images", coco_dir / "val2017")
    j, i = find_split(coco_dir, "val")
    assert (j, i) == (coco_dir / "annotations" / "instances_val2017.json", coco_dir / "val2017")
    assert len(CocoDetection(j, i)) == 8
    with pytest.raises(HwnasError, match=r"no train split .* looked for train\.json with images/ or "
                                         r"annotations/instances_train2017\.json with train2017/"):
        find_split(coco_dir, "train")
    with pytest.raises(HwnasError, match="does not exist"):
        find_split(tmp_path / "nowhere", "train")
    with pytest.raises(HwnasError, match="valid splits are train, val"):
        find_split(coco_dir, "test")


# ----------------------------------------------------------------------------- transforms
def test_train_transform_keeps_boxes_inside_and_is_reproducible(shapes) -> None:
    tf = TrainTransform((96, 128), seed=3)
    ds = CocoDetection.from_dir(shapes, "train", tf)
    raw = CocoDetection.from_dir(shapes, "train")
    n_in = n_out = 0
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            img, t = ds[i]
            assert img.shape == (3, 96, 128) and 0 <= img.min() and img.max() <= 1
            b = t["boxes"]
            assert len(b) == len(t["labels"]) == len(t["crowd"])
            if len(b):
                assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 3] <= 96).all()
                assert ((b[:, 2] - b[:, 0]) >= 2).all() and ((b[:, 3] - b[:, 1]) >= 2).all()
            n_in += len(raw.annotations(i)["boxes"])
            n_out += len(b)
    assert 0.5 * n_in < n_out <= n_in  # crops drop some boxes, not most
    ds.set_epoch(1)
    a, b = ds[5], ds[5]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    ds.set_epoch(2)
    assert not torch.equal(ds[5][0], a[0])


def test_flip_twice_is_identity() -> None:
    img = torch.rand(3, 20, 30)
    boxes = torch.tensor([[1.0, 2.0, 11.0, 12.0], [0.0, 0.0, 30.0, 20.0]])
    f_img, f_boxes = hflip(img, boxes)
    assert f_boxes.tolist() == [[19.0, 2.0, 29.0, 12.0], [0.0, 0.0, 30.0, 20.0]]
    assert torch.equal(f_img[:, :, 0], img[:, :, -1])
    back_img, back = hflip(f_img, f_boxes)
    assert torch.equal(back_img, img) and torch.equal(back, boxes)


def test_letterbox_scale_maps_back(coco) -> None:
    root, _ = coco
    ds = CocoDetection(root / "train.json", root / "images", EvalTransform((128, 128)))
    raw = CocoDetection(root / "train.json", root / "images")
    img, t = ds[0]  # 100 x 160 -> 80 x 128, padded at the bottom
    assert img.shape == (3, 128, 128) and t["scale"] == pytest.approx(0.8)
    assert img[:, 80:].abs().sum() == 0 and img[:, :80].min() > 0
    assert torch.allclose(t["boxes"] / t["scale"], raw[0][1]["boxes"])
    out, s = letterbox(torch.rand(3, 50, 40), (128, 256))
    assert out.shape == (3, 128, 256) and s == pytest.approx(128 / 50) and out[:, :, 103:].abs().sum() == 0


def test_normalize() -> None:
    img = torch.tensor(MEAN).view(3, 1, 1).expand(3, 4, 4) + torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(normalize(img), torch.ones(3, 4, 4), atol=1e-6)
    assert normalize(img[None]).shape == (1, 3, 4, 4)


def test_collate_and_loader(shapes, coco) -> None:
    loader = build_loader(shapes, "train", 96, batch_size=6, train=True, seed=0)
    loader.dataset.set_epoch(0)
    images, targets = next(iter(loader))
    assert images.shape == (6, 3, 96, 96) and images.dtype == torch.float32 and len(targets) == 6
    assert len(loader) == 40 // 6  # partial batch dropped when training
    first = [t["image_id"] for t in targets]
    assert [t["image_id"] for t in next(iter(build_loader(shapes, "train", 96, 6, True, seed=0)))[1]] == first
    loader.dataset.set_epoch(1)
    assert [t["image_id"] for t in next(iter(loader))[1]] != first
    val = build_loader(shapes, "val", (64, 96), 3, train=False)
    assert [t["image_id"] for _, ts in val for t in ts] == list(range(1, 9))
    root, _ = coco
    raw = CocoDetection(root / "train.json", root / "images")
    images, targets = collate([raw[0], raw[2]])  # different sizes: padded to the largest
    assert images.shape == (2, 3, 100, 160) and images[1, :, 64:].abs().sum() == 0


# ----------------------------------------------------------------------------- CLI
def test_cli_synth(tmp_path, capsys) -> None:
    out = tmp_path / "ds"
    rc = main(["data", "synth", "--kind", "faces", "--n-train", "4", "--n-val", "2", "--size", "64",
               "--seed", "3", "--out", str(out)])
    assert rc == 0
    assert f"wrote {out}" in capsys.readouterr().err
    assert len(json.loads((out / "train.json").read_text())["images"]) == 4
    assert len(list((out / "images").glob("*.jpg"))) == 6
    assert len(CocoDetection.from_dir(out, "val")) == 2


@pytest.mark.parametrize("args,msg", [
    (["--size", "10"], "--size between 64"),
    (["--kind", "cats"], "valid kinds"),
    (["--n-val", "0"], "--n-val 0"),
    (["--out", "FILE"], "is a file"),
    (["--seed", "x"], "Invalid value"),
])
def test_cli_synth_bad_input(tmp_path, capsys, args, msg) -> None:
    (tmp_path / "FILE").write_text("")
    base = {"--out": str(tmp_path / "ds"), "--n-train": "2", "--n-val": "1"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = str(tmp_path / v) if v == "FILE" else v
    rc = main(["data", "synth", *[x for kv in base.items() for x in kv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("error:") and msg in err[0]
    assert not (tmp_path / "ds" / "train.json").exists()
