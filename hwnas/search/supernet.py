"""Weight-sharing supernets: one set of weights from which every detector of a neighbourhood is cut.

After DetNAS (Chen et al. 2019) and single-path one-shot NAS (Guo et al. 2020): a supernet is
trained once, each step on one path (a whole detector of the neighbourhood, drawn uniformly), and
a candidate is then scored in seconds with the weights it inherits, after its BatchNorm statistics
are recalibrated on a few training batches (the statistics of a shared BN belong to no single path).

**Neighbourhood.** Everything that shares an input resolution, block family, head kind and norm:
the number of blocks per stage up to the space's maximum and where each stage's '2' sits, the
backbone, neck and head widths, the head's depth and other fields, and (span ``family``) the neck:
none, FPN or PAFPN, on any of the space's level ranges. With span ``structure`` the neck and its
levels are fixed too: that is exactly one structure of the structural stage (SM-NAS), and the
modular stage's moves (hwnas.spec.space.SearchSpace.mutate) never leave it.

**Sharing.** A tensor is shared by name: the detector of any path is ``Detector.from_arch`` of its
arch, and its tensor ``blocks.stage2_1.conv1.weight`` is the leading slice (first output channels,
first input channels) of the supernet's tensor of that name, which has the largest shape any path
gives it. So a block keeps its weights when the stage grows or shrinks around it, a narrower path
uses a prefix of the channels (channel slicing), a shallower head the first convs of the deeper
one's tower. Head convs shared across levels keep one name whatever the levels
(:func:`hwnas.models.detector.level_free_key`). Because a path is the standalone detector with
sliced weights, :meth:`Supernet.extract` is exact by construction (a test holds it to that).

GroupNorm paths train without the weight standardisation standalone training adds (a training-time
parametrisation; the inherited weights are plain conv weights either way).

Paths run through ``torch.func.functional_call`` on the path's detector, so gradients flow into
the shared tensors.
"""
from __future__ import annotations

import fcntl
import io
import json
import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from hwnas.errors import HwnasError
from hwnas.fileio import write_atomic, write_json
from hwnas.spec.arch import Arch
from hwnas.spec.space import SearchSpace

STRATEGIES = ("uniform", "sandwich")
SPANS = ("family", "structure")


def check_span(span: str) -> None:
    if span not in SPANS:
        raise HwnasError(f"supernet span {span!r}: give one of {', '.join(SPANS)}")


