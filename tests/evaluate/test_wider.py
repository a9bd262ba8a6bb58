"""WIDER FACE on real files: the gt loader, the dataset, and the official evaluation protocol
checked against APs worked out by hand (the arithmetic is in the comments)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from hwnas.data import CocoDetection, open_dataset
from hwnas.data.synth import synth
from hwnas.data.transforms import EvalTransform
from hwnas.data.wider import WiderFace, coco_to_wider, read_wider_gt, wider_image, write_wider_gt
from hwnas.errors import HwnasError
from hwnas.spec.arch import Arch
from hwnas.evaluate.coco import coco_score
from hwnas.evaluate.wider import (DERIVED_RULE, OFFICIAL_RULE, derive_subsets, evaluate_dir, evaluate_wider, load_gt,
                              overlaps, read_predictions, write_predictions)

W, H = 64, 48  # every fixture image is 64 x 48
# The official format with its odd corners: CRLF, trailing spaces, a zero-face image with its
# placeholder line, a zero-width face, an invalid face, a blank last line.
GT_LINES = [
    "0--Parade/0_Parade_a_1.jpg", "3",
    "10 10 20 24 0 0 0 0 0 0 ",
    "30 5 0 10 1 0 0 0 0 0",           # zero width: gt for evaluation only
    "40 20 15 15 2 1 0 1 0 3",         # invalid = 1
    "0--Parade/0_Parade_b_2.jpg", "0",
    "0 0 0 0 0 0 0 0 0 0",             # placeholder, not a face
    "1--Handshaking/1_Hand_c_3.jpg", "1",
    "5 6 30 32 0 0 1 0 2 0  ",
    "",
]


def _make_root(root: Path, text: str | None = None, split: str = "val", images: list[str] | None = None) -> Path:
    (root / "wider_face_split").mkdir(parents=True, exist_ok=True)
    (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").write_bytes(
        ("\r\n".join(GT_LINES) if text is None else text).encode())
    names = images if images is not None else [l for l in GT_LINES if l.endswith(".jpg")]
    for k, name in enumerate(names):
        path = root / f"WIDER_{split}" / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H), (40 * k, 120, 200)).save(path)
    return root


@pytest.fixture
def root(tmp_path) -> Path:
    return _make_root(tmp_path / "wider")


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ============================================================================ the gt file
def test_read_gt_official_format(root):
    gt = read_wider_gt(root / "wider_face_split" / "wider_face_val_bbx_gt.txt")
    assert [im.name for im in gt] == ["0--Parade/0_Parade_a_1.jpg", "0--Parade/0_Parade_b_2.jpg",
                                      "1--Handshaking/1_Hand_c_3.jpg"]
    assert [im.event for im in gt] == ["0--Parade", "0--Parade", "1--Handshaking"]
    a, b, c = gt
    assert a.boxes.dtype == np.float32 and a.attrs.dtype == np.int32
    np.testing.assert_array_equal(a.boxes, [[10, 10, 20, 24], [30, 5, 0, 10], [40, 20, 15, 15]])
    np.testing.assert_array_equal(a.attrs[2], [2, 1, 0, 1, 0, 3])  # blur expr illum invalid occl pose
    assert a.invalid.tolist() == [False, False, True]
    assert b.boxes.shape == (0, 4) and b.attrs.shape == (0, 6)  # the ten zeros are not a face
    np.testing.assert_array_equal(c.attrs, [[0, 0, 1, 0, 2, 0]])
    with pytest.raises(ValueError):
        a.boxes[0, 0] = 1  # frozen all the way down


def test_write_gt_round_trip(root, tmp_path):
    src = root / "wider_face_split" / "wider_face_val_bbx_gt.txt"
    gt = read_wider_gt(src)
    out = tmp_path / "sub" / "gt.txt"
    write_wider_gt(out, gt)
    text = out.read_text()
    assert "0--Parade/0_Parade_b_2.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n" in text  # the zero-face convention
    back = read_wider_gt(out)
    assert [im.name for im in back] == [im.name for im in gt]
    for x, y in zip(gt, back):
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.attrs, y.attrs)
    # A zero-face image written without the placeholder (other tools) still reads.
    assert [len(im.boxes) for im in read_wider_gt(_write(tmp_path / "np.txt", "e/x.jpg\n0\ne/y.jpg\n1\n"
                                                                                  "1 2 3 4 0 0 0 0 0 0\n"))] == [0, 1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


FACE = "1 2 3 4 0 0 0 0 0 0"


@pytest.mark.parametrize("text, line, words", [
    (f"e/x.jpg\nabc\n{FACE}\n", 2, "face count 'abc'"),
    ("e/x.jpg\n-1\n", 2, "whole number"),
    (f"e/x.jpg\n2\n{FACE}\n", 3, "ends after face 1 of 2"),
    ("e/x.jpg\n1\n1 2 3 4 0 0 0\n", 3, "has 7 fields"),
    ("e/x.jpg\n1\n1 2 3 4 0 0 0 0 0 z\n", 3, "is not numbers"),
    ("e/x.jpg\n1\n1 2 3 4 0 0 0.5 0 0 0\n", 3, "is not numbers"),  # attributes are integers
    (f"e/x.jpg\n1\n{FACE}\n{FACE}\n", 4, "more face lines than the previous image's count"),
    (f"e/x.jpg\n2\n{FACE}\ne/y.jpg\n0\n", 4, "face 2 of 2 of e/x.jpg has 1 fields"),
    (f"e/x.jpg\n0\n{FACE}\n", 3, "face count 0 but line 3 holds a face"),
    ("e/x.jpg", 1, "face count is missing"),
    (f"no_event.jpg\n1\n{FACE}\n", 1, "expected an image path"),
])
def test_malformed_gt_names_file_and_line(tmp_path, text, line, words):
    path = _write(tmp_path / "gt.txt", text)
    with pytest.raises(HwnasError) as e:
        read_wider_gt(path)
    msg = _one_line(e)
    assert f"{path} line {line}:" in msg and words in msg and "on_error='skip'" in msg


def test_gt_whole_file_errors(tmp_path):
    with pytest.raises(HwnasError) as e:
        read_wider_gt(_write(tmp_path / "d.txt", f"e/x.jpg\n1\n{FACE}\ne/x.jpg\n0\n"))
    assert "line 4" in _one_line(e) and "listed twice (first on line 1)" in str(e.value)
    (tmp_path / "bin.txt").write_bytes(b"e/x.jpg\n1\n\xff\xfe\n")
    with pytest.raises(HwnasError) as e:
        read_wider_gt(tmp_path / "bin.txt")
    assert "not UTF-8" in _one_line(e)
    with pytest.raises(HwnasError, match="cannot read WIDER gt file"):
        read_wider_gt(tmp_path / "absent.txt")


def test_skip_counts_bad_entries_and_missing_images(tmp_path):
    text = "\n".join([
        "e/good1.jpg", "1", FACE,
        "e/badcount.jpg", "x", FACE, FACE,           # count unreadable: skipped up to the next name
        "e/good2.jpg", "2", FACE, FACE,
        "e/badfields.jpg", "2", FACE, "1 2 3",       # second face short
        "e/gone.jpg", "0",                           # no image file
        "e/good3.jpg", "0", "0 0 0 0 0 0 0 0 0 0",
    ]) + "\n"
    root = _make_root(tmp_path / "w", text, images=["e/good1.jpg", "e/good2.jpg", "e/good3.jpg",
                                                     "e/badcount.jpg", "e/badfields.jpg"])
    with pytest.raises(HwnasError) as e:
        WiderFace(root, "val")
    assert "line 5:" in _one_line(e)
    ds = WiderFace(root, "val", on_error="skip")
    assert ds.skipped == {"bad_image_entry": 2, "missing_image": 1, "box_outside": 0} and ds.num_skipped() == 3
    assert [im.name for im in ds.wider_images()] == ["e/good1.jpg", "e/good2.jpg", "e/good3.jpg"]
    assert ds.image_ids == [1, 2, 3]
    # The missing image alone, raised: named with the line of its entry.
    root2 = _make_root(tmp_path / "w2", "e/a.jpg\n0\ne/gone.jpg\n1\n" + FACE + "\n", images=["e/a.jpg"])
    with pytest.raises(HwnasError) as e:
        WiderFace(root2, "val")
    msg = _one_line(e)
    assert "line 3:" in msg and "gone.jpg does not exist" in msg


# ============================================================================ the dataset
def test_dataset_items_like_coco(root):
    ds = WiderFace(root, "val")
    assert ds._hw == [(H, W)] * 3  # sizes from the file headers at construction (faces are checked against them)
    assert (ds.class_names, ds.cat_ids, ds.num_classes, len(ds), ds.image_ids) == (["face"], [1], 1, 3, [1, 2, 3])
    assert ds.json_path == root / "wider_face_split" / "wider_face_val_bbx_gt.txt"
    ann = ds.annotations(0)
    # The zero-width face is no training target; the invalid one is crowd (ignored by the losses).
    np.testing.assert_array_equal(ann["boxes"], [[10, 10, 30, 34], [40, 20, 55, 35]])
    assert ann["boxes"].dtype == np.float32 and ann["labels"].tolist() == [0, 0]
    assert ann["crowd"].tolist() == [False, True]
    assert ds.annotations(1)["boxes"].shape == (0, 4)
    assert ds.image_hw(2) == (H, W)
    image, target = ds[0]
    assert image.shape == (3, H, W) and float(image.max()) <= 1.0
    assert set(target) == {"boxes", "labels", "crowd", "image_id", "orig_hw", "scale"}
    assert target["image_id"] == 1 and target["orig_hw"] == (H, W) and target["scale"] == 1.0
    assert target["labels"].dtype == torch.int64 and target["crowd"].tolist() == [False, True]
    ds.transform = EvalTransform(32)
    image, target = ds[0]
    assert image.shape == (3, 32, 32) and target["scale"] == pytest.approx(0.5)
    assert target["boxes"].tolist() == [[5, 5, 15, 17], [20, 10, 27.5, 17.5]]
    ds.set_epoch(3)
    assert ds.epoch == 3


def test_coco_gt_scored_by_pycocotools(root):
    ds = WiderFace(root, "val")
    doc = ds.coco_gt()
    assert doc["categories"] == [{"id": 1, "name": "face", "supercategory": "person"}]
    assert [(im["id"], im["width"], im["height"]) for im in doc["images"]] == [(1, W, H), (2, W, H), (3, W, H)]
    assert [(a["image_id"], a["bbox"], a["area"], a["iscrowd"]) for a in doc["annotations"]] == [
        (1, [10, 10, 20, 24], 480, 0), (1, [30, 5, 0, 10], 0, 1), (1, [40, 20, 15, 15], 225, 1),
        (3, [5, 6, 30, 32], 960, 0)]
    # Perfect detections, plus one on the invalid face (a crowd box: neither hit nor false positive).
    results = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 24], "score": 0.9},
               {"image_id": 1, "category_id": 1, "bbox": [40, 20, 15, 15], "score": 0.95},
               {"image_id": 3, "category_id": 1, "bbox": [5, 6, 30, 32], "score": 0.8}]
    before = json.dumps(doc)
    m = coco_score(doc, results, image_ids=ds.image_ids)
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert json.dumps(doc) == before  # scored on a copy
    # Missing one of the two faces halves the recall: AP 0.5 at every IoU.
    assert coco_score(doc, results[:2], image_ids=ds.image_ids)["map50"] == pytest.approx(0.5, abs=0.01)


def test_evaluate_scores_a_wider_dataset(root):
    """evaluate() on WiderFace: pycocotools gets the dataset's COCO dict (its gt is no json)."""
    from hwnas.evaluate.coco import coco_truth, evaluate
    from hwnas.models import Detector

    ds = WiderFace(root, "val", EvalTransform(64))
    assert coco_truth(ds) == ds.coco_gt()
    torch.manual_seed(0)
    model = Detector.from_arch(Arch.parse("i64/basic_c8_1-2-2/fpn_p3-4_c16/retina_d1_c16/bn"), 1)
    m = evaluate(model, model.arch, ds)
    assert m["n_images"] == 3 and 0.0 <= m["map50"] <= 1.0


