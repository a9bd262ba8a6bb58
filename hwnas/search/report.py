"""What a search leaves behind: RUN/pareto.json, RUN/search.json, RUN/pareto.png, RUN/report.md.

Everything here is computed from the search's ``TrialRecord``s (and this worker's bookkeeping
log), never from the live search: any worker, a rerun after the search ended, or a script that
reopened the storage (``read_records``) writes the same report.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from hwnas.fileio import write_atomic, write_json
from hwnas.search.pareto import dominates, hypervolume, nadir_reference, pareto_indices
from hwnas.search.records import TrialRecord

if TYPE_CHECKING:
    from hwnas.backends import Target
    from hwnas.search.runner import SearchConfig

LatencyOf = Callable[[TrialRecord], float | None]  # which latency of a record a front is taken on


def predicted(r: TrialRecord) -> float:
    return r.predicted_latency_ms


def measured(r: TrialRecord) -> float | None:
    return r.measured_latency_ms


def front_of(recs: Sequence[TrialRecord], latency: LatencyOf = predicted) -> list[TrialRecord]:
    """The non-dominated records on (score, ``latency``), fastest first."""
    return [recs[i] for i in pareto_indices([(r.score, latency(r)) for r in recs])]


def searched(recs: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The completed candidates of the search stages (baselines are not candidates)."""
    return [r for r in recs if r.complete and r.stage != "baseline"]