# ----------------------------------------------------------------------------- the neighbourhood
@dataclass(frozen=True)
class Neighbourhood:
    """The detectors one supernet spans: ``space`` cut down to one resolution, block family, head
    kind and norm (and with span ``structure`` one neck on one level range)."""

    space: SearchSpace
    span: str = "family"  # one of SPANS: whether the neck and its levels vary (family) or are fixed (structure)

    @classmethod
    def of(cls, space: SearchSpace, arch: Arch, span: str = "family") -> "Neighbourhood":
        check_span(span)
        h, w = arch.input_hw
        if h != w:
            raise HwnasError(f"{arch}: supernets span square inputs only")
        for what, value, choices in (("block", arch.block, space.blocks), ("head", arch.head.kind, space.heads),
                                     ("norm", arch.norm, space.norms)):
            if value not in choices:
                raise HwnasError(f"{arch} is outside space {space.name!r}: its {what} {value!r} is not one of "
                                 f"{', '.join(choices)}; give a detector of the space or another --space")
        cut = replace(space, resolutions=(h,), blocks=(arch.block,), heads=(arch.head.kind,), norms=(arch.norm,))
        if span == "structure":
            cut = replace(cut, necks=(arch.neck,), level_ranges=(arch.levels,))
        return cls(cut, span)

    @property
    def key(self) -> str:
        s = self.space
        neck = "" if self.span == "family" else f"-{s.necks[0]}_p{s.level_ranges[0][0]}-{s.level_ranges[0][1]}"
        return f"i{s.resolutions[0]}-{s.blocks[0]}{neck}-{s.heads[0]}-{s.norms[0]}"

    def sample(self, seed: int) -> Arch:
        """One path, uniform over each choice (``SearchSpace.sample``)."""
        return self.space.sample(seed)

    def _arch(self, stages: tuple[str, ...], neck: str, levels: tuple[int, int], size: Callable, head) -> Arch:
        s = self.space
        return s.arch(s.resolutions[0], s.blocks[0], size(s.widths), stages, neck, levels, size(s.neck_widths),
                      head, s.norms[0])

    def _necks(self) -> list[tuple[str, tuple[int, int]]]:
        s, top = self.space, self.space.num_stages + 1
        kind = _head_kind(s)
        out = [("none", (top, top))] if "none" in s.necks and not kind.NEEDS_NECK else []
        return out + [(n, lv) for n in s.necks if n != "none" for lv in s.level_ranges if lv[0] <= top]

    def largest(self) -> Arch:
        """The widest and deepest path (sandwich rule): every stage full, the largest neck and head."""
        s, kind = self.space, _head_kind(self.space)
        neck, levels = max(self._necks(), key=lambda n: ({"none": 0, "fpn": 1, "pafpn": 2}[n[0]], n[1][1] - n[1][0]))
        head = kind.pick(s, max(kind.depth_choices(s)), max(kind.width_choices(s)), max)
        return self._arch(_stages(s, "2first"), neck, levels, max, head)

    def smallest(self) -> Arch:
        """The narrowest and shallowest path: one block a stage, the cheapest neck and head."""
        s, kind = self.space, _head_kind(self.space)
        neck, levels = min(self._necks(), key=lambda n: ({"none": 0, "fpn": 1, "pafpn": 2}[n[0]], n[1][1] - n[1][0]))
        head = kind.pick(s, min(kind.depth_choices(s)), min(kind.width_choices(s)), min)
        return self._arch(_stages(s, "shallow"), neck, levels, min, head)

    def covering(self) -> Iterator[Arch]:
        """Paths that together hold every tensor name at its largest shape: every neck, the '2' at
        every position of full stages, every head of the kind, all at the largest widths."""
        s, kind = self.space, _head_kind(self.space)
        # the deepest and widest heads of the kind hold every tower tensor at its largest; other
        # fields (the RoI head's proposals, the face head's tricks) may add tensors of their own
        heads = [h for h in kind.covering(s) if h.depth == max(kind.depth_choices(s))
                 and h.width == max(kind.width_choices(s))]
        for neck, levels in self._necks():
            for pos in range(max(s.max_blocks)):
                for head in heads:
                    yield self._arch(_stages(s, pos), neck, levels, max, head)


def _head_kind(space: SearchSpace):
    from hwnas.spec.space import head_kind

    return head_kind(space.heads[0])


def _stages(space: SearchSpace, how) -> tuple[str, ...]:
    """Full stages with the '2' at position ``how`` (clipped), "2first", or one block a stage ("shallow")."""
    out = []
    for i, cap in enumerate(space.max_blocks):
        if how == "shallow":
            out.append("1" if i == 0 else "2")
            continue
        pos = 0 if how == "2first" else min(how, cap - 1)
        out.append("1" * cap if i == 0 else "1" * pos + "2" + "1" * (cap - pos - 1))
    return tuple(out)


# ----------------------------------------------------------------------------- the shared weights
def _names(model: nn.Module) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The tensors a path shares, by state-dict key (tied ones under each of their names; buffers
    that are not saved, such as anchors, belong to the arch and are not shared), and which of them
    are parameters."""
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return model.state_dict(keep_vars=True), params


def _lead(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The leading slice of ``t`` with ``shape`` (first channels; kernels are never sliced)."""
    if t.shape == shape:
        return t
    if len(t.shape) != len(shape) or any(a < b for a, b in zip(t.shape, shape)) or t.shape[2:] != shape[2:]:
        raise HwnasError(f"a path's tensor of shape {tuple(shape)} does not fit the supernet's {tuple(t.shape)}")
    return t[tuple(slice(0, n) for n in shape)]


