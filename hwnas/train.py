"""Fast training from scratch, as SM-NAS trains its candidates: resumable, seeded, one loop for every head.

Recipe: AdamW with linear warm-up then cosine decay, gradient clipping, AMP on CUDA, GN with
weight standardisation when the arch uses GN (standardisation is a training-time
parametrisation, folded into plain conv weights in checkpoints, so the deployed module is
exactly the one the latency table timed).
"""
from __future__ import annotations

import io
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

CHECKPOINT_FORMAT = "hwnas-checkpoint/1"


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
        if self.epochs < 1 or self.batch_size < 1:
            raise HwnasError(f"--epochs and --batch-size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not (0 < self.lr < 1):
            raise HwnasError(f"--lr must be in (0, 1), got {self.lr}")
        if not self.grad_clip > 0 or self.warmup_iters < 0 or self.eval_every < 0 or self.max_train_images < 0:
            raise HwnasError(f"grad_clip must be > 0 and warmup_iters, eval_every, max_train_images >= 0; "
                             f"got {self.grad_clip}, {self.warmup_iters}, {self.eval_every}, {self.max_train_images}")
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
def save_checkpoint(path: Path, *, model: nn.Module, arch: Arch, class_names: list[str], epoch: int,
                    optimizer=None, scheduler=None, scaler=None, config: TrainConfig | None = None,
                    metrics: dict | None = None) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "arch": str(arch),
        "class_names": list(class_names),
        "epoch": epoch,
        "state_dict": plain_state_dict(model),
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


def load_checkpoint(path: Path) -> dict:
    """Load with ``weights_only=True`` (never unpickles code); errors name the file and the fix."""
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
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise HwnasError(f"{path} is not an hwnas checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    kinds = {"arch": str, "class_names": list, "epoch": int, "state_dict": dict, "train_state_dict": (dict, type(None)),
             "metrics": dict, "rng": dict}
    bad = [k for k, t in kinds.items() if k not in ck or not isinstance(ck[k], t)]
    if bad:
        raise HwnasError(f"checkpoint {path} is incomplete (missing or malformed {', '.join(bad)}); "
                         f"retrain or point --weights at another file")
    return ck


def load_model(path: Path):
    """(Detector in eval mode, Arch, class names) from a checkpoint."""
    from hwnas.models import Detector

    ck = load_checkpoint(path)
    try:
        arch = Arch.parse(ck["arch"])
    except HwnasError as e:  # the message alone would not say which file holds the bad string
        raise HwnasError(f"checkpoint {path} holds an {e}; retrain or point --weights at another file") from None
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


@dataclass(frozen=True)
class TrainResult:
    metrics: dict
    checkpoint: Path

    @property
    def history(self) -> list[dict]:
        return self.metrics["history"]


def train(arch: Arch, data_dir: Path, out: Path, cfg: TrainConfig = TrainConfig(),
          progress: Callable[[int, int, str], None] | None = None) -> TrainResult:
    """Train ``arch`` on ``data_dir`` into ``out`` (``last.pt``, ``metrics.json``), resuming from ``last.pt``."""
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
    check_writable(out / "metrics.json", "run folder")  # creates the folder, after the data proved readable
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
        except (RuntimeError, ValueError, KeyError) as e:  # e.g. a run made with other training options
            raise HwnasError(f"{ckpt} does not fit this run ({str(e).splitlines()[0][:200]}); "
                             f"use another --out") from None
        if ck["scheduler"]:
            sched.load_state_dict(ck["scheduler"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch = ck["epoch"] + 1
        history = list(ck["metrics"].get("history", []))
        torch.set_rng_state(ck["rng"]["torch"])

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = [indices[i] for i in torch.randperm(len(indices), generator=g).tolist()]
        train_set.set_epoch(epoch)
        losses = []
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
            if progress:
                done = (epoch - start_epoch) * iters_per_epoch + it + 1
                progress(done, (cfg.epochs - start_epoch) * iters_per_epoch,
                         f"epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses[-20:]):.3f}")
        rec = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.time() - t_epoch,
               "images_per_s": len(order[: iters_per_epoch * cfg.batch_size]) / max(1e-9, time.time() - t_epoch)}
        if cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and epoch + 1 < cfg.epochs:
            # nested: its images_per_s is inference speed, not the training speed above
            rec["val"] = evaluate(model, arch, val_set, device=str(device))
            model.train()
        history.append(rec)
        save_checkpoint(ckpt, model=model, arch=arch, class_names=train_set.class_names, epoch=epoch,
                        optimizer=opt, scheduler=sched, scaler=scaler, config=cfg, metrics={"history": history})

    metrics = evaluate(model, arch, val_set, device=str(device), detections=out / "detections.json")
    train_s = sum(h["seconds"] for h in history)
    metrics.update({"skipped_entries": {"train": train_set.num_skipped(), "val": val_set.num_skipped()},
                    "arch": str(arch), "epochs": cfg.epochs, "train_seconds": train_s,
                    "train_images_per_s": (sum(h["images_per_s"] * h["seconds"] for h in history) / train_s) if train_s else 0.0,
                    "final_loss": history[-1]["loss"] if history else None, "history": history,
                    "config": asdict(cfg), "class_names": train_set.class_names})
    save_checkpoint(ckpt, model=model, arch=arch, class_names=train_set.class_names, epoch=cfg.epochs - 1,
                    optimizer=opt, scheduler=sched, scaler=scaler, config=cfg, metrics=metrics)
    write_json(out / "metrics.json", metrics)
    return TrainResult(metrics, ckpt)
