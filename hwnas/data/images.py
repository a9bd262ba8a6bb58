"""Reading image files, in one place: every loader gets the same pixels from the same file.

``read_rgb`` decodes to uint8 RGB whatever the file holds (8/16-bit, palette, grey, alpha, float,
CMYK); ``image_size`` reads only the header. Both refuse, in one line naming the file and the fix,
images over ``MAX_IMAGE_PIXELS``, truncated or corrupt files and pixels with no single meaning.
``name_problem`` checks a file name read from a data file (a COCO ``file_name``, a WIDER gt
name) before it is joined to its folder.

EXIF orientation is deliberately not applied: COCO and WIDER boxes refer to the pixel grid as
stored in the file (the annotation tools and the datasets' width/height fields ignore the tag),
so rotating the pixels would move every box off its object.
"""
from __future__ import annotations

import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from hwnas.errors import HwnasError

# The largest image read, in pixels (width x height). Detector inputs top out at 4096 px a side
# (hwnas.limits.MAX_INPUT_SIDE), so anything bigger is only downscaled; 2**27 (~134 MP, e.g.
# 16384 x 8192) still admits the 100+ MP photos of current phone cameras, which PIL's default
# (~89 MP) would warn about, and costs at most ~1.6 GB as the float tensor the loaders build.
# Beyond it a file is a mistake or a decompression bomb (a small file that inflates to GBs).
MAX_IMAGE_PIXELS = 1 << 27

# What PIL raises on a file it cannot decode: truncated data, broken chunks, unknown formats
# (UnidentifiedImageError is an OSError). Nothing broader: a bug here should stay a traceback.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)


def name_problem(name: object) -> Optional[str]:
    """Why ``name`` (a relative path read from a data file) could lead outside the folder it is
    joined to, as words that follow the name in a message; None when it stays inside.

    The check is on the name itself, so ``a/../../x`` is caught before any file system call.
    Links inside the folder are left alone: they were put there by whoever built the folder
    (git-annex and DVC checkouts are folders of links into a shared store), not by the data file.
    """
    if not isinstance(name, str) or not name:
        return "is empty or not text"
    if "\x00" in name:
        return "holds a NUL character"
    if "\\" in name:
        return "holds a backslash (use '/' between folders)"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "is absolute"
    if ".." in name.split("/"):
        return "has a '..' component"
    return None


def _where(path: Path, where: str) -> str:
    return f"{path} ({where})" if where else str(path)


def _fix(where: str, with_what: str = "") -> str:
    return f"replace the file{with_what}" + (" or remove its entry" if where else "")


def _too_large(path: Path, where: str, pixels: int, size: str = "") -> HwnasError:
    limit, setting = MAX_IMAGE_PIXELS, "hwnas.data.images.MAX_IMAGE_PIXELS"
    if pixels <= limit and Image.MAX_IMAGE_PIXELS is not None:
        # refused by PIL under a lower PIL.Image.MAX_IMAGE_PIXELS set in this process, not by ours
        limit, setting = 2 * Image.MAX_IMAGE_PIXELS, "twice PIL.Image.MAX_IMAGE_PIXELS as set in this process"
    return HwnasError(f"cannot read image {_where(path, where)}: it has {size}{pixels} pixels, over the limit of "
                      f"{limit} ({setting}); downscale it (and its boxes) below the limit, or {_fix(where)}")


