"""Detection benchmarks composed offline from real photographs that installed packages ship.

``photos(kind, n_train, n_val, size, seed, out)`` writes::

    out/train.json  out/val.json     COCO instances (images, annotations, categories)
    out/images/{train,val}_NNNNNN.jpg
    out/SOURCES.md                   every photograph used: what it shows, where it is from, its licence
    (faces only) out/wider_face_split/wider_face_{train,val}_bbx_gt.txt and
    out/WIDER_{train,val}/images/photos/<same files>   the WIDER FACE layout (hard links to images/)

Every pixel comes from a real photograph of scikit-image's ``skimage/data`` or matplotlib's
``mpl-data/sample_data`` (``SOURCES`` lists each, with its licence). The images are composites:
real objects or faces cut out with a mask and pasted onto crops of real photographs that contain
none of the classes, so every box is known exactly. Nothing is drawn or synthesised; the
generated-shapes benchmark is ``hwnas.data.synth``.

* ``objects``: five classes, cat (id 1, the head of ``chelsea.png``), cup (2, the cup and saucer
  of ``coffee.png``), coin (3, the 24 coins of ``coins.png``, segmented one by one), rocket (4, the
  Falcon 9 of ``rocket.jpg``), motorcycle (5, ``motorcycle_left.png`` in train,
  ``motorcycle_right.png``, the other stereo view, in val). Coins: 18 in train, 6 others in val.
  Up to 8 per image (about 8% of images empty), long side log-uniform from 8 px to 70% of the
  image (smaller when crowded), with mild aspect jitter, flips, small rotations (any angle for
  coins), brightness / contrast / saturation / colour jitter, tints (coins), blur, 12% of images
  grey. Texture blobs cut with the same masks as the objects are unannotated distractors.
* ``faces``: one class ``face`` (id 1). Faces 0..79 of ``lfw_subset.npy`` (Labeled Faces in the
  Wild, 25x25 grey) and the astronaut Eileen Collins in train; faces 80..99 and Grace Hopper in
  val, so no val face is one of the train images. Face height log-uniform from 4 px to 80% of the
  image; images with many faces hold smaller ones (crowds). The non-face crops of
  ``lfw_subset.npy`` (those showing part of a face left out), texture blobs and the object
  cut-outs are pasted as unannotated hard negatives with the same mask and tints as the faces.
  LFW crops are grey: 30% of face images are turned grey whole, the other faces are tinted
  mildly (grey negatives too), so "grey patch = face" is no shortcut.

Masks: coins and the rocket are cut along their outline (a watershed segmentation, a traced
polygon); the cat, cup and motorcycle along an ellipse or rounded outline around a tight crop;
faces along a rounded outline with some hair and background around them. Every mask is
feathered, so no object is a hard-edged rectangle. The box is the pixel-tight extent of the
object (of the face ellipse for faces: forehead to chin), whole pixels, ``[x, y, w, h]``;
``area`` is its pixel count; every object lies fully inside the image.

Occlusion follows ``hwnas.data.synth``: patches are pasted in random order (negatives mixed in);
an object keeps its full (amodal) box when at least ``MIN_VISIBLE`` = 30% of its pixels stay
visible. One that would show less is left out altogether (synth leaves such a fragment in the
picture without a box): no visible instance goes unannotated. Each annotation records ``visible`` and ``source``
(the photograph and instance it was cut from, e.g. ``coins.png#7`` or ``lfw_subset.npy#83``).

Everything follows from ``seed``: image ``i`` of a split draws from its own
``numpy.random.default_rng([seed, kind, split, i])``, so the files are identical run to run
(given the same scikit-image data files and Pillow).
"""
from __future__ import annotations

import io
import math
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageFilter

from hwnas.errors import HwnasError
from hwnas.data.synth import MIN_VISIBLE, write_file
from hwnas.data.synth import check_args as check_dataset_args
from hwnas.fileio import staged_folder, write_atomic, write_json

KINDS = ("objects", "faces")
OBJECT_CLASSES = ("cat", "cup", "coin", "rocket", "motorcycle")  # category ids 1..5
_SUPERCATEGORY = ("animal", "kitchen", "money", "vehicle", "vehicle")
WIDER_EVENT = "photos"
INSTALL = "pip install 'hwnas[photos]'"
SOURCES_FILE = "SOURCES.md"

Progress = Callable[[int, int, str], None]

# LFW subset: the first 100 crops are faces, the last 100 non-faces. Train and val faces differ.
LFW_TRAIN, LFW_VAL = range(0, 80), range(80, 100)
# Non-face crops that show part of a face (an eye, a mouth, half a head): pasted unannotated they
# would be faces without a box, so they are not used (found by looking at all 100).
LFW_FACE_LIKE = (114, 125, 126, 130, 180, 193, 196)
# Face box inside a 25x25 LFW crop (x0, y0, x1, y1, pixel edges), from the mean of the 100 faces:
# cheek to cheek, hairline to chin.
LFW_FACE_BOX = (3.0, 2.0, 22.0, 24.5)
_LFW_UP = 4  # LFW crops are upsampled once, bicubic, to 100x100 before any other resampling
# High-resolution faces: (file, face box x0 y0 x1 y1, the ellipse cut around the head: hair, ears).
HIRES_FACES = {"train": ("astronaut.png", (176, 62, 258, 164), (148, 20, 292, 184)),
               "val": ("grace_hopper.jpg", (186, 130, 352, 326), (164, 104, 374, 352))}