def test_open_dataset_and_coco_to_wider(root, tmp_path):
    assert isinstance(open_dataset(root, "val"), WiderFace)
    with pytest.raises(HwnasError, match="no WIDER FACE train split"):
        open_dataset(root, "train")
    faces = tmp_path / "faces"
    synth("faces", 2, 3, 64, 0, faces)
    ds = open_dataset(faces, "val")
    assert isinstance(ds, CocoDetection)
    doc = json.loads((faces / "val.json").read_text())
    gt = coco_to_wider(faces / "val.json")
    assert [im.name for im in gt] == [f"synth/{im['file_name']}" for im in doc["images"]]
    assert {im.event for im in gt} == {"synth"}
    for k, im in enumerate(gt):
        boxes = [a["bbox"] for a in doc["annotations"] if a["image_id"] == doc["images"][k]["id"]]
        np.testing.assert_array_equal(im.boxes, np.asarray(boxes, np.float32).reshape(-1, 4))
        assert not im.attrs.any()
    assert len(coco_to_wider(doc)) == 3  # a loaded dict too
    with pytest.raises(HwnasError, match="no 'face' category"):
        coco_to_wider({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]})
    # A generated set through the WIDER evaluator: its own boxes score 1 on every subset it has.
    loaded, keep = load_gt(faces / "val.json")
    assert keep is None
    preds = {im.name: np.c_[im.boxes, np.full(len(im.boxes), 0.9)] for im in loaded}
    res = evaluate_wider(preds, loaded)
    assert res["subsets"] == DERIVED_RULE
    for s in ("easy", "medium", "hard"):
        assert res[s] == pytest.approx(1.0 if res["n_faces"][s] else 0.0)


