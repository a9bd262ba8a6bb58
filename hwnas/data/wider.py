"""WIDER FACE in its official layout, served with the same interface as ``CocoDetection``.

Layout (as the official archives unpack)::

    ROOT/wider_face_split/wider_face_{train,val}_bbx_gt.txt
    ROOT/WIDER_{train,val}/images/<event>/<name>.jpg

The gt txt repeats, per image: the path relative to ``images/`` (``0--Parade/0_Parade_x_465.jpg``),
the face count N, then N lines ``x1 y1 w h blur expression illumination invalid occlusion pose``.
An image without faces has count 0 followed by one placeholder line of ten zeros that is not a
face. ``read_wider_gt`` keeps every face exactly as written (zero-size and invalid faces
included: the official evaluation needs them) but refuses what is never valid: a negative width
or height, and a name that would lead out of the image folder (absolute, ``..``, backslash: the
name becomes the path of the image read and of the prediction file written). ``WiderFace``
checks faces against the image sizes and decides what becomes a training target (see
``WiderFace.annotations``).

``open_dataset`` picks WIDER FACE or COCO from what a data folder holds; ``coco_to_wider`` turns a
generated COCO faces set (``hwnas data synth --kind faces``) into WIDER images for the WIDER
evaluator (``hwnas.evaluate.wider``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from hwnas.data.coco import EDGE_TOLERANCE_PX, ON_ERROR, SPLITS, CocoDetection, Transform, load_json
from hwnas.data.images import image_size, name_problem, read_rgb
from hwnas.errors import HwnasError
from hwnas.fileio import write_atomic

SPLIT_DIR = "wider_face_split"
# Every reason an entry can be dropped with on_error="skip" (the keys of ``WiderFace.skipped``).
SKIP_REASONS = ("bad_image_entry", "missing_image", "box_outside")
ATTRS = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
INVALID = ATTRS.index("invalid")
FACE_FIELDS = 4 + len(ATTRS)
FACE_LINE = "x1 y1 w h " + " ".join(ATTRS)
SYNTH_EVENT = "synth"


def gt_file(root: Path, split: str) -> Path:
    return Path(root) / SPLIT_DIR / f"wider_face_{split}_bbx_gt.txt"


def image_root(root: Path, split: str) -> Path:
    return Path(root) / f"WIDER_{split}" / "images"


@dataclass(frozen=True, eq=False)  # eq on arrays would be ambiguous: compare fields explicitly
class WiderImage:
    """One image of a WIDER gt file: ``name`` relative to ``images/`` (``<event>/<file>``),
    ``event`` its first component, ``boxes`` float32 [N, 4] x1, y1, w, h as written and ``attrs``
    int32 [N, 6] in ``ATTRS`` order (zeros when not given). The arrays are read-only."""

    name: str
    event: str
    boxes: np.ndarray
    attrs: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        problem = name_problem(self.name)
        if problem is not None:
            # the name becomes a path twice: the image read and the prediction file written
            raise HwnasError(f"WIDER image name {self.name!r} {problem}; names must stay inside the image folder")
        if "/" not in self.name or self.name.split("/")[0] != self.event or self.event in ("", ".") \
                or any(c.isspace() for c in self.name):
            raise HwnasError(f"WIDER image name {self.name!r} (event {self.event!r}) must be '<event>/<file>' "
                             f"without spaces, its first component the event")
        boxes = np.array(self.boxes, np.float32).reshape(-1, 4) if np.size(self.boxes) else np.zeros((0, 4), np.float32)
        attrs = np.zeros((len(boxes), len(ATTRS)), np.int32) if self.attrs is None else \
            np.array(self.attrs, np.int32).reshape(-1, len(ATTRS))
        if len(attrs) != len(boxes):
            raise HwnasError(f"WIDER image {self.name}: {len(boxes)} boxes but {len(attrs)} attribute rows")
        if not np.isfinite(boxes).all():
            raise HwnasError(f"WIDER image {self.name}: boxes hold NaN or infinity")
        negative = np.flatnonzero((boxes[:, 2] < 0) | (boxes[:, 3] < 0))
        if negative.size:
            k = int(negative[0])
            raise HwnasError(f"WIDER image {self.name}: face {k + 1} has a negative width or height "
                             f"({_num(boxes[k, 2])} x {_num(boxes[k, 3])}); boxes are x1 y1 w h, not x1 y1 x2 y2")
        boxes.setflags(write=False)
        attrs.setflags(write=False)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "attrs", attrs)

    @property
    def invalid(self) -> np.ndarray:
        return self.attrs[:, INVALID] != 0


def wider_image(name: str, boxes: Any, attrs: Any = None) -> WiderImage:
    """A ``WiderImage`` with its event taken from ``name``."""
    return WiderImage(name, str(name).split("/")[0], boxes, attrs)


# ---------------------------------------------------------------------------- the gt txt
class _BadEntry(Exception):
    """One malformed image entry: ``line`` (1-based) is where it went wrong, ``resume`` the line
    index from which to look for the next entry when skipping."""

    def __init__(self, line: int, msg: str, resume: int) -> None:
        super().__init__(msg)
        self.line, self.msg, self.resume = line, msg, resume


def _is_name(line: str) -> bool:
    # A name is one token with a '/': count lines (one number) and face lines (ten) never are.
    return "/" in line and len(line.split()) == 1


def _face(tokens: list[str]) -> Optional[tuple[list[float], list[int]]]:
    """Ten fields as (box, attrs); None when malformed (box not finite numbers, attrs not integers)."""
    if len(tokens) != FACE_FIELDS:
        return None
    try:
        box = [float(t) for t in tokens[:4]]
        attrs = [int(t) for t in tokens[4:]]
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in box):
        return None
    return box, attrs


def _parse_entry(lines: list[str], i: int) -> tuple[WiderImage, int]:
    """The entry starting at line index ``i``: ``(image, index after it)`` or ``_BadEntry``."""
    name = lines[i].strip()
    if not _is_name(name):
        hint = " (more face lines than the previous image's count?)" if _face(name.split()) else ""
        raise _BadEntry(i + 1, f"expected an image path '<event>/<file>.jpg', got {name[:60]!r}{hint}", i + 1)
    problem = name_problem(name)
    if problem is not None:
        raise _BadEntry(i + 1, f"image name {name[:80]!r} {problem}; names in the gt stay inside the image folder",
                        i + 1)
    if i + 1 >= len(lines):
        raise _BadEntry(i + 1, f"the file ends after image {name}: its face count is missing", i + 1)
    count_tok = lines[i + 1].strip()
    try:
        count = int(count_tok)
    except ValueError:
        count = -1
    if count < 0:
        raise _BadEntry(i + 2, f"face count {count_tok[:40]!r} of {name} is not a whole number >= 0", i + 1)
    j = i + 2
    if count == 0:
        # The official files follow a zero count with one line of ten zeros that is not a face;
        # other tools leave it out, so it is consumed only when present.
        if j < len(lines):
            face = _face(lines[j].split())
            if face is not None:
                if any(face[0]) or any(face[1]):
                    raise _BadEntry(j + 1, f"{name} has face count 0 but line {j + 1} holds a face "
                                           f"{lines[j].strip()!r}; correct the count on line {i + 2}", j)
                j += 1
        return wider_image(name, np.zeros((0, 4), np.float32)), j
    boxes, attrs = [], []
    for k in range(count):
        if j + k >= len(lines):
            raise _BadEntry(j + k, f"the file ends after face {k} of {count} of {name}; "
                                   f"is its face count on line {i + 2} right?", j + k)
        tokens = lines[j + k].split()
        face = _face(tokens)
        if face is None:
            what = f"has {len(tokens)} fields" if len(tokens) != FACE_FIELDS else "is not numbers"
            raise _BadEntry(j + k + 1, f"face {k + 1} of {count} of {name} {what}; expected ten integers "
                                       f"'{FACE_LINE}' (is the face count on line {i + 2} right?)", j + k)
        w, h = face[0][2:]
        if w < 0 or h < 0:
            # zero-size faces are in the official gt (kept for the evaluation); negative ones never
            raise _BadEntry(j + k + 1, f"face {k + 1} of {count} of {name} has a negative width or height "
                                       f"({_num(w)} x {_num(h)}); faces are 'x1 y1 w h' with w, h >= 0, not "
                                       f"x1 y1 x2 y2", j + k + 1)
        boxes.append(face[0])
        attrs.append(face[1])
    return wider_image(name, boxes, attrs), j + count


def _parse_gt(path: Path, on_error: str) -> tuple[list[WiderImage], list[int], int]:
    """``(images, 1-based line of each image's name, number of skipped entries)``."""
    if on_error not in ON_ERROR:
        raise HwnasError(f"on_error={on_error!r}: valid values are {', '.join(ON_ERROR)}")
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise HwnasError(f"cannot read WIDER gt file {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise HwnasError(f"{path} is not a WIDER gt file (not UTF-8 text at byte {e.start}); "
                         f"fix or replace it") from None
    lines = text.splitlines()  # \n, \r\n and \r alike; trailing spaces go with .strip()/.split()
    images: list[WiderImage] = []
    name_lines: list[int] = []
    seen: dict[str, int] = {}
    skipped = 0
    i = 0
    while i < len(lines):
        if not lines[i].strip():  # blank lines between entries (a trailing one is common)
            i += 1
            continue
        start = i
        try:
            image, i = _parse_entry(lines, i)
        except _BadEntry as e:
            if on_error == "raise":
                raise HwnasError(f"{path} line {e.line}: {e.msg}; fix the file, or load with on_error='skip' "
                                 f"to drop and count such entries") from None
            skipped += 1
            i = max(e.resume, start + 1)
            while i < len(lines) and not _is_name(lines[i].strip()):
                i += 1
            continue
        if image.name in seen:
            raise HwnasError(f"{path} line {start + 1}: image {image.name} is listed twice (first on line "
                             f"{seen[image.name]}); merge its faces into one entry")
        seen[image.name] = start + 1
        images.append(image)
        name_lines.append(start + 1)
    return images, name_lines, skipped


def read_wider_gt(path: Path, on_error: str = "raise") -> list[WiderImage]:
    """Every image entry of an official ``wider_face_*_bbx_gt.txt``, faces exactly as written.

    A malformed entry raises a one-line error naming the file and line; with ``on_error="skip"``
    it is dropped (``WiderFace`` counts them). A name listed twice always raises.
    """
    return _parse_gt(path, on_error)[0]


def _num(v: float) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else repr(v)


def format_wider_gt(images: list[WiderImage]) -> str:
    out: list[str] = []
    for im in images:
        out += [im.name, str(len(im.boxes))]
        if len(im.boxes) == 0:
            out.append(" ".join(["0"] * FACE_FIELDS))  # the official placeholder, not a face
        for box, attrs in zip(im.boxes, im.attrs):
            out.append(" ".join([_num(v) for v in box] + [str(int(a)) for a in attrs]))
    return "\n".join(out) + "\n"


def write_wider_gt(path: Path, images: list[WiderImage]) -> None:
    """Write ``images`` in the official gt format (zero-face placeholder included), atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HwnasError(f"cannot create folder {path.parent} for {path.name}: {e.strerror}") from None
    write_atomic(path, format_wider_gt(images))


# ---------------------------------------------------------------------------- the dataset
class WiderFace(torch.utils.data.Dataset):
    """A WIDER FACE split, with the interface of ``CocoDetection`` (one class, ``face``).

    Construction parses the gt txt, checks every image file exists and reads its size from the
    file header (nothing decoded: ~0.5 s for the 12880 training images) to check every face with
    area against it, as ``CocoDetection`` checks boxes against the json's sizes: up to
    ``EDGE_TOLERANCE_PX`` past the border is clipped, more is an error. ``on_error="raise"`` stops
    at the first malformed entry, missing image or face outside its image, naming the file and
    line; ``"skip"`` drops it and counts it in ``skipped`` (see SKIP_REASONS; a face outside drops
    that face only, from training and from scoring alike).

    ``dataset[i]`` is ``(image, target)`` exactly as for ``CocoDetection``. ``json_path`` is the gt
    txt (named as CocoDetection's annotation file so messages and callers work with either).
    """

    def __init__(self, root: Path, split: str, transform: Optional[Transform] = None,
                 on_error: str = "raise") -> None:
        if on_error not in ON_ERROR:
            raise HwnasError(f"on_error={on_error!r}: valid values are {', '.join(ON_ERROR)}")
        if split not in SPLITS:
            raise HwnasError(f"unknown split {split!r}: valid splits are {', '.join(SPLITS)}")
        self.root = Path(root)
        self.split = split
        self.gt_path = gt_file(self.root, split)
        self.image_dir = image_root(self.root, split)
        self.transform = transform
        self.on_error = on_error
        self.epoch = 0
        self.class_names: list[str] = ["face"]
        self.cat_ids: list[int] = [1]
        self.skipped: dict[str, int] = {r: 0 for r in SKIP_REASONS}
        if not self.gt_path.is_file():
            raise HwnasError(f"no WIDER FACE {split} split in {self.root}: {self.gt_path} is missing; unpack "
                             f"wider_face_split.zip into {self.root}")
        if not self.image_dir.is_dir():
            raise HwnasError(f"{self.gt_path} found but its image folder {self.image_dir} is missing; unpack "
                             f"WIDER_{split}.zip into {self.root}")
        images, lines, self.skipped["bad_image_entry"] = _parse_gt(self.gt_path, on_error)
        self._images: list[WiderImage] = []
        self._paths: list[Path] = []
        self._lines: list[int] = []
        self._hw: list[tuple[int, int]] = []
        self._dropped: list[np.ndarray] = []  # per image: faces dropped as outside it (on_error="skip")
        for image, line in zip(images, lines):
            path = self.image_dir / image.name
            if not path.is_file():
                if on_error == "raise":
                    raise HwnasError(f"{self.gt_path} line {line}: image {path} does not exist; restore it, or "
                                     f"load with on_error='skip' to drop and count such entries")
                self.skipped["missing_image"] += 1
                continue
            hw = image_size(path, f"{self.gt_path} line {line}")
            outside = faces_outside(image.boxes, hw)
            if outside.any():
                k = int(np.flatnonzero(outside)[0])
                if on_error == "raise":
                    x, y, w, h = (_num(v) for v in image.boxes[k])
                    raise HwnasError(f"{self.gt_path} line {line + 2 + k}: face {k + 1} of {len(image.boxes)} of "
                                     f"{image.name} ({x} {y} {w} {h}) lies outside the {hw[1]}x{hw[0]} image by "
                                     f"more than {EDGE_TOLERANCE_PX:g} px; fix the face line, or load with "
                                     f"on_error='skip' to drop and count such faces")
                self.skipped["box_outside"] += int(outside.sum())
            self._images.append(image)
            self._paths.append(path)
            self._lines.append(line)
            self._hw.append(hw)
            self._dropped.append(outside)
        self.image_ids: list[int] = list(range(1, len(self._images) + 1))
        self._targets = [_training_targets(im, hw, drop) for im, hw, drop in zip(self._images, self._hw, self._dropped)]

    @classmethod
    def from_dir(cls, root: Path, split: str, transform: Optional[Transform] = None,
                 on_error: str = "raise") -> "WiderFace":
        return cls(root, split, transform, on_error)

    @property
    def json_path(self) -> Path:
        return self.gt_path

    @property
    def num_classes(self) -> int:
        return 1

    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def set_epoch(self, epoch: int) -> None:
        """Epoch for the seeded augmentations and the loader's shuffle (set before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._images)

    def wider_images(self) -> list[WiderImage]:
        """The parsed gt of the images kept, every face as written (for ``hwnas.evaluate.wider``; the
        faces dropped as outside their image are in ``dropped_faces``)."""
        return list(self._images)

    def dropped_faces(self, index: int) -> np.ndarray:
        """bool [N] over the faces of ``wider_images()[index]``: dropped as outside the image."""
        return self._dropped[index]

    def image_hw(self, index: int) -> tuple[int, int]:
        """``(h, w)`` of an image, from its file header at construction."""
        return self._hw[index]

    def annotations(self, index: int) -> dict[str, np.ndarray]:
        """Training targets of one image, original pixels, no file read: ``boxes`` xyxy float32,
        ``labels`` (all 0) and ``crowd``.

        Faces with w <= 0 or h <= 0 are left out: a box without area cannot be regressed (the
        evaluators still see them, as gt nobody is asked to find). ``invalid`` faces are flagged
        crowd, which the losses ignore (neither positive nor negative): WIDER marks faces that
        cannot be recognised as invalid, and the official evaluation counts a detection of one
        neither as a hit nor as a false positive, so training should not push either way. Boxes
        within ``EDGE_TOLERANCE_PX`` of the border are clipped to the image (as ``CocoDetection``
        does); faces dropped as outside it (``dropped_faces``) are not targets.
        """
        boxes, crowd = self._targets[index]
        return {"boxes": boxes, "labels": np.zeros(len(boxes), np.int64), "crowd": crowd}

    def load_image(self, index: int) -> torch.Tensor:
        """The image file as FloatTensor [3, H, W] in [0, 1]."""
        arr = read_rgb(self._paths[index], f"{self.gt_path} line {self._lines[index]}")
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image = self.load_image(index)
        ann = self.annotations(index)
        boxes = torch.from_numpy(ann["boxes"].copy())
        labels = torch.from_numpy(ann["labels"])
        crowd = torch.from_numpy(ann["crowd"].copy())
        scale = 1.0
        if self.transform is not None:
            image, boxes, keep, scale = self.transform(image, boxes, index, self.epoch)
            labels, crowd = labels[keep], crowd[keep]
        target = {"boxes": boxes, "labels": labels, "crowd": crowd, "image_id": self.image_ids[index],
                  "orig_hw": self.image_hw(index), "scale": scale}
        return image, target

    def coco_gt(self) -> dict:
        """The split as a COCO instances dict for pycocotools (sizes from the headers read at construction).

        Every face is an annotation (``bbox`` x, y, w, h as written) but those dropped as outside
        the image (``dropped_faces``). Invalid faces and faces without area are ``iscrowd`` 1:
        pycocotools then neither demands them nor counts a detection on an invalid one as a false
        positive, as the WIDER protocol does.
        """
        images, anns = [], []
        for index, (iid, im) in enumerate(zip(self.image_ids, self._images)):
            h, w = self.image_hw(index)
            images.append({"id": iid, "file_name": im.name, "width": w, "height": h})
            kept = ~self._dropped[index]
            for box, invalid in zip(im.boxes[kept].tolist(), im.invalid[kept].tolist()):
                empty = box[2] <= 0 or box[3] <= 0
                anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": 1, "bbox": box,
                             "area": max(box[2], 0.0) * max(box[3], 0.0), "iscrowd": int(invalid or empty)})
        return {"images": images, "annotations": anns,
                "categories": [{"id": 1, "name": "face", "supercategory": "person"}]}