COIN_VAL_EVERY = 4  # coins 3, 7, 11, ... (in reading order) go to val, the other 18 to train

# Every photograph used: file -> (package, what it shows and where it is from, licence as stated).
SOURCES: dict[str, tuple[str, str, str]] = {
    "chelsea.png": ("scikit-image", "Chelsea the cat; photograph by Stefan van der Walt",
                    "CC0 (\"No copyright restrictions. CC0 by the photographer\")"),
    "coffee.png": ("scikit-image", "a coffee cup, courtesy of Pikolo Espresso Bar; photograph by Rachel Michetti",
                   "CC0 (\"No copyright restrictions. CC0 by the photographer\")"),
    "coins.png": ("scikit-image", "Greek coins from Pompeii, Brooklyn Museum Collection",
                  "no known copyright restrictions"),
    "rocket.jpg": ("scikit-image", "launch photo of DSCOVR on Falcon 9, SpaceX",
                   "public domain (released by SpaceX; the Flickr page shows CC BY-NC 2.0, see "
                   "scikit-image issue #5095)"),
    "motorcycle_left.png": ("scikit-image", "Middlebury 2014 stereo benchmark, left view (Scharstein et al., "
                            "GCPR 2014), downsampled 4x", "not stated by scikit-image (the Middlebury site asks "
                            "users to cite the paper)"),
    "motorcycle_right.png": ("scikit-image", "Middlebury 2014 stereo benchmark, right view (as above)",
                             "not stated by scikit-image (as above)"),
    "lfw_subset.npy": ("scikit-image", "Labeled Faces in the Wild (http://vis-www.cs.umass.edu/lfw/): 100 face "
                       "crops and 100 non-face crops of its backgrounds, 25x25 grey",
                       "not stated by scikit-image; LFW is a research data set of news photographs"),
    "astronaut.png": ("scikit-image", "the astronaut Eileen Collins, NASA Great Images database",
                      "public domain (\"No known copyright restrictions, released into the public domain\")"),
    "grace_hopper.jpg": ("matplotlib", "Commodore Grace M. Hopper, official US Navy portrait",
                         "not stated in matplotlib; a US Navy photograph, a work of the US federal government, "
                         "public domain in the US"),
    "brick.png": ("scikit-image", "a brick wall, CC0Textures Bricks25", "CC0"),
    "grass.png": ("scikit-image", "grass, DeviantArt linolafett Grass-01", "CC0"),
    "gravel.png": ("scikit-image", "gravel, CC0Textures Gravel04", "CC0"),
    "hubble_deep_field.jpg": ("scikit-image", "Hubble eXtreme Deep Field, NASA / HubbleSite",
                              "public domain (NASA: \"may be freely used in the public domain\")"),
    "retina.jpg": ("scikit-image", "fundus photograph of a normal left eye, Mikael Häggström, Wikimedia Commons",
                   "CC0 1.0"),
    "ihc.png": ("scikit-image", "immunohistochemistry of colonic glands, Center for Microscopy And Molecular "
                "Imaging (CMMI)", "no known copyright restrictions"),
    "cell.png": ("scikit-image", "a cell floating in saline, quantitative phase image (Müller et al. 2018)", "CC0"),
    "text.png": ("scikit-image", "hand-written text on a page, Wikipedia File:Corner.png",
                 "public domain (\"No known copyright restrictions, released into the public domain\")"),
    "clock_motion.png": ("scikit-image", "a motion-blurred wall clock; photograph by Stefan van der Walt",
                         "public domain (\"Released into the public domain by the photographer\")"),
}
# Backgrounds: (file, region x0 y0 x1 y1 or None for all of it). None holds a cat, cup, coin,
# rocket or motorcycle; none of the face backgrounds holds a (human) face.
_OBJECT_BACKGROUNDS = (("brick.png", None), ("grass.png", None), ("gravel.png", None),
                       ("hubble_deep_field.jpg", None), ("retina.jpg", (205, 205, 1206, 1206)), ("ihc.png", None),
                       ("cell.png", None), ("text.png", None), ("clock_motion.png", None),
                       ("rocket.jpg", (0, 0, 255, 427)))  # the launch site left of the rocket
_FACE_BACKGROUNDS = _OBJECT_BACKGROUNDS[:-1] + (("rocket.jpg", None), ("coffee.png", None),
                                                ("motorcycle_left.png", None), ("motorcycle_right.png", None))
_TEXTURES = _OBJECT_BACKGROUNDS[:9]  # what distractor blobs are cut from
_SCENES = ("rocket.jpg", "coffee.png", "motorcycle_left.png", "motorcycle_right.png")  # never turned upside down
# Skin tones (r, g, b) that tint the grey LFW crops, light to dark.
_SKIN = np.array([(241, 204, 180), (224, 172, 140), (198, 134, 100), (160, 104, 72), (112, 72, 50)], np.float32)
_METAL = np.array([(255, 215, 140), (240, 170, 120), (235, 235, 240), (200, 190, 160)], np.float32)


# ----------------------------------------------------------------------------- public
def categories(kind: str) -> list[dict]:
    """The COCO ``categories`` of a kind (ids from 1)."""
    if kind == "faces":
        return [{"id": 1, "name": "face", "supercategory": "person"}]
    return [{"id": i + 1, "name": n, "supercategory": s} for i, (n, s) in enumerate(zip(OBJECT_CLASSES,
                                                                                          _SUPERCATEGORY))]