# ============================================================================ the evaluator by hand
# Two images. Image 1: g0 (0,0,99,99), g1 (200,0,99,99), g2 (400,0,99,99), each 100x100 px
# under the +1 convention. Image 2: g0 (0,0,49,49), g1 (100,100,49,49).
GT = [wider_image("e1--One/a.jpg", [[0, 0, 99, 99], [200, 0, 99, 99], [400, 0, 99, 99]]),
      wider_image("e2--Two/b.jpg", [[0, 0, 49, 49], [100, 100, 49, 49]])]
# Raw scores 0.1..0.9, normalised (s - 0.1) / 0.8 over both images:
#   p1 0.9 -> 1.0     on image-1 g0 (IoU 1)
#   p2 0.8 -> 0.875   on image-1 g2
#   p3 0.7 -> 0.75    on image-1 g0 again, shifted by 2 px (IoU 98*98/(2*100*100-98*98) = 0.92): a duplicate
#   q1 0.6 -> 0.625   on image-2 g0
#   p4 0.3 -> 0.25    on nothing
#   q2 0.1 -> 0.0     on image-2 g1
# Image-1 g1 is never detected (a miss).
PRED = {"e1--One/a.jpg": np.array([[0, 0, 99, 99, 0.9], [400, 0, 99, 99, 0.8], [2, 2, 99, 99, 0.7],
                                   [600, 600, 10, 10, 0.3]]),
        "e2--Two/b": np.array([[100, 100, 49, 49, 0.1], [0, 0, 49, 49, 0.6]])}  # unsorted, no extension
