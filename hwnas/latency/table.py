"""Latency tables: per-unit latencies measured on one target, and the predictor that sums them.

A table is a JSON file (format ``hwnas-latency-table/1``, see docs/latency-tables.md):
the target fingerprint it was measured on, the timing protocol, and one entry per unit key.
``profile`` fills it unit by unit with an atomic rewrite after each, so kill -9 loses at most
the unit in flight and the same command resumes.
"""
from __future__ import annotations

import datetime as dt
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from hwnas.backends.base import Backend, Latency, Target, TimingConfig, time_module
from hwnas import formats
from hwnas.errors import HwnasError
from hwnas.fileio import read_json, write_json
from hwnas.models.blocks import build, example_inputs
from hwnas.spec.arch import Arch
from hwnas.spec.space import get_space
from hwnas.spec.units import Unit

FORMAT = formats.LATENCY_TABLE


@dataclass(frozen=True)
class Correction:
    """measured_ms ~= scale * unit_sum_ms + offset_ms + per_unit_ms * n_units.

    ``offset_ms`` absorbs per-call overhead of the whole model, ``per_unit_ms`` the per-kernel
    launch or dispatch cost that the per-unit timings double count or miss; fitted on a sample
    of detectors separate from the one the fidelity is reported on.
    """

    scale: float = 1.0
    offset_ms: float = 0.0
    per_unit_ms: float = 0.0
    n: int = 0
    seed: int = 0

    def apply(self, raw_ms: float, n_units: int) -> float:
        return self.scale * raw_ms + self.offset_ms + self.per_unit_ms * n_units

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "Correction":
        c = cls(**d)
        if not all(math.isfinite(v) for v in (c.scale, c.offset_ms, c.per_unit_ms)):
            raise ValueError(f"correction {d} holds a number that is not finite")
        return c

    @classmethod
    def fit(cls, raw_ms: Iterable[float], n_units: Iterable[int], measured_ms: Iterable[float], seed: int = 0) -> "Correction":
        """Least squares on relative error (rows divided by the measurement), so small and large
        detectors count alike."""
        raw, nu, m = (np.asarray(list(v), dtype=float) for v in (raw_ms, n_units, measured_ms))
        if len(m) < 4:
            raise HwnasError(f"a correction needs at least 4 measured detectors, got {len(m)}")
        a = np.stack([raw, np.ones_like(raw), nu], axis=1) / m[:, None]
        coef, *_ = np.linalg.lstsq(a, np.ones_like(m), rcond=None)
        return cls(float(coef[0]), float(coef[1]), float(coef[2]), len(m), seed)


