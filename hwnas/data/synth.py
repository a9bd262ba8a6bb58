"""Synthetic COCO-format detection datasets, so the whole pipeline runs offline on a CPU.

``synth(kind, n_train, n_val, size, seed, out)`` writes::

    out/train.json  out/val.json     COCO instances (images, annotations, categories)
    out/images/{train,val}_NNNNNN.jpg

* ``shapes``: circle (id 1), rectangle (2), triangle (3) in random colours (never close to the
  background under them), axis-aligned or rotated, 0-8 per image (about 8% of images empty),
  long side log-uniform from 8 px to 70% of the image; on a gradient + low-frequency noise
  background with distractor strokes, arcs, crosses and stars, pixel noise and JPEG artefacts.
* ``faces``: one class ``face`` (id 1): skin-toned ellipses with hair, eyes, brows, mouth, random
  roll / yaw / blur, 4 px to 80% of the image; images with many faces hold smaller ones (crowds);
  skin-coloured featureless blobs ("hands") are hard negatives.

Occlusion rule (the same for both kinds): objects are pasted in random order and foreground bars
and strokes go on top. An object keeps its full (amodal) box when at least ``MIN_VISIBLE`` = 30%
of its pixels stay visible, and gets no annotation when less is visible. Boxes are the
pixel-tight extents of the drawn object (``[x, y, w, h]``, whole pixels); ``area`` is its pixel
count, as COCO's segment area. Every object lies fully inside the image.

Everything follows from ``seed``: image ``i`` of a split draws from its own
``numpy.random.default_rng([seed, kind, split, i])``, so the files are identical run to run.
"""
from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hwnas.errors import HwnasError
from hwnas.fileio import check_writable, staged_folder, write_json

KINDS = ("shapes", "faces")
SHAPE_CLASSES = ("circle", "rectangle", "triangle")  # category ids 1, 2, 3
MIN_VISIBLE = 0.3
MIN_SIZE, MAX_SIZE = 64, 4096  # image side in px: below 64 the smallest objects and clutter do not fit
MAX_IMAGES = 1_000_000

Progress = Callable[[int, int, str], None]
# (r, g, b) skin tones from light to dark; each face jitters its own.
_SKIN = np.array([(241, 204, 180), (224, 172, 140), (198, 134, 100), (160, 104, 72), (112, 72, 50), (80, 52, 38)],
                 np.float32)


def categories(kind: str) -> list[dict]:
    """The COCO ``categories`` of a kind (ids start at 1, as in COCO: the loader remaps them)."""
    names = SHAPE_CLASSES if kind == "shapes" else ("face",)
    sup = "shape" if kind == "shapes" else "person"
    return [{"id": i + 1, "name": n, "supercategory": sup} for i, n in enumerate(names)]