def check_args(kind: str, n_train: int, n_val: int, size: int, out: Optional[Path] = None) -> None:
    """Every argument checked, and the source photographs found, before any work."""
    check_dataset_args(kind, n_train, n_val, size, out, kinds=KINDS, what="photos")
    source_paths()


def source_paths() -> dict[str, Path]:
    """File name -> path of every photograph in ``SOURCES``, found in the installed packages."""
    try:
        import skimage
    except ImportError:
        raise HwnasError(f"the photos benchmark is built from the photographs scikit-image ships and it is not "
                         f"installed: install it with {INSTALL}") from None
    import matplotlib

    skdata = Path(skimage.__file__).parent / "data"
    mpl = Path(matplotlib.get_data_path()) / "sample_data"
    paths = {name: (mpl if pkg == "matplotlib" else skdata) / name for name, (pkg, _, _) in SOURCES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise HwnasError(f"{missing[0]} is missing ({len(missing)} source photograph(s) in all): reinstall "
                         f"scikit-image and matplotlib ({INSTALL})")
    return paths


def photos(kind: str, n_train: int, n_val: int, size: int, seed: int, out: Path,
           progress: Optional[Progress] = None) -> dict[str, int]:
    """Write a real-photograph dataset to ``out``; returns counts (``images``, ``annotations``, ``empty``).

    Built in a staging folder beside ``out`` and renamed to ``out`` when complete: a killed or
    failed run leaves no dataset at all.
    """
    out = Path(out)
    check_args(kind, n_train, n_val, size, out)
    lib = _library()
    with staged_folder(out, "dataset") as stage:
        return _generate(kind, n_train, n_val, size, seed, stage, lib, progress)


def render(kind: str, seed: int, split: str, index: int, size: int, objects: bool = True) -> tuple[Image.Image, list]:
    """Image ``index`` of ``split`` exactly as ``photos`` composes it, before JPEG coding, and its
    annotations ``(category_id, [x, y, w, h], area, visible, source, wider_attrs)``.

    ``objects=False`` composes the same image without the annotated objects (backgrounds,
    negatives, noise unchanged): the difference between the two is what the boxes hold.
    """
    check_args(kind, 1, 1, size)
    if split not in ("train", "val"):
        raise HwnasError(f"unknown split {split!r}: valid splits are train, val")
    rng = np.random.default_rng([seed, KINDS.index(kind), ("train", "val").index(split), index])
    return _image(kind, rng, size, split, _library(), objects)


# ----------------------------------------------------------------------------- writing
def _generate(kind: str, n_train: int, n_val: int, size: int, seed: int, out: Path, lib: "_Library",
              progress: Optional[Progress]) -> dict[str, int]:
    img_dir = out / "images"
    img_dir.mkdir()
    total, done = n_train + n_val, 0
    counts = {"images": 0, "annotations": 0, "empty": 0}
    for split_code, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        images: list[dict] = []
        anns: list[dict] = []
        wider: list[tuple[str, list, list]] = []
        for i in range(n):
            rng = np.random.default_rng([seed, KINDS.index(kind), split_code, i])
            img, objects = _image(kind, rng, size, split, lib, True)
            name = f"{split}_{i:06d}.jpg"
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=int(rng.integers(80, 96)))
            write_file(img_dir / name, buf.getvalue())
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
            for cat, box, area, vis, source, _ in objects:
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": box,
                             "area": area, "iscrowd": 0, "visible": round(vis, 3), "source": source})
            wider.append((name, [o[1] for o in objects], [o[5] for o in objects]))
            counts["empty"] += not objects
            done += 1
            if progress is not None:
                progress(done, total, name)
        doc = {"info": {"description": f"hwnas real-photograph {kind} (composites of real photographs, see "
                                       f"{SOURCES_FILE})", "version": "1",
                        "hwnas_photos": {"kind": kind, "split": split, "n": n, "size": size, "seed": seed,
                                         "min_visible": MIN_VISIBLE, "scikit_image": lib.version}},
               "licenses": [], "images": images, "annotations": anns, "categories": categories(kind)}
        write_json(out / f"{split}.json", doc)
        if kind == "faces":
            _write_wider(out, split, wider)
        counts["images"] += n
        counts["annotations"] += len(anns)
    write_atomic(out / SOURCES_FILE, sources_markdown(kind))
    return counts


def _write_wider(out: Path, split: str, entries: list[tuple[str, list, list]]) -> None:
    """The WIDER FACE layout beside the COCO one: the same image files (hard links where the file
    system allows, else copies) and the official gt txt. ``hwnas.data.wider.open_dataset`` picks it."""
    from hwnas.data.wider import gt_file, image_root, wider_image, write_wider_gt

    folder = image_root(out, split) / WIDER_EVENT
    folder.mkdir(parents=True)
    for name, _, _ in entries:
        src, dst = out / "images" / name, folder / name
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    write_wider_gt(gt_file(out, split), [wider_image(f"{WIDER_EVENT}/{name}", boxes, attrs)
                                         for name, boxes, attrs in entries])


