"""Data files that used to give silent wrong answers or reach outside their folder, each refused in
one ``error:`` line by the real command (``hwnas.cli.app.main``), plus the image reader on real files.

Families: names read from data files (COCO ``file_name``, WIDER gt names, WIDER prediction
folders) never leave their folder; duplicate COCO annotation ids, negative WIDER sizes and WIDER
faces outside their image are refused; 16-bit PNGs read without clipping; images over the pixel
limit, truncated images and unreadable pixel modes end in one line naming the file and the fix.
Every input is a real file on disk, built from ``hwnas data synth`` output or written byte by byte.
"""
from __future__ import annotations

import functools
import json
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_checks import Seen, assert_one_error, fill
from hwnas.spec.arch import Arch
from hwnas.cli.app import main
from hwnas.data.synth import synth
from hwnas.errors import HwnasError
from hwnas.models import Detector
from hwnas.train.checkpoint import save_checkpoint

TINY = "i64/basic_c8_1-2-2/fpn_p3-4_c16/retina_d1_c16/bn"
SHAPES = ["circle", "rectangle", "triangle"]
# a WIDER gt that parses: one image with two faces, one without (64 x 64 images)
GOOD = ["0--Parade/0_Parade_a_1.jpg", "2", "10 10 20 24 0 0 0 0 0 0", "30 5 16 16 0 0 0 0 0 0",
        "1--Handshaking/1_Hand_b_2.jpg", "0", "0 0 0 0 0 0 0 0 0 0"]
SIDE = 64
PIL_BOMB = 2 * Image.MAX_IMAGE_PIXELS  # PIL refuses outright beyond this (with its default setting)


# ----------------------------------------------------------------------------- files byte by byte
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: Path, arr: np.ndarray, bits: int) -> Path:
    """A PNG of ``arr`` ([H, W] grey or [H, W, 3] RGB) at 8 or 16 bits per sample, written by hand:
    PIL cannot write 16-bit RGB, and writing both depths the same way keeps the comparison fair."""
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    samples = arr.astype(">u2" if bits == 16 else "u1").reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in samples)  # filter type 0 on every row
    head = struct.pack(">IIBBBBB", w, h, bits, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", head) + _chunk(b"IDAT", zlib.compress(raw))
                     + _chunk(b"IEND", b""))
    return path


def write_wide_png(path: Path, width: int) -> Path:
    """A 1 x ``width`` black greyscale PNG: a huge pixel count in a small file."""
    path.write_bytes(_wide_png(width))
    return path


@functools.lru_cache(maxsize=None)
def _wide_png(width: int) -> bytes:
    # the rows compress to almost nothing; streamed so the raw row never sits in memory whole
    comp, parts, left = zlib.compressobj(9), [], width + 1  # + the row's filter byte
    block = bytes(1 << 20)
    while left:
        n = min(left, len(block))
        parts.append(comp.compress(block[:n]))
        left -= n
    parts.append(comp.flush())
    head = struct.pack(">IIBBBBB", width, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", head) + _chunk(b"IDAT", b"".join(parts))
            + _chunk(b"IEND", b""))


def gradient16() -> np.ndarray:
    """[64, 64] uint16 running through the whole 0..65535 range."""
    return np.linspace(0, 65535, SIDE * SIDE).round().astype(np.uint16).reshape(SIDE, SIDE)


def to8(a16: np.ndarray) -> np.ndarray:
    """The 8-bit counterpart of 16-bit samples: 65535 -> 255, rounded."""
    return np.round(a16.astype(np.float64) / 257.0).astype(np.uint8)


# ----------------------------------------------------------------------------- datasets
def _coco_variant(d: Path, src: Path, name: str, edit) -> Path:
    """A copy of the generated dataset ``src`` with ``edit(folder, split, doc)`` applied to both
    splits (train and eval read either)."""
    v = d / name
    shutil.copytree(src, v)
    for split in ("train", "val"):
        doc = json.loads((v / f"{split}.json").read_text())
        edit(v, split, doc)
        (v / f"{split}.json").write_text(json.dumps(doc))
    return v