class Supernet:
    """The shared tensors of a neighbourhood, and the paths through them."""

    def __init__(self, hood: Neighbourhood, num_classes: int, seed: int = 0) -> None:
        from hwnas.heads.losses import init_head_priors
        from hwnas.models import Detector
        from hwnas.models.detector import level_free_key

        self.hood, self.num_classes = hood, num_classes
        torch.manual_seed(seed)
        found: dict[str, list[torch.Tensor]] = {}
        is_param: dict[str, bool] = {}
        self.bn_keys: set[str] = set()  # the BatchNorms' scale factors (gamma), by shared name
        for arch in hood.covering():
            model = Detector.from_arch(arch, num_classes)
            init_head_priors(model)
            self.bn_keys |= {level_free_key(f"{n}.weight") for n, m in model.named_modules()
                             if isinstance(m, nn.modules.batchnorm._BatchNorm)}
            tensors, params = _names(model)
            for name, t in tensors.items():
                key = level_free_key(name)
                found.setdefault(key, []).append(t.detach())
                is_param[key] = name in params
        self.tensors: dict[str, torch.Tensor] = {}
        for key, ts in found.items():
            ts = sorted(ts, key=lambda t: t.numel())
            shape = [max(t.shape[d] for t in ts) for d in range(ts[0].ndim)]
            bank = torch.zeros(shape, dtype=ts[0].dtype)
            for t in ts:  # the largest instance last: its initial values win where they overlap
                bank[tuple(slice(0, n) for n in t.shape)] = t
            self.tensors[key] = bank.requires_grad_(is_param[key])

    # ------------------------------------------------------------------ state
    @property
    def parameters(self) -> list[torch.Tensor]:
        return [t for t in self.tensors.values() if t.requires_grad]

    def to(self, device) -> "Supernet":
        self.tensors = {k: t.detach().to(device).requires_grad_(t.requires_grad) for k, t in self.tensors.items()}
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: t.detach().cpu() for k, t in self.tensors.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.tensors.keys() or any(state[k].shape != t.shape for k, t in self.tensors.items()):
            raise HwnasError("the saved supernet does not fit this neighbourhood (another space or hwnas version)")
        with torch.no_grad():
            for k, t in self.tensors.items():
                t.copy_(state[k])

    # ------------------------------------------------------------------ paths
    def check(self, arch: Arch) -> None:
        if Neighbourhood.of(self.hood.space, arch, self.hood.span).key != self.hood.key:
            raise HwnasError(f"{arch} is outside the supernet's neighbourhood {self.hood.key}")

    def path_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The slices of the shared tensors that ``model`` (a detector of a path) runs with, by its
        state-dict keys; tied names get the same slice."""
        from hwnas.models.detector import level_free_key

        slices: dict[str, torch.Tensor] = {}
        out = {}
        for name, t in _names(model)[0].items():
            key = level_free_key(name)
            if key not in self.tensors:
                raise HwnasError(f"{model.arch} has a tensor {name} the supernet {self.hood.key} lacks")
            if key not in slices:
                slices[key] = _lead(self.tensors[key], t.shape) if t.ndim else self.tensors[key]
            out[name] = slices[key]
        return out

    def path(self, arch: Arch) -> "Path_":
        """The detector of ``arch`` running on the shared tensors."""
        from hwnas.models import Detector

        self.check(arch)
        # Built where the tensors are, for the buffers it does not share (anchors); its own weights
        # are never used (about 20 ms for a small detector; the meta device would leave those
        # buffers empty).
        with torch.device(self.device):
            model = Detector.from_arch(arch, self.num_classes)
        return Path_(model, self)

    def extract(self, arch: Arch) -> nn.Module:
        """A standalone ``Detector`` of ``arch`` holding copies of the weights it inherits."""
        from hwnas.models import Detector

        self.check(arch)
        model = Detector.from_arch(arch, self.num_classes)
        state = {k: v.detach().clone() for k, v in self.path_tensors(model).items()}
        model.load_state_dict(state)
        return model.to(self.device)

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device


class Path_:
    """One path of a supernet: call it like the detector; ``train()``/``eval()`` as a module."""

    def __init__(self, model: nn.Module, net: Supernet) -> None:
        self.model, self.net, self.arch = model, net, model.arch

    def train(self, mode: bool = True) -> "Path_":
        self.model.train(mode)
        return self

    def eval(self) -> "Path_":
        return self.train(False)

    def __call__(self, *args, **kwargs):
        from torch.func import functional_call

        return functional_call(self.model, self.net.path_tensors(self.model), args, kwargs)


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class SupernetConfig:
    epochs: int = 12
    strategy: str = "uniform"  # "uniform": one path a step (SPOS); "sandwich": largest, smallest and two drawn
    calib_batches: int = 8  # training batches that recalibrate a path's BatchNorm statistics before scoring
    bn_only: bool = False  # BN-NAS: train only the BatchNorms' scale and shift, every conv stays at its random init

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise HwnasError(f"--supernet-strategy {self.strategy!r}: give one of {', '.join(STRATEGIES)}")
        if self.epochs < 1 or self.calib_batches < 1:
            raise HwnasError(f"supernet epochs {self.epochs} and calibration batches {self.calib_batches}: need >= 1")


def paths_of_step(hood: Neighbourhood, strategy: str, seed: int, step: int) -> list[Arch]:
    """The paths trained at one step: one drawn uniformly, or the sandwich rule's four (Yu and Huang
    2019: the largest and smallest bound every other path, two drawn between them)."""
    draw = [hood.sample((seed * 1_000_003 + step * 7 + j) % 2**63) for j in range(1 if strategy == "uniform" else 2)]
    return draw if strategy == "uniform" else [hood.largest(), hood.smallest(), *draw]


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock``: workers of one search on one machine train each supernet once (the
    second waits for the first and then reads its checkpoint)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def train_supernet(hood: Neighbourhood, data: Path, out: Path, train_cfg, cfg: SupernetConfig,
                   progress: Callable[[int, int, str], None] | None = None) -> tuple[Supernet, dict]:
    """Train (or resume, or just load) the supernet of ``hood`` in ``out``; its weights and what it
    cost. ``train_cfg`` (a ``TrainConfig``) brings the recipe: batch size, lr and its schedule,
    weight decay, clipping, augmentation, seed and device. A checkpoint is written atomically after
    every epoch; a killed run resumes from it.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it trains data-parallel: every process runs the same
    paths (they are drawn from the step number) on its share of the global batch
    (``train_cfg.batch_size``), and the gradients are averaged across processes before each step
    (gloo on CPU, NCCL on GPUs; each process on ``cuda:LOCAL_RANK``). torch's
    ``DistributedDataParallel`` wrapper was not used: it needs a module whose forward it runs, and
    here each step runs one to four different paths through a bank of tensors most of which a
    path leaves unused (``find_unused_parameters`` on every step); one all-reduce of the step's
    gradients is the same arithmetic. Process 0 writes the files."""
    from hwnas.data.transforms import epoch_batches, normalize
    from hwnas.data.wider import open_dataset
    from hwnas.heads.losses import DetectionLoss
    from hwnas.train.loop import RECIPE_VERSION, lr_factor, resolve_device, seed_everything, train_transform, training_loss

    out = Path(out)
    ck_path, done_path = out / "supernet.pt", out / "supernet.json"
    rank, world = distributed(train_cfg.device)
    if train_cfg.batch_size % world:
        raise HwnasError(f"--batch-size {train_cfg.batch_size} does not split over {world} processes; give a multiple")
    share = train_cfg.batch_size // world
    device = resolve_device(f"cuda:{rank_on_node()}" if world > 1 and train_cfg.device.startswith("cuda")
                            else train_cfg.device)
    seed_everything(train_cfg.seed)
    train_set = open_dataset(data, "train", train_transform(hood.largest(), train_cfg), train_cfg.on_error)
    k = len(train_set.class_names)
    net = Supernet(hood, k, train_cfg.seed).to(device)
    identity = {"hood": hood.key, "space": hood.space.name, "classes": train_set.class_names, "recipe_version":
                RECIPE_VERSION, "supernet": asdict(cfg), "batch_size": train_cfg.batch_size, "lr": train_cfg.lr,
                "seed": train_cfg.seed, "max_train_images": train_cfg.max_train_images}
    if done_path.exists():
        info = json.loads(done_path.read_text())
        if info["identity"] != json.loads(json.dumps(identity)):
            raise HwnasError(f"{out} holds a supernet trained with other settings; use another folder")
        net.load_state_dict(torch.load(ck_path, map_location="cpu", weights_only=True)["tensors"])
        return net, info
    if cfg.bn_only:  # BN-NAS (Chen et al. 2021): the convs keep their random initial weights
        for key, t in net.tensors.items():
            bn = key in net.bn_keys or (key.endswith(".bias") and key.removesuffix(".bias") + ".weight" in net.bn_keys)
            t.requires_grad_(t.requires_grad and bn)
    decay = [t for t in net.parameters if t.ndim > 1]
    no_decay = [t for t in net.parameters if t.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train_cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=train_cfg.lr)
    indices = list(range(len(train_set)))[: train_cfg.max_train_images or None]
    per_epoch = max(1, len(indices) // train_cfg.batch_size)
    total = cfg.epochs * per_epoch
    warmup = min(train_cfg.warmup_iters, total // 5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, total, warmup))
    losses_by: dict[str, DetectionLoss] = {}  # the loss of a head placement (levels and head), built once
    start, history = 0, []
    if ck_path.exists():
        ck = torch.load(ck_path, map_location="cpu", weights_only=False)
        if ck["identity"] != identity:
            raise HwnasError(f"{ck_path} was trained with other settings; use another folder")
        net.load_state_dict(ck["tensors"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"])
        start, history = ck["epoch"] + 1, ck["history"]
    for epoch in range(start, cfg.epochs):
        g = torch.Generator().manual_seed(train_cfg.seed * 1000 + epoch)
        order = [indices[i] for i in torch.randperm(len(indices), generator=g).tolist()]
        train_set.set_epoch(epoch)
        t0, losses = time.time(), []
        # this process's share of each global batch, batched as the training loop batches
        mine = [i for it in range(per_epoch) for i in order[it * train_cfg.batch_size + rank * share:][:share]]
        loader = epoch_batches(train_set, mine, share, train_cfg.workers, pin_memory=device.type == "cuda")
        for it, (images, targets) in enumerate(loader):
            step = epoch * per_epoch + it
            images = normalize(images.to(device, non_blocking=True))
            targets = [{kk: (v.to(device) if torch.is_tensor(v) else v) for kk, v in t.items()} for t in targets]
            opt.zero_grad(set_to_none=True)
            paths = paths_of_step(hood, cfg.strategy, train_cfg.seed, step)
            step_loss = 0.0
            for arch in paths:
                place = f"{arch.levels}/{arch.head}"
                if place not in losses_by:
                    losses_by[place] = training_loss(arch, k, train_cfg)
                crit = losses_by[place]  # the loss reads only the head and its levels from the arch
                path = net.path(arch).train()
                extra = crit.extra_boxes(targets, device)
                outputs = path(images) if extra is None else path(images, extra_boxes=extra)
                loss = crit(outputs, targets)["loss"] / len(paths)
                if not torch.isfinite(loss):
                    raise HwnasError(f"supernet training diverged at epoch {epoch} step {it} on {arch}; lower --lr")
                loss.backward()
                step_loss += loss.item()
            if world > 1:
                step_loss = _average_gradients(net.parameters, step_loss, world)
            nn.utils.clip_grad_norm_(net.parameters, train_cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(step_loss)
            if progress:
                progress(step + 1, total, f"supernet {hood.key} epoch {epoch + 1}/{cfg.epochs} "
                                          f"loss {sum(losses[-20:]) / len(losses[-20:]):.3f}")
        history.append({"epoch": epoch, "loss": sum(losses) / len(losses), "seconds": time.time() - t0,
                        "paths": per_epoch * (1 if cfg.strategy == "uniform" else 4), "processes": world,
                        "step_losses": losses})
        if rank == 0:
            buf = io.BytesIO()
            torch.save({"tensors": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "rng": torch.get_rng_state(), "epoch": epoch, "history": history, "identity": identity}, buf)
            write_atomic(ck_path, buf.getvalue())
    info = {"identity": identity, "history": history, "train_s": sum(h["seconds"] for h in history),
            "images": len(indices), "steps": total}
    if rank == 0:
        buf = io.BytesIO()  # the finished supernet keeps its tensors only
        torch.save({"tensors": net.state_dict()}, buf)
        write_atomic(ck_path, buf.getvalue())
        write_json(done_path, info)
    if world > 1:
        torch.distributed.barrier()
    return net, info


def rank_on_node() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def distributed(device: str) -> tuple[int, int]:
    """(rank, world size): (0, 1) unless launched by torchrun with more than one process, which
    joins the process group here (NCCL for CUDA, gloo on CPU)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _average_gradients(params: list[torch.Tensor], step_loss: float, world: int) -> float:
    """Average the gradients (and the step's loss, for the log) over the processes, in one all-reduce."""
    import torch.distributed as dist

    grads = [t.grad for t in params if t.grad is not None]  # the same tensors in every process: the same paths
    flat = torch.cat([g.flatten() for g in grads] + [torch.tensor([step_loss], device=grads[0].device)])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return float(flat[-1])