def sources_markdown(kind: str) -> str:
    """``SOURCES.md`` of a kind: what the images are, and every photograph used with its licence."""
    used = _used_files(kind)
    lines = [f"# Sources of this hwnas `photos --kind {kind}` dataset", "",
             "Every image here is a composite made by `hwnas data photos`: real objects or faces cut out of the "
             "photographs below and pasted onto crops of other real photographs below. The scenes never existed; "
             "the pixels are all photographic (resampled, jittered in colour, blurred, with sensor noise added). "
             "Nothing is drawn or generated by a model.", "",
             "| file | package | role | what it is, origin | licence (quoted where the package states one) |",
             "|---|---|---|---|---|"]
    for name, role in used:
        pkg, origin, licence = SOURCES[name]
        lines.append(f"| {name} | {pkg} | {role} | {origin} | {licence} |")
    lines += ["", "Splits: " + (
        f"LFW faces {LFW_TRAIN.start}..{LFW_TRAIN.stop - 1} and astronaut.png in train, faces {LFW_VAL.start}.."
        f"{LFW_VAL.stop - 1} and grace_hopper.jpg in val (no val face is a train image; LFW identities are not "
        f"labelled in the subset, so a val person may appear in another train photograph). LFW non-faces "
        f"{', '.join(map(str, LFW_FACE_LIKE))} show parts of faces and are not used; of the other 93, the first "
        f"74 are train negatives, the last 19 val negatives."
        if kind == "faces" else
        f"coins whose reading-order index i has i % {COIN_VAL_EVERY} == {COIN_VAL_EVERY - 1} (6 coins) in val, "
        f"the other 18 in train; motorcycle_left.png in train, motorcycle_right.png (the other stereo view) in "
        f"val; cat, cup and rocket are one photograph each, in both splits."), ""]
    return "\n".join(lines)


def _used_files(kind: str) -> list[tuple[str, str]]:
    if kind == "faces":
        fg = [("lfw_subset.npy", "faces (train 0..79, val 80..99) and non-face negatives"),
              ("astronaut.png", "face (train)"), ("grace_hopper.jpg", "face (val)"),
              ("chelsea.png", "negative (cat)"), ("coffee.png", "negative (cup); background"),
              ("rocket.jpg", "negative (rocket); background"),
              ("motorcycle_left.png", "negative (motorcycle); background"),
              ("motorcycle_right.png", "negative (motorcycle); background")]
        bg = [f for f, _ in _FACE_BACKGROUNDS]
    else:
        fg = [("chelsea.png", "cat"), ("coffee.png", "cup"), ("coins.png", "coin (18 train, 6 val)"),
              ("rocket.jpg", "rocket; its left part (no rocket) a background"),
              ("motorcycle_left.png", "motorcycle (train)"), ("motorcycle_right.png", "motorcycle (val)")]
        bg = [f for f, _ in _OBJECT_BACKGROUNDS]
    named, textures = {f for f, _ in fg}, {f for f, _ in _TEXTURES}
    return fg + [(f, "background; distractor texture" if f in textures else "background")
                 for f in dict.fromkeys(bg) if f not in named]


# ----------------------------------------------------------------------------- the source library
@dataclass(frozen=True)
class _Cut:
    """A cut-out: ``rgba`` (alpha = where it is pasted; the pixels under zero alpha are the real
    ones around it, so resampling never bleeds black in), ``extent`` (L, 255 over the annotated
    object: the box is its extent), ``ref`` the extent's (width, height) in these pixels."""

    source: str
    rgba: Image.Image
    extent: Image.Image
    ref: tuple[float, float]
    grey: bool


@dataclass(frozen=True)
class _Library:
    version: str
    objects: dict  # (split, class index) -> list[_Cut]
    faces: dict  # split -> list[_Cut] (LFW)
    hires: dict  # split -> _Cut
    nonfaces: dict  # split -> list[_Cut]
    backgrounds: dict  # kind -> list[(name, np.ndarray uint8 RGB, grey)]
    textures: list  # [(name, np.ndarray, grey)]


