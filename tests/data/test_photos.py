"""The real-photograph benchmark (``hwnas data photos``) on real files: built from the photographs
scikit-image and matplotlib ship, read back by the real COCO and WIDER FACE loaders."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage", reason="the photos benchmark needs scikit-image (pip install 'hwnas[photos]')")

from hwnas.cli.app import main  # noqa: E402
from hwnas.data import CocoDetection, WiderFace, open_dataset, read_wider_gt  # noqa: E402
from hwnas.data.photos import (HIRES_FACES, LFW_TRAIN, LFW_VAL, OBJECT_CLASSES, SOURCES, check_args,  # noqa: E402
                               photos, render)
from hwnas.data.wider import gt_file, image_root  # noqa: E402
from hwnas.errors import HwnasError  # noqa: E402

SIZE = 128


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("photos")
    out = {}
    for kind in ("objects", "faces"):
        out[kind] = root / kind
        counts = photos(kind, 6, 3, SIZE, 0, out[kind])
        assert counts["images"] == 9 and counts["annotations"] > 0
    return out


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / f"{split}.json").read_text())


def test_categories_are_as_documented(built) -> None:
    objects = _coco(built["objects"], "train")["categories"]
    assert [(c["id"], c["name"]) for c in objects] == list(enumerate(OBJECT_CLASSES, 1))
    assert [(c["id"], c["name"]) for c in _coco(built["faces"], "val")["categories"]] == [(1, "face")]
    assert CocoDetection.from_dir(built["objects"], "val").class_names == list(OBJECT_CLASSES)


@pytest.mark.parametrize("kind", ["objects", "faces"])
def test_loads_with_the_real_loaders_and_every_box_lies_inside(built, kind) -> None:
    root = built[kind]
    for split, n in (("train", 6), ("val", 3)):
        coco = CocoDetection.from_dir(root, split)  # validates every entry against the json's sizes
        assert len(coco) == n
        doc = _coco(root, split)
        assert {im["width"] for im in doc["images"]} == {SIZE} == {im["height"] for im in doc["images"]}
        for a in doc["annotations"]:
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE, a
            assert 0 < a["area"] <= w * h and 0.3 <= a["visible"] <= 1.0
        for i in range(n):
            image, target = coco[i]
            assert tuple(image.shape) == (3, SIZE, SIZE)
            assert len(target["boxes"]) == sum(a["image_id"] == i + 1 for a in doc["annotations"])
    assert (root / "SOURCES.md").is_file()
    if kind == "objects":
        assert not (root / "wider_face_split").exists()
        assert type(open_dataset(root, "train")).__name__ == "CocoDetection"


def test_faces_are_also_in_the_wider_layout_with_the_same_boxes(built) -> None:
    root = built["faces"]
    for split in ("train", "val"):
        wider = open_dataset(root, split)  # the layout detector picks WIDER FACE
        assert isinstance(wider, WiderFace) and len(wider) == len(_coco(root, split)["images"])
        doc = _coco(root, split)
        gt = {im.name: im for im in read_wider_gt(gt_file(root, split))}
        for im in doc["images"]:
            boxes = [a["bbox"] for a in doc["annotations"] if a["image_id"] == im["id"]]
            entry = gt[f"photos/{im['file_name']}"]
            assert entry.boxes.tolist() == boxes
            assert (image_root(root, split) / entry.name).read_bytes() == (root / "images" / im["file_name"]).read_bytes()
        image, target = wider[0]
        assert tuple(image.shape) == (3, SIZE, SIZE) and (target["labels"] == 0).all()


def test_the_wider_protocol_scores_perfect_predictions_perfectly(built) -> None:
    from hwnas.evaluate.wider import evaluate_wider, load_gt

    gt, keep = load_gt(gt_file(built["faces"], "train"))
    rng = np.random.default_rng(0)
    preds = {im.name: np.column_stack([im.boxes, rng.uniform(0.5, 1.0, len(im.boxes))]) for im in gt}
    metrics = evaluate_wider(preds, gt, keep)
    assert metrics["n_faces"]["hard"] > 0 and metrics["hard"] > 0.99


@pytest.mark.parametrize("kind", ["objects", "faces"])
def test_the_boxes_hold_the_pasted_objects(built, kind) -> None:
    """The file is the composed image, and composing it again without the annotated objects (the
    same background, negatives and noise) changes the pixels inside the boxes, not outside them."""
    root = built[kind]
    doc = _coco(root, "train")
    checked = 0
    for im in doc["images"]:
        i = im["id"] - 1
        with Image.open(root / "images" / im["file_name"]) as f:
            stored = np.asarray(f.convert("RGB"), np.float32)
        full, objects = render(kind, 0, "train", i, SIZE)
        empty, _ = render(kind, 0, "train", i, SIZE, objects=False)
        full, empty = np.asarray(full, np.float32), np.asarray(empty, np.float32)
        assert np.abs(stored - full).mean() < 8.0  # only JPEG coding (of a noisy picture) between them
        anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        assert [o[1] for o in objects] == [a["bbox"] for a in anns]
        for a in anns:
            x, y, w, h = (int(v) for v in a["bbox"])
            if a["visible"] >= 0.6 and w * h >= 25:
                diff = np.abs(full[y:y + h, x:x + w] - empty[y:y + h, x:x + w]).max(2)
                assert (diff > 12).mean() > 0.25, (kind, im["file_name"], a)
                # and the file holds the object: it is nearer the render with objects than without
                box_of = (slice(y, y + h), slice(x, x + w))
                assert np.abs(stored[box_of] - full[box_of]).mean() < np.abs(stored[box_of] - empty[box_of]).mean()
                checked += 1
        # away from the boxes the two renders are the same picture: every pasted object has its box
        # (the cut around a face reaches into hair and background: up to about half the box beyond it)
        near = np.zeros((SIZE, SIZE), bool)
        for a in anns:
            x, y, w, h = a["bbox"]
            mx, my = 0.6 * w + 3, 0.6 * h + 3
            near[max(0, int(y - my)):int(y + h + my) + 1, max(0, int(x - mx)):int(x + w + mx) + 1] = True
        assert np.abs(full - empty)[~near].max(initial=0) <= 2.0, (kind, im["file_name"])
    assert checked >= 3


@pytest.mark.parametrize("kind", ["objects", "faces"])
def test_boxes_fit_what_was_pasted(kind) -> None:
    """Where an object stands alone and whole, the pixels it changed span its box: exactly (up to
    the feathered, blurred edge) for objects, whose box is their cut-out; for faces the box is the
    face inside a cut-out that also holds some hair and background."""
    checked, large = 0, 0
    for i in range(24):
        full, objects = render(kind, 3, "train", i, 256)
        empty, _ = render(kind, 3, "train", i, 256, objects=False)
        changed = np.abs(np.asarray(full, np.float32) - np.asarray(empty, np.float32)).max(2) > 12
        windows = []
        for _, (x, y, w, h), *_ in objects:
            mx, my = 0.6 * w + 4, 0.6 * h + 4
            windows.append((max(0, int(x - mx)), max(0, int(y - my)), int(x + w + mx) + 1, int(y + h + my) + 1))
        for k, ((_, (x, y, w, h), _, vis, *_), (x0, y0, x1, y1)) in enumerate(zip(objects, windows)):
            alone = all(o[2] <= x0 or o[0] >= x1 or o[3] <= y0 or o[1] >= y1 for j, o in enumerate(windows) if j != k)
            if vis < 1 or not alone or min(w, h) < 4:
                continue
            ys, xs = np.nonzero(changed[y0:y1, x0:x1])
            got = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
            box = (x, y, x + w, y + h)
            if kind == "objects":
                tol = max(3.0, 0.15 * max(w, h))
                assert max(abs(g - b) for g, b in zip(got, box)) <= tol, (i, got, box)
            else:  # the face box lies inside what changed, and what changed is not much more than it
                assert got[0] <= x + 2 and got[1] <= y + 2 and got[2] >= x + w - 2 and got[3] >= y + h - 2, (i, got, box)
                assert got[2] - got[0] <= 1.9 * w + 4 and got[3] - got[1] <= 1.9 * h + 4, (i, got, box)
                # centred on the cut-out (the astronaut's is the least: her hair rises 11% above the face)
                assert abs((got[0] + got[2]) / 2 - (x + w / 2)) <= 0.15 * w + 2, (i, got, box)
                assert abs((got[1] + got[3]) / 2 - (y + h / 2)) <= 0.15 * h + 2, (i, got, box)
            checked += 1
            large += min(w, h) >= 16
    assert checked >= 8 and large >= 3, (checked, large)


def test_val_uses_no_train_face_and_no_train_coin(built) -> None:
    def sources(kind: str, split: str) -> set[str]:
        return {a["source"] for a in _coco(built[kind], split)["annotations"]}

    def lfw(names: set[str]) -> set[int]:
        return {int(s.split("#")[1]) for s in names if s.startswith("lfw_subset.npy#")}

    train, val = sources("faces", "train"), sources("faces", "val")
    assert lfw(train) and lfw(val)
    assert lfw(train) <= set(LFW_TRAIN) and lfw(val) <= set(LFW_VAL)
    assert {s for s in train if not s.startswith("lfw")} <= {HIRES_FACES["train"][0]}
    assert {s for s in val if not s.startswith("lfw")} <= {HIRES_FACES["val"][0]}
    # objects: coins and motorcycle views are split too
    o_train, o_val = sources("objects", "train"), sources("objects", "val")
    coins_train = {s for s in o_train if s.startswith("coins.png#")}
    coins_val = {s for s in o_val if s.startswith("coins.png#")}
    assert not coins_train & coins_val
    assert "motorcycle_right.png" not in o_train and "motorcycle_left.png" not in o_val
    # every file an annotation came from is listed in SOURCES.md with its licence
    for kind in ("objects", "faces"):
        listed = (built[kind] / "SOURCES.md").read_text()
        for s in sources(kind, "train") | sources(kind, "val"):
            name = s.split("#")[0]
            assert f"| {name} |" in listed and SOURCES[name][2] in listed


def test_same_seed_same_bytes_other_seed_other_images(tmp_path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    photos("faces", 3, 2, 96, 5, a)
    photos("faces", 3, 2, 96, 5, b)
    photos("faces", 3, 2, 96, 6, c)
    fa, fb, fc = files(a), files(b), files(c)
    assert fa == fb and "wider_face_split/wider_face_val_bbx_gt.txt" in fa
    images = [k for k in fa if k.startswith("images/")]
    assert len(images) == 5 and all(fa[k] != fc[k] for k in images)


@pytest.mark.parametrize("kwargs,msg", [
    ({"kind": "dogs"}, "valid kinds are objects, faces"),
    ({"size": 32}, "--size between 64"),
    ({"n_val": 0}, "--n-val 0"),
])
def test_bad_arguments_are_one_line(tmp_path, kwargs, msg) -> None:
    args = {"kind": "objects", "n_train": 2, "n_val": 1, "size": 64, "seed": 0, "out": tmp_path / "ds"} | kwargs
    with pytest.raises(HwnasError, match=msg):
        photos(**args)
    assert not (tmp_path / "ds").exists()


def test_without_scikit_image_the_error_says_what_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage now raises ImportError
    with pytest.raises(HwnasError, match=r"scikit-image .*pip install 'hwnas\[photos\]'"):
        check_args("faces", 2, 1, 64, tmp_path / "ds")


def test_cli_builds_a_set_and_refuses_a_non_empty_out(tmp_path, capfd) -> None:
    out = tmp_path / "ds"
    rc = main(["data", "photos", "--kind", "faces", "--n-train", "2", "--n-val", "1", "--size", "64", "--seed", "1",
               "--out", str(out)])
    err = capfd.readouterr().err
    assert rc == 0 and f"wrote {out}" in err and "SOURCES.md" in err
    assert len(CocoDetection.from_dir(out, "train")) == 2 and len(open_dataset(out, "val")) == 1
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc = main(["data", "photos", "--kind", "objects", "--n-train", "2", "--n-val", "1", "--size", "64",
               "--out", str(out)])
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 1 and captured.out == "" and len(lines) == 1, captured.err
    assert lines[0].startswith("error: ") and "is not empty" in lines[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
