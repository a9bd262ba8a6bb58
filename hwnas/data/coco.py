"""COCO-format detection datasets: find the files, validate every entry on load, serve samples.

Two layouts are understood (``find_split``)::

    DIR/train.json, DIR/val.json, DIR/images/            (what ``hwnas data synth`` writes)
    DIR/annotations/instances_{train,val}2017.json, DIR/train2017/, DIR/val2017/   (COCO)

Category ids (any integers, e.g. COCO's 1..90 with gaps) become contiguous labels 0..K-1 in
ascending id order; ``cat_ids[label]`` maps back when writing results. Crowd boxes are kept and
flagged (``target["crowd"]``) so the loss can ignore them; images without annotations are kept.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from hwnas.data.images import name_problem, read_rgb
from hwnas.errors import HwnasError

SPLITS = ("train", "val")
ON_ERROR = ("raise", "skip")
# Annotation tools and float round-trips leave boxes a hair past the border: up to this many
# pixels is clipped silently, more is an error.
EDGE_TOLERANCE_PX = 1.0
# Every reason an entry can be dropped with on_error="skip" (the keys of ``dataset.skipped``).
SKIP_REASONS = ("missing_image", "bad_image_entry", "unknown_image", "unknown_category", "bad_box", "box_outside")

# transform(image [3,H,W] in [0,1], boxes [N,4] xyxy, index, epoch) -> (image, boxes, keep [N] bool, scale)
Transform = Callable[[torch.Tensor, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]]


def find_split(data_dir: Path, split: str) -> tuple[Path, Path]:
    """``(json_path, image_dir)`` of ``split`` (train | val) in either supported layout."""
    if split not in SPLITS:
        raise HwnasError(f"unknown split {split!r}: valid splits are {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise HwnasError(f"data folder {data_dir} does not exist; create one with "
                         f"`hwnas data synth --out {data_dir}` or point --data at a COCO folder")
    layouts = [(data_dir / f"{split}.json", data_dir / "images"),
               (data_dir / "annotations" / f"instances_{split}2017.json", data_dir / f"{split}2017")]
    for json_path, image_dir in layouts:
        if json_path.is_file():
            if not image_dir.is_dir():
                raise HwnasError(f"{json_path} found but its image folder {image_dir} is missing")
            return json_path, image_dir
    looked = " or ".join(f"{j.relative_to(data_dir)} with {i.relative_to(data_dir)}/" for j, i in layouts)
    raise HwnasError(f"no {split} split in {data_dir}: looked for {looked}; "
                     f"create one with `hwnas data synth --out {data_dir}`")


def load_json(path: Path) -> Any:
    """``json.loads`` with an error naming the file and the position of the first bad character."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise HwnasError(f"cannot read {path}: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise HwnasError(f"{path} is not valid json ({e.msg} at line {e.lineno} column {e.colno}, char {e.pos}); "
                         f"the file is truncated or malformed: fix it or regenerate it") from None
    except UnicodeDecodeError as e:
        raise HwnasError(f"{path} is not valid json (not UTF-8 text at byte {e.start}); fix it or regenerate it") from None