@lru_cache(maxsize=1)
def _library() -> _Library:
    """Every cut-out and background, read once per process (about a second)."""
    import skimage
    from scipy import ndimage as ndi

    paths = source_paths()

    def read(name: str, mode: str = "RGB") -> np.ndarray:
        with Image.open(paths[name]) as im:
            return np.asarray(im.convert(mode))

    objects: dict = {}
    cat = read("chelsea.png")
    both = [_cut("chelsea.png", cat, (0, 0, 451, 300), _ellipse(300, 451, (26, 2, 434, 298)))]
    for split in ("train", "val"):
        objects[split, 0] = both
    cup = read("coffee.png")
    h, w = cup.shape[:2]
    mask = _ellipse(h, w, (74, 58, 482, 394)) | _ellipse(h, w, (170, 12, 414, 112))
    mask[62:285, 170:414] = True
    for split in ("train", "val"):
        objects[split, 1] = [_cut("coffee.png", cup, (60, 0, 500, 400), mask[0:400, 60:500])]
    coins = read("coins.png", "L")
    coins_rgb = np.repeat(coins[..., None], 3, 2)
    for split in ("train", "val"):
        objects[split, 2] = []
    for k, (mask, box) in enumerate(_segment_coins(coins, ndi)):
        split = "val" if k % COIN_VAL_EVERY == COIN_VAL_EVERY - 1 else "train"
        objects[split, 2].append(_cut(f"coins.png#{k}", coins_rgb, box, mask, sigma=0.8, grey=True))
    rocket = read("rocket.jpg")
    poly = [(322.5, 127), (318, 130), (315, 135), (312.5, 142), (311, 150), (311, 176), (313.5, 180),
            (313.5, 401), (331.5, 401), (331.5, 180), (334, 176), (334, 150), (332.5, 142), (330, 135),
            (327, 130)]
    rbox = (304, 121, 342, 407)
    rmask = _polygon(rbox[3] - rbox[1], rbox[2] - rbox[0], [(x - rbox[0], y - rbox[1]) for x, y in poly])
    for split in ("train", "val"):
        objects[split, 3] = [_cut("rocket.jpg", rocket, rbox, rmask, sigma=0.7)]
    for split, name, box in (("train", "motorcycle_left.png", (90, 12, 690, 455)),
                             ("val", "motorcycle_right.png", (44, 12, 632, 455))):
        bw, bh = box[2] - box[0], box[3] - box[1]
        objects[split, 4] = [_cut(name, read(name), box, _rounded(bh, bw, (0, 0, bw, bh), 0.18 * bh))]

    lfw = np.load(paths["lfw_subset.npy"])
    lfw = np.clip(np.round(lfw * 255), 0, 255).astype(np.uint8)
    n = 25 * _LFW_UP
    alpha = _superellipse(n, n, (0, 0, n, n), 3.0)
    face_ext = _ellipse(n, n, tuple(v * _LFW_UP for v in LFW_FACE_BOX))

    def lfw_cut(i: int, extent: Optional[np.ndarray]) -> _Cut:
        up = np.asarray(Image.fromarray(lfw[i]).resize((n, n), Image.BICUBIC))
        return _cut(f"lfw_subset.npy#{i}", np.repeat(up[..., None], 3, 2), (0, 0, n, n), alpha,
                    extent=extent, sigma=2.5, grey=True)

    faces = {"train": [lfw_cut(i, face_ext) for i in LFW_TRAIN], "val": [lfw_cut(i, face_ext) for i in LFW_VAL]}
    neg = [i for i in range(100, 200) if i not in LFW_FACE_LIKE]
    cut_at = int(round(len(neg) * 0.8))
    nonfaces = {"train": [lfw_cut(i, None) for i in neg[:cut_at]], "val": [lfw_cut(i, None) for i in neg[cut_at:]]}
    hires = {}
    for split, (name, fbox, crop) in HIRES_FACES.items():
        img = read(name)
        cw, ch = crop[2] - crop[0], crop[3] - crop[1]
        ext = _ellipse(ch, cw, (fbox[0] - crop[0], fbox[1] - crop[1], fbox[2] - crop[0], fbox[3] - crop[1]))
        hires[split] = _cut(name, img, crop, _ellipse(ch, cw, (0, 0, cw, ch)), extent=ext, sigma=3.0)

    def regions(spec) -> list:
        out = []
        for name, box in spec:
            arr = read(name)
            if box is not None:
                arr = arr[box[1]:box[3], box[0]:box[2]]
            grey = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
            out.append((name, np.ascontiguousarray(arr), grey))
        return out

    return _Library(version=str(skimage.__version__), objects=objects, faces=faces, hires=hires, nonfaces=nonfaces,
                    backgrounds={"objects": regions(_OBJECT_BACKGROUNDS), "faces": regions(_FACE_BACKGROUNDS)},
                    textures=regions(_TEXTURES))


def _segment_coins(coins: np.ndarray, ndi) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """The 24 coins of ``coins.png`` as (mask, crop box), in reading order: a watershed of the
    Sobel gradient from dark (background) and bright (coin) markers, holes filled."""
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    markers = np.zeros(coins.shape, np.int32)
    markers[coins < 30] = 1
    markers[coins > 150] = 2
    seg = ndi.binary_fill_holes(watershed(sobel(coins), markers) == 2)
    lab, n = ndi.label(seg)
    found = []
    for k, sl in enumerate(ndi.find_objects(lab)):
        if (lab[sl] == k + 1).sum() >= 200:  # not a speck
            found.append(((sl[0].start + sl[0].stop) / 2, (sl[1].start + sl[1].stop) / 2, k + 1, sl))
    # reading order: rows of coins (a new row starts where a centre lies 30 px below the row's
    # first), left to right within a row
    found.sort(key=lambda t: t[0])
    rows: list[list] = []
    for c in found:
        if not rows or c[0] - rows[-1][0][0] > 30:
            rows.append([])
        rows[-1].append(c)
    out = []
    for row in rows:
        for _, _, k, sl in sorted(row, key=lambda t: t[1]):
            y0, y1 = max(0, sl[0].start - 4), min(coins.shape[0], sl[0].stop + 4)
            x0, x1 = max(0, sl[1].start - 4), min(coins.shape[1], sl[1].stop + 4)
            out.append((lab[y0:y1, x0:x1] == k, (x0, y0, x1, y1)))
    return out


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return yy + 0.5, xx + 0.5


def _ellipse(h: int, w: int, box) -> np.ndarray:
    return _superellipse(h, w, box, 2.0)


def _superellipse(h: int, w: int, box, p: float) -> np.ndarray:
    """bool [h, w]: |x|^p + |y|^p <= 1 in the box (x0, y0, x1, y1) (p=2: an ellipse; larger: squarer)."""
    yy, xx = _grid(h, w)
    x0, y0, x1, y1 = box
    rx, ry = max((x1 - x0) / 2, 1e-6), max((y1 - y0) / 2, 1e-6)
    return np.abs((xx - (x0 + x1) / 2) / rx) ** p + np.abs((yy - (y0 + y1) / 2) / ry) ** p <= 1.0


