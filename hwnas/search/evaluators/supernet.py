"""``supernet``: candidates scored with weights inherited from a weight-sharing supernet (DetNAS, SPOS).

The first candidate of a neighbourhood (resolution, block family, head kind, norm, and with
``--supernet-span structure`` the neck and its levels: :class:`hwnas.search.supernet.Neighbourhood`)
trains that neighbourhood's supernet once, into
``RUN/supernets/<key>/`` (resumable; workers on one machine wait for each other through a lock);
every candidate is then scored in seconds: its weights cut from the supernet, BatchNorm statistics
recalibrated on a few training batches, mAP on the val set. The score is a proxy (``is_proxy``):
the search trains its final front standalone, so the mAP a user reads is never this one.

``bn``: BN-NAS (Chen et al. 2021) on the same supernets: only the BatchNorms' scale and shift are
trained (``RUN/bn-supernets/``), and a candidate's score is the magnitude of the scale factors of
the channels it uses (:func:`hwnas.search.supernet.bn_indicator`), computed without any data. Not
an mAP at all, only an order: it is kept beside the others to measure how well it ranks detectors.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from hwnas.fileio import write_json
from hwnas.search.evaluators.base import Budget, Evaluation, Note, failure_reason

if TYPE_CHECKING:
    from hwnas.search.runner import SearchConfig
    from hwnas.spec.arch import Arch


class SupernetEvaluator:
    def __init__(self, cfg: "SearchConfig", bn_nas: bool = False) -> None:
        from hwnas.search.supernet import SupernetConfig
        from hwnas.spec.space import get_space

        self.cfg = cfg
        space = get_space(cfg.space)
        self.space = space.with_resolutions(cfg.resolutions) if cfg.resolutions else space
        self.train_cfg = cfg.train_config()
        self.bn_nas = bn_nas
        self.net_cfg = SupernetConfig(epochs=cfg.supernet_epochs, strategy=cfg.supernet_strategy, bn_only=bn_nas)
        self.nets: dict = {}  # neighbourhood key -> trained Supernet, for the life of this worker
        self.by_size: dict = {}  # input size -> (calibration batches, val set)

    def folder(self, key: str) -> Path:
        return Path(self.cfg.out) / ("bn-supernets" if self.bn_nas else "supernets") / key

    def supernet(self, arch: "Arch", note: Note | None = None):
        """The trained supernet of ``arch``'s neighbourhood (trained now if no worker has yet)."""
        from hwnas.search.supernet import Neighbourhood, locked, train_supernet

        hood = Neighbourhood.of(self.space, arch, self.cfg.supernet_span)
        if hood.key not in self.nets:
            progress = (lambda d, t, item: note(f"{item} ({d}/{t} steps)")) if note else None
            with locked(self.folder(hood.key)):
                self.nets[hood.key], _ = train_supernet(hood, self.cfg.data, self.folder(hood.key), self.train_cfg,
                                                        self.net_cfg, progress)
        return self.nets[hood.key]

    def __call__(self, arch: "Arch", budget: Budget, folder: Path, note: Note | None = None) -> Evaluation:
        """``budget`` does not apply: a supernet's cost is its own epochs (``--supernet-epochs``)."""
        from hwnas.search.supernet import bn_indicator

        done = folder / ("bn_score.json" if self.bn_nas else "supernet_score.json")
        if done.exists():  # scored before a kill: the score stands
            return Evaluation.from_dict(json.loads(done.read_text()))
        t0 = time.perf_counter()
        try:
            net = self.supernet(arch, note)
            score, map50 = (bn_indicator(net, arch), None) if self.bn_nas else self._map(net, arch, note)
        except BaseException as e:
            reason = failure_reason(e)
            if reason is None:
                raise
            return Evaluation.failed(reason, time.perf_counter() - t0, is_proxy=True)
        ev = Evaluation(score, time.perf_counter() - t0, is_proxy=True, map50=map50)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(done, ev.to_dict())
        return ev

    def _map(self, net, arch: "Arch", note: Note | None) -> tuple[float, float]:
        """mAP and mAP@0.5 on the val set with inherited weights and recalibrated BatchNorm."""
        from hwnas.data.transforms import EvalTransform
        from hwnas.data.wider import open_dataset
        from hwnas.search.supernet import calibration_images, score_path

        if note:
            note("scoring with inherited weights")
        hw = arch.input_hw
        if hw not in self.by_size:  # the same calibration images for every candidate of a size
            self.by_size[hw] = (calibration_images(self.cfg.data, hw, self.net_cfg.calib_batches, self.cfg.batch_size,
                                                   self.cfg.seed, net.device),
                                open_dataset(self.cfg.data, "val", EvalTransform(hw), self.train_cfg.on_error))
        m = score_path(net, arch, *self.by_size[hw], str(net.device))
        return float(m["map"]), float(m["map50"])