KEEP = {
    # hard: image 1 {g0, g1}, image 2 {g0, g1}: 4 faces; p2 hits g2, outside the list: ignored.
    # In score order (proposals, found): p1 (1,1) p2 ignored p3 (2,1) q1 (3,2) p4 (4,2) q2 (5,3), so
    # (recall, precision): (.25, 1) (.25, .5) (.5, 2/3) (.5, .5) (.75, .6). Made non-increasing from the
    # right: 1, 2/3, 2/3, .6, .6. AP = .25*1 + .25*(2/3) + .25*.6 + .25*0 = 0.566667
    "hard": {"e1--One/a.jpg": [0, 1], "e2--Two/b.jpg": [0, 1]},
    # medium: image 1 {g0, g1, g2}, image 2 {g0}: 4 faces; p2 is now a hit and q2 (on g1) ignored.
    # p1 (1,1) p2 (2,2) p3 (3,2) q1 (4,3) p4 (5,3): (.25, 1) (.5, 1) (.5, 2/3) (.75, .75) (.75, .6).
    # AP = .25*1 + .25*1 + .25*.75 = 0.6875
    "medium": {"e1--One/a.jpg": [0, 1, 2], "e2--Two/b.jpg": [0]},
    # easy: image 1 {g1}, image 2 {g0}: 2 faces. p1, p2 and p3 all land on faces outside the list:
    # ignored, so above q1's score nothing is proposed (0/0 -> precision 0, recall 0). q1 (1,1)
    # p4 (2,1), q2 ignored: (.5, 1) (.5, .5). AP = .5*1 + .5*0 = 0.5
    "easy": {"e1--One/a.jpg": [1], "e2--Two/b.jpg": [0]},
}
KEEP = {s: {n: np.asarray(v, np.int64) for n, v in d.items()} for s, d in KEEP.items()}


def test_hand_computed_ap():
    res = evaluate_wider(PRED, GT, KEEP)
    assert res["hard"] == pytest.approx(0.25 + 0.25 * 2 / 3 + 0.25 * 0.6, abs=1e-3)
    assert res["medium"] == pytest.approx(0.6875, abs=1e-3)
    assert res["easy"] == pytest.approx(0.5, abs=1e-3)
    assert res["subsets"] == OFFICIAL_RULE and res["n_images"] == 2
    assert res["n_faces"] == {"easy": 2, "medium": 4, "hard": 4} and res["n_images_with_predictions"] == 2
    assert PRED["e1--One/a.jpg"][0, 4] == 0.9  # the caller's arrays are not normalised in place


def test_images_without_predictions_or_gt():
    # Image 3 has one face in every list and no prediction: hard counts 5 faces, the same hits.
    # Recall becomes .2/.2/.4/.4/.6 with the same precisions: AP = .2*1 + .2*(2/3) + .2*.6 = 0.453333
    # Image 4 has no face and a top-scoring prediction: skipped (it only widens the score range,
    # which keeps every other prediction's order, so nothing changes).
    gt = GT + [wider_image("e2--Two/c.jpg", [[10, 10, 30, 30]]), wider_image("e3--Three/d.jpg", [])]
    keep = {s: {**d, "e2--Two/c.jpg": np.array([0]), "e3--Three/d.jpg": np.array([], np.int64)}
            for s, d in KEEP.items()}
    pred = {**PRED, "e3--Three/d.jpg": np.array([[5, 5, 20, 20, 0.95]]),
            "e9--Other/zzz.jpg": np.array([[0, 0, 49, 49, 0.99]])}  # not in the gt: unused
    res = evaluate_wider(pred, gt, keep)
    assert res["hard"] == pytest.approx(0.2 + 0.2 * 2 / 3 + 0.2 * 0.6, abs=1e-3)
    assert res["n_faces"] == {"easy": 3, "medium": 5, "hard": 5} and res["n_images_with_predictions"] == 3
    # medium: 5 faces, hits p1 p2 q1 -> (.2,1) (.4,1) (.4,2/3) (.6,.75) (.6,.6): AP = .2+.2+.2*.75 = 0.55
    assert res["medium"] == pytest.approx(0.55, abs=1e-3)
    # easy: 3 faces, q1 found: (1/3, 1) (1/3, .5): AP = 1/3
    assert res["easy"] == pytest.approx(1 / 3, abs=1e-3)


