"""Checkpoint files: save, load (``weights_only``, never unpickling code), validate.

A checkpoint is a plain dict of tensors, strings and numbers written by ``torch.save``; in memory
it is a frozen :class:`Checkpoint`, whose arch is already parsed. Every command that reads one
(train's resume, eval, export, bench, infer, the search's candidates) reads it through
:func:`load_checkpoint`, so each check below holds for all of them.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from hwnas.errors import HwnasError
from hwnas.fileio import write_atomic
from hwnas.limits import MAX_COUNT, MAX_NUM_CLASSES
from hwnas.spec.arch import Arch

if TYPE_CHECKING:  # the hint only: reading or writing a checkpoint needs no detector built
    from hwnas.models import Detector

# 2 adds "digest" (see state_digest); 1, written by earlier versions, has none and still loads.
CHECKPOINT_FORMAT = "hwnas-checkpoint/2"
FORMATS = ("hwnas-checkpoint/1", CHECKPOINT_FORMAT)


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds. ``state_dict`` is the deployable form (training-time
    parametrisations folded in; with EMA, the averaged weights); ``train_state_dict`` the module as
    the loop held it, only where the two differ; ``ema_state_dict`` the averaged module as the loop
    held it (with EMA). The optimiser, scheduler, AMP scaler and random state are there for a resume."""

    arch: Arch
    class_names: tuple[str, ...]
    epoch: int  # finished epochs, counted from 0
    state_dict: dict[str, torch.Tensor]
    train_state_dict: dict[str, torch.Tensor] | None = None
    ema_state_dict: dict[str, torch.Tensor] | None = None
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    config: dict | None = None  # the TrainConfig, as a dict
    metrics: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)
    format: str = CHECKPOINT_FORMAT  # the format it was read in (a save always writes the current one)

    def to_dict(self) -> dict[str, Any]:
        """The stored form, with a fresh digest (a format-1 checkpoint saved again becomes format 2)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "arch": str(self.arch),
            "class_names": list(self.class_names),
            "epoch": self.epoch,
            "state_dict": self.state_dict,
            "digest": state_digest(str(self.arch), list(self.class_names), self.epoch, self.state_dict),
            "train_state_dict": self.train_state_dict,
            "ema_state_dict": self.ema_state_dict,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,  # AMP loss scale ({} when off)
            "config": self.config,
            "metrics": self.metrics,
            "rng": self.rng,
        }

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        torch.save(self.to_dict(), buf)
        write_atomic(Path(path), buf.getvalue())


# ----------------------------------------------------------------------------- writing
def _parametrized(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m) for m in model.modules())


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with parametrisations (weight standardisation) folded in: loads into a plain
    ``Detector.from_arch``, the module the latency table timed."""
    out = {}
    for k, v in model.state_dict().items():
        if ".parametrizations.weight.original" in k:
            continue
        out[k] = v
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            out[f"{name}.weight"] = m.weight.detach().clone()
    return out


def save_checkpoint(path: Path, *, model: nn.Module, arch: Arch, class_names: list[str], epoch: int,
                    optimizer=None, scheduler=None, scaler=None, config=None, metrics: dict | None = None,
                    ema: nn.Module | None = None) -> None:
    """Write ``model`` (and, for a resume, the training state) to ``path`` atomically.
    ``config`` is the run's TrainConfig (a frozen dataclass). With ``ema`` (a
    ``torch.optim.swa_utils.AveragedModel`` of ``model``) the deployable weights are the averaged ones."""
    Checkpoint(
        arch=arch,
        class_names=tuple(class_names),
        epoch=epoch,
        state_dict=plain_state_dict(model if ema is None else ema.module),
        # Only parametrised or averaged models differ in training form; the rest would store the weights twice.
        train_state_dict=model.state_dict() if _parametrized(model) or ema is not None else None,
        ema_state_dict=None if ema is None else ema.state_dict(),
        optimizer=optimizer.state_dict() if optimizer else None,
        scheduler=scheduler.state_dict() if scheduler else None,
        scaler=scaler.state_dict() if scaler is not None else None,
        config=asdict(config) if config else None,
        metrics=metrics or {},
        rng={"torch": torch.get_rng_state()},
    ).save(path)