def _rounded(h: int, w: int, box, r: float) -> np.ndarray:
    """bool [h, w]: the box with corners rounded by radius ``r``."""
    yy, xx = _grid(h, w)
    x0, y0, x1, y1 = box
    r = max(1e-6, min(r, (x1 - x0) / 2, (y1 - y0) / 2))
    dx = np.maximum(np.maximum(x0 + r - xx, xx - (x1 - r)), 0)
    dy = np.maximum(np.maximum(y0 + r - yy, yy - (y1 - r)), 0)
    return (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1) & (dx ** 2 + dy ** 2 <= r ** 2)


def _polygon(h: int, w: int, pts) -> np.ndarray:
    from PIL import ImageDraw

    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).polygon(pts, fill=255)
    return np.asarray(im) > 0


def _feather(mask: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 alpha: the mask blurred, so alpha >= 128 still follows its outline."""
    from scipy import ndimage as ndi

    return np.clip(ndi.gaussian_filter(mask.astype(np.float32), sigma) * 255 + 0.5, 0, 255).astype(np.uint8)


def _cut(source: str, image: np.ndarray, box, mask: np.ndarray, extent: Optional[np.ndarray] = None,
         sigma: Optional[float] = None, grey: bool = False) -> _Cut:
    """A cut-out of ``image[box]`` along ``mask`` (box-sized, feathered by ``sigma``, default 1% of
    its size); ``extent`` (default: the mask) is the annotated object."""
    x0, y0, x1, y1 = box
    rgb = image[y0:y1, x0:x1]
    if sigma is None:
        sigma = max(0.8, 0.01 * max(mask.shape))
    alpha = _feather(mask, sigma)
    ext = mask if extent is None else extent
    rows, cols = np.flatnonzero(ext.any(1)), np.flatnonzero(ext.any(0))
    ref = (float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))
    rgba = Image.fromarray(np.dstack([rgb, alpha]).astype(np.uint8), "RGBA")
    return _Cut(source, rgba, Image.fromarray(ext.astype(np.uint8) * 255, "L"), ref, grey)


# ----------------------------------------------------------------------------- composing
@dataclass
class _Item:
    cat: int  # 0: an unannotated negative
    source: str
    rgba: Image.Image
    extent: Optional[Image.Image]
    blur: float = 0.0  # sigma applied, px
    upscale: float = 1.0  # how much the source was enlarged


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(math.log(lo), math.log(max(hi, lo)))))


def _background(rng: np.random.Generator, s: int, regions: list) -> Image.Image:
    """A crop of one real photograph (flipped, turned, colourised when grey), sometimes blended
    with a crop of a second one across a soft edge."""
    bg = _crop(rng, s, regions)
    if rng.random() < 0.3:
        other = _crop(rng, s, regions)
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = _grid(s, s)
        t = (xx - s / 2) * math.cos(a) + (yy - s / 2) * math.sin(a) - rng.uniform(-0.3, 0.3) * s
        m = 1.0 / (1.0 + np.exp(-t / max(1.0, rng.uniform(0.01, 0.08) * s)))
        bg = np.asarray(bg, np.float32) * (1 - m[..., None]) + np.asarray(other, np.float32) * m[..., None]
        bg = Image.fromarray(np.clip(bg + 0.5, 0, 255).astype(np.uint8))
    return bg


def _crop(rng: np.random.Generator, s: int, regions: list, w: Optional[int] = None, h: Optional[int] = None) -> Image.Image:
    """A random window of a random region resized to ``w`` x ``h`` (default s x s), jittered."""
    w, h = w or s, h or s
    name, arr, grey = regions[int(rng.integers(len(regions)))]
    H, W = arr.shape[:2]
    aspect = w / h
    side = rng.uniform(0.3, 1.0) * min(H, W / aspect)
    ch, cw = max(2, int(side)), max(2, int(side * aspect))
    ch, cw = min(ch, H), min(cw, W)
    y, x = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
    im = Image.fromarray(arr[y:y + ch, x:x + cw])
    turn = int(rng.integers(4))
    if turn and name not in _SCENES:  # textures and micrographs have no up; scenes do
        im = im.transpose((Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)[turn - 1])
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im = im.resize((w, h), Image.BICUBIC if im.width < w else Image.LANCZOS)
    rgb = np.asarray(im, np.float32)
    if grey and rng.random() < 0.5:  # a grey texture coloured: dark and light ends get random colours
        lo, hi = rng.uniform(0, 120, 3), rng.uniform(135, 255, 3)
        rgb = lo + (hi - lo) * rgb / 255.0
    return Image.fromarray(np.clip(_jitter(rng, rgb, grey_p=0.0) + 0.5, 0, 255).astype(np.uint8))


def _jitter(rng: np.random.Generator, rgb: np.ndarray, grey_p: float = 0.1, strength: float = 1.0) -> np.ndarray:
    """Photometric jitter of float RGB [h, w, 3]: grey (probability ``grey_p``), saturation,
    per-channel gain, contrast, brightness."""
    lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    if rng.random() < grey_p:
        rgb = np.repeat(lum[..., None], 3, 2)
    else:
        sat = 1 + strength * rng.uniform(-0.35, 0.35)
        rgb = lum[..., None] + sat * (rgb - lum[..., None])
        rgb = rgb * (1 + strength * rng.uniform(-0.1, 0.1, 3)).astype(np.float32)
    mean = float(lum.mean()) if lum.size else 0.0
    rgb = (rgb - mean) * (1 + strength * rng.uniform(-0.3, 0.3)) + mean
    return rgb + strength * rng.uniform(-30, 30)


def _tint(rng: np.random.Generator, rgb: np.ndarray, palette: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A grey patch tinted towards a palette colour (luminance kept)."""
    c = palette[int(rng.integers(len(palette)))] * rng.uniform(0.92, 1.08, 3)
    t = rng.uniform(lo, hi)
    return rgb * (1 - t + t * (c / c.mean()))


def _instance(rng: np.random.Generator, cut: _Cut, d: float, s: int, by_height: bool, max_roll: float,
              aspect: float = 0.12, palette: Optional[np.ndarray] = None, tint: tuple = (0.0, 0.0),
              grey_p: float = 0.1, cat: int = 0) -> _Item:
    """``cut`` resized so its extent's long side (height when ``by_height``) is ``d`` px, with
    aspect jitter, a flip, a roll of up to ``max_roll`` degrees, photometric jitter and blur."""
    ref = cut.ref[1] if by_height else max(cut.ref)
    f = d / ref
    a = math.exp(rng.uniform(-aspect, aspect))
    W, H = cut.rgba.size
    w, h = max(1, round(W * f * a)), max(1, round(H * f / a))
    down = w < W
    rgba = cut.rgba.resize((w, h), Image.LANCZOS if down else Image.BICUBIC)
    ext = cut.extent.resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        rgba, ext = rgba.transpose(Image.FLIP_LEFT_RIGHT), ext.transpose(Image.FLIP_LEFT_RIGHT)
    roll = float(rng.uniform(-max_roll, max_roll)) if rng.random() < 0.7 else 0.0
    if roll:
        rgba = rgba.rotate(roll, resample=Image.BICUBIC, expand=True)
        ext = ext.rotate(roll, resample=Image.BILINEAR, expand=True)
    if rgba.width > s or rgba.height > s:  # rolled past the image: shrink, keep the shape
        g = s / max(rgba.width, rgba.height)
        size = (max(1, int(rgba.width * g)), max(1, int(rgba.height * g)))
        rgba, ext = rgba.resize(size, Image.LANCZOS), ext.resize(size, Image.BILINEAR)
        f *= g
    arr = np.asarray(rgba, np.float32)
    rgb = arr[..., :3]
    if cut.grey and palette is not None and rng.random() < 0.85:
        rgb = _tint(rng, rgb, palette, *tint)
    rgb = _jitter(rng, rgb, grey_p)
    blur = 0.0
    out = Image.fromarray(np.dstack([np.clip(rgb + 0.5, 0, 255), arr[..., 3]]).astype(np.uint8), "RGBA")
    if rng.random() < 0.3:
        blur = float(rng.uniform(0.3, max(0.6, 0.025 * d)))
        out = out.filter(ImageFilter.GaussianBlur(blur))
    return _Item(cat, cut.source, out, ext, blur, f * (_LFW_UP if cut.source.startswith("lfw") else 1))


def _blob(rng: np.random.Generator, s: int, textures: list, d: float) -> _Item:
    """An unannotated distractor: a texture crop cut with one of the masks objects and faces use."""
    w, h = max(2, int(d * rng.uniform(0.5, 1.2))), max(2, int(d * rng.uniform(0.5, 1.2)))
    rgb = np.asarray(_crop(rng, s, textures, w, h))
    shape = int(rng.integers(3))
    mask = (_ellipse(h, w, (0, 0, w, h)) if shape == 0 else
            _superellipse(h, w, (0, 0, w, h), 3.0) if shape == 1 else _rounded(h, w, (0, 0, w, h), 0.18 * min(w, h)))
    alpha = _feather(mask, max(0.6, 0.02 * max(w, h)))
    return _Item(0, "texture", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), None)


