"""Fast training from scratch, as SM-NAS trains its candidates: resumable, seeded, one loop for every head.

Recipe: AdamW with linear warm-up then cosine decay, gradient clipping, AMP on CUDA, GN with
weight standardisation when the arch uses GN (standardisation is a training-time
parametrisation, folded into plain conv weights in checkpoints, so the deployed module is
exactly the one the latency table timed).
"""
from __future__ import annotations

import csv
import io
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from hwnas.errors import HwnasError
from hwnas.fileio import write_atomic, write_json
from hwnas.limits import check_batch, check_count, check_float, check_int, check_seed
from hwnas.spec.arch import Arch
from hwnas.train.checkpoint import check_resume, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from hwnas.heads.losses import DetectionLoss


# The version of the training recipe: the defaults below, the per-preset recipes
# (hwnas.train.recipes) and the loop's tricks. Raised whenever a change alters what a run learns,
# so that scores stay comparable: every checkpoint and search records it, and a resume refuses a
# run made with another version. Runs written before it was recorded are version 1.
# 2: the face head's second step matches all levels (hwnas.heads.face.FaceHead.assign); face-s at batch 8.
# 3: the BatchNorms of the heads' towers are per pyramid level (hwnas.models.detector).
RECIPE_VERSION = 3
BUDGET_PLAN_AFTER = 10  # iterations timed before a --budget-min run fixes its warm-up length
BUDGET_MAX_EPOCHS = 10_000  # a --budget-min run without --epochs: the clock decides


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12  # with budget_s: the most epochs the budget may take
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
    # Wall-clock budget in seconds (0: train ``epochs``): the schedule is fitted to the time, see train().
    budget_s: float = 0.0
    # EMA of the weights (and BN statistics): the decay per iteration, 0 = off. The averaged weights
    # are the ones evaluated and saved for deployment; the decay ramps up as min(decay, (1+n)/(10+n)).
    ema: float = 0.0
    assigner: str = "iou"  # label assignment of the anchor heads: "iou" (thresholds) or "atss" (adaptive)
    copy_paste: float = 0.0  # share of samples that get another sample's boxes pasted in (hwnas.data.copy_paste)
    workers: int = 0  # processes that assemble batches while the model trains (0: in the training process)
    recipe_version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        from hwnas.data.coco import ON_ERROR

        if not 0.1 <= self.scale_jitter[0] <= self.scale_jitter[1] <= 4.0:
            raise HwnasError(f"--scale-jitter {self.scale_jitter}: need 0.1 <= LOW <= HIGH <= 4")
        if not 0.0 <= self.das_p <= 1.0:
            raise HwnasError(f"--das-p {self.das_p}: data-anchor-sampling probability must be in [0, 1]")
        if not 0.0 <= self.copy_paste <= 1.0:
            raise HwnasError(f"--copy-paste {self.copy_paste}: give the share of samples that get pasted objects, "
                             f"in [0, 1]")
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
        check_int("--workers", self.workers, 0, 64)
        check_count("--max-train-images", self.max_train_images, 0)
        check_count("--warmup-iters", self.warmup_iters, 0)
        if not (0 < self.lr < 1):
            raise HwnasError(f"--lr must be in (0, 1), got {self.lr}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise HwnasError(f"grad_clip {self.grad_clip}: must be a finite number > 0")
        check_float("weight_decay", self.weight_decay, 0.0, 1.0)
        check_float("--budget-min", self.budget_s / 60, 0.0, 7 * 24 * 60)  # a week at most
        from hwnas.heads.losses import ASSIGNERS

        if self.assigner not in ASSIGNERS:
            raise HwnasError(f"--assigner {self.assigner!r}: give one of {', '.join(ASSIGNERS)}")
        if not (self.ema == 0 or 0 < self.ema < 1):
            raise HwnasError(f"--ema {self.ema}: give the EMA decay per iteration in (0, 1), e.g. 0.999, or 0 (off)")
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


# ----------------------------------------------------------------------------- the loop
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# TrainConfig fields a resumed run may change: its length, and how and where it runs. Every other
# field shapes the weights, so a resume with another value would mix two runs under one name.
RESUME_MAY_CHANGE = frozenset({"epochs", "budget_s", "eval_every", "device", "amp", "workers", "on_error"})


def settings_differ(made_with: dict, cfg: TrainConfig) -> list[str]:
    """``name: X in the run, Y now`` for each weight-shaping setting of ``cfg`` that differs from a
    checkpoint's stored config (settings older checkpoints did not store are not compared)."""
    def plain(v):  # a stored tuple may come back as a list; 0 and 0.0 are the same setting
        return list(v) if isinstance(v, (list, tuple)) else v

    def shown(v) -> str:  # as the option takes it
        return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    return [f"{f.name}: {shown(made_with[f.name])} in the run, {shown(getattr(cfg, f.name))} now"
            for f in fields(cfg) if f.name not in RESUME_MAY_CHANGE and f.name in made_with
            and plain(made_with[f.name]) != plain(getattr(cfg, f.name))]


def lr_factor(it: int, total: int, warmup: int) -> float:
    """Linear warm-up from 1% then cosine decay to 1% of the base rate."""
    if it < warmup:
        return 0.01 + 0.99 * it / max(1, warmup)
    t = (it - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class _Schedule:
    """How many iterations the learning-rate schedule runs to, and its warm-up.

    With a fixed number of epochs both are known at the start. With a wall-clock budget the total is
    re-planned after every iteration from the measured pace (iterations done / seconds spent, the
    seconds including evaluations and checkpoint writes), so the cosine reaches its end when the
    budget does; training stops when the iterations done reach the plan. The warm-up is fixed after
    the first ``BUDGET_PLAN_AFTER`` iterations (the first ones are slow) so that it never moves back.
    """

    def __init__(self, cfg: TrainConfig, iters_per_epoch: int):
        self.budget_s = cfg.budget_s
        self.cap = cfg.epochs * iters_per_epoch
        self.warmup_iters = cfg.warmup_iters
        self.total = self.cap
        self.warmup = min(cfg.warmup_iters, self.total // 5)
        self.fixed = not self.budget_s  # warm-up fixed (always, without a budget)

    def factor(self, it: int) -> float:
        return lr_factor(it, self.total, self.warmup)

    def replan(self, done: int, spent_s: float) -> None:
        """After ``done`` iterations in ``spent_s`` seconds of the budget."""
        if not self.budget_s or done == 0 or spent_s <= 0:
            return
        self.total = max(done, min(self.cap, math.floor(done * self.budget_s / spent_s)))
        if not self.fixed:
            self.warmup = min(self.warmup_iters, self.total // 5)
            self.fixed = done >= BUDGET_PLAN_AFTER

    def finished(self, done: int) -> bool:
        return done >= self.total


def ema_update(decay: float):
    """The multi-tensor update of ``AveragedModel`` for an EMA whose decay ramps up over the first
    iterations (min(decay, (1 + n) / (10 + n)) after n updates), so that the average is not
    dominated by the random initial weights in runs of a few hundred iterations."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        d = min(decay, (1 + float(n)) / (10 + float(n)))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # counters (BN's num_batches_tracked): the current value
            for a, c in zip(averaged, current):
                a.copy_(c)

    return update


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


def training_loss(arch: Arch, num_classes: int, cfg: TrainConfig) -> "DetectionLoss":
    """The loss ``arch`` trains with under ``cfg``'s recipe (box loss, assigner, the face head's IoUs)."""
    from hwnas.heads.losses import DetectionLoss

    return DetectionLoss.for_arch(arch, num_classes, box_loss=cfg.box_loss, step1_iou=tuple(cfg.step1_iou),
                                  step2_iou=tuple(cfg.step2_iou), assigner=cfg.assigner)


def train_transform(arch: Arch, cfg: TrainConfig):
    """The augmentation of the training images: scale jitter, crop, flips, colour; with ``das_p``,
    data-anchor-sampling on that share of the samples."""
    from hwnas.data.transforms import TrainTransform

    if cfg.das_p <= 0:
        return TrainTransform(arch.input_hw, seed=cfg.seed, scale_range=tuple(cfg.scale_jitter))
    anchor_sizes = arch.head.anchor_sizes(arch)
    if anchor_sizes is None:
        raise HwnasError(f"--das-p {cfg.das_p}: data-anchor-sampling samples the anchors of a head that names "
                         f"their sizes (the face head); the arch has a {arch.head.kind} head (use --das-p 0)")
    from hwnas.data.anchor_sampling import DataAnchorSampling

    return DataAnchorSampling(arch.input_hw, seed=cfg.seed, anchor_sizes=anchor_sizes, p=cfg.das_p,
                              scale_range=tuple(cfg.scale_jitter))


def train(arch: Arch, data_dir: Path, out: Path, cfg: TrainConfig = TrainConfig(),
          progress: Callable[[int, int, str], None] | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``arch`` on ``data_dir`` into ``out``, resuming from ``out/last.pt``.

    Writes ``last.pt`` and ``results.csv`` after every epoch, ``best.pt`` whenever an evaluated
    epoch beats the best val mAP so far (with ``cfg.eval_every``), and at the end ``metrics.json``
    and ``detections.json``. ``progress(done, total, item)`` follows the iterations; ``log(line)``
    gets one line per finished epoch (:func:`epoch_line`).
    """
    from hwnas.data.transforms import EvalTransform, epoch_batches, normalize
    from hwnas.data.wider import open_dataset
    from hwnas.evaluate.coco import evaluate
    from hwnas.fileio import check_writable
    from hwnas.heads.losses import init_head_priors
    from hwnas.models import Detector

    out = Path(out)
    ckpt = out / "last.pt"
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    train_set = open_dataset(data_dir, "train", train_transform(arch, cfg), cfg.on_error)
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
        if str(ck.arch) != str(arch):
            raise HwnasError(f"{ckpt} holds a run of another arch ({ck.arch}); use another --out")
        if list(ck.class_names) != train_set.class_names:
            raise HwnasError(f"{ckpt} was trained on classes {list(ck.class_names)}, {data_dir} has "
                             f"{train_set.class_names}; use another --out")
        made_with = (ck.config or {}).get("recipe_version", 1)
        if made_with != cfg.recipe_version:  # a score from two recipes compares with neither
            raise HwnasError(f"{ckpt} was trained with recipe version {made_with}, this hwnas trains with version "
                             f"{cfg.recipe_version}; resuming would mix the two: use another --out")
        differ = settings_differ(ck.config or {}, cfg)
        if differ:  # e.g. --seed 1 into a seed-0 run's folder would report the seed-0 run as seed 1
            raise HwnasError(f"{ckpt} was trained with other settings ({'; '.join(differ)}); resuming would mix "
                             f"them: give the run's settings again, or use another --out")
        if ck.epoch + 1 > cfg.epochs:
            raise HwnasError(f"{ckpt} has already trained {ck.epoch + 1} epochs, more than --epochs {cfg.epochs}; "
                             f"give --epochs {ck.epoch + 1} or more, or use another --out")
        resumed_history = check_resume(ck, ckpt)

    model = Detector.from_arch(arch, k)
    init_head_priors(model)
    if arch.head_norm == "gn" and cfg.weight_standardization:  # wherever GroupNorm is
        add_weight_standardization(model)
    model.to(device)
    ema = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel

        ema = AveragedModel(model, multi_avg_fn=ema_update(cfg.ema), use_buffers=True)
    criterion = training_loss(arch, k, cfg)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    indices = list(range(len(train_set)))
    if cfg.max_train_images:
        indices = indices[: cfg.max_train_images]
    iters_per_epoch = max(1, len(indices) // cfg.batch_size)
    samples = train_set
    if cfg.copy_paste:
        from hwnas.data.copy_paste import CopyPaste

        samples = CopyPaste(train_set, cfg.copy_paste, cfg.seed, pool=indices)
    schedule = _Schedule(cfg, iters_per_epoch)
    # a plain function: LambdaLR would try to store a callable object's attributes in its state
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: schedule.factor(it))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, history = 0, []
    if ck is not None:
        try:
            model.load_state_dict(ck.train_state_dict or ck.state_dict)
            if (ema is None) != (ck.ema_state_dict is None):
                raise ValueError(f"the run was made {'without' if ema is not None else 'with'} --ema")
            if ema is not None:
                ema.load_state_dict(ck.ema_state_dict)
            if ck.optimizer:
                opt.load_state_dict(ck.optimizer)
            if ck.scheduler:
                sched.load_state_dict(ck.scheduler)
            if ck.scaler:
                scaler.load_state_dict(ck.scaler)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # e.g. a run made with other training options
            raise HwnasError(f"{ckpt} does not fit this run ({str(e).splitlines()[0][:200]}); "
                             f"use another --out") from None
        start_epoch = ck.epoch + 1
        history = resumed_history
        torch.set_rng_state(ck.rng["torch"])
    # iterations done and budget seconds spent so far (records of older runs hold whole epochs)
    done = sum(h.get("iterations", iters_per_epoch) for h in history)
    spent_s = sum(h.get("wall_s", h["seconds"]) for h in history)
    schedule.replan(done, spent_s)
    done_before = done
    components = tuple(criterion.components)
    criterion.record_levels = True  # each epoch's record holds every component's share per pyramid level
    scored = model if ema is None else ema.module  # what is evaluated and deployed

    def planned(s: _Schedule) -> int | str:
        """Epochs the run will take, for the log: fixed, or as the budget's plan stands now."""
        return cfg.epochs if not cfg.budget_s else f"~{math.ceil(s.total / iters_per_epoch)}"

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
                            config=cfg, metrics={"history": [*history[: rec["epoch"]], rec]}, ema=ema)
            best = rec

    final = None  # the last epoch's evaluation, when this call trained it

    for epoch in range(start_epoch, cfg.epochs):
        if schedule.finished(done):  # the budget is spent (a resumed budget run)
            break
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = [indices[i] for i in torch.randperm(len(indices), generator=g).tolist()]
        train_set.set_epoch(epoch)
        losses, parts, levels = [], [], {}
        t_epoch = time.time()
        its = 0
        loader = epoch_batches(samples, order, cfg.batch_size, cfg.workers, pin_memory=device.type == "cuda")
        for it, (images, targets) in enumerate(loader):
            if schedule.finished(done):
                break
            images = normalize(images.to(device, non_blocking=True))
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
            if ema is not None:
                ema.update_parameters(model)
            done, its = done + 1, its + 1
            schedule.replan(done, spent_s + time.time() - t_epoch)
            losses.append(loss.item())
            # detached, averaged once per epoch: no extra device sync per iteration
            parts.append(torch.stack([torch.as_tensor(loss_dict[c], device=device).detach().float().reshape(())
                                      for c in components]))
            for key, v in criterion.levels.items():
                levels[key] = levels.get(key, 0.0) + v
            if progress:
                progress(done - done_before, schedule.total - done_before,
                         f"epoch {epoch + 1}/{planned(schedule)} loss {np.mean(losses[-20:]):.3f}")
        seconds = time.time() - t_epoch
        rec = {"epoch": epoch, "loss": float(np.mean(losses)),
               **dict(zip(components, torch.stack(parts).mean(0).tolist())),
               "lr": float(opt.param_groups[0]["lr"]), "seconds": seconds,
               "images_per_s": its * cfg.batch_size / max(1e-9, seconds), "iterations": its,
               # per pyramid level, the mean per iteration: each component's share and the positives
               **({"levels": {key: float(v) / its for key, v in sorted(levels.items())}} if levels and its else {})}
        if epoch + 1 == cfg.epochs or schedule.finished(done):  # the final evaluation, here so that this epoch's row and line hold it
            rec["wall_s"] = time.time() - t_epoch  # a budget covers training; the final evaluation comes after it
            final = evaluate(scored, arch, val_set, device=str(device), detections=out / "detections.json")
            evaluated(rec, final)
        elif cfg.eval_every and (epoch + 1) % cfg.eval_every == 0:
            evaluated(rec, evaluate(scored, arch, val_set, device=str(device)))
            model.train()
        rec.setdefault("wall_s", time.time() - t_epoch)  # what the epoch took of a budget, its evaluation included
        spent_s += rec["wall_s"]
        history.append(rec)
        save_checkpoint(ckpt, model=model, arch=arch, class_names=train_set.class_names, epoch=epoch,
                        optimizer=opt, scheduler=sched, scaler=scaler, config=cfg, metrics={"history": history}, ema=ema)
        write_results(results, history, components)
        if log:
            log(epoch_line(rec, planned(schedule), components))
        if final is not None:
            break

    if final is None:  # a resume with every epoch already trained (stopped before metrics.json was written)
        final = evaluate(scored, arch, val_set, device=str(device), detections=out / "detections.json")
        if "val" not in history[-1]:  # a run of an earlier version, which evaluated only after the loop
            evaluated(history[-1], final)
    metrics = dict(final)
    train_s = sum(h["seconds"] for h in history)
    metrics.update({"skipped_entries": {"train": train_set.num_skipped(), "val": val_set.num_skipped()},
                    "arch": str(arch), "epochs": len(history), "iterations": done,
                    "epochs_done": done / iters_per_epoch, "budget_s": cfg.budget_s,
                    "budget_spent_s": spent_s, "recipe_version": cfg.recipe_version, "train_seconds": train_s,
                    "train_images_per_s": (sum(h["images_per_s"] * h["seconds"] for h in history) / train_s) if train_s else 0.0,
                    "final_loss": history[-1]["loss"] if history else None, "history": history,
                    "config": asdict(cfg), "class_names": train_set.class_names})
    if best is not None:  # which epoch best.pt holds (0-based, as its own "epoch" and the history)
        metrics["best"] = {"epoch": best["epoch"], "val_map": best["val"]["map"], "checkpoint": str(best_pt)}
    save_checkpoint(ckpt, model=model, arch=arch, class_names=train_set.class_names, epoch=history[-1]["epoch"],
                    optimizer=opt, scheduler=sched, scaler=scaler, config=cfg, metrics=metrics, ema=ema)
    write_results(results, history, components)
    write_json(out / "metrics.json", metrics)
    return TrainResult(metrics, ckpt)