# ----------------------------------------------------------------------------- scoring a path
@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Replace every BatchNorm's running statistics by their exact average over ``batches`` (SPOS:
    the supernet's statistics are a blend of every path's)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    model.train()
    for x in batches:
        model(x)
    for m in bns:
        m.momentum = 0.1
    model.eval()


def calibration_images(data: Path, input_hw, n_batches: int, batch_size: int, seed: int, device) -> list[torch.Tensor]:
    """``n_batches`` batches of training images, letterboxed as for evaluation, the same for every path."""
    from hwnas.data.transforms import EvalTransform, collate, normalize
    from hwnas.data.wider import open_dataset

    ds = open_dataset(data, "train", EvalTransform(input_hw))
    idx = random.Random(seed).sample(range(len(ds)), min(len(ds), n_batches * batch_size))
    out = []
    for i in range(0, len(idx), batch_size):
        images, _ = collate([ds[j] for j in idx[i:i + batch_size]])
        out.append(normalize(images.to(device)))
    return out


def bn_indicator(net: Supernet, arch: Arch) -> float:
    """BN-NAS's score of a path: over its BatchNorms, the mean magnitude of the scale factors of the
    channels it uses, summed (a BN whose scales training drove to zero marks an operation that
    matters little). Needs no data: microseconds a path."""
    from hwnas.models import Detector
    from hwnas.models.detector import level_free_key

    net.check(arch)
    tensors = net.path_tensors(Detector.from_arch(arch, net.num_classes))  # its names and shapes
    return float(sum(t.detach().abs().mean() for name, t in tensors.items() if level_free_key(name) in net.bn_keys))


def norm_layers(arch: Arch) -> int:
    """The normalisation layers (BatchNorm or GroupNorm) of ``arch``'s detector, a head's layer kept
    per pyramid level counted once: what :func:`bn_indicator` reads from an untrained supernet, where
    every scale factor is 1. Near enough the path's depth in convolutions."""
    from hwnas.models import Detector
    from hwnas.models.detector import level_free_key

    return len({level_free_key(f"{name}.weight") for name, m in Detector.from_arch(arch, 1).named_modules()
                if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))})


def score_path(net: Supernet, arch: Arch, calib: list[torch.Tensor], val_set, device: str) -> dict:
    """mAP on ``val_set`` of ``arch`` with inherited weights and recalibrated BatchNorm."""
    from hwnas.evaluate.coco import evaluate

    model = net.extract(arch)
    recalibrate_bn(model, calib)
    m = evaluate(model, arch, val_set, device=device)
    if not math.isfinite(m["map"]):
        raise HwnasError(f"{arch}: scoring gave mAP {m['map']}")
    return m