def final_front(recs: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The search's front: completed candidates of the search stages, by predicted latency."""
    return front_of(searched(recs))


def _hv(front: Sequence[TrialRecord], ref_ms: float) -> float:
    return hypervolume([r.objectives for r in front], 0.0, ref_ms)


@dataclass(frozen=True)
class StageFront:
    """The front after one stage, or after one modular generation (with everything before it)."""

    stage: str
    generation: int
    n: int
    front: tuple[TrialRecord, ...]
    hypervolume: float

    def to_dict(self) -> dict:
        return {"stage": self.stage, "generation": self.generation, "n": self.n,
                "front": [str(r.arch) for r in self.front], "hypervolume": self.hypervolume}


def stage_fronts(done: Sequence[TrialRecord], ref_ms: float) -> list[StageFront]:
    """The front after each stage and after each modular generation, so one can see it move."""
    groups: list[tuple[str, int, list[TrialRecord]]] = []
    for stage in ("random", "structural"):
        recs = [r for r in done if r.stage == stage]
        if recs:
            groups.append((stage, max(r.generation for r in recs), recs))
    struct = [r for r in done if r.stage == "structural"]
    mod = [r for r in done if r.stage == "modular"]
    for g in sorted({r.generation for r in mod}):
        groups.append(("modular", g, struct + [r for r in mod if r.generation <= g]))
    out = []
    for stage, gen, recs in groups:
        front = front_of(recs)
        out.append(StageFront(stage, gen, len(recs), tuple(front), _hv(front, ref_ms)))
    return out


@dataclass(frozen=True)
class Match:
    """For a baseline and one kind of latency: the fastest searched detector at most as slow and at
    least as accurate (None: none is), and whether it is strictly better in one of the two."""

    trial: str | None
    strictly_dominates: bool


def baseline_matches(b: TrialRecord, done: Sequence[TrialRecord]) -> dict[str, Match]:
    """Matches by "predicted" and, where the baseline was measured, by "measured" latency."""
    out = {}
    for kind, lat in (("predicted", predicted), ("measured", measured)):
        if lat(b) is None:
            continue
        better = [r for r in done if lat(r) is not None and lat(r) <= lat(b) and r.score >= b.score]
        best = min(better, key=lambda r: (lat(r), -r.score)) if better else None
        out[kind] = Match(best.trial if best else None,
                          bool(best and dominates((best.score, lat(best)), (b.score, lat(b)))))
    return out


def bookkeeping_rows(run_dir: Path) -> list[dict]:
    """The lines of ``RUN/bookkeeping.jsonl``: one per evaluated trial, of every worker."""
    rows = []
    path = run_dir / "bookkeeping.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the line a kill -9 cut short
                pass
    return rows


def bookkeeping(run_dir: Path) -> dict:
    rows = bookkeeping_rows(run_dir)
    if not rows:
        return {"n": 0}
    over = sum(r["overhead_s"] for r in rows)
    cost = sum(r["train_s"] + r["overhead_s"] for r in rows)
    return {"n": len(rows), "overhead_s_mean": over / len(rows), "trial_s_mean": cost / len(rows),
            "overhead_fraction": over / cost if cost else 0.0,
            "overhead_fraction_max": max(r["overhead_s"] / max(1e-9, r["train_s"] + r["overhead_s"]) for r in rows)}


@dataclass(frozen=True)
class Summary:
    """A search's outcome, as search.json, report.md and pareto.png show it."""

    config: dict  # the search's settings and storage, as search.json records them
    table_target: dict
    records: tuple[TrialRecord, ...]
    front: tuple[TrialRecord, ...]  # final front, each with ``on_measured_front`` set
    fronts: tuple[StageFront, ...]
    baselines: tuple[tuple[TrialRecord, dict[str, Match]], ...]
    reference_ms: float
    bookkeeping: dict
    supernets_s: float = 0.0  # training time of the supernets in RUN/supernets/, RUN/bn-supernets/ (part of scoring_s)

    @property
    def hypervolume(self) -> float:
        return _hv(self.front, self.reference_ms)

    @property
    def counts(self) -> dict[str, int]:
        """Trials by state; ``scored``: candidates the evaluator scored (failures included: they cost
        compute); ``trained_standalone``: of those, trained on their own (every one for ``train``,
        the final front for a proxy evaluator)."""
        states: dict[str, int] = {}
        for r in self.records:
            if r.stage != "baseline":
                states[r.state] = states.get(r.state, 0) + 1
        cands = [r for r in self.records if r.stage != "baseline"]
        return {**states, "scored": sum(r.state in ("complete", "fail") for r in cands),
                "trained_standalone": sum(r.map is not None for r in cands)}

    @property
    def time_s(self) -> dict[str, float]:
        """Where the compute went: scoring candidates (for ``supernet`` including the supernets'
        training, which the first candidate of each neighbourhood pays), training the proxy front
        standalone, and the search's own bookkeeping (drawing proposals, the duplicates among them,
        Optuna and the records: everything between two candidates)."""
        cands = [r for r in self.records if r.stage != "baseline"]
        return {"scoring_s": sum(r.cost_s or 0.0 for r in cands),
                "supernets_s": self.supernets_s,
                "standalone_s": sum(r.standalone_s or 0.0 for r in cands),
                "bookkeeping_s": self.bookkeeping.get("overhead_s_mean", 0.0) * self.bookkeeping["n"]}

    def to_dict(self) -> dict:
        baselines = []
        for b, matches in self.baselines:
            row = b.to_dict()
            for kind, m in matches.items():
                row[f"matched_by_{kind}"] = m.trial
                row[f"strictly_dominated_by_{kind}"] = m.strictly_dominates
            baselines.append(row)
        return {"config": self.config, "table_target": self.table_target, "counts": self.counts,
                "front": [r.to_dict() for r in self.front], "fronts": [f.to_dict() for f in self.fronts],
                "baselines": baselines, "hypervolume_reference": {"map": 0.0, "latency_ms": self.reference_ms},
                "hypervolume": self.hypervolume, "bookkeeping": self.bookkeeping, "time_s": self.time_s,
                "trials": [r.to_dict() for r in self.records]}


def summarize(records: Sequence[TrialRecord], cfg: "SearchConfig", target: "Target", storage: str) -> Summary:
    done = searched(records)
    front = final_front(records)
    timed = [r for r in front if r.measured_latency_ms is not None]
    # Whether each member stays on the front recomputed with measured latency; unknown until all are measured.
    on = {r.trial for r in front_of(timed, measured)} if timed and len(timed) == len(front) else None
    front = [replace(r, on_measured_front=None if on is None else r.trial in on) for r in front]
    baselines = tuple((b, baseline_matches(b, done)) for b in records if b.stage == "baseline" and b.complete)
    ref = nadir_reference([r.predicted_latency_ms for r in done])
    from hwnas.train.loop import RECIPE_VERSION  # the study's identity holds it: equal, or the search stopped

    config = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.__dict__.items()}, "storage": storage,
              "recipe_version": RECIPE_VERSION}
    supernets = sum(json.loads(p.read_text())["train_s"] for p in Path(cfg.out).glob("*supernets/*/supernet.json"))
    return Summary(config, target.to_dict(), tuple(records), tuple(front), tuple(stage_fronts(done, ref)), baselines,
                   ref, bookkeeping(Path(cfg.out)), supernets)