def _wider_root(d: Path, name: str, gt: list[str]) -> Path:
    """A WIDER FACE root holding ``gt`` for both splits and a 64 x 64 image for every name in it,
    written where the name leads (also where a name leads out of the image folder)."""
    root = d / name
    (root / "wider_face_split").mkdir(parents=True)
    for split in ("train", "val"):
        (root / "wider_face_split" / f"wider_face_{split}_bbx_gt.txt").write_text("\n".join(gt) + "\n")
        images = root / f"WIDER_{split}" / "images"
        for k, line in enumerate(ln for ln in gt if "/" in ln):
            first = line.split("/")[0]
            if first not in ("..", "."):
                (images / first).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (SIDE, SIDE), (40 * k, 120, 200)).save(images / line)
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Every input, built once (nothing here is trained)."""
    w = tmp_path_factory.mktemp("bad-data")
    synth("shapes", 2, 2, SIDE, 0, w / "data")
    torch.manual_seed(0)
    arch = Arch.parse(TINY)
    save_checkpoint(w / "ck.pt", model=Detector.from_arch(arch, 3), arch=arch, class_names=SHAPES, epoch=0)
    save_checkpoint(w / "face.pt", model=Detector.from_arch(arch, 1), arch=arch, class_names=["face"], epoch=0)
    src, coco = w / "data", w / "coco"
    coco.mkdir()

    # --- names that leave the image folder: the image they name exists, so only the rule stops them
    outside = w / "outside.jpg"
    shutil.copyfile(src / "images" / "val_000000.jpg", outside)

    def absolute(v, split, doc):
        doc["images"][0]["file_name"] = str(outside)

    def dotdot(v, split, doc):
        shutil.copyfile(outside, v / "outside.jpg")
        doc["images"][0]["file_name"] = "../outside.jpg"

    def hidden_dotdot(v, split, doc):  # a/../../x: the way out hides behind a real folder name
        (v / "images" / "sub").mkdir(exist_ok=True)
        shutil.copyfile(outside, v / "outside.jpg")
        doc["images"][0]["file_name"] = "sub/../../outside.jpg"

    def backslash(v, split, doc):  # a real file of that name: on POSIX a backslash is an ordinary byte
        old = doc["images"][0]["file_name"]
        shutil.copyfile(v / "images" / old, v / "images" / f"sub\\{old}")
        doc["images"][0]["file_name"] = f"sub\\{old}"

    def dup_ann(v, split, doc):  # the first annotation twice, same id: pycocotools keeps one of them
        doc["annotations"].append(dict(doc["annotations"][0]))

    def truncated(v, split, doc):
        p = v / "images" / doc["images"][0]["file_name"]
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * 0.6)])

    def bomb(v, split, doc):  # a real PNG past PIL's own hard limit; the json still says 64 x 64
        name = doc["images"][0]["file_name"].replace(".jpg", ".png")
        write_wide_png(v / "images" / name, PIL_BOMB + 1)
        doc["images"][0]["file_name"] = name

    def png16(v, split, doc):
        """Image 0 as 16-bit grey (its 8-bit luminance * 257), image 1 as 16-bit RGB (its pixels *
        257 plus low bits a truncating reader would drop)."""
        for k, grey in ((0, True), (1, False)):
            old = doc["images"][k]["file_name"]
            rgb = np.asarray(Image.open(v / "images" / old).convert("RGB"))
            pix = np.asarray(Image.fromarray(rgb).convert("L")) if grey else rgb
            a16 = pix.astype(np.uint16) * 257 + np.uint16(100)
            a16[pix == 255] = 65535
            name = old.replace(".jpg", ".png")
            write_png(v / "images" / name, a16, 16)
            (v / "images" / old).unlink()
            doc["images"][k]["file_name"] = name

    for name, edit in (("absolute", absolute), ("dotdot", dotdot), ("hidden_dotdot", hidden_dotdot),
                       ("backslash", backslash), ("dupann", dup_ann), ("truncated", truncated), ("bomb", bomb),
                       ("png16", png16)):
        _coco_variant(coco, src, name, edit)

    # --- WIDER FACE roots and gt files
    wd = w / "wider"
    wd.mkdir()
    _wider_root(wd, "escape", GOOD + ["../escaped.jpg", "1", "10 10 20 24 0 0 0 0 0 0"])
    _wider_root(wd, "deep", GOOD + ["e/../../escaped.jpg", "1", "10 10 20 24 0 0 0 0 0 0"])
    _wider_root(wd, "negwidth", GOOD[:3] + ["30 5 -16 16 0 0 0 0 0 0"] + GOOD[4:])
    _wider_root(wd, "outside", GOOD[:3] + ["50 5 30 16 0 0 0 0 0 0"] + GOOD[4:])  # right edge at 80 of 64
    big = _wider_root(wd, "bomb", GOOD)
    for split in ("train", "val"):  # a JPEG name holding a PNG: PIL goes by content, as for real files
        write_wide_png(big / f"WIDER_{split}" / "images" / GOOD[4], PIL_BOMB + 1)
    gt = wd / "gt"
    gt.mkdir()
    (gt / "good.txt").write_text("\n".join(GOOD) + "\n")
    (gt / "escape.txt").write_text("\n".join(GOOD + ["../escaped.jpg", "1", "10 10 20 24 0 0 0 0 0 0"]) + "\n")
    (gt / "negwidth.txt").write_text("\n".join(GOOD[:3] + ["30 5 -16 16 0 0 0 0 0 0"] + GOOD[4:]) + "\n")
    pred = wd / "pred"
    (pred / "0--Parade").mkdir(parents=True)
    (pred / "0--Parade" / "0_Parade_a_1.txt").write_text("0_Parade_a_1\n1\n10 10 20 24 0.9\n")
    # a prediction folder whose event folder is a link to files elsewhere
    (wd / "elsewhere").mkdir()
    (wd / "elsewhere" / "0_Parade_a_1.txt").write_text("0_Parade_a_1\n1\n10 10 20 24 0.9\n")
    (wd / "pred_link").mkdir()
    (wd / "pred_link" / "0--Parade").symlink_to(wd / "elsewhere")
    return {"root": w}


# ----------------------------------------------------------------------------- the commands
def _train(data: str) -> list[str]:
    # one short epoch: before the fixes these commands ran to the end instead of refusing
    return ["train", "--arch", TINY, "--data", data, "--epochs", "1", "--batch-size", "2", "--out", "{o}/run"]


def _eval(data: str) -> list[str]:
    return ["eval", "--weights", "{w}/ck.pt", "--data", data, "--out", "{o}/m.json"]


def _wider_eval(data: str) -> list[str]:
    return ["eval", "--protocol", "wider", "--weights", "{w}/face.pt", "--data", data, "--out", "{o}/m.json"]


def _wider_files(gt: str, pred: str = "pred") -> list[str]:
    return ["eval", "--protocol", "wider", "--predictions", f"{{w}}/wider/{pred}", "--gt", f"{{w}}/wider/gt/{gt}",
            "--out", "{o}/m.json"]


# name: (argv, what the one error line must say)
BAD: dict[str, tuple[list[str], str]] = {
    # names that leave their folder
    "coco file_name absolute (eval)": (_eval("{w}/coco/absolute"), "is absolute"),
    "coco file_name absolute (train)": (_train("{w}/coco/absolute"), "is absolute"),
    "coco file_name with .. (eval)": (_eval("{w}/coco/dotdot"), "has a '..' component"),
    "coco file_name a/../../x (train)": (_train("{w}/coco/hidden_dotdot"), "has a '..' component"),
    "coco file_name with a backslash": (_eval("{w}/coco/backslash"), "holds a backslash"),
    "wider gt ../escaped.jpg (eval writes predictions)": (_wider_eval("{w}/wider/escape"), "has a '..' component"),
    "wider gt ../escaped.jpg (train)": (_train("{w}/wider/escape"), "has a '..' component"),
    "wider gt e/../../escaped.jpg (train)": (_train("{w}/wider/deep"), "has a '..' component"),
    "wider gt ../escaped.jpg (prediction files)": (_wider_files("escape.txt"), "has a '..' component"),
    "wider prediction folder links outside": (_wider_files("good.txt", "pred_link"),
                                              "leads outside the prediction folder"),
    # silent wrong answers
    "coco duplicate annotation id": (_eval("{w}/coco/dupann"), "annotation id 1 appears twice"),
    "wider negative width (train)": (_train("{w}/wider/negwidth"), "negative width or height"),
    "wider negative width (eval)": (_wider_eval("{w}/wider/negwidth"), "negative width or height"),
    "wider negative width (prediction files)": (_wider_files("negwidth.txt"), "negative width or height"),
    "wider face outside the image (train)": (_train("{w}/wider/outside"), "lies outside the 64x64 image"),
    "wider face outside the image (eval)": (_wider_eval("{w}/wider/outside"), "lies outside the 64x64 image"),
    # image files
    "image over the pixel limit (coco eval)": (_eval("{w}/coco/bomb"), "over the limit of"),
    "image over the pixel limit (wider train)": (_train("{w}/wider/bomb"), "over the limit of"),
    "truncated jpeg (coco eval)": (_eval("{w}/coco/truncated"), "truncated or corrupt"),
}
# what else the same line must say: the fix
FIX = {"coco file_name": "inside the image folder", "wider gt": "inside the image folder",
       "wider prediction folder": "copy the files into", "coco duplicate": "give each annotation its own id",
       "wider negative": "x1 y1 w h", "wider face outside": "on_error='skip'",
       "image over the pixel limit": "downscale", "truncated jpeg": "replace the file"}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_data_is_refused(name: str, world: dict, tmp_path: Path, capfd) -> None:
    argv, expect = BAD[name]
    w = world["root"]
    before = sorted(w.parent.rglob("escaped*"))
    seen = Seen(capfd)
    assert_one_error(seen, fill(argv, {"{w}": str(w), "{o}": str(tmp_path / "out")}), expect, w, tmp_path / "out")
    fix = next(v for k, v in FIX.items() if name.startswith(k))
    assert fix in seen.err, seen.err  # the same one line says what to do
    # nothing written beside the data or the output either (where an escaping name would lead)
    assert sorted(w.parent.rglob("escaped*")) == before
    assert not list(tmp_path.rglob("*.txt"))


# ----------------------------------------------------------------------------- the image reader
def test_16bit_png_reads_like_its_8bit_counterpart(tmp_path) -> None:
    from hwnas.data.images import read_rgb

    a16 = gradient16()
    grey16 = write_png(tmp_path / "g16.png", a16, 16)
    grey8 = write_png(tmp_path / "g8.png", to8(a16), 8)
    with Image.open(grey16) as im:
        assert im.mode == "I;16"  # really a 16-bit file, the case that clipped
    a, b = read_rgb(grey16), read_rgb(grey8)
    assert a.dtype == np.uint8 and a.shape == (SIDE, SIDE, 3)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert a.min() == 0 and a.max() == 255 and len(np.unique(a)) > 200  # the whole range, not clipped
    rgb16 = np.stack([a16, a16[::-1], 65535 - a16], -1)
    c = read_rgb(write_png(tmp_path / "c16.png", rgb16, 16))
    d = read_rgb(write_png(tmp_path / "c8.png", to8(rgb16), 8))
    assert np.abs(c.astype(int) - d.astype(int)).max() <= 1


def test_pixel_modes(tmp_path) -> None:
    """Every mode a detection image arrives in reads as the RGB a viewer shows (alpha dropped)."""
    from hwnas.data.images import read_rgb

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (16, 24), dtype=np.uint8)
    im = Image.fromarray(rgb)
    im.putalpha(128)
    im.save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgba.png"), rgb)
    la = Image.fromarray(grey).convert("LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "la.png"), np.repeat(grey[..., None], 3, -1))
    Image.fromarray(grey).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "l.png"), np.repeat(grey[..., None], 3, -1))
    pal = Image.fromarray(rgb).quantize(16)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))
    Image.fromarray(grey > 127).save(tmp_path / "bw.png")
    assert set(np.unique(read_rgb(tmp_path / "bw.png")).tolist()) <= {0, 255}
    # float: 0..1 is black..white
    f = rng.uniform(0, 1, (16, 24)).astype(np.float32)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    got = read_rgb(tmp_path / "f.tif")
    assert np.abs(got[..., 0].astype(int) - np.round(f * 255).astype(int)).max() <= 1
    # a CMYK JPEG (print files): close to the RGB it was made from
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=98)
    with Image.open(tmp_path / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
    assert np.abs(read_rgb(tmp_path / "cmyk.jpg").astype(int) - rgb.astype(int)).mean() < 12


def test_out_of_range_pixels_are_refused(tmp_path) -> None:
    """Float pixels outside 0..1 and 32-bit integers past 16 bits have no one meaning: one line."""
    from hwnas.data.images import read_rgb

    Image.fromarray(np.full((4, 4), 3.5, np.float32), mode="F").save(tmp_path / "hdr.tif")
    with pytest.raises(HwnasError, match=r"hdr\.tif.*outside 0\.\.1.*save it as an 8-bit or 16-bit"):
        read_rgb(tmp_path / "hdr.tif")
    Image.fromarray(np.full((4, 4), 1 << 20, np.int32), mode="I").save(tmp_path / "i32.tif")
    with pytest.raises(HwnasError, match=r"i32\.tif.*outside 0\.\.65535"):
        read_rgb(tmp_path / "i32.tif")
    Image.fromarray(np.full((4, 4), 40000, np.int32), mode="I").save(tmp_path / "i16.tif")
    assert read_rgb(tmp_path / "i16.tif").max() == round(40000 / 257)  # 32-bit holding 16-bit values


def test_exif_orientation_is_not_applied(tmp_path) -> None:
    """Boxes refer to the stored pixel grid: a JPEG tagged 'rotate 90' reads as stored."""
    from hwnas.data.images import image_size, read_rgb

    im = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert read_rgb(tmp_path / "rot.jpg").shape == (20, 40, 3)
    assert image_size(tmp_path / "rot.jpg") == (20, 40)


def test_pixel_limit(tmp_path) -> None:
    """Past MAX_IMAGE_PIXELS, inside PIL's warning band and past PIL's own hard limit alike: one
    line naming the file, its pixels, the limit and the fix, and no PIL warning on the way."""
    from hwnas.data.images import MAX_IMAGE_PIXELS, image_size, read_rgb

    for width in (MAX_IMAGE_PIXELS + 1, PIL_BOMB + 1):
        path = write_wide_png(tmp_path / f"wide{width}.png", width)
        for fn in (read_rgb, image_size):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a DecompressionBombWarning would fail here
                with pytest.raises(HwnasError) as e:
                    fn(path)
            msg = str(e.value)
            assert "\n" not in msg and str(path) in msg and f"{width} pixels" in msg, msg
            assert f"over the limit of {MAX_IMAGE_PIXELS}" in msg and "downscale" in msg, msg


def test_unreadable_files_are_one_line(tmp_path) -> None:
    from hwnas.data.images import read_rgb

    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "a.jpg")
    raw = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.jpg").write_text("not an image\n")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("cut.jpg", "text.jpg", "empty.png"):
        with pytest.raises(HwnasError) as e:
            read_rgb(tmp_path / name, "image id 7 of x.json")
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"cannot read image {tmp_path / name} (image id 7 of x.json)"), msg
        assert "replace the file" in msg, msg
    with pytest.raises(HwnasError, match="does not exist"):
        read_rgb(tmp_path / "gone.jpg")


# ----------------------------------------------------------------------------- through the loaders
def test_16bit_pngs_train_and_evaluate_unclipped(world, tmp_path, capfd) -> None:
    from hwnas.data.coco import CocoDetection

    v = world["root"] / "coco" / "png16"
    src = world["root"] / "data"
    ds = CocoDetection.from_dir(v, "val")
    doc = json.loads((src / "val.json").read_text())
    for k, grey in ((0, True), (1, False)):
        orig = Image.open(src / "images" / doc["images"][k]["file_name"]).convert("RGB")
        want = np.asarray(orig.convert("L").convert("RGB") if grey else orig).astype(int)
        got = (ds.load_image(k).permute(1, 2, 0).numpy() * 255).round().astype(int)
        assert np.abs(got - want).max() <= 1  # clipped, the 16-bit image would be nearly all white
    assert main(fill(_eval(str(v)), {"{w}": str(world["root"]), "{o}": str(tmp_path)})) == 0
    assert json.loads((tmp_path / "m.json").read_text())["n_images"] == 2
    assert main(fill(_train(str(v)), {"{o}": str(tmp_path)})) == 0
    capfd.readouterr()


def test_duplicate_annotation_ids_name_both_positions(world) -> None:
    from hwnas.data.coco import CocoDetection

    v = world["root"] / "coco" / "dupann"
    n = len(json.loads((v / "val.json").read_text())["annotations"])
    for on_error in ("raise", "skip"):  # a whole-file problem: never skipped
        with pytest.raises(HwnasError) as e:
            CocoDetection.from_dir(v, "val", on_error=on_error)
        assert f"annotation id 1 appears twice (annotations[0] and annotations[{n - 1}])" in str(e.value)


def test_why_duplicate_ids_matter(world) -> None:
    """The control: pycocotools scores perfect detections below 1 when two annotations share an id,
    so the refusal above prevents a wrong number, not a harmless oddity."""
    from hwnas.evaluate.coco import coco_score

    v = world["root"] / "coco" / "dupann"
    doc = json.loads((v / "val.json").read_text())
    doc["annotations"][-1]["bbox"] = [1, 1, 5, 5]  # the duplicate now marks another object
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in doc["annotations"]]
    assert coco_score(doc, perfect)["map"] < 0.99
    fixed = json.loads(json.dumps(doc))
    fixed["annotations"][-1]["id"] = 1000
    assert coco_score(fixed, perfect)["map"] == pytest.approx(1.0)


def _wider_gt_root(tmp_path: Path, faces: list[str]) -> Path:
    return _wider_root(tmp_path, "w", ["0--Parade/0_Parade_a_1.jpg", str(len(faces)), *faces])


def test_wider_faces_outside_skip_clip_and_score(tmp_path) -> None:
    """Within EDGE_TOLERANCE_PX a face is clipped; beyond it the loader refuses or (skip) drops and
    counts it, and scoring leaves the dropped face out too (keep-lists renumbered)."""
    from hwnas.data.transforms import EvalTransform
    from hwnas.data.wider import WiderFace
    from hwnas.evaluate.face import score_faces

    root = _wider_gt_root(tmp_path, ["10 10 20 24 0 0 0 0 0 0",     # inside
                                     "50 5 14.5 16 0 0 0 0 0 0",    # 0.5 px past the right edge: clipped
                                     "-3 5 10 10 0 0 0 0 0 0",      # 3 px past the left edge: outside
                                     "70 70 0 0 0 0 0 1 0 0",       # zero-size and invalid: kept as written
                                     "40 40 10 10 0 0 0 0 0 0"])    # inside, after the dropped one
    with pytest.raises(HwnasError) as e:
        WiderFace(root, "val")
    msg = str(e.value)
    assert "line 5:" in msg and "face 3 of 5" in msg and "lies outside the 64x64 image" in msg, msg
    ds = WiderFace(root, "val", EvalTransform(64), on_error="skip")
    assert ds.skipped["box_outside"] == 1 and len(ds) == 1
    assert ds.annotations(0)["boxes"].tolist() == [[10, 10, 30, 34], [50, 5, 64, 21], [40, 40, 50, 50]]
    gt = ds.coco_gt()
    assert [a["bbox"] for a in gt["annotations"]] == [[10, 10, 20, 24], [50, 5, 14.5, 16], [70, 70, 0, 0],
                                                       [40, 40, 10, 10]]
    # perfect detections of the faces kept: AP 1 with the outside face gone from the gt
    results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 0.9}
               for b in ([10, 10, 20, 24], [50, 5, 14.5, 16], [40, 40, 10, 10])]
    m = score_faces(results, ds)
    assert m["hard"] == pytest.approx(1.0) and m["n_faces"]["hard"] == 3  # the three kept faces >= 10 px tall
    assert m["map"] == pytest.approx(1.0)


def test_evaluate_wider_checks_faces_against_image_sizes() -> None:
    from hwnas.data.wider import wider_image
    from hwnas.evaluate.wider import evaluate_wider

    gt = [wider_image("e/a.jpg", [[10, 10, 20, 20], [60, 0, 10, 10]])]
    preds = {"e/a.jpg": np.array([[10, 10, 20, 20, 0.9]])}
    assert evaluate_wider(preds, gt)["n_images"] == 1  # without sizes nothing to check against
    with pytest.raises(HwnasError, match=r"face 2 of e/a\.jpg .* lies outside the 64x64 image"):
        evaluate_wider(preds, gt, image_hw={"e/a.jpg": (64, 64)})
    assert evaluate_wider(preds, gt, image_hw={"e/a.jpg": (64, 80)})["n_images"] == 1


def test_wider_names_and_sizes_in_the_api(tmp_path) -> None:
    from hwnas.data.wider import read_wider_gt, wider_image

    for name in ("../x.jpg", "e/../../x.jpg", "/abs/x.jpg", "e\\x.jpg", "e/x\x00.jpg"):
        with pytest.raises(HwnasError):
            wider_image(name, np.zeros((0, 4)))
    with pytest.raises(HwnasError, match="face 1 has a negative width or height"):
        wider_image("e/x.jpg", [[1, 2, -3, 4]])
    path = tmp_path / "gt.txt"
    path.write_text("e/ok.jpg\n0\n../bad.jpg\n1\n1 2 3 4 0 0 0 0 0 0\ne/neg.jpg\n1\n1 2 3 -4 0 0 0 0 0 0\n")
    with pytest.raises(HwnasError, match=r"gt\.txt line 3: image name '\.\./bad\.jpg' has a '\.\.' component"):
        read_wider_gt(path)
    assert [im.name for im in read_wider_gt(path, on_error="skip")] == ["e/ok.jpg"]  # both bad entries dropped
    path.write_text("e/neg.jpg\n1\n1 2 3 -4 0 0 0 0 0 0\n")
    with pytest.raises(HwnasError, match=r"line 3: face 1 of 1 of e/neg\.jpg has a negative width or height"):
        read_wider_gt(path)


def test_prediction_files_stay_in_their_folder(tmp_path) -> None:
    from hwnas.evaluate.wider import write_predictions

    out = tmp_path / "pred"
    with pytest.raises(HwnasError, match="'..'"):
        write_predictions(out, {"e/a.jpg": np.zeros((0, 5)), "../escaped.jpg": np.zeros((0, 5))})
    assert not out.exists() and not (tmp_path / "escaped.txt").exists()  # checked before any file
    # belt and braces: an event folder that is a link out of the prediction folder
    (tmp_path / "elsewhere").mkdir()
    out.mkdir()
    (out / "ev").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(HwnasError, match="leads outside the prediction folder"):
        write_predictions(out, {"ev/a.jpg": np.zeros((0, 5))})
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_dropped_faces_leave_the_keep_lists_renumbered() -> None:
    """Official keep-lists index faces: dropping one renumbers the faces after it in every subset."""
    from hwnas.data.wider import wider_image
    from hwnas.evaluate.wider import drop_faces

    gt = [wider_image("e/a.jpg", [[0, 0, 20, 20], [70, 0, 20, 20], [30, 30, 20, 20]]),
          wider_image("e/b.jpg", [[0, 0, 20, 20]])]
    keep = {"easy": {"e/a.jpg": np.array([0, 2]), "e/b.jpg": np.array([0])},
            "medium": {"e/a.jpg": np.array([1]), "e/b.jpg": np.array([], np.int64)},
            "hard": {"e/a.jpg": np.array([0, 1, 2]), "e/b.jpg": np.array([0])}}
    out, kept = drop_faces(gt, keep, {"e/a.jpg": np.array([False, True, False])})
    assert out[0].boxes.tolist() == [[0, 0, 20, 20], [30, 30, 20, 20]] and out[1] is gt[1]
    assert {s: {n: v.tolist() for n, v in d.items()} for s, d in kept.items()} == {
        "easy": {"e/a.jpg": [0, 1], "e/b.jpg": [0]}, "medium": {"e/a.jpg": [], "e/b.jpg": []},
        "hard": {"e/a.jpg": [0, 1], "e/b.jpg": [0]}}
    assert keep["easy"]["e/a.jpg"].tolist() == [0, 2]  # the caller's lists are left alone
