"""Upper limits on sizes and counts a user can ask for, checked before anything is allocated.

Beyond these a request is a typo, not a plan (an input of 100000 px, a batch of 100000 images), and
would otherwise end in an out-of-memory crash minutes later or an internal error. docs/guide.md
lists them; raise one here, in one place, if a real use needs more.
"""
from __future__ import annotations

import math

from hwnas.errors import HwnasError

MAX_INPUT_SIDE = 4096  # px, each side of a detector input (--img-size, iNNN in an arch string)
MAX_BATCH = 256  # images per forward pass (--batch, --batch-size)
MAX_NUM_CLASSES = 10000  # detector classes (LVIS has 1203)
MAX_SEED = 2**31 - 1  # seeds: numpy takes < 2**32, and seeds are offset per worker, epoch and sample
MAX_COUNT = 1_000_000  # samples, trials, images, epochs, repeats: any count a command loops over
MAX_THREADS = 1024


def check_int(name: str, value: int, lo: int, hi: int, hint: str = "") -> int:
    """``value`` if ``lo <= value <= hi``, else one error line naming the option and the range."""
    if not lo <= value <= hi:
        raise HwnasError(f"{name} {value}: must be in {lo}..{hi}{'; ' + hint if hint else ''}")
    return value


def check_float(name: str, value: float, lo: float, hi: float, *, open_lo: bool = False) -> float:
    """``value`` if finite and in [lo, hi] ((lo, hi] with ``open_lo``), else one error line."""
    ok = math.isfinite(value) and (lo < value if open_lo else lo <= value) and value <= hi
    if not ok:
        raise HwnasError(f"{name} {value}: must be a number in {'(' if open_lo else '['}{lo:g}, {hi:g}]")
    return value


def check_seed(value: int, name: str = "--seed") -> int:
    return check_int(name, value, 0, MAX_SEED)


def check_batch(value: int, name: str = "--batch-size") -> int:
    return check_int(name, value, 1, MAX_BATCH)


def check_num_classes(value: int, name: str = "--num-classes") -> int:
    return check_int(name, value, 1, MAX_NUM_CLASSES)


def check_side(value: int, name: str = "--img-size") -> int:
    if not 64 <= value <= MAX_INPUT_SIDE or value % 32:
        raise HwnasError(f"{name} {value}: input sides must be multiples of 32 in 64..{MAX_INPUT_SIDE}")
    return value


def check_count(name: str, value: int, lo: int = 1) -> int:
    return check_int(name, value, lo, MAX_COUNT)