def _compose(rng: np.random.Generator, s: int, bg: Image.Image, items: list[_Item], paint_objects: bool,
             grey_p: float) -> tuple[Image.Image, list]:
    """Place ``items`` (in paste order), annotate the objects by MIN_VISIBLE, paste; then the whole
    picture: grey (probability ``grey_p``), soft focus, sensor noise.

    Visibility is decided from the top down: ``cover`` holds the patches (alpha >= 128) pasted
    after the current one. An object showing at least MIN_VISIBLE of its extent keeps its full
    (amodal) box; one showing less is not pasted at all (unlike ``hwnas.data.synth``, which leaves
    such a fragment without a box), so no visible instance of a class goes unannotated."""
    placed = []
    for it in items:
        w, h = it.rgba.size
        placed.append((int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))))
    cover = np.zeros((s, s), bool)
    keep = [True] * len(items)
    found: list = []
    for k in range(len(items) - 1, -1, -1):
        it, (x, y) = items[k], placed[k]
        if it.cat:
            e = np.asarray(it.extent)
            m = e >= 128 if e.max() >= 128 else e >= max(1, int(e.max()) // 2)  # a face of 4 px: its brightest
            area = int(m.sum())
            vis = float((~cover[y:y + m.shape[0], x:x + m.shape[1]][m]).sum()) / area if area else 0.0
            if vis < MIN_VISIBLE:
                keep[k] = False
                continue
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            box = [float(x + cols[0]), float(y + rows[0]), float(cols[-1] - cols[0] + 1),
                   float(rows[-1] - rows[0] + 1)]
            found.append((it.cat, box, float(area), vis, it.source, _wider_attrs(it, box[3], vis)))
        a = np.asarray(it.rgba.getchannel("A")) >= 128
        cover[y:y + a.shape[0], x:x + a.shape[1]] |= a
    objects = found[::-1]  # in paste order
    canvas = bg.convert("RGBA")
    for it, (x, y), kept in zip(items, placed, keep):
        if kept and (paint_objects or it.cat == 0):
            canvas.alpha_composite(it.rgba, dest=(x, y))
    img = canvas.convert("RGB")
    grey = rng.random() < grey_p
    if grey:
        img = img.convert("L").convert("RGB")
    if rng.random() < 0.15:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.0))))
    arr = np.asarray(img, np.float32)
    noise = rng.standard_normal((s, s), dtype=np.float32)[..., None] * rng.uniform(0.0, 5.0)
    if rng.random() < 0.5:  # colour noise, else luminance noise only
        noise = noise + rng.standard_normal((s, s, 3), dtype=np.float32) * rng.uniform(0.0, 3.0)
    if grey:
        noise = noise[..., :1]  # a grey picture stays grey
    return Image.fromarray(np.clip(arr + noise + 0.5, 0, 255).astype(np.uint8)), objects