def faces_outside(boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """bool [N]: faces (x1, y1, w, h) with area that lie outside an h x w image by more than
    ``EDGE_TOLERANCE_PX``, the rule ``CocoDetection`` applies to boxes. Zero-size faces are never
    outside: the official gt holds them (invalid, at odd places) and its evaluation needs them."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    h, w = hw
    tol = EDGE_TOLERANCE_PX
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    area = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    return area & ((x1 < -tol) | (y1 < -tol) | (x2 > w + tol) | (y2 > h + tol))


def _training_targets(im: WiderImage, hw: tuple[int, int], dropped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes xyxy float32, crowd bool)`` of the faces with area inside the image, clipped to it
    (see ``WiderFace.annotations``)."""
    b = im.boxes.astype(np.float64)
    xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1).reshape(-1, 4)
    h, w = hw
    xyxy = np.clip(xyxy, 0.0, [w, h, w, h])  # within the tolerance: the hair past the border goes
    keep = ~dropped & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    return xyxy[keep].astype(np.float32), im.invalid[keep].copy()


def open_dataset(data_dir: Path, split: str, transform: Optional[Transform] = None,
                 on_error: str = "raise") -> Union[WiderFace, CocoDetection]:
    """``WiderFace`` when ``data_dir/wider_face_split/`` exists, else ``CocoDetection.from_dir``."""
    data_dir = Path(data_dir)
    if (data_dir / SPLIT_DIR).is_dir():
        return WiderFace(data_dir, split, transform, on_error)
    return CocoDetection.from_dir(data_dir, split, transform, on_error)