def test_plus_one_pixel_convention():
    # overlaps() takes x1 y1 x2 y2. The gt (x, y, w, h) = (0, 0, 9, 9) is x2 = 9: 10x10 px with +1.
    gt_box = np.array([[0.0, 0.0, 9.0, 9.0]])
    # w = 4 (x2 = 4): +1 gives 5x10 inside 10x10, IoU 50/100 = 0.5 >= 0.5 (without +1: 36/81 = 0.44, a miss).
    assert overlaps(np.array([[0.0, 0, 4, 9]]), gt_box)[0, 0] == pytest.approx(0.5)
    # w = 3: 4x10 / 100 = 0.4, a miss. x 9..18 shares the pixel column x = 9: 10 / (100 + 100 - 10).
    assert overlaps(np.array([[0.0, 0, 3, 9]]), gt_box)[0, 0] == pytest.approx(0.4)
    assert overlaps(np.array([[9.0, 0, 18, 9]]), gt_box)[0, 0] == pytest.approx(10 / 190)
    assert overlaps(np.array([[10.0, 0, 19, 9]]), gt_box)[0, 0] == 0.0
    gt = [wider_image("e/x.jpg", [[0, 0, 9, 9]])]
    keep = {s: {"e/x.jpg": np.array([0])} for s in ("easy", "medium", "hard")}
    assert evaluate_wider({"e/x": np.array([[0, 0, 4, 9, 0.5]])}, gt, keep)["hard"] == pytest.approx(1.0)
    assert evaluate_wider({"e/x": np.array([[0, 0, 3, 9, 0.5]])}, gt, keep)["hard"] == 0.0


def test_score_normalisation():
    gt = [wider_image("e/x.jpg", [[0, 0, 99, 99]])]
    keep = {s: {"e/x.jpg": np.array([0])} for s in ("easy", "medium", "hard")}
    # Hit at 0.9995, false positive at 0.9992: raw, both pass the first threshold (0.999) together,
    # (recall 1, precision .5), AP .5. Normalised over the set they become 1.0 and 0.0: the hit alone
    # first (1, 1): AP 1.
    pred = {"e/x.jpg": np.array([[300, 300, 50, 50, 0.9992], [0, 0, 99, 99, 0.9995]])}
    assert evaluate_wider(pred, gt, keep)["hard"] == pytest.approx(1.0)
    # Logits outside [0, 1]: the same ordering, the same AP.
    pred = {"e/x.jpg": np.array([[300, 300, 50, 50, -3.0], [0, 0, 99, 99, 7.0]])}
    assert evaluate_wider(pred, gt, keep)["hard"] == pytest.approx(1.0)
    # Affine changes of every score leave the hand-made case unchanged.
    shifted = {k: np.c_[v[:, :4], v[:, 4] * 40 - 7] for k, v in PRED.items()}
    assert evaluate_wider(shifted, GT, KEEP)["hard"] == pytest.approx(evaluate_wider(PRED, GT, KEEP)["hard"])


def test_derived_subsets():
    # Heights 9 / 10 / 29 / 30 / 49 / 50, then an invalid 60 and a zero-width 60.
    boxes = [[0, 0, 9, 9], [20, 0, 10, 10], [40, 0, 29, 29], [80, 0, 30, 30], [120, 0, 49, 49],
             [180, 0, 50, 50], [240, 0, 60, 60], [320, 0, 0, 60]]
    attrs = np.zeros((8, 6), np.int32)
    attrs[6, 3] = 1
    gt = [wider_image("e/x.jpg", boxes, attrs)]
    keep = derive_subsets(gt)
    assert keep["hard"]["e/x.jpg"].tolist() == [1, 2, 3, 4, 5]
    assert keep["medium"]["e/x.jpg"].tolist() == [3, 4, 5]
    assert keep["easy"]["e/x.jpg"].tolist() == [5]
    # Finding only the 50 px face: easy 1/1, medium 1/3, hard 1/5 of recall at precision 1.
    res = evaluate_wider({"e/x.jpg": np.array([[180, 0, 50, 50, 0.9]])}, gt)
    assert res["subsets"] == DERIVED_RULE and "easy>=50px, medium>=30px, hard>=10px" in res["subsets"]
    assert (res["easy"], res["medium"], res["hard"]) == pytest.approx((1.0, 1 / 3, 1 / 5))
    assert res["n_faces"] == {"easy": 1, "medium": 3, "hard": 5}
    # A detection on the invalid face is ignored, not a false positive: still 1.0 on easy.
    res = evaluate_wider({"e/x.jpg": np.array([[180, 0, 50, 50, 0.9], [240, 0, 60, 60, 0.95]])}, gt)
    assert res["easy"] == pytest.approx(1.0)