@dataclass(frozen=True)
class Prediction:
    latency_ms: float  # corrected when the table has a correction
    raw_ms: float  # plain sum of unit medians
    n_units: int
    breakdown_ms: dict[str, float]  # stem, stage1.., neck, head (raw sums)
    spread_ms: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class LatencyTable:
    target: Target
    space: str
    resolutions: tuple[int, ...]
    num_classes: int
    timing: TimingConfig
    entries: dict[str, Latency] = field(default_factory=dict)
    units: dict[str, Unit] = field(default_factory=dict)
    ops: dict[str, Latency] = field(default_factory=dict)
    correction: Correction | None = None
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    host: str = field(default_factory=platform.node)

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "target": self.target.to_dict(),
            "space": self.space,
            "resolutions": list(self.resolutions),
            "num_classes": self.num_classes,
            "timing": self.timing.__dict__,
            "created": self.created,
            "host": self.host,
            "correction": self.correction.to_dict() if self.correction else None,
            "entries": {k: {**lat.to_dict(), "unit": self.units[k].to_dict()} for k, lat in self.entries.items()},
            "ops": {k: lat.to_dict() for k, lat in self.ops.items()},
        }

    def save(self, path: Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "LatencyTable":
        d = read_json(path, "latency table")
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise HwnasError(f"{path} is not an hwnas latency table (format {FORMAT!r} expected); "
                             f"make one with: hwnas profile --out {path}")
        try:
            entries, units = {}, {}
            for k, e in d["entries"].items():
                units[k] = Unit.from_dict(e["unit"])
                entries[k] = Latency.from_dict({x: e[x] for x in ("median_ms", "spread_ms", "n")})
            return cls(
                target=Target.from_dict(d["target"]), space=d["space"], resolutions=tuple(d["resolutions"]),
                num_classes=int(d["num_classes"]), timing=TimingConfig(**d["timing"]), entries=entries,
                units=units, ops={k: Latency.from_dict(v) for k, v in d.get("ops", {}).items()},
                correction=Correction.from_dict(d["correction"]) if d.get("correction") else None,
                created=d.get("created", ""), host=d.get("host", ""))._checked()
        except (KeyError, TypeError, ValueError, AttributeError, HwnasError) as e:
            raise HwnasError(f"latency table {path} is malformed ({e.__class__.__name__}: {e}); "
                             f"delete it and run hwnas profile again") from None

    def _checked(self) -> "LatencyTable":
        from hwnas.limits import MAX_INPUT_SIDE, MAX_NUM_CLASSES

        if not 1 <= self.num_classes <= MAX_NUM_CLASSES:
            raise ValueError(f"num_classes {self.num_classes} is not in 1..{MAX_NUM_CLASSES}")
        if not self.resolutions or not all(isinstance(r, int) and 32 <= r <= MAX_INPUT_SIDE for r in self.resolutions):
            raise ValueError(f"resolutions {list(self.resolutions)} are not sizes in 32..{MAX_INPUT_SIDE}")
        bad = [k for k, u in self.units.items() if u.key() != k]
        if bad:  # an edited key would make lookups find the wrong unit's latency
            raise ValueError(f"entry {bad[0]!r} does not match its unit {self.units[bad[0]].key()!r}")
        return self

    # ------------------------------------------------------------------ use
    def check_target(self, target: Target, *, force: bool = False, path: str = "table") -> None:
        diffs = self.target.mismatches(target)
        if diffs and not force:
            raise HwnasError(f"{path} was measured on another target ({'; '.join(diffs)}); "
                             f"profile this target with hwnas profile, or pass --force to use it anyway")

    def add(self, unit: Unit, latency: Latency) -> None:
        key = unit.key()
        self.entries[key] = latency
        self.units[key] = unit

    def lookup(self, unit: Unit) -> Latency:
        try:
            return self.entries[unit.key()]
        except KeyError:
            raise HwnasError(
                f"unit {unit.key()} is not in the table (space {self.space!r}, resolutions "
                f"{','.join(map(str, self.resolutions))}, {self.num_classes} classes); profile it with "
                f"hwnas profile --resolutions <input size> --num-classes {self.num_classes}") from None

    def predict(self, arch: Arch) -> Prediction:
        """Predicted whole-detector latency: the sum over ``arch.placed_units`` (the one walk)."""
        total, var, groups = 0.0, 0.0, {}
        placed = arch.placed_units(self.num_classes)
        for p in placed:
            lat = self.lookup(p.unit)
            total += lat.median_ms
            var += lat.spread_ms ** 2
            g = _group(p.role)
            groups[g] = groups.get(g, 0.0) + lat.median_ms
        corrected = self.correction.apply(total, len(placed)) if self.correction else total
        return Prediction(corrected, total, len(placed), groups, var ** 0.5)


def _group(role: str) -> str:
    head = role.split(".")[0]
    return head if head.startswith("stage") or head in ("stem", "neck") else "head"


# ============================================================================ profiling
ProgressFn = Callable[[int, int, str], None]


def profile(
    backend: Backend,
    out: Path,
    *,
    space: str = "default",
    resolutions: tuple[int, ...] = (256,),
    num_classes: int = 80,
    timing: TimingConfig = TimingConfig(),
    units: list[Unit] | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> LatencyTable:
    """Time every unit the space needs at these resolutions; resume from ``out`` if it exists."""
    target = backend.target()
    if units is None:
        units = get_space(space).with_resolutions(tuple(resolutions)).all_units(num_classes)
    table = load_for_resume(out, target, space, num_classes, force=force)
    if table is not None:
        table.resolutions = tuple(sorted(set(table.resolutions) | set(resolutions)))
    else:
        table = LatencyTable(target, space, tuple(resolutions), num_classes, timing)
        table.save(out)
    todo = [u for u in units if u.key() not in table.entries]
    done = len(units) - len(todo)
    for i, u in enumerate(todo):
        if progress:
            progress(done + i, len(units), u.key())
        table.add(u, time_unit(backend, u, table.timing, table.target.batch))
        table.save(out)  # one atomic rewrite per unit: kill -9 loses at most the unit in flight
    if progress:
        progress(len(units), len(units), "done")
    return table


def load_for_resume(out: Path, target: Target, space: str, num_classes: int, *, force: bool = False) -> "LatencyTable | None":
    """The table at ``out`` if profiling into it may resume (same target, space and classes), None if
    there is none yet; otherwise an HwnasError (checked before any work, so the CLI fails in one line)."""
    if not out.exists():
        return None
    table = LatencyTable.load(out)
    table.check_target(target, force=force, path=str(out))
    if table.num_classes != num_classes or table.space != space:
        raise HwnasError(f"{out} holds space {table.space!r} with {table.num_classes} classes, not {space!r} "
                         f"with {num_classes}; choose another --out")
    return table


def time_unit(backend: Backend, unit: Unit, timing: TimingConfig, batch: int = 1) -> Latency:
    return time_module(backend, build(unit).eval(), example_inputs(unit, batch), timing)