def coco_to_wider(coco: Union[Path, str, dict]) -> list[WiderImage]:
    """A COCO faces dataset (a json path or a loaded dict; e.g. ``hwnas data synth --kind faces``)
    as WIDER images named ``synth/<file_name>`` (event ``synth``), in the order of ``images``.

    Only the ``face`` category is taken (or the only category, whatever its name). Attributes are
    zero except ``invalid``, which is set for ``iscrowd`` boxes (there are none in generated sets):
    the WIDER evaluator then ignores them as COCO would.
    """
    where = "COCO dict" if isinstance(coco, dict) else str(coco)
    doc = coco if isinstance(coco, dict) else load_json(Path(coco))
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("categories"), list) or not isinstance(doc.get("annotations", []), list):
        raise HwnasError(f"{where}: not a COCO instances file (needs lists 'images', 'annotations', 'categories')")
    cats = [c for c in doc["categories"] if isinstance(c, dict)]
    face_ids = {c.get("id") for c in cats if str(c.get("name", "")).lower() == "face"}
    if not face_ids and len(cats) == 1:
        face_ids = {cats[0].get("id")}
    if not face_ids:
        names = ", ".join(repr(c.get("name")) for c in cats)
        raise HwnasError(f"{where}: no 'face' category (categories: {names or 'none'}); generate faces with "
                         f"`hwnas data synth --kind faces`")
    files: dict[Any, str] = {}
    for k, im in enumerate(doc["images"]):
        fname = im.get("file_name") if isinstance(im, dict) else None
        if not isinstance(im, dict) or "id" not in im or not isinstance(fname, str) or not fname \
                or any(c.isspace() for c in fname):
            raise HwnasError(f"{where}: images[{k}] needs an 'id' and a 'file_name' without spaces")
        problem = name_problem(fname)
        if problem is not None:
            raise HwnasError(f"{where}: images[{k}] file_name {fname!r} {problem}; file names must stay inside the "
                             f"image folder")
        if im["id"] in files:
            raise HwnasError(f"{where}: image id {im['id']} appears twice (images[{k}])")
        files[im["id"]] = fname
    faces: dict[Any, list] = {iid: [] for iid in files}
    for k, a in enumerate(doc.get("annotations", [])):
        if not isinstance(a, dict) or a.get("category_id") not in face_ids:
            continue
        bbox = a.get("bbox")
        if a.get("image_id") not in faces:
            raise HwnasError(f"{where}: annotations[{k}] refers to unknown image id {a.get('image_id')!r}")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
            raise HwnasError(f"{where}: annotations[{k}] bbox {bbox!r} must be four finite numbers [x, y, w, h]")
        if bbox[2] < 0 or bbox[3] < 0:
            raise HwnasError(f"{where}: annotations[{k}] bbox {bbox!r} has a negative width or height; COCO boxes "
                             f"are [x, y, w, h]")
        attrs = [0] * len(ATTRS)
        attrs[INVALID] = int(bool(a.get("iscrowd", 0)))
        faces[a["image_id"]].append((list(bbox), attrs))
    return [wider_image(f"{SYNTH_EVENT}/{files[iid]}", [b for b, _ in faces[iid]], [t for _, t in faces[iid]])
            for iid in files]