def _reference(preds: dict, gt: list, keep: dict, thresh_num: int = 1000) -> float:
    """evaluation.m written out one prediction and one threshold at a time (no vectorising)."""
    scores = [v[:, 4] for v in preds.values() if len(v)]
    lo, hi = min(s.min() for s in scores), max(s.max() for s in scores)
    pr = np.zeros((thresh_num, 2))
    count_face = 0
    for im in gt:
        p, k = preds.get(im.name), keep[im.name]
        count_face += len(k)
        if len(im.boxes) == 0 or p is None or len(p) == 0:
            continue
        p = p.copy()
        p[:, 4] = (p[:, 4] - lo) / (hi - lo)
        p = p[np.argsort(-p[:, 4], kind="stable")]
        g = im.boxes.astype(float)
        ignore = np.zeros(len(g))
        ignore[k] = 1
        recall, proposal, pred_recall = np.zeros(len(g)), np.ones(len(p)), np.zeros(len(p))
        for h in range(len(p)):
            bx1, by1, bx2, by2 = p[h, 0], p[h, 1], p[h, 0] + p[h, 2], p[h, 1] + p[h, 3]
            ov = []
            for gx, gy, gw, gh in g:
                iw = min(gx + gw, bx2) - max(gx, bx1) + 1
                ih = min(gy + gh, by2) - max(gy, by1) + 1
                inter = iw * ih
                union = (gw + 1) * (gh + 1) + (bx2 - bx1 + 1) * (by2 - by1 + 1) - inter
                ov.append(inter / union if iw > 0 and ih > 0 else 0.0)
            m = int(np.argmax(ov))
            if ov[m] >= 0.5:
                if ignore[m] == 0:
                    recall[m], proposal[h] = -1, -1
                elif recall[m] == 0:
                    recall[m] = 1
            pred_recall[h] = np.sum(recall == 1)
        for t in range(thresh_num):
            above = np.flatnonzero(p[:, 4] >= 1 - (t + 1) / thresh_num)
            if above.size:
                r = above[-1]
                pr[t] += [np.sum(proposal[:r + 1] == 1), pred_recall[r]]
    prec = np.array([a / b if b else 0.0 for b, a in pr])
    rec = pr[:, 1] / count_face
    mrec, mpre = np.r_[0, rec, 1], np.r_[0, prec, 0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])


@pytest.mark.parametrize("seed", range(4))
def test_matches_the_loop_as_written(seed):
    rng = np.random.default_rng(seed)
    gt, preds, keep = [], {}, {s: {} for s in ("easy", "medium", "hard")}
    for i in range(5):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(4, 80, (n, 2))
        boxes = np.round(np.c_[xy, wh])
        gt.append(wider_image(f"ev{i % 2}/img{i}.jpg", boxes))
        # jittered copies (some twice: duplicates), plus clutter; scores with ties
        src = boxes[rng.integers(0, n, int(rng.integers(0, 2 * n + 1)))] if n else np.zeros((0, 4))
        jit = src + rng.normal(0, 4, src.shape) * [1, 1, 0.5, 0.5]
        jit[:, 2:] = np.maximum(jit[:, 2:], 1)
        junk = np.c_[rng.uniform(0, 300, (2, 2)), rng.uniform(5, 60, (2, 2))]
        det = np.r_[jit, junk]
        if i != 3:  # image 3 has no prediction file
            preds[f"ev{i % 2}/img{i}.jpg"] = np.c_[det, np.round(rng.uniform(0, 1, len(det)), 1)]
        for s, frac in (("easy", 0.3), ("medium", 0.6), ("hard", 0.9)):
            keep[s][gt[-1].name] = np.flatnonzero(rng.uniform(size=n) < frac)
    res = evaluate_wider(preds, gt, keep)
    for s in ("easy", "medium", "hard"):
        assert res[s] == pytest.approx(_reference(preds, gt, keep[s]), abs=1e-9)