def check_args(kind: str, n_train: int, n_val: int, size: int, out: Optional[Path] = None,
               kinds: tuple[str, ...] = KINDS, what: str = "dataset") -> None:
    """Every argument checked before any work (the CLI calls this before its progress bar). The
    composed photo benchmarks (:mod:`hwnas.data.photos`) share it with their own ``kinds``."""
    if kind not in kinds:
        raise HwnasError(f"unknown {what} kind {kind!r}: valid kinds are {', '.join(kinds)}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise HwnasError(f"image size {size} px is out of range: give --size between {MIN_SIZE} and {MAX_SIZE}, e.g. 256")
    for name, n in (("--n-train", n_train), ("--n-val", n_val)):
        if not 1 <= n <= MAX_IMAGES:
            raise HwnasError(f"{name} {n} is out of range: give between 1 and {MAX_IMAGES} images")
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise HwnasError(f"output {out} is a file: give a folder for the dataset")
        if out.is_dir() and any(out.iterdir()):
            # a dataset is made whole in a staging folder and moved in: it never replaces one
            # (trained runs refer to it) nor mixes with other files (stale images of another size)
            raise HwnasError(f"output {out} is not empty; give a new folder for the dataset (or delete {out} "
                             f"first to generate it again)")
        check_writable(out / "train.json", "dataset")


def synth(kind: str, n_train: int, n_val: int, size: int, seed: int, out: Path,
          progress: Optional[Progress] = None) -> dict[str, int]:
    """Write a synthetic dataset to ``out``; returns counts (``images``, ``annotations``, ``empty``).

    The dataset is written into a staging folder beside ``out`` and renamed to ``out`` when it is
    complete: a killed or failed run leaves no dataset at all (its staging folder is swept by the
    next run), never one whose json points at missing images.
    """
    out = Path(out)
    check_args(kind, n_train, n_val, size, out)
    with staged_folder(out, "dataset") as stage:
        return _generate(kind, n_train, n_val, size, seed, stage, progress)


def _generate(kind: str, n_train: int, n_val: int, size: int, seed: int, out: Path,
              progress: Optional[Progress]) -> dict[str, int]:
    img_dir = out / "images"
    img_dir.mkdir()

    total = n_train + n_val
    done = 0
    counts = {"images": 0, "annotations": 0, "empty": 0}
    for split_code, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        images: list[dict] = []
        anns: list[dict] = []
        for i in range(n):
            rng = np.random.default_rng([seed, KINDS.index(kind), split_code, i])
            img, objects = (_shapes_image if kind == "shapes" else _faces_image)(rng, size)
            name = f"{split}_{i:06d}.jpg"
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=int(rng.integers(80, 96)))
            write_file(img_dir / name, buf.getvalue())
            image_id = i + 1
            images.append({"id": image_id, "file_name": name, "width": size, "height": size})
            for cat, box, area, vis in objects:
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                             "area": area, "iscrowd": 0, "visible": round(vis, 3)})
            counts["empty"] += not objects
            done += 1
            if progress is not None:
                progress(done, total, name)
        doc = {"info": {"description": f"hwnas synthetic {kind}", "version": "1",
                        "hwnas_synth": {"kind": kind, "split": split, "n": n, "size": size, "seed": seed,
                                        "min_visible": MIN_VISIBLE}},
               "licenses": [], "images": images, "annotations": anns, "categories": categories(kind)}
        write_json(out / f"{split}.json", doc)
        counts["images"] += n
        counts["annotations"] += len(anns)
    return counts