def _wider_attrs(it: _Item, height: float, vis: float) -> list[int]:
    """WIDER FACE attributes (blur expression illumination invalid occlusion pose): blur from the
    blur applied and how much a 25 px LFW crop was enlarged, occlusion from the visible share."""
    heavy = it.blur >= 0.08 * height or it.upscale >= 4
    normal = it.blur >= 0.03 * height or it.upscale >= 2
    occlusion = 0 if vis >= 0.95 else 1 if vis >= 0.65 else 2
    return [2 if heavy else 1 if normal else 0, 0, 0, 0, occlusion, 0]


def _image(kind: str, rng: np.random.Generator, s: int, split: str, lib: _Library,
           paint_objects: bool) -> tuple[Image.Image, list]:
    return (_faces_image if kind == "faces" else _objects_image)(rng, s, split, lib, paint_objects)


def _objects_image(rng: np.random.Generator, s: int, split: str, lib: _Library, paint: bool) -> tuple[Image.Image, list]:
    bg = _background(rng, s, lib.backgrounds["objects"])
    n = 0 if rng.random() < 0.08 else int(rng.integers(1, 9))
    top = 0.7 * s * (1.0 if n <= 2 else math.sqrt(2 / n))
    items: list[_Item] = []
    for _ in range(n):
        cls = int(rng.integers(len(OBJECT_CLASSES)))
        cuts = lib.objects[split, cls]
        cut = cuts[int(rng.integers(len(cuts)))]
        d = _loguniform(rng, 8, top)
        coin = OBJECT_CLASSES[cls] == "coin"
        items.append(_instance(rng, cut, d, s, by_height=False, max_roll=180.0 if coin else 15.0,
                               palette=_METAL if coin else None, tint=(0.0, 0.6), grey_p=0.1, cat=cls + 1))
    for _ in range(int(rng.integers(0, 4))):  # distractors, mixed into the paste order
        blob = _blob(rng, s, lib.textures, _loguniform(rng, 8, 0.4 * s))
        items.insert(int(rng.integers(len(items) + 1)), blob)
    return _compose(rng, s, bg, items, paint, grey_p=0.12)


def _faces_image(rng: np.random.Generator, s: int, split: str, lib: _Library, paint: bool) -> tuple[Image.Image, list]:
    bg = _background(rng, s, lib.backgrounds["faces"])
    n = 0 if rng.random() < 0.08 else int(min(30, np.exp(rng.uniform(0, math.log(31)))))
    top = max(6.0, 0.8 * s / math.sqrt(n)) if n else 0.0
    items: list[_Item] = []
    for _ in range(n):
        d = _loguniform(rng, 4, top)
        hires = rng.random() < (0.5 if d > 48 else 0.1)
        cut = lib.hires[split] if hires else lib.faces[split][int(rng.integers(len(lib.faces[split])))]
        items.append(_instance(rng, cut, d, s, by_height=True, max_roll=20.0, aspect=0.08, palette=_SKIN,
                               tint=(0.15, 0.55), grey_p=0.15, cat=1))
    negatives: list[_Item] = []
    for _ in range(int(rng.integers(0, 5))):  # LFW non-faces: the same crop size, mask, tint as faces
        cut = lib.nonfaces[split][int(rng.integers(len(lib.nonfaces[split])))]
        negatives.append(_instance(rng, cut, _loguniform(rng, 6, max(8.0, 0.3 * s)), s, by_height=True,
                                   max_roll=20.0, aspect=0.08, palette=_SKIN, tint=(0.15, 0.55), grey_p=0.15))
    if rng.random() < 0.4:  # real objects: a cat's face is not a (human) face
        for _ in range(int(rng.integers(1, 3))):
            cls = int(rng.choice([0, 1, 3, 4]))
            cuts = lib.objects[split, cls]
            negatives.append(_instance(rng, cuts[int(rng.integers(len(cuts)))],
                                       _loguniform(rng, 12, 0.5 * s), s, by_height=False, max_roll=15.0))
    for _ in range(int(rng.integers(0, 3))):
        negatives.append(_blob(rng, s, lib.textures, _loguniform(rng, 6, 0.3 * s)))
    for neg in negatives:
        items.insert(int(rng.integers(len(items) + 1)), neg)
    return _compose(rng, s, bg, items, paint, grey_p=0.3)