# ============================================================================ prediction files
def test_prediction_files_round_trip(tmp_path):
    dets = {"0--Parade/0_Parade_a_1.jpg": np.array([[1.5, 2, 30, 40, 0.987654321], [0, 0, 5, 5, 1e-5]]),
            "1--Handshaking/1_Hand_c_3": np.zeros((0, 5))}
    out = tmp_path / "pred"
    write_predictions(out, dets)
    assert (out / "0--Parade" / "0_Parade_a_1.txt").read_text().splitlines()[:2] == ["0_Parade_a_1", "2"]
    assert (out / "1--Handshaking" / "1_Hand_c_3.txt").read_text() == "1_Hand_c_3\n0\n"
    back = read_predictions(out)
    assert sorted(back) == ["0--Parade/0_Parade_a_1", "1--Handshaking/1_Hand_c_3"]
    np.testing.assert_array_equal(back["0--Parade/0_Parade_a_1"], dets["0--Parade/0_Parade_a_1.jpg"])
    assert back["1--Handshaking/1_Hand_c_3"].shape == (0, 5)
    # Written by other tools: CRLF, trailing blank lines, image name with its extension on line 1.
    (out / "0--Parade" / "x.txt").write_bytes(b"0--Parade/x.jpg\r\n1\r\n1 2 3 4 0.5 \r\n\r\n")
    np.testing.assert_array_equal(read_predictions(out)["0--Parade/x"], [[1, 2, 3, 4, 0.5]])
    with pytest.raises(HwnasError, match="would both go to"):
        write_predictions(out, {"e/a.jpg": np.zeros((0, 5)), "e/a.png": np.zeros((0, 5))})
    with pytest.raises(HwnasError, match=r"shape \[2, 4\]"):
        write_predictions(out, {"e/a.jpg": np.zeros((2, 4))})


@pytest.mark.parametrize("text, words", [
    ("x\n", "1 line(s)"),
    ("x\ntwo\n", "line 2: box count 'two'"),
    ("x\n2\n1 2 3 4 0.5\n", "line 4: the file ends after 1 of the 2 boxes"),
    ("x\n1\n1 2 3 4 0.5\n1 2 3 4 0.5\n", "line 4: more box lines than the 1"),
    ("x\n1\n1 2 3 4\n", "line 3: expected five numbers"),
    ("x\n1\n1 2 3 four 0.5\n", "line 3: expected five numbers"),
    ("x\n1\n1 2 3 nan 0.5\n", "line 3: expected five numbers"),
    ("x\n1\n10 10 5 -2 0.5\n", "line 3: negative width or height"),
])
def test_malformed_prediction_files(tmp_path, text, words):
    (tmp_path / "p" / "ev").mkdir(parents=True)
    path = tmp_path / "p" / "ev" / "x.txt"
    path.write_text(text)
    with pytest.raises(HwnasError) as e:
        read_predictions(tmp_path / "p")
    msg = _one_line(e)
    assert str(path) in msg and words in msg


def test_prediction_folder_errors(tmp_path):
    with pytest.raises(HwnasError, match="does not exist"):
        read_predictions(tmp_path / "nope")
    (tmp_path / "empty" / "ev").mkdir(parents=True)
    (tmp_path / "empty" / "top.txt").write_text("x\n0\n")  # not inside an event folder
    with pytest.raises(HwnasError, match="holds no prediction files"):
        read_predictions(tmp_path / "empty")
    with pytest.raises(HwnasError, match="none of the 1 predicted images is in the gt"):
        evaluate_wider({"other/x.jpg": np.zeros((0, 5))}, GT, KEEP)
    with pytest.raises(HwnasError, match="NaN"):
        evaluate_wider({"e1--One/a.jpg": np.array([[0, 0, 1, 1, np.nan]])}, GT, KEEP)
    with pytest.raises(HwnasError, match="the hard keep-list has no entry for image e2--Two/b.jpg"):
        evaluate_wider(PRED, GT, {**KEEP, "hard": {"e1--One/a.jpg": np.array([0])}})


# ============================================================================ official .mat files
def _cell(items: list) -> np.ndarray:
    """A MATLAB column cell array (object array, so equal-shaped items are not stacked)."""
    out = np.empty((len(items), 1), dtype=object)
    for i, v in enumerate(items):
        out[i, 0] = v
    return out


def _save_official(folder: Path, gt: list, keep: dict, with_names: bool = True) -> None:
    """wider_face_val.mat and wider_{easy,medium,hard}_val.mat in the structure of the official ones:
    cells per event of cells per image; file names without extension; gt_list 1-based columns."""
    events = list(dict.fromkeys(im.event for im in gt))
    per = [[im for im in gt if im.event == e] for e in events]
    names = {"event_list": _cell(events),
             "file_list": _cell([_cell([im.name.split("/")[1][:-4] for im in ims]) for ims in per])}
    labels = {f"{a}_label_list": _cell([_cell([im.attrs[:, k:k + 1].astype(float) for im in ims]) for ims in per])
              for k, a in enumerate(("blur", "expression", "illumination", "invalid", "occlusion", "pose"))}
    sio.savemat(folder / "wider_face_val.mat", {
        **names, **labels, "face_bbx_list": _cell([_cell([im.boxes.astype(float) for im in ims]) for ims in per])})
    for s, lists in keep.items():
        gt_list = _cell([_cell([(np.asarray(lists[im.name]) + 1).astype(float).reshape(-1, 1) for im in ims])
                         for ims in per])
        sio.savemat(folder / f"wider_{s}_val.mat", {**(names if with_names else {}), "gt_list": gt_list})