class CocoDetection(torch.utils.data.Dataset):
    """A COCO instances json and its image folder, validated entry by entry on construction.

    ``on_error="raise"`` stops at the first bad entry with a message naming the file and the
    entry; ``"skip"`` drops it and counts it in ``skipped`` (reason -> count, see SKIP_REASONS).
    Whole-file problems (malformed json, missing keys, duplicate ids) always raise.

    ``dataset[i]`` is ``(image, target)``: image FloatTensor [3, H, W] in [0, 1] (not normalised;
    see ``transforms.normalize``), target a dict with ``boxes`` FloatTensor [N, 4] (x1, y1, x2, y2
    in the returned image's pixels), ``labels`` LongTensor [N] in 0..K-1, ``crowd`` BoolTensor [N],
    ``image_id`` int, ``orig_hw`` (h, w) of the file and ``scale`` (returned = original * scale).
    """

    def __init__(self, json_path: Path, image_dir: Path, transform: Optional[Transform] = None,
                 on_error: str = "raise") -> None:
        if on_error not in ON_ERROR:
            raise HwnasError(f"on_error={on_error!r}: valid values are {', '.join(ON_ERROR)}")
        self.json_path = Path(json_path)
        self.image_dir = Path(image_dir)
        self.transform = transform
        self.on_error = on_error
        self.epoch = 0
        self.skipped: dict[str, int] = {r: 0 for r in SKIP_REASONS}
        doc = load_json(self.json_path)
        self._load(doc)

    @classmethod
    def from_dir(cls, data_dir: Path, split: str, transform: Optional[Transform] = None,
                 on_error: str = "raise") -> "CocoDetection":
        json_path, image_dir = find_split(data_dir, split)
        return cls(json_path, image_dir, transform, on_error)

    # ------------------------------------------------------------------ loading
    def _bad(self, reason: str, msg: str) -> None:
        """Raise, or count ``reason`` when skipping."""
        if self.on_error == "raise":
            raise HwnasError(f"{self.json_path}: {msg}; fix the entry, or load with on_error='skip' to drop and "
                             f"count such entries")
        self.skipped[reason] += 1

    def _load(self, doc: Any) -> None:
        where = self.json_path
        if not isinstance(doc, dict):
            raise HwnasError(f"{where}: top level is a {type(doc).__name__}, not a COCO object with "
                             f"'images', 'annotations' and 'categories'")
        for key in ("images", "categories"):
            if not isinstance(doc.get(key), list):
                raise HwnasError(f"{where}: missing or non-list {key!r}; not a COCO instances file")
        anns = doc.get("annotations", [])  # image-info (test) files have none
        if not isinstance(anns, list):
            raise HwnasError(f"{where}: 'annotations' is a {type(anns).__name__}, not a list")

        cats: dict[int, str] = {}
        for k, c in enumerate(doc["categories"]):
            if not isinstance(c, dict) or not _is_int(c.get("id")):
                raise HwnasError(f"{where}: categories[{k}] has no integer 'id'")
            if c["id"] in cats:
                raise HwnasError(f"{where}: category id {c['id']} appears twice (categories[{k}])")
            cats[c["id"]] = str(c.get("name", c["id"]))
        if not cats:
            raise HwnasError(f"{where}: 'categories' is empty; a detection dataset needs at least one class")
        self.cat_ids: list[int] = sorted(cats)
        self.class_names: list[str] = [cats[i] for i in self.cat_ids]
        label_of = {cid: label for label, cid in enumerate(self.cat_ids)}

        infos: dict[int, dict] = {}
        image_at: dict[int, int] = {}
        for k, im in enumerate(doc["images"]):
            iid = im.get("id") if isinstance(im, dict) else None
            if not isinstance(im, dict) or not _is_int(iid) or not isinstance(im.get("file_name"), str) \
                    or not _is_int(im.get("width")) or not _is_int(im.get("height")) \
                    or im["width"] <= 0 or im["height"] <= 0:
                self._bad("bad_image_entry", f"images[{k}] (id {iid}) needs an integer 'id', a 'file_name' and "
                                             f"positive integer 'width' and 'height'")
                continue
            if iid in image_at:
                raise HwnasError(f"{where}: image id {iid} appears twice (images[{image_at[iid]}] and images[{k}]); "
                                 f"give each image its own id")
            image_at[iid] = k
            problem = name_problem(im["file_name"])
            if problem is not None:
                # a name from the file must not read anything outside the image folder
                self._bad("bad_image_entry", f"images[{k}] (id {iid}) file_name {im['file_name']!r} {problem}; "
                                             f"file names must stay inside the image folder {self.image_dir}")
                infos[iid] = {}  # known but dropped: its annotations go silently with it
                continue
            path = self.image_dir / im["file_name"]
            if not path.is_file():
                self._bad("missing_image", f"image id {iid}: file {path} does not exist")
                infos[iid] = {}  # known but dropped: its annotations go silently with it
                continue
            infos[iid] = {"path": path, "h": im["height"], "w": im["width"], "boxes": [], "labels": [], "crowd": []}

        # pycocotools indexes annotations by id and keeps the last of a repeated one: the first then
        # counts as missed and scores drop (perfect detections: 0.0087 instead of 1.0) without a word.
        # A whole-file problem, so raised even when skipping, before any entry is looked at.
        ann_at: dict[Any, int] = {}
        for k, a in enumerate(anns):
            aid = a.get("id") if isinstance(a, dict) else None
            if not isinstance(aid, (int, float, str)):
                continue  # no id: pycocotools' problem to name, not a duplicate
            if aid in ann_at:
                raise HwnasError(f"{where}: annotation id {aid} appears twice (annotations[{ann_at[aid]}] and "
                                 f"annotations[{k}]); give each annotation its own id")
            ann_at[aid] = k

        for k, a in enumerate(anns):
            aid = a.get("id", f"#{k}") if isinstance(a, dict) else f"#{k}"
            if not isinstance(a, dict):
                self._bad("bad_box", f"annotations[{k}] is not an object")
                continue
            iid = a.get("image_id")
            info = infos.get(iid) if _is_int(iid) else None
            if info is None:
                self._bad("unknown_image", f"annotation id {aid} refers to unknown image id {a.get('image_id')!r}")
                continue
            if not info:
                continue
            cid = a.get("category_id")
            label = label_of.get(cid) if _is_int(cid) else None
            if label is None:
                self._bad("unknown_category", f"annotation id {aid} (image id {a['image_id']}) has category id "
                                              f"{a.get('category_id')!r}, not one of {self.cat_ids}")
                continue
            box = _xyxy(a.get("bbox"))
            if box is None:
                self._bad("bad_box", f"annotation id {aid} (image id {a['image_id']}): bbox {a.get('bbox')!r} must "
                                     f"be [x, y, w, h] with w > 0 and h > 0")
                continue
            x1, y1, x2, y2 = box
            w, h = info["w"], info["h"]
            tol = EDGE_TOLERANCE_PX
            if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
                self._bad("box_outside", f"annotation id {aid} (image id {a['image_id']}, {info['path'].name}): "
                                         f"bbox {a['bbox']} lies outside the {w}x{h} image by more than {tol:g} px")
                continue
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                self._bad("bad_box", f"annotation id {aid} (image id {a['image_id']}): bbox {a['bbox']} is empty "
                                     f"inside the {w}x{h} image")
                continue
            info["boxes"].append((x1, y1, x2, y2))
            info["labels"].append(label)
            info["crowd"].append(bool(a.get("iscrowd", 0)))

        # Compact arrays per image: cheap to pickle into DataLoader workers, small for 100k images.
        self.image_ids: list[int] = []
        self._paths: list[Path] = []
        self._hw: list[tuple[int, int]] = []
        self._boxes: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._crowd: list[np.ndarray] = []
        for iid, info in infos.items():
            if not info:
                continue
            self.image_ids.append(iid)
            self._paths.append(info["path"])
            self._hw.append((info["h"], info["w"]))
            self._boxes.append(np.asarray(info["boxes"], np.float32).reshape(-1, 4))
            self._labels.append(np.asarray(info["labels"], np.int64))
            self._crowd.append(np.asarray(info["crowd"], bool))

    # ------------------------------------------------------------------ access
    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def set_epoch(self, epoch: int) -> None:
        """Epoch for the seeded augmentations and the loader's shuffle (set before iterating)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.image_ids)

    def annotations(self, index: int) -> dict[str, np.ndarray]:
        """Original-pixel ``boxes`` (xyxy), ``labels`` and ``crowd`` of one image, no file read."""
        return {"boxes": self._boxes[index], "labels": self._labels[index], "crowd": self._crowd[index]}

    def image_hw(self, index: int) -> tuple[int, int]:
        """``(h, w)`` of an image as the json gives it (checked against the file on load)."""
        return self._hw[index]

    def load_image(self, index: int) -> torch.Tensor:
        """The image file as FloatTensor [3, H, W] in [0, 1]; its size must match the json."""
        path = self._paths[index]
        arr = read_rgb(path, f"image id {self.image_ids[index]} of {self.json_path}")
        h, w = self._hw[index]
        if arr.shape[:2] != (h, w):
            raise HwnasError(f"image {path} is {arr.shape[1]}x{arr.shape[0]} but {self.json_path} says {w}x{h} "
                             f"(image id {self.image_ids[index]}); fix the entry's width and height")
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image = self.load_image(index)
        boxes = torch.from_numpy(self._boxes[index].copy())
        labels = torch.from_numpy(self._labels[index].copy())
        crowd = torch.from_numpy(self._crowd[index].copy())
        scale = 1.0
        if self.transform is not None:
            image, boxes, keep, scale = self.transform(image, boxes, index, self.epoch)
            labels, crowd = labels[keep], crowd[keep]
        target = {"boxes": boxes, "labels": labels, "crowd": crowd, "image_id": self.image_ids[index],
                  "orig_hw": self._hw[index], "scale": scale}
        return image, target


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _xyxy(bbox: Any) -> Optional[tuple[float, float, float, float]]:
    """COCO ``[x, y, w, h]`` as floats ``(x1, y1, x2, y2)``; None when malformed or w/h <= 0."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        return None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return None
    return x, y, x + w, y + h