def write_file(path: Path, data: bytes) -> None:
    """One file of a dataset being built (its folder is staged and moved in whole, so no temporary
    file is needed); a full disk or a refused write is one line naming the file."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise HwnasError(f"cannot write {path}: {e.strerror}; check free space and permissions") from None


# ----------------------------------------------------------------------------- shared pieces
def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _contrasting(rng: np.random.Generator, ref: np.ndarray, min_dist: float = 70.0) -> tuple[int, int, int]:
    """A random colour at least ``min_dist`` (RGB distance) from ``ref``: objects must be findable."""
    best, best_d = (0, 0, 0), -1.0
    for _ in range(12):  # capped: keep the farthest if none is far enough
        c = _colour(rng)
        d = float(np.linalg.norm(np.asarray(c, np.float32) - ref))
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _background(rng: np.random.Generator, s: int) -> Image.Image:
    """An RGB [s, s] background: a linear gradient plus low-frequency colour noise.

    Both are built on a small grid and upsampled once (bicubic keeps the gradient linear), which
    is several times faster than full-resolution float arithmetic.
    """
    c0 = rng.uniform(0, 255, 3)
    c1 = rng.uniform(0, 255, 3)
    a = rng.uniform(0, 2 * math.pi)
    g = int(rng.integers(3, 9))
    ramp = np.linspace(0.0, 1.0, g)
    t = math.cos(a) * ramp[None, :] + math.sin(a) * ramp[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    grid = c0 + t[..., None] * (c1 - c0) + rng.uniform(0.1, 0.5) * rng.uniform(-128, 128, (g, g, 3))
    return Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8)).resize((s, s), Image.BICUBIC)


def _stroke(rng: np.random.Generator, draw: ImageDraw.ImageDraw, s: int, fill, mask: Optional[ImageDraw.ImageDraw] = None,
            kinds: tuple[str, ...] = ("line", "arc", "cross", "star", "poly")) -> None:
    """One distractor: never a closed circle, rectangle or triangle (those are the classes)."""
    kind = kinds[int(rng.integers(len(kinds)))]
    c = rng.uniform(0, s, 2)
    r = float(np.exp(rng.uniform(math.log(4), math.log(s * (0.15 if kind == "star" else 0.35)))))
    w = int(rng.integers(1, min(6, max(2, int(r / 8))) + 1))  # bars stay much thinner than rectangles
    ops: list[tuple[str, tuple, dict]] = []
    if kind == "line":
        a = rng.uniform(0, math.pi)
        d = r * np.array([math.cos(a), math.sin(a)])
        ops.append(("line", [tuple(c - d), tuple(c + d)], {"width": w}))
    elif kind == "arc":
        start = float(rng.uniform(0, 360))
        ops.append(("arc", [tuple(c - r), tuple(c + r)], {"start": start, "end": start + float(rng.uniform(40, 250)),
                                                          "width": w}))
    elif kind == "cross":
        a = rng.uniform(0, math.pi)
        for da in (0, math.pi / 2):
            d = r * np.array([math.cos(a + da), math.sin(a + da)])
            ops.append(("line", [tuple(c - d), tuple(c + d)], {"width": w}))
    elif kind == "star":
        n = int(rng.integers(5, 8))
        a0 = rng.uniform(0, math.pi)
        pts = [tuple(c + (r if k % 2 == 0 else r * 0.45) * np.array([math.cos(a0 + k * math.pi / n),
                                                                       math.sin(a0 + k * math.pi / n)]))
               for k in range(2 * n)]
        ops.append(("polygon", pts, {}))
    else:  # open zig-zag
        pts = [tuple(c + rng.uniform(-r, r, 2)) for _ in range(int(rng.integers(3, 6)))]
        ops.append(("line", pts, {"width": w, "joint": "curve"}))
    for d, f in ((draw, fill), (mask, 255)):
        if d is None:
            continue
        for op, xy, kw in ops:
            getattr(d, op)(xy, fill=f, **kw)


def _cluttered(rng: np.random.Generator, s: int) -> Image.Image:
    bg = _background(rng, s)
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(3, 16))):
        _stroke(rng, draw, s, _colour(rng))
    return bg


@lru_cache(maxsize=2)
def _noise_bank(s: int) -> np.ndarray:
    """Unit Gaussian noise [2s, 2s, 3] from a fixed seed; each image reads a window at a random
    offset: drawing fresh full-size noise per image was a third of the generation time."""
    return np.random.default_rng(0x5EED).standard_normal((2 * s, 2 * s, 3), dtype=np.float32)


def _finish(rng: np.random.Generator, canvas: Image.Image) -> Image.Image:
    """Sensor noise and an occasional soft focus on the whole picture."""
    if rng.random() < 0.2:
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.0))))
    arr = np.asarray(canvas, np.float32)
    s = arr.shape[0]
    ox, oy = (int(v) for v in rng.integers(0, s, 2))
    arr += np.float32(rng.uniform(2.0, 10.0)) * _noise_bank(s)[oy:oy + s, ox:ox + s]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _compose(rng: np.random.Generator, s: int, bg: Image.Image, patches: list[tuple[int, Image.Image, int, int]],
             n_fore: int, fore_kinds: tuple[str, ...], fore_fill: Callable[[], tuple]) -> tuple[Image.Image, list]:
    """Paste RGBA ``(category, patch, x, y)`` in order, then ``n_fore`` occluders; annotate by MIN_VISIBLE.

    ``owner`` holds, per pixel, the index of the topmost object (-1 background, -2 occluder), which
    is how much of each object stays visible is measured.
    """
    canvas = bg.convert("RGBA")
    owner = np.full((s, s), -1, np.int16)
    full: list[tuple[int, int, int, np.ndarray]] = []
    for k, (cat, patch, x, y) in enumerate(patches):
        canvas.alpha_composite(patch, dest=(x, y))
        m = np.asarray(patch.getchannel("A")) >= 128
        h, w = m.shape
        owner[y:y + h, x:x + w][m] = k
        full.append((cat, x, y, m))
    if n_fore:
        draw = ImageDraw.Draw(canvas)
        mimg = Image.new("L", (s, s), 0)
        mdraw = ImageDraw.Draw(mimg)
        for _ in range(n_fore):
            _stroke(rng, draw, s, fore_fill(), mdraw, fore_kinds)
        owner[np.asarray(mimg) > 0] = -2
    objects = []
    for k, (cat, x, y, m) in enumerate(full):
        area = int(m.sum())
        if area == 0:
            continue
        vis = float((owner[y:y + m.shape[0], x:x + m.shape[1]][m] == k).sum()) / area
        if vis < MIN_VISIBLE:
            continue
        rows = np.flatnonzero(m.any(1))
        cols = np.flatnonzero(m.any(0))
        box = [float(x + cols[0]), float(y + rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
        objects.append((cat, box, float(area), vis))
    return _finish(rng, canvas.convert("RGB")), objects


def _place(rng: np.random.Generator, s: int, w: int, h: int) -> tuple[int, int]:
    return int(rng.integers(0, max(1, s - w + 1))), int(rng.integers(0, max(1, s - h + 1)))


# ----------------------------------------------------------------------------- shapes
def _shape_patch(rng: np.random.Generator, cls: int, d: float, fill, outline) -> Image.Image:
    """An RGBA patch of one shape whose longer bounding side is about ``d`` px."""
    if cls == 0:  # circle: nearly round ellipse
        aspect = rng.uniform(0.8, 1.0)
        pts = None
        w, h = (d, d * aspect) if rng.random() < 0.5 else (d * aspect, d)
    else:
        if cls == 1:  # rectangle, axis-aligned half the time
            aspect = rng.uniform(0.35, 1.0)
            base = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], np.float64)
            a = 0.0 if rng.random() < 0.5 else rng.uniform(-math.pi / 4, math.pi / 4)
        else:  # triangle: corners roughly 120 degrees apart on a circle
            angles = np.arange(3) * 2 * math.pi / 3 + rng.uniform(-0.35, 0.35, 3)
            base = np.stack([np.cos(angles), np.sin(angles)], 1)
            a = rng.uniform(0, 2 * math.pi)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        pts = base @ rot.T
        pts -= pts.min(0)
        pts *= d / max(float(pts.max()), 1e-6)
        w, h = pts.max(0)
    pw, ph = int(math.ceil(w)) + 1, int(math.ceil(h)) + 1
    patch = Image.new("RGBA", (pw, ph), (0, 0, 0, 0))
    draw = ImageDraw.Draw(patch)
    width = int(rng.integers(1, 4)) if outline is not None and d >= 16 else 0
    if pts is None:
        draw.ellipse([0, 0, w, h], fill=fill + (255,), outline=(outline + (255,)) if width else None, width=width)
    else:
        draw.polygon([tuple(p) for p in pts], fill=fill + (255,), outline=(outline + (255,)) if width else None,
                     width=width)
    return patch


def _shapes_image(rng: np.random.Generator, s: int) -> tuple[Image.Image, list]:
    bg = _cluttered(rng, s)
    bg_arr = np.asarray(bg)
    n = 0 if rng.random() < 0.08 else int(rng.integers(1, 9))
    patches = []
    for _ in range(n):
        cls = int(rng.integers(3))
        d = float(np.exp(rng.uniform(math.log(8), math.log(0.7 * s))))
        # colour against the background where it will land (placed from the nominal size first)
        x, y = _place(rng, s, int(d) + 2, int(d) + 2)
        ref = bg_arr[y:y + int(d) + 1:4, x:x + int(d) + 1:4].reshape(-1, 3).mean(0)
        fill = _contrasting(rng, ref)
        outline = _colour(rng) if rng.random() < 0.3 else None
        patch = _shape_patch(rng, cls, d, fill, outline)
        x, y = min(x, s - patch.width), min(y, s - patch.height)
        patches.append((cls + 1, patch, max(0, x), max(0, y)))
    n_fore = int(rng.integers(0, 4)) if rng.random() < 0.5 else 0
    return _compose(rng, s, bg, patches, n_fore, ("line", "arc", "cross", "poly"), lambda: _colour(rng))


# ----------------------------------------------------------------------------- faces
def _skin(rng: np.random.Generator) -> tuple[int, int, int]:
    c = _SKIN[int(rng.integers(len(_SKIN)))] * rng.uniform(0.85, 1.15) + rng.normal(0, 6, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _face_patch(rng: np.random.Generator, d: float) -> Image.Image:
    """An RGBA face about ``d`` px tall: drawn upright at 2x for clean small features, then rolled and blurred."""
    ss = 2 if d < 64 else 1
    h = max(2.0, d * ss)
    w = max(2.0, h * rng.uniform(0.68, 0.85))
    pw, ph = int(math.ceil(w)) + 1, int(math.ceil(h)) + 1
    skin = _skin(rng)
    rgb = Image.new("RGB", (pw, ph), skin)
    draw = ImageDraw.Draw(rgb)
    yaw = rng.uniform(-0.2, 0.2) * w  # turning the head shifts the features sideways
    pitch = rng.uniform(-0.06, 0.06) * h
    cx, dark = w / 2 + yaw, tuple(int(v) for v in rng.integers(10, 70, 3))
    if rng.random() < 0.85:  # hair
        hair = tuple(int(v) for v in rng.integers(0, 120, 3)) if rng.random() < 0.8 else _colour(rng)
        draw.rectangle([0, 0, pw, h * rng.uniform(0.12, 0.32) + pitch], fill=hair)
    ey, ex, er = 0.44 * h + pitch, 0.2 * w, max(0.5, w * rng.uniform(0.05, 0.08))
    for sx in (-1, 1):
        ecx = cx + sx * ex * (1 - 0.4 * sx * yaw / w)
        if d >= 24:  # whites of the eyes and brows only where they can be seen
            draw.ellipse([ecx - 1.8 * er, ey - er, ecx + 1.8 * er, ey + er], fill=(235, 235, 230))
            draw.line([ecx - 2 * er, ey - 2.2 * er, ecx + 2 * er, ey - 2.4 * er], fill=dark, width=max(1, int(er * 0.6)))
        draw.ellipse([ecx - er, ey - er, ecx + er, ey + er], fill=dark)
    ny = 0.6 * h + pitch
    draw.line([cx, ey + er, cx + 0.05 * w, ny], fill=tuple(int(v * 0.8) for v in skin), width=max(1, int(er * 0.5)))
    mouth = tuple(int(v) for v in (rng.integers(90, 180), rng.integers(20, 60), rng.integers(30, 70)))
    my, mw = 0.74 * h + pitch, w * rng.uniform(0.12, 0.2)
    if rng.random() < 0.6:
        draw.arc([cx - mw, my - mw * 0.6, cx + mw, my + mw * 0.6], 10, 170, fill=mouth, width=max(1, int(er * 0.6)))
    else:
        draw.ellipse([cx - mw, my - mw * 0.35, cx + mw, my + mw * 0.35], fill=mouth)
    alpha = Image.new("L", (pw, ph), 0)
    ImageDraw.Draw(alpha).ellipse([0, 0, w, h], fill=255)
    patch = rgb.convert("RGBA")
    patch.putalpha(alpha)
    roll = float(rng.uniform(-25, 25)) if rng.random() < 0.7 else 0.0
    if roll:
        patch = patch.rotate(roll, resample=Image.BILINEAR, expand=True)
    if ss > 1:
        patch = patch.resize((max(1, round(patch.width / ss)), max(1, round(patch.height / ss))), Image.BILINEAR)
    if rng.random() < 0.4:
        patch = patch.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, max(0.6, d * 0.04)))))
    return patch


def _blob_patch(rng: np.random.Generator, d: float) -> Image.Image:
    """A skin-coloured featureless ellipse (a hand, an arm): a hard negative for the face class."""
    w, h = d * rng.uniform(0.5, 1.2), d * rng.uniform(0.5, 1.2)
    patch = Image.new("RGBA", (int(w) + 2, int(h) + 2), (0, 0, 0, 0))
    ImageDraw.Draw(patch).ellipse([0, 0, w, h], fill=_skin(rng) + (255,))
    return patch


def _faces_image(rng: np.random.Generator, s: int) -> tuple[Image.Image, list]:
    bg = _cluttered(rng, s)
    n = 0 if rng.random() < 0.08 else int(min(20, np.exp(rng.uniform(0, math.log(21)))))
    # Crowds hold small faces: the largest allowed size shrinks with the count.
    top = max(6.0, 0.8 * s / math.sqrt(n)) if n else 0.0
    patches = []
    for _ in range(n):
        d = float(np.exp(rng.uniform(math.log(4), math.log(top))))
        patch = _face_patch(rng, d)
        if patch.width > s or patch.height > s:  # a big face rolled past the borders: shrink, keep its shape
            f = s / max(patch.width, patch.height)
            patch = patch.resize((max(1, int(patch.width * f)), max(1, int(patch.height * f))), Image.BILINEAR)
        patches.append((1, patch) + _place(rng, s, patch.width, patch.height))
    for _ in range(int(rng.integers(0, 3))):  # hard negatives, mixed into the paste order
        patch = _blob_patch(rng, float(np.exp(rng.uniform(math.log(6), math.log(0.3 * s)))))
        patches.insert(int(rng.integers(len(patches) + 1)), (0, patch) + _place(rng, s, patch.width, patch.height))
    n_fore = int(rng.integers(1, 4)) if rng.random() < 0.35 else 0
    img, objects = _compose(rng, s, bg, patches, n_fore, ("line", "poly"),
                            lambda: _colour(rng) if rng.random() < 0.5 else _skin(rng))
    return img, [o for o in objects if o[0] != 0]