def test_official_keep_lists_from_mat_files(tmp_path):
    folder = tmp_path / "ground_truth"
    folder.mkdir()
    # Image 2 of event e1 has no face: its keep-lists are empty.
    gt = [GT[0], wider_image("e1--One/z.jpg", []), GT[1]]
    keep = {s: {**d, "e1--One/z.jpg": np.array([], np.int64)} for s, d in KEEP.items()}
    write_wider_gt(folder / "wider_face_val_bbx_gt.txt", gt)
    _save_official(folder, gt, keep)
    # Read back the way the official tools index them.
    m = sio.loadmat(folder / "wider_hard_val.mat")
    assert m["event_list"][1][0][0] == "e2--Two" and m["file_list"][0][0][1][0][0] == "z"
    assert m["gt_list"][0][0][0][0].ravel().tolist() == [1, 2] and m["gt_list"][0][0][1][0].size == 0
    v = sio.loadmat(folder / "wider_face_val.mat")
    np.testing.assert_array_equal(v["face_bbx_list"][1][0][0][0], [[0, 0, 49, 49], [100, 100, 49, 49]])

    loaded, lists = load_gt(folder / "wider_face_val_bbx_gt.txt")
    assert [im.name for im in loaded] == [im.name for im in gt]
    for s in keep:
        assert {n: v.tolist() for n, v in lists[s].items()} == {n: v.tolist() for n, v in keep[s].items()}
    res = evaluate_wider(PRED, loaded, lists)
    assert res["subsets"] == OFFICIAL_RULE
    assert (res["easy"], res["medium"], res["hard"]) == pytest.approx((0.5, 0.6875, 0.566667), abs=1e-3)
    # The gt from wider_face_val.mat itself: the same images and faces, the same result.
    from_mat, lists2 = load_gt(folder / "wider_face_val.mat")
    assert [im.name for im in from_mat] == [im.name for im in gt]
    for a, b in zip(from_mat, gt):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    assert evaluate_wider(PRED, from_mat, lists2)["hard"] == pytest.approx(res["hard"])
    # End to end through prediction files.
    write_predictions(tmp_path / "pred", PRED)
    assert evaluate_dir(tmp_path / "pred", folder / "wider_face_val_bbx_gt.txt")["medium"] == pytest.approx(0.6875)
    # Keep-lists without their own names fall back to wider_face_val.mat's.
    _save_official(folder, gt, keep, with_names=False)
    assert load_gt(folder / "wider_face_val_bbx_gt.txt")[1]["easy"]["e1--One/a.jpg"].tolist() == [1]
    # The dataset layout: gt in wider_face_split/, keep-lists where eval_tools.zip unpacks beside it.
    split, tools = tmp_path / "root" / "wider_face_split", tmp_path / "root" / "eval_tools" / "ground_truth"
    split.mkdir(parents=True)
    tools.mkdir(parents=True)
    write_wider_gt(split / "wider_face_val_bbx_gt.txt", gt)
    _save_official(tools, gt, keep)
    assert load_gt(split / "wider_face_val_bbx_gt.txt")[1]["medium"]["e1--One/a.jpg"].tolist() == [0, 1, 2]
    write_wider_gt(split / "wider_face_train_bbx_gt.txt", gt[:1])  # val keep-lists never apply to train
    assert load_gt(split / "wider_face_train_bbx_gt.txt")[1] is None


def test_keep_list_errors(tmp_path):
    folder = tmp_path / "gt"
    folder.mkdir()
    txt = folder / "wider_face_val_bbx_gt.txt"
    write_wider_gt(txt, GT)
    assert load_gt(txt)[1] is None  # no keep-lists: derived
    _save_official(folder, GT, KEEP)
    (folder / "wider_medium_val.mat").unlink()
    with pytest.raises(HwnasError) as e:
        load_gt(txt)
    assert "but not wider_medium_val.mat" in _one_line(e)
    # Keep-lists of other images.
    other = [wider_image("e1--One/a.jpg", GT[0].boxes), wider_image("e7--Else/q.jpg", [[1, 1, 5, 5]])]
    _save_official(folder, other, {s: {"e1--One/a.jpg": np.array([0]), "e7--Else/q.jpg": np.array([0])}
                                   for s in KEEP})
    with pytest.raises(HwnasError, match="no keep-list for gt image e2--Two/b.jpg"):
        load_gt(txt)
    # A face index past the image's faces.
    _save_official(folder, GT, {s: {"e1--One/a.jpg": np.array([5]), "e2--Two/b.jpg": np.array([0])} for s in KEEP})
    with pytest.raises(HwnasError, match="names face 6 but the gt has 3"):
        load_gt(txt)
    (folder / "wider_easy_val.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(HwnasError) as e:
        load_gt(txt)
    assert "wider_easy_val.mat" in _one_line(e)
    with pytest.raises(HwnasError, match="does not exist"):
        load_gt(folder / "absent.txt")