def state_digest(arch: str, class_names: list[str], epoch: int, state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over what decides the deployed model: the arch string, the class names, the epoch and
    every tensor of ``state_dict`` (name, dtype, shape and bytes, in sorted key order).

    A checkpoint stores it so that an edit that keeps every tensor shape (``i64`` -> ``i128``, a
    moved stride) cannot load silently as a model other than the one trained. The bytes are hashed
    in place (a CPU contiguous tensor viewed as uint8 exposes its buffer): no copies, about 0.05 s
    for the 84 MB of resnet18-fpn-retinanet with 80 classes.
    """
    tensors = []
    for name in sorted(state_dict):
        t = state_dict[name].detach()
        if t.device.type != "cpu":
            t = t.cpu()
        tensors.append((name, t.contiguous()))  # a no-op for the (contiguous) tensors of a state dict
    # The lengths in the header make the byte stream after it unambiguous.
    header = json.dumps({"arch": arch, "class_names": list(class_names), "epoch": epoch,
                         "tensors": [[n, str(t.dtype), list(t.shape), t.numel() * t.element_size()]
                                     for n, t in tensors]}, separators=(",", ":"))
    h = hashlib.sha256(header.encode())
    for _, t in tensors:
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# ----------------------------------------------------------------------------- reading
def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# What load_checkpoint requires of each field before anything reads it.
_FIELDS: dict[str, Callable[[object], bool]] = {
    "arch": lambda v: isinstance(v, str),
    "class_names": lambda v: isinstance(v, list) and 1 <= len(v) <= MAX_NUM_CLASSES
    and all(isinstance(c, str) for c in v),
    "epoch": _is_count,
    "state_dict": lambda v: isinstance(v, dict) and all(isinstance(k, str) and torch.is_tensor(t) for k, t in v.items()),
    "train_state_dict": lambda v: v is None or (isinstance(v, dict) and all(torch.is_tensor(t) for t in v.values())),
    "ema_state_dict": lambda v: v is None or (isinstance(v, dict) and all(torch.is_tensor(t) for t in v.values())),
    "config": lambda v: v is None or isinstance(v, dict),
    "metrics": lambda v: isinstance(v, dict),
    "rng": lambda v: isinstance(v, dict),
}


def _all_finite(t: torch.Tensor) -> bool:
    # A sum is finite only if every element is (a NaN or an infinity carries through), and it
    # allocates nothing: isfinite().all() on every tensor of a just-loaded 80 MB checkpoint took
    # 0.1-0.8 s here. Only a sum that is not finite (a NaN, or huge finite values overflowing)
    # pays for the exact element-wise test.
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def non_finite(tensors: dict) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` holding a NaN or an infinity, in order."""
    return [k for k, t in tensors.items() if torch.is_tensor(t) and t.is_floating_point() and not _all_finite(t)]


def load_checkpoint(path: Path) -> Checkpoint:
    """Load with ``weights_only=True`` (never unpickles code) and check what later code reads: the
    fields' types, the epoch, finite weights and (format 2) the digest. Errors name the file and the fix."""
    path = Path(path)
    if not path.exists():
        raise HwnasError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            # a foreign pickle (e.g. protocol 4) makes the weights_only unpickler warn before it
            # refuses: the refusal below is the one line the user sees
            warnings.simplefilter("ignore")
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise HwnasError(f"checkpoint {path} is corrupt or not an hwnas checkpoint ({e.__class__.__name__}); "
                         f"retrain or point --weights at another file") from None
    if not isinstance(ck, dict) or ck.get("format") not in FORMATS:
        raise HwnasError(f"{path} is not an hwnas checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    fields = dict(_FIELDS)
    if ck["format"] != FORMATS[0]:
        fields["digest"] = lambda v: isinstance(v, str)
    ck.setdefault("ema_state_dict", None)  # written only since EMA exists
    bad = [k for k, ok in fields.items() if k not in ck or not ok(ck[k])]
    if bad:
        raise HwnasError(f"checkpoint {path} is incomplete (missing or malformed {', '.join(bad)}); "
                         f"retrain or point --weights at another file")
    try:  # parsed here, before the digest, so a malformed string is named as such
        arch = Arch.parse(ck["arch"])
    except HwnasError as e:  # the message alone would not say which file holds the bad string
        raise HwnasError(f"checkpoint {path} holds an {e}; retrain or point --weights at another file") from None
    # The epoch counts finished epochs from 0: a resume starts at epoch + 1, so a negative one
    # would train extra epochs and one past the run's length would skip its evaluation.
    epochs = (ck["config"] or {}).get("epochs", MAX_COUNT)
    if not _is_count(epochs) or not 1 <= epochs <= MAX_COUNT:
        raise HwnasError(f"checkpoint {path} is corrupt: its config has epochs {epochs!r}, not a count in "
                         f"1..{MAX_COUNT}; retrain or point --weights at another file")
    if not 0 <= ck["epoch"] < epochs:
        raise HwnasError(f"checkpoint {path} is corrupt: it records epoch {ck['epoch']}, outside 0..{epochs - 1}; "
                         f"retrain or point --weights at another file")
    # Hashed first (the first pass over freshly loaded tensors is the slow one, and sha256 pays it
    # least: 0.05 s where sums took 0.3 s), compared last: a diverged run writes NaNs with a valid
    # digest, and those would otherwise load and score 0 without a word.
    digest = "digest" in fields and state_digest(ck["arch"], ck["class_names"], ck["epoch"], ck["state_dict"])
    bad = non_finite(ck["state_dict"])
    if bad:
        total = sum(t.is_floating_point() for t in ck["state_dict"].values())
        raise HwnasError(f"checkpoint {path} holds weights that are not numbers: {len(bad)} of its {total} "
                         f"floating-point tensors are not finite (first: {bad[0]}); retrain (if training "
                         f"diverged, lower --lr)")
    if digest and digest != ck["digest"]:
        raise HwnasError(f"checkpoint {path} was modified after it was written (its digest does not match); "
                         f"retrain or restore the file")
    return Checkpoint(arch=arch, class_names=tuple(ck["class_names"]), epoch=ck["epoch"], state_dict=ck["state_dict"],
                      train_state_dict=ck["train_state_dict"], ema_state_dict=ck["ema_state_dict"],
                      optimizer=ck.get("optimizer"),
                      scheduler=ck.get("scheduler"), scaler=ck.get("scaler"), config=ck["config"],
                      metrics=ck["metrics"], rng=ck["rng"], format=ck["format"])


class LoadedModel(NamedTuple):
    """A checkpoint's detector (in eval mode) with what describes it; unpacks as (model, arch, class_names)."""

    model: "Detector"
    arch: Arch
    class_names: list[str]


def load_model(path: Path) -> LoadedModel:
    """The detector a checkpoint holds, its weights loaded and checked against its arch."""
    from hwnas.models import Detector

    ck = load_checkpoint(path)
    model = Detector.from_arch(ck.arch, len(ck.class_names))
    try:
        model.load_state_dict(ck.state_dict)
    except RuntimeError as e:
        # torch's first line is only "Error(s) in loading state_dict for Detector:"; the next names the tensor
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else "")[:200]
        raise HwnasError(f"checkpoint {path} does not match its arch {ck.arch} ({detail}); retrain or point --weights "
                         f"at another file") from None
    return LoadedModel(model.eval(), ck.arch, list(ck.class_names))


# ----------------------------------------------------------------------------- resuming
def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _numbers_ok(obj) -> bool:
    """Every number (and floating-point tensor) anywhere in a nested state dict is finite."""
    if isinstance(obj, dict):
        return all(_numbers_ok(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_numbers_ok(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    if torch.is_tensor(obj):
        return not obj.is_floating_point() or _all_finite(obj)
    return True


def _history_problem(history, epoch: int) -> str | None:
    """What is wrong with a resumed run's history (one record per finished epoch 0..epoch), or None."""
    if not isinstance(history, list):
        return f"a {type(history).__name__}, not a list of epoch records"
    if len(history) != epoch + 1:
        return f"{len(history)} epoch records for {epoch + 1} finished epochs"
    for i, h in enumerate(history):
        if not isinstance(h, dict) or h.get("epoch") != i or not _is_count(h.get("epoch")):
            return f"record {i} is not the record of epoch {i}"
        for k in ("loss", "seconds", "images_per_s"):
            if not _number(h.get(k)) or (k != "loss" and h[k] < 0):
                return f"record {i} has {k} {h.get(k)!r}"
        if "wall_s" in h and not (_number(h["wall_s"]) and h["wall_s"] >= 0):  # a budget run's clock
            return f"record {i} has wall_s {h['wall_s']!r}"
        if "iterations" in h and not (_is_count(h["iterations"]) and 0 < h["iterations"] <= MAX_COUNT):
            return f"record {i} has iterations {h['iterations']!r}"
        for k, v in h.items():  # loss components and the learning rate, where recorded
            if (k.startswith("loss_") or k == "lr") and not _number(v):
                return f"record {i} has {k} {v!r}"
        val = h.get("val")  # its map decides best.pt and is printed: a number pycocotools can give
        if val is not None and not (isinstance(val, dict) and "map" in val and all(
                _number(val[k]) and -1 <= val[k] <= 1 for k in ("map", "map50") if k in val)):
            return f"record {i} has a malformed val score"
        if h.get("new_best", False) not in (True, False) or (h.get("new_best") and val is None):
            return f"record {i} has new_best {h['new_best']!r}" + (" without a val score" if val is None else "")
    return None


def check_resume(ck: Checkpoint, path: Path) -> list[dict]:
    """The numbers a resume reads from ``ck`` beyond what load_checkpoint checks; its history."""
    history = ck.metrics.get("history")
    problem = _history_problem(history, ck.epoch)
    if problem:
        raise HwnasError(f"{path} holds a malformed training history ({problem}); use another --out")
    opt = ck.optimizer
    if opt is not None:
        groups = opt.get("param_groups") if isinstance(opt, dict) else None
        if (not isinstance(groups, list) or not isinstance(opt.get("state"), dict) or not _numbers_ok(opt)
                or not all(isinstance(g, dict) and _number(g.get("lr")) and 0 < g["lr"] < 1 for g in groups)):
            raise HwnasError(f"{path} holds a malformed optimizer state (a learning rate outside (0, 1) or a "
                             f"non-finite number); use another --out")
    sched = ck.scheduler
    if sched is not None and not (isinstance(sched, dict) and _is_count(sched.get("last_epoch"))
                                  and 0 <= sched["last_epoch"] <= (ck.epoch + 1) * MAX_COUNT and _numbers_ok(sched)
                                  and all(_number(b) and 0 < b < 1 for b in sched.get("base_lrs", []))):
        raise HwnasError(f"{path} holds a malformed learning-rate scheduler state (step or base rate out of range); "
                         f"use another --out")
    if ck.scaler is not None and not (isinstance(ck.scaler, dict) and _numbers_ok(ck.scaler)):
        raise HwnasError(f"{path} holds a malformed AMP loss-scaler state; use another --out")
    rng, want = ck.rng.get("torch"), torch.get_rng_state()
    if not (torch.is_tensor(rng) and rng.dtype == want.dtype and rng.shape == want.shape):
        raise HwnasError(f"{path} holds a malformed random state; use another --out")
    bad = non_finite(ck.train_state_dict or {}) + non_finite(ck.ema_state_dict or {})
    if bad:
        raise HwnasError(f"{path} holds non-finite training weights (first: {bad[0]}); use another --out")
    return list(history)