def write_report(records: Sequence[TrialRecord], cfg: "SearchConfig", target: "Target", storage: str) -> Path:
    """Write pareto.json, search.json, pareto.png and report.md into ``cfg.out``; the report's path."""
    out = Path(cfg.out)
    s = summarize(records, cfg, target, storage)
    write_json(out / "pareto.json", [r.to_dict() for r in s.front])
    write_json(out / "search.json", s.to_dict())
    write_candidates(out / "candidates.csv", s.records)
    plot(s, out / "pareto.png")
    write_atomic(out / "report.md", markdown(s))
    return out / "report.md"


def baseline_names(given: Sequence[str]) -> dict[str, str]:
    """Arch string -> the name a baseline was given by (a preset's name, else its arch string)."""
    from hwnas.spec.presets import resolve_arch

    return {str(resolve_arch(name)): name for name in given}


def plot(s: Summary, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    markers = {"structural": "o", "modular": "^", "random": "s"}
    for stage, mk in markers.items():
        pts = [(r.predicted_latency_ms, r.score) for r in s.records if r.stage == stage and r.complete]
        if pts:
            ax.scatter(*zip(*pts), marker=mk, s=18, color="0.65", label=f"{stage} trials ({len(pts)})", zorder=1)
    cmap = plt.get_cmap("viridis")
    for i, f in enumerate(s.fronts):
        pts = sorted((r.predicted_latency_ms, r.score) for r in f.front)
        colour = cmap(i / max(1, len(s.fronts) - 1))
        ax.step(*zip(*pts), where="post", color=colour, lw=1.2, zorder=2,
                label=f"{f.stage} front" + (f" gen {f.generation}" if f.stage == "modular" else ""))
    if s.front:
        ax.scatter([r.predicted_latency_ms for r in s.front], [r.score for r in s.front], color="tab:red", s=36,
                   zorder=3, label="final front (predicted)")
        meas = [(r.measured_latency_ms, r.score) for r in s.front if r.measured_latency_ms is not None]
        if meas:
            ax.scatter(*zip(*meas), facecolors="none", edgecolors="tab:red", s=60, zorder=3,
                       label="final front (measured)")
        trained = [(r.predicted_latency_ms, r.map) for r in s.front if r.is_proxy and r.map is not None]
        if trained:  # a proxy front, trained standalone: where the real mAP lies
            ax.scatter(*zip(*trained), marker="D", color="tab:blue", s=26, zorder=3,
                       label="final front, trained standalone (mAP)")
        for r in s.front:  # the trial id a user passes to export/train --search RUN --pick
            ax.annotate(r.trial, (r.predicted_latency_ms, r.score), fontsize=6, xytext=(3, -9),
                        textcoords="offset points", color="tab:red")
    names = baseline_names(s.config.get("baselines") or ())
    for b, _ in s.baselines:
        ax.scatter([b.predicted_latency_ms], [b.score], marker="*", color="black", s=120, zorder=4)
        ax.annotate(names.get(str(b.arch), str(b.arch)), (b.predicted_latency_ms, b.score), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    if s.baselines:
        ax.scatter([], [], marker="*", color="black", s=120, label="baselines")
    ax.set_xlabel("latency (ms, predicted from the table)")
    proxy = any(r.is_proxy for r in s.records)
    ax.set_ylabel(f"{'proxy for ' if proxy else ''}mAP (COCO 0.5:0.95, val), evaluator {s.config['evaluator']}")
    c, t = s.config, s.table_target
    ax.set_title(f"space {c['space']} at {','.join(map(str, c['resolutions']))} px, table {t['backend']} on "
                 f"{t['device']}\ndata {c['data']}", fontsize=8)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


CANDIDATE_COLUMNS = ("trial", "stage", "generation", "state", "arch", "evaluator", "proxy_map", "map", "map50",
                     "predicted_latency_ms", "measured_latency_ms", "cost_s", "standalone_s", "checkpoint", "reason")


def write_candidates(path: Path, records: Sequence[TrialRecord]) -> None:
    """``RUN/candidates.csv``: every scored candidate (and baseline), one row each; ``map`` only where
    the detector was trained standalone, ``proxy_map`` where a proxy evaluator scored it."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CANDIDATE_COLUMNS)
    for r in records:
        if r.state in ("complete", "fail"):
            d = r.to_dict()
            w.writerow(["" if d[c] is None else d[c] for c in CANDIDATE_COLUMNS])
    write_atomic(path, buf.getvalue())


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def accuracy_text(r: TrialRecord) -> str:
    """The mAP, or the proxy score marked as one: a reader must never take a proxy for an mAP."""
    if r.map is None:
        return f"{r.proxy_map:.4f} (proxy)"
    return f"{r.map:.4f}" + (f" (proxy {r.proxy_map:.4f})" if r.proxy_map is not None else "")


def markdown(s: Summary) -> str:
    c = s.config
    lines = [f"# Search report: {c['study']}", "",
             f"- data `{c['data']}`, space `{c['space']}` at {','.join(map(str, c['resolutions']))} px, table `{c['table']}` "
             f"({s.table_target['backend']} on {s.table_target['device']})",
             f"- stage `{c['stage']}`, {c['trials']} evaluated candidates, evaluator `{c['evaluator']}` "
             f"({c['epochs']} epoch(s) each), seed {c['seed']}"
             + (f", latency budget {c['latency_max_ms']} ms (predicted)" if c["latency_max_ms"] else ""),
             f"- storage `{c['storage']}`",
             "- trials: " + ", ".join(f"{v} {k}" for k, v in sorted(s.counts.items())
                                      if k not in ("scored", "trained_standalone")), ""]
    lines += ["## Final front (predicted latency), re-measured end to end", "",
              "| trial | arch | mAP | mAP@0.5 | predicted ms | measured ms | error % | on measured front |",
              "|---|---|---|---|---|---|---|---|"]
    for r in s.front:
        m, p = r.measured_latency_ms, r.predicted_latency_ms
        err = "-" if m is None else f"{100 * (p - m) / m:+.1f}"
        mark = {True: "yes", False: "no", None: "-"}[r.on_measured_front]
        lines.append(f"| {r.trial} | `{r.arch}` | {accuracy_text(r)} | {_ms(r.map50)} | {p:.2f} | {_ms(m)} | {err} | {mark} |")
    lines += ["", f"Hypervolume (mAP x ms, reference mAP 0, {s.reference_ms:.2f} ms): {s.hypervolume:.4f}", "",
              "## How the front moved", "",
              "| stage | generation | candidates so far | front size | hypervolume |", "|---|---|---|---|---|"]
    for f in s.fronts:
        lines.append(f"| {f.stage} | {f.generation} | {f.n} | {len(f.front)} | {f.hypervolume:.4f} |")
    if s.baselines:
        lines += ["", "## Baselines (evaluated the same way)", "",
                  "| baseline | arch | mAP | predicted ms | measured ms | matched by (predicted) | matched by (measured) |",
                  "|---|---|---|---|---|---|---|"]
        names = baseline_names(c.get("baselines") or ())
        for b, m in s.baselines:
            by_measured = m["measured"].trial if "measured" in m else None
            lines.append(f"| {names.get(str(b.arch), '-')} | `{b.arch}` | {accuracy_text(b)} | {b.predicted_latency_ms:.2f} | {_ms(b.measured_latency_ms)} "
                         f"| {m['predicted'].trial or 'none'} | {by_measured or '-'} |")
    failed = [r for r in s.records if r.state == "fail"]
    if failed:
        lines += ["", "## Failed candidates", ""] + [f"- {r.trial} `{r.arch}`: {r.reason}" for r in failed]
    t = s.time_s
    lines += ["", f"Time: scoring {t['scoring_s'] / 60:.1f} min"
              + (f" (of which training supernets {t['supernets_s'] / 60:.1f} min)" if t["supernets_s"] else "")
              + (f", training the front standalone {t['standalone_s'] / 60:.1f} min" if t["standalone_s"] else "")
              + f", bookkeeping {t['bookkeeping_s']:.1f} s; {s.counts['scored']} candidates scored, "
              f"{s.counts['trained_standalone']} trained standalone."]
    bk = s.bookkeeping
    if bk["n"]:
        lines += ["", f"Bookkeeping (drawing, duplicates, Optuna, records; this worker, {bk['n']} trials): {bk['overhead_s_mean'] * 1e3:.0f} ms a trial, "
                  f"{100 * bk['overhead_fraction']:.3f} % of trial time (worst trial {100 * bk['overhead_fraction_max']:.3f} %)."]
    lines += ["", "Files: `pareto.json` (front), `search.json` (every trial), `candidates.csv` (every scored candidate), "
              "`pareto.png`, `trials/<id>/` "
              "(what the evaluator kept: `last.pt` for `train`).", ""]
    return "\n".join(lines)
