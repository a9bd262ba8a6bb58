"""Fast training from scratch, as SM-NAS trains its candidates: resumable, seeded, one loop for every head.

Recipe: AdamW with linear warm-up then cosine decay, gradient clipping, AMP on CUDA, GN with
weight standardisation when the arch uses GN (standardisation is a training-time
parametrisation, folded into plain conv weights in checkpoints, so the deployed module is
exactly the one the latency table timed).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from hwnas.arch import Arch
from hwnas.errors import HwnasError
from hwnas.fileio import write_atomic, write_json
from hwnas.limits import MAX_COUNT, MAX_NUM_CLASSES, check_batch, check_count, check_float, check_seed

# 2 adds "digest" (see state_digest); 1, written by earlier versions, has none and still loads.
CHECKPOINT_FORMAT = "hwnas-checkpoint/2"
FORMATS = ("hwnas-checkpoint/1", CHECKPOINT_FORMAT)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_iters: int = 100
    grad_clip: float = 10.0
    box_loss: str = "giou"
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # only takes effect on CUDA
    eval_every: int = 0  # epochs between evaluations (0: only at the end)
    max_train_images: int = 0  # 0: all
    weight_standardization: bool = True  # with GN only
    on_error: str = "raise"  # broken dataset entries: "raise" or "skip" (and count)
    scale_jitter: tuple[float, float] = (0.5, 1.5)  # random rescale range of the training images
    # Face head (hwnas.heads.face): share of samples cut by data-anchor-sampling, and the IoU
    # (positive, negative) thresholds of the first and second step of its matching.
    das_p: float = 0.0
    step1_iou: tuple[float, float] = (0.5, 0.4)
    step2_iou: tuple[float, float] = (0.6, 0.5)

    def __post_init__(self) -> None:
        from hwnas.data.coco import ON_ERROR

        if not 0.1 <= self.scale_jitter[0] <= self.scale_jitter[1] <= 4.0:
            raise HwnasError(f"--scale-jitter {self.scale_jitter}: need 0.1 <= LOW <= HIGH <= 4")
        if not 0.0 <= self.das_p <= 1.0:
            raise HwnasError(f"--das-p {self.das_p}: data-anchor-sampling probability must be in [0, 1]")
        for name in ("step1_iou", "step2_iou"):
            hi, lo = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise HwnasError(f"--{name.replace('_', '-')} {hi},{lo}: give POSITIVE,NEGATIVE IoU thresholds "
                                 f"with 0 < NEGATIVE <= POSITIVE <= 1")
        if self.on_error not in ON_ERROR:
            raise HwnasError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        # One check per field, each naming its own option (fields without one by their name).
        check_count("--epochs", self.epochs)
        check_batch(self.batch_size)
        check_seed(self.seed)  # numpy refuses seeds outside 0..2**32-1 only once training starts
        check_count("--eval-every", self.eval_every, 0)
        check_count("--max-train-images", self.max_train_images, 0)
        check_count("warmup_iters", self.warmup_iters, 0)
        if not (0 < self.lr < 1):
            raise HwnasError(f"--lr must be in (0, 1), got {self.lr}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise HwnasError(f"grad_clip {self.grad_clip}: must be a finite number > 0")
        check_float("weight_decay", self.weight_decay, 0.0, 1.0)
        from hwnas.heads.boxes import check_box_loss

        check_box_loss(self.box_loss, "--box-loss")
        resolve_device(self.device)  # a malformed or absent device fails here, before any work


def resolve_device(name: str) -> torch.device:
    """``cpu`` / ``cuda[:i]`` as a torch.device; a malformed name or a missing GPU is an HwnasError."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise HwnasError(f"--device {name!r} is not a device: give cpu or cuda[:i]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HwnasError(f"--device {name} but torch.cuda.is_available() is False; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise HwnasError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
    elif device.type != "cpu":
        raise HwnasError(f"--device {name!r}: give cpu or cuda[:i]")
    return device


# ----------------------------------------------------------------------------- weight standardisation
class _Standardize(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return (w - mean) / torch.sqrt(var + 1e-5)


def add_weight_standardization(model: nn.Module) -> int:
    """Standardise the weights of convs followed by GroupNorm (Qiao et al.); returns how many."""
    n = 0
    for m in model.modules():
        children = list(m.children())
        for a, b in zip(children, children[1:]):
            # Depthwise convs have too few weights per filter to standardise meaningfully.
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.GroupNorm) and a.groups == 1:
                if not parametrize.is_parametrized(a, "weight"):
                    parametrize.register_parametrization(a, "weight", _Standardize())
                    n += 1
    return n


def _parametrized(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m) for m in model.modules())


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with standardisation folded in: loads into a plain ``Detector.from_arch``."""
    out = {}
    for k, v in model.state_dict().items():
        if ".parametrizations.weight.original" in k:
            continue
        out[k] = v
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            out[f"{name}.weight"] = m.weight.detach().clone()
    return out


# ----------------------------------------------------------------------------- checkpoints
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


def save_checkpoint(path: Path, *, model: nn.Module, arch: Arch, class_names: list[str], epoch: int,
                    optimizer=None, scheduler=None, scaler=None, config: TrainConfig | None = None,
                    metrics: dict | None = None) -> None:
    weights = plain_state_dict(model)
    state = {
        "format": CHECKPOINT_FORMAT,
        "arch": str(arch),
        "class_names": list(class_names),
        "epoch": epoch,
        "state_dict": weights,
        "digest": state_digest(str(arch), list(class_names), epoch, weights),
        # Only weight-standardised models differ in training form; the rest would store the weights twice.
        "train_state_dict": model.state_dict() if _parametrized(model) else None,
        "optimizer": optimizer.state_dict() if optimizer else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "scaler": scaler.state_dict() if scaler is not None else None,  # AMP loss scale ({} when off)
        "config": asdict(config) if config else None,
        "metrics": metrics or {},
        "rng": {"torch": torch.get_rng_state()},
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


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


def load_checkpoint(path: Path) -> dict:
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
    bad = [k for k, ok in fields.items() if k not in ck or not ok(ck[k])]
    if bad:
        raise HwnasError(f"checkpoint {path} is incomplete (missing or malformed {', '.join(bad)}); "
                         f"retrain or point --weights at another file")
    try:  # parsed here, before the digest, so a malformed string is named as such
        Arch.parse(ck["arch"])
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
    return ck


def load_model(path: Path):
    """(Detector in eval mode, Arch, class names) from a checkpoint."""
    from hwnas.models import Detector

    ck = load_checkpoint(path)
    arch = Arch.parse(ck["arch"])  # load_checkpoint has checked it parses
    model = Detector.from_arch(arch, len(ck["class_names"]))
    try:
        model.load_state_dict(ck["state_dict"])
    except RuntimeError as e:
        # torch's first line is only "Error(s) in loading state_dict for Detector:"; the next names the tensor
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else "")[:200]
        raise HwnasError(f"checkpoint {path} does not match its arch {arch} ({detail}); retrain or point --weights "
                         f"at another file") from None
    return model.eval(), arch, ck["class_names"]


# ----------------------------------------------------------------------------- the loop
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(it: int, total: int, warmup: int) -> float:
    """Linear warm-up from 1% then cosine decay to 1% of the base rate."""
    if it < warmup:
        return 0.01 + 0.99 * it / max(1, warmup)
    t = (it - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


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


def _check_resume(ck: dict, path: Path) -> list[dict]:
    """The numbers a resume reads from ``ck`` beyond what load_checkpoint checks; its history."""
    history = ck["metrics"].get("history")
    problem = _history_problem(history, ck["epoch"])
    if problem:
        raise HwnasError(f"{path} holds a malformed training history ({problem}); use another --out")
    opt = ck.get("optimizer")
    if opt is not None:
        groups = opt.get("param_groups") if isinstance(opt, dict) else None
        if (not isinstance(groups, list) or not isinstance(opt.get("state"), dict) or not _numbers_ok(opt)
                or not all(isinstance(g, dict) and _number(g.get("lr")) and 0 < g["lr"] < 1 for g in groups)):
            raise HwnasError(f"{path} holds a malformed optimizer state (a learning rate outside (0, 1) or a "
                             f"non-finite number); use another --out")
    sched = ck.get("scheduler")
    if sched is not None and not (isinstance(sched, dict) and _is_count(sched.get("last_epoch"))
                                  and 0 <= sched["last_epoch"] <= (ck["epoch"] + 1) * MAX_COUNT and _numbers_ok(sched)
                                  and all(_number(b) and 0 < b < 1 for b in sched.get("base_lrs", []))):
        raise HwnasError(f"{path} holds a malformed learning-rate scheduler state (step or base rate out of range); "
                         f"use another --out")
    if ck.get("scaler") is not None and not (isinstance(ck["scaler"], dict) and _numbers_ok(ck["scaler"])):
        raise HwnasError(f"{path} holds a malformed AMP loss-scaler state; use another --out")
    rng, want = ck["rng"].get("torch"), torch.get_rng_state()
    if not (torch.is_tensor(rng) and rng.dtype == want.dtype and rng.shape == want.shape):
        raise HwnasError(f"{path} holds a malformed random state; use another --out")
    bad = non_finite(ck["train_state_dict"] or {})
    if bad:
        raise HwnasError(f"{path} holds non-finite training weights (first: {bad[0]}); use another --out")
    return list(history)


def _last_best(history: list[dict]) -> dict | None:
    """The record best.pt holds: the last one that was a new best when it ran (each beat the one before)."""
    return next((h for h in reversed(history) if h.get("new_best")), None)


def write_results(path: Path, history: list[dict], components: tuple[str, ...]) -> None:
    """``RUN/results.csv``: one row per finished epoch (1-based, as the log prints it), the loss
    components after the loss, rewritten whole and atomically so a kill never leaves half a row."""
    header = ["epoch", "loss", *components, "lr", "images_per_s", "seconds", "val_map", "val_map50"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for h in history:
        val = h.get("val") or {}
        row = {**h, "epoch": h["epoch"] + 1, "val_map": val.get("map", ""), "val_map50": val.get("map50", "")}
        w.writerow([row.get(k, "") for k in header])  # "": not recorded (not evaluated; an older run)
    write_atomic(path, buf.getvalue().encode())


def epoch_line(rec: dict, epochs: int, components: tuple[str, ...]) -> str:
    """``epoch 3/12 loss 1.234 cls 0.812 box 0.422 lr 1.85e-03 41.2 img/s val mAP 0.1234``."""
    parts = [f"epoch {rec['epoch'] + 1}/{epochs} loss {rec['loss']:.3f}"]
    parts += [f"{c.removeprefix('loss_')} {rec[c]:.3f}" for c in components if c in rec]
    parts.append(f"lr {rec['lr']:.2e} {rec['images_per_s']:.1f} img/s")
    if rec.get("val"):
        parts.append(f"val mAP {rec['val']['map']:.4f}")
    return " ".join(parts)


@dataclass(frozen=True)
class TrainResult:
    metrics: dict
    checkpoint: Path

    @property
    def history(self) -> list[dict]:
        return self.metrics["history"]


def train(arch: Arch, data_dir: Path, out: Path, cfg: TrainConfig = TrainConfig(),
          progress: Callable[[int, int, str], None] | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``arch`` on ``data_dir`` into ``out``, resuming from ``out/last.pt``.

    Writes ``last.pt`` and ``results.csv`` after every epoch, ``best.pt`` whenever an evaluated
    epoch beats the best val mAP so far (with ``cfg.eval_every``), and at the end ``metrics.json``
    and ``detections.json``. ``progress(done, total, item)`` follows the iterations; ``log(line)``
    gets one line per finished epoch (:func:`epoch_line`).
    """
    from hwnas.data.wider import open_dataset
    from hwnas.data.transforms import EvalTransform, TrainTransform, collate, normalize
    from hwnas.evaluate import evaluate
    from hwnas.fileio import check_writable
    from hwnas.heads import DetectionLoss, init_head_priors
    from hwnas.models import Detector

    out = Path(out)
    ckpt = out / "last.pt"
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    train_tf = TrainTransform(arch.input_hw, seed=cfg.seed, scale_range=tuple(cfg.scale_jitter))
    if cfg.das_p > 0:
        if arch.head != "face":
            raise HwnasError(f"--das-p {cfg.das_p}: data-anchor-sampling samples the face head's anchors; "
                             f"the arch has a {arch.head} head (use --das-p 0)")
        from hwnas.data.anchor_sampling import DataAnchorSampling
        from hwnas.heads.face import face_anchor_sizes

        train_tf = DataAnchorSampling(arch.input_hw, seed=cfg.seed, anchor_sizes=face_anchor_sizes(arch),
                                      p=cfg.das_p, scale_range=tuple(cfg.scale_jitter))
    train_set = open_dataset(data_dir, "train", train_tf, cfg.on_error)
    val_set = open_dataset(data_dir, "val", EvalTransform(arch.input_hw), cfg.on_error)
    for ds in (train_set, val_set):  # fail now, not after the last epoch
        if len(ds) == 0:
            raise HwnasError(f"{ds.json_path} holds no images; a run needs training and validation images")
    if val_set.class_names != train_set.class_names:
        raise HwnasError(f"{val_set.json_path} has classes {val_set.class_names} but {train_set.json_path} has "
                         f"{train_set.class_names}; both splits need the same categories")
    k = len(train_set.class_names)
    check_writable(out / "metrics.json", "run folder")  # after the data proved readable
    ck = None
    if ckpt.exists():  # checked before any work: a run of another arch or dataset is not resumed
        ck = load_checkpoint(ckpt)
        if ck["arch"] != str(arch):
            raise HwnasError(f"{ckpt} holds a run of another arch ({ck['arch']}); use another --out")
        if ck["class_names"] != train_set.class_names:
            raise HwnasError(f"{ckpt} was trained on classes {ck['class_names']}, {data_dir} has "
                             f"{train_set.class_names}; use another --out")
        if ck["epoch"] + 1 > cfg.epochs:
            raise HwnasError(f"{ckpt} has already trained {ck['epoch'] + 1} epochs, more than --epochs {cfg.epochs}; "
                             f"give --epochs {ck['epoch'] + 1} or more, or use another --out")
        resumed_history = _check_resume(ck, ckpt)

    model = Detector.from_arch(arch, k)
    init_head_priors(model)
    if arch.norm == "gn" and cfg.weight_standardization:
        add_weight_standardization(model)
    model.to(device)
    criterion = DetectionLoss.for_arch(arch, k, box_loss=cfg.box_loss, step1_iou=tuple(cfg.step1_iou),
                                       step2_iou=tuple(cfg.step2_iou))
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    indices = list(range(len(train_set)))
    if cfg.max_train_images:
        indices = indices[: cfg.max_train_images]
    iters_per_epoch = max(1, len(indices) // cfg.batch_size)
    total = cfg.epochs * iters_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, total, min(cfg.warmup_iters, total // 5)))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, history = 0, []
    if ck is not None:
        try:
            model.load_state_dict(ck["train_state_dict"] or ck["state_dict"])
            if ck["optimizer"]:
                opt.load_state_dict(ck["optimizer"])
            if ck["scheduler"]:
                sched.load_state_dict(ck["scheduler"])
            if ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # e.g. a run made with other training options
            raise HwnasError(f"{ckpt} does not fit this run ({str(e).splitlines()[0][:200]}); "
                             f"use another --out") from None
        start_epoch = ck["epoch"] + 1
        history = resumed_history
        torch.set_rng_state(ck["rng"]["torch"])
    components = tuple(criterion.components)
    best_pt, results = out / "best.pt", out / "results.csv"
    # Best so far comes from the history, so a resume keeps it; a best.pt deleted since cannot be
    # rebuilt, so the next evaluated epoch writes a new one.
    best = _last_best(history) if best_pt.exists() else None

    def evaluated(rec: dict, val: dict) -> None:
        """Record ``val`` (nested: its images_per_s is inference speed, not the training speed) and
        write best.pt when it beats the best so far. best.pt first: a kill before last.pt is
        written retrains this epoch, and last.pt never records a best that best.pt lacks."""
        nonlocal best
        rec["val"] = dict(val)
        if cfg.eval_every and (best is None or val["map"] > best["val"]["map"]):
            rec["new_best"] = True
            save_checkpoint(best_pt, model=model, arch=arch, class_names=train_set.class_names, epoch=rec["epoch"],
                            config=cfg, metrics={"history": [*history[: rec["epoch"]], rec]})
            best = rec

    final = None  # the last epoch's evaluation, when this call trained it

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = [indices[i] for i in torch.randperm(len(indices), generator=g).tolist()]
        train_set.set_epoch(epoch)
        losses, parts = [], []
        t_epoch = time.time()
        for it in range(iters_per_epoch):
            batch = [train_set[i] for i in order[it * cfg.batch_size:(it + 1) * cfg.batch_size]]
            images, targets = collate(batch)
            images = normalize(images.to(device))
            targets = [{kk: (v.to(device) if torch.is_tensor(v) else v) for kk, v in t.items()} for t in targets]
            with torch.autocast(device.type, enabled=use_amp):
                # Two-stage heads see the ground truth among their proposals while training, so
                # the RoI head has positives before the RPN has learnt anything.
                extra = criterion.extra_boxes(targets, device)
                outputs = model(images) if extra is None else model(images, extra_boxes=extra)
            # The loss runs outside autocast, in fp32 (box decoding and IoUs lose whole pixels in fp16).
            loss_dict = criterion(outputs, targets)
            loss = loss_dict["loss"]
            if not torch.isfinite(loss):
                raise HwnasError(f"training diverged at epoch {epoch} iteration {it} (loss {loss.item()}); "
                                 f"lower --lr or check the data")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(loss.item())
            # detached, averaged once per epoch: no extra device sync per iteration
            parts.append(torch.stack([torch.as_tensor(loss_dict[c], device=device).detach().float().reshape(())
                                      for c in components]))
            if progress:
                done = (epoch - start_epoch) * iters_per_epoch + it + 1
                progress(done, (cfg.epochs - start_epoch) * iters_per_epoch,
                         f"epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses[-20:]):.3f}")
        seconds = time.time() - t_epoch
        rec = {"epoch": epoch, "loss": float(np.mean(losses)),
               **dict(zip(components, torch.stack(parts).mean(0).tolist())),
               "lr": float(opt.param_groups[0]["lr"]), "seconds": seconds,
               "images_per_s": len(order[: iters_per_epoch * cfg.batch_size]) / max(1e-9, seconds)}
        if epoch + 1 == cfg.epochs:  # the final evaluation, here so that this epoch's row and line hold it
            final = evaluate(model, arch, val_set, device=str(device), detections=out / "detections.json")
            evaluated(rec, final)
        elif cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:
            evaluated(rec, evaluate(model, arch, val_set, device=str(device)))
            model.train()
        history.append(rec)
        save_checkpoint(ckpt, model=model, arch=arch, class_names=train_set.class_names, epoch=epoch,
                        optimizer=opt, scheduler=sched, scaler=scaler, config=cfg, metrics={"history": history})
        write_results(results, history, components)
        if log:
            log(epoch_line(rec, cfg.epochs, components))

    if final is None:  # a resume with every epoch already trained (stopped before metrics.json was written)
        final = evaluate(model, arch, val_set, device=str(device), detections=out / "detections.json")
        if "val" not in history[-1]:  # a run of an earlier version, which evaluated only after the loop
            evaluated(history[-1], final)
    metrics = dict(final)
    train_s = sum(h["seconds"] for h in history)
    metrics.update({"skipped_entries": {"train": train_set.num_skipped(), "val": val_set.num_skipped()},
                    "arch": str(arch), "epochs": cfg.epochs, "train_seconds": train_s,
                    "train_images_per_s": (sum(h["images_per_s"] * h["seconds"] for h in history) / train_s) if train_s else 0.0,
                    "final_loss": history[-1]["loss"] if history else None, "history": history,
                    "config": asdict(cfg), "class_names": train_set.class_names})
    if best is not None:  # which epoch best.pt holds (0-based, as its own "epoch" and the history)
        metrics["best"] = {"epoch": best["epoch"], "val_map": best["val"]["map"], "checkpoint": str(best_pt)}
    save_checkpoint(ckpt, model=model, arch=arch, class_names=train_set.class_names, epoch=cfg.epochs - 1,
                    optimizer=opt, scheduler=sched, scaler=scaler, config=cfg, metrics=metrics)
    write_results(results, history, components)
    write_json(out / "metrics.json", metrics)
    return TrainResult(metrics, ckpt)