class _Open:
    """``Image.open`` with the pixel limit applied to the header, before anything is decoded.

    PIL's own guard (``Image.MAX_IMAGE_PIXELS``, ~89 MP by default) warns between its limit and
    twice that and raises beyond: the warning is silenced here (ours is the limit that counts,
    and a warning would print a second line), the error becomes ours with the same wording.
    """

    def __init__(self, path: Path, where: str) -> None:
        self.path, self.where = Path(path), where
        self.im: Optional[Image.Image] = None

    def __enter__(self) -> Image.Image:
        path, where = self.path, self.where
        if not path.is_file():
            raise HwnasError(f"cannot read image {_where(path, where)}: it does not exist or is not a file; "
                             f"restore it" + (" or remove its entry" if where else ""))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                self.im = Image.open(path)
        except Image.DecompressionBombError as e:
            m = re.search(r"\((\d+) pixels\)", str(e))
            raise _too_large(path, where, int(m.group(1)) if m else 2 * (Image.MAX_IMAGE_PIXELS or 0)) from None
        except UnidentifiedImageError:
            raise HwnasError(f"cannot read image {_where(path, where)}: not an image file PIL can read (empty, cut "
                             f"short or another format); {_fix(where, ' with a JPEG or PNG')}") from None
        except _DECODE_ERRORS as e:
            raise HwnasError(f"cannot read image {_where(path, where)}: the file is truncated or corrupt ({e}); "
                             f"{_fix(where)}") from None
        w, h = self.im.size
        if w * h > MAX_IMAGE_PIXELS:
            self.im.close()
            raise _too_large(path, where, w * h, f"{w}x{h} = ")
        return self.im

    def __exit__(self, *exc) -> None:
        if self.im is not None:
            self.im.close()


def image_size(path: Path, where: str = "") -> tuple[int, int]:
    """``(height, width)`` of an image from its header (nothing decoded), limit checked.

    ``where`` says what the file is to the user (``"image id 3 of val.json"``) and goes into
    messages after the path."""
    with _Open(path, where) as im:
        w, h = im.size
    return int(h), int(w)


def read_rgb(path: Path, where: str = "") -> np.ndarray:
    """The image file as a writable uint8 array [H, W, 3], RGB, in its stored orientation.

    8-bit files read as they are; alpha is dropped (not composited: the detector never saw a
    background colour); 16-bit samples are scaled 0..65535 -> 0..255 rounded (PIL's own
    ``convert("RGB")`` clips them to white); floats must lie in 0..1 (black..white); 32-bit
    integers must hold 16-bit values. ``where`` as for ``image_size``.
    """
    path = Path(path)
    with _Open(path, where) as im:
        try:
            im.load()
            arr = _to_rgb(im, path, where)
        except Image.DecompressionBombError:  # some formats check again per frame or tile
            raise _too_large(path, where, im.size[0] * im.size[1]) from None
        except _DECODE_ERRORS as e:
            raise HwnasError(f"cannot read image {_where(path, where)}: the file is truncated or corrupt ({e}); "
                             f"{_fix(where)}") from None
    return arr


def _scale16(a: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255 rounded to nearest (x / 257): 65535 is white, as 255 is in 8 bits."""
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _grey(a: np.ndarray) -> np.ndarray:
    return np.repeat(a[..., None], 3, axis=2)


def _to_rgb(im: Image.Image, path: Path, where: str) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16"):  # 16-bit grey: I;16, I;16L, I;16B, I;16N
        return _grey(_scale16(np.asarray(im)))
    if mode == "I":
        # 32-bit integers: what older PIL gives for 16-bit PNGs and what 16/32-bit TIFFs open as.
        # Read as 16-bit when the values fit; beyond that there is no agreed white level.
        a = np.asarray(im)
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise HwnasError(f"cannot read image {_where(path, where)}: 32-bit integer pixels outside 0..65535 (min "
                             f"{int(a.min())}, max {int(a.max())}); save it as an 8-bit or 16-bit image")
        return _grey(_scale16(a))
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if a.size and (not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0):
            raise HwnasError(f"cannot read image {_where(path, where)}: float pixels outside 0..1 (or NaN), and "
                             f"float images are read as 0 = black, 1 = white; save it as an 8-bit or 16-bit image")
        return _grey(np.round(a * 255.0).astype(np.uint8))
    if mode == "RGB":
        # also 16-bit RGB PNGs: PIL decodes those to their high bytes (v // 256), which is at most
        # one level from the rounded v / 257 and never clipped, so they need nothing more here
        return np.array(im)
    try:
        # 8-bit everything else: L, 1, P/PA (palette), LA, RGBA/RGBX/RGBa (alpha dropped), CMYK
        # (PIL's conversion; Adobe's inverted CMYK JPEGs are undone by the decoder), YCbCr
        rgb = im.convert("RGB")
    except ValueError:
        raise HwnasError(f"cannot read image {_where(path, where)}: pixel mode {mode} has no conversion to RGB; "
                         f"save it as an 8-bit RGB JPEG or PNG") from None
    return np.array(rgb)
