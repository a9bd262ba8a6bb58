"""``TrialRecord``: the one way anything reads a search's trials (report, CLI, quickstart, benchmarks).

Optuna keeps the trials; the search writes, per trial, the user attributes ``hwnas`` (what was
proposed: arch, stage, predicted latency, parent ...), ``evaluation`` (``Evaluation.to_dict()``)
and ``reason`` (why it was pruned or failed), and on one study per search ``measured_ms`` (the
end-to-end re-measurements of the front) and ``standalone`` (by arch, the ``Evaluation`` of a
proxy-scored front member trained standalone); with successive halving each study also keeps its
promotions (``rung<epochs>:<arch>``: the ``Evaluation`` at that rung). This module is the only reader of those attributes;
everything else reads records, from a live study, a reopened storage, or the JSON files.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable

from hwnas.search.evaluators.base import Evaluation
from hwnas.spec.arch import Arch

GENERATION_KEY = "NSGAIISampler:generation"


@dataclass(frozen=True)
class TrialRecord:
    """One proposed candidate of one stage (pruned and failed ones included).

    Accuracy is ``map`` (COCO 0.5:0.95 of the detector trained standalone: never a proxy) and
    ``proxy_map`` (a cheap evaluator's estimate of it). The search ranked by ``score``: the proxy
    when there is one, else the mAP.
    """

    trial: str  # "stage#number"
    stage: str  # structural | modular | random | baseline
    generation: int
    state: str  # complete | fail | pruned | running | waiting
    arch: Arch
    predicted_latency_ms: float
    map: float | None = None
    proxy_map: float | None = None
    map50: float | None = None  # of ``map``: None while there is only a proxy
    measured_latency_ms: float | None = None  # end to end on the table's backend, for the front and baselines
    evaluator: str = "train"
    checkpoint: Path | None = None
    cost_s: float | None = None  # what the evaluation cost (a training's wall time for ``train``)
    standalone_s: float | None = None  # a proxy-scored front member: what training it standalone cost
    reason: str | None = None  # why it was pruned or failed
    parent: str | None = None  # modular children: the parent's arch, and the other parent of a crossover
    crossed_with: str | None = None
    estimated_map: float | None = None  # what the modular stage expected of it before evaluating it
    worker: int | None = None
    on_measured_front: bool | None = None  # final front only: still on it with measured latency (None: not all measured)
    rungs: dict[str, float | None] | None = None  # successive halving: the score at each rung reached, by epochs

    @property
    def is_proxy(self) -> bool:
        return self.proxy_map is not None

    @property
    def score(self) -> float | None:
        """The accuracy objective the search ranked this candidate by."""
        return self.proxy_map if self.proxy_map is not None else self.map

    @property
    def objectives(self) -> tuple[float, float]:
        """(score, predicted latency in ms): the point the search's fronts are made of."""
        if self.score is None:
            raise ValueError(f"{self.trial} has no score: it is {self.state}, not complete")
        return self.score, self.predicted_latency_ms

    @property
    def latency_ms(self) -> float:
        """Measured end to end when it was, else predicted from the table."""
        return self.predicted_latency_ms if self.measured_latency_ms is None else self.measured_latency_ms

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["arch"] = str(self.arch)
        d["checkpoint"] = None if self.checkpoint is None else str(self.checkpoint)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrialRecord":
        """Read a record from search.json or pareto.json. Fields this version does not know (a later
        hwnas may add some) are skipped; files from before the evaluator seam carry ``train_s``."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["arch"] = Arch.parse(d["arch"])
        if kw.get("checkpoint") is not None:
            kw["checkpoint"] = Path(kw["checkpoint"])
        if "cost_s" not in d and "train_s" in d:
            kw["cost_s"] = d["train_s"]
        return cls(**kw)


def record_of(stage: str, trial, measured_ms: dict[str, float], standalone: dict[str, dict] | None = None,
              promotions: dict[str, dict[int, Evaluation]] | None = None) -> TrialRecord | None:
    """The record of one Optuna ``FrozenTrial`` of ``stage``'s study; None for a trial that never
    got a candidate (a combination the grammar refused)."""
    h = trial.user_attrs.get("hwnas")
    if not h:
        return None
    ev = _evaluation(trial)
    gen = trial.system_attrs.get(GENERATION_KEY, 0) if stage == "structural" else h.get("generation", 0)
    score = trial.values[0] if trial.values else None
    rungs, cost = None, None if ev is None else ev.cost_s
    if h.get("evaluator") == "halving" and ev is not None:
        # the first rung is 1 epoch (hwnas.search.halving.rung_epochs); a candidate counts at the
        # highest rung it reached, and promotions that failed leave it where it was
        reached = {1: ev, **(promotions or {}).get(h["arch"], {})}
        rungs = {str(e): x.score for e, x in sorted(reached.items())}
        ok = [e for e, x in reached.items() if x.score is not None]
        if ok:
            ev = reached[max(ok)]
            score = ev.score
        cost = sum(x.cost_s for x in reached.values())
    proxy = ev is not None and ev.is_proxy
    # a proxy-scored candidate of the final front, trained standalone afterwards (Search._train_front)
    alone = (standalone or {}).get(h["arch"])
    alone = Evaluation.from_dict(alone) if alone and proxy else None
    if proxy and alone is None and ev.standalone_map is not None:  # trained standalone by the evaluator itself
        alone = Evaluation(ev.standalone_map, 0.0, False, ev.checkpoint, map50=ev.map50)
    return TrialRecord(
        trial=f"{stage}#{trial.number}", stage=stage, generation=int(gen), state=trial.state.name.lower(),
        arch=Arch.parse(h["arch"]), predicted_latency_ms=h["predicted_latency_ms"],
        map=(alone.score if alone else None) if proxy else score, proxy_map=score if proxy else None,
        map50=alone.map50 if alone else None if ev is None or proxy else ev.map50, measured_latency_ms=measured_ms.get(h["arch"]),
        evaluator=h.get("evaluator", "train"), checkpoint=alone.checkpoint if alone else None if ev is None else ev.checkpoint,
        standalone_s=alone.cost_s if alone and ev.standalone_map is None else None,
        cost_s=cost, rungs=rungs, reason=trial.user_attrs.get("reason"), parent=h.get("parent"),
        crossed_with=h.get("crossed_with"), estimated_map=h.get("estimated_map"), worker=h.get("worker"))


def _evaluation(trial) -> Evaluation | None:
    if "evaluation" in trial.user_attrs:
        return Evaluation.from_dict(trial.user_attrs["evaluation"])
    old = trial.user_attrs.get("result")
    if old is None:  # pruned, or still being evaluated
        return None
    # Written before the evaluator seam: a training's metrics and wall time, its folder, and the
    # mAP only in the trial's values.
    reason = trial.user_attrs.get("reason") or "failed"
    score = trial.values[0] if trial.values else None
    ck = Path(old["run"]) / "last.pt" if "run" in old else None
    return Evaluation(score, old["wall_s"], False, ck, None if score is not None else reason, old.get("map50"))


def records_of(studies: Iterable) -> list[TrialRecord]:
    """Every record of these Optuna studies (named ``SEARCH/stage``), in study then trial order."""
    studies = list(studies)
    measured: dict[str, float] = {}
    standalone: dict[str, dict] = {}
    for s in studies:  # the front's re-measurements and standalone trainings are kept on one of the search's studies
        measured.update(s.user_attrs.get("measured_ms", {}))
        standalone.update(s.user_attrs.get("standalone", {}))
    out = []
    for s in studies:
        stage = s.study_name.rsplit("/", 1)[1]
        promotions = promotions_of(s)
        out += [r for t in s.get_trials(deepcopy=False)
                if (r := record_of(stage, t, measured, standalone, promotions)) is not None]
    return out


def promotions_of(study) -> dict[str, dict[int, Evaluation]]:
    """Successive halving's promotions kept on a study (``rung<epochs>:<arch>``): by arch, by epochs."""
    out: dict[str, dict[int, Evaluation]] = {}
    for key, value in study.user_attrs.items():
        if key.startswith("rung") and ":" in key:
            epochs, arch = key[len("rung"):].split(":", 1)
            out.setdefault(arch, {})[int(epochs)] = Evaluation.from_dict(value)
    return out


def read_records(storage, search: str) -> list[TrialRecord]:
    """Every record of search ``search`` in an Optuna storage (URL or storage object), e.g. of a
    finished search reopened later: its stages in the order the search runs them."""
    import optuna

    names = set(optuna.study.get_all_study_names(storage))
    order = ("baseline", "structural", "modular", "random")
    return records_of(optuna.load_study(study_name=f"{search}/{st}", storage=storage)
                      for st in order if f"{search}/{st}" in names)


def read_front(path: Path) -> list[TrialRecord]:
    """The records of a search's ``pareto.json``."""
    import json

    return [TrialRecord.from_dict(d) for d in json.loads(Path(path).read_text())]



PICKS = ("best", "fastest")


def pick_from_front(run: Path, pick: str | None = None, latency_max_ms: float | None = None) -> TrialRecord:
    """One member of a finished search's front (``RUN/pareto.json``): ``best`` (the highest mAP),
    ``fastest``, a trial id (``structural#3``), or with ``latency_max_ms`` the most accurate within
    that latency (measured end to end where it was, else predicted). Its ``checkpoint`` exists."""
    from hwnas.errors import HwnasError

    path = Path(run) / "pareto.json"
    if not path.is_file():
        raise HwnasError(f"--search {run}: no pareto.json there; give the --out folder of a finished hwnas search")
    front = read_front(path)
    if not front:
        raise HwnasError(f"{path} holds an empty front (no candidate finished); rerun the search")
    if (pick is None) == (latency_max_ms is None):
        raise HwnasError("with --search give one of --pick best|fastest|TRIAL or --latency-max-ms X")

    def accuracy(r: TrialRecord) -> tuple[bool, float]:
        # a member trained standalone before one with only a proxy score (a budget can leave some
        # untrained): a proxy is not on the mAP's scale
        return (r.map is not None, r.map if r.map is not None else r.score)

    if latency_max_ms is not None:
        within = [r for r in front if r.latency_ms <= latency_max_ms]
        if not within:
            fastest = min(front, key=lambda r: r.latency_ms)
            raise HwnasError(f"no member of the front runs within {latency_max_ms} ms; the fastest, {fastest.trial}, "
                             f"takes {fastest.latency_ms:.2f} ms: raise --latency-max-ms")
        chosen = max(within, key=accuracy)
    elif pick == "best":
        chosen = max(front, key=accuracy)
    elif pick == "fastest":
        chosen = min(front, key=lambda r: r.latency_ms)
    else:
        chosen = next((r for r in front if r.trial == pick), None)
        if chosen is None:
            raise HwnasError(f"--pick {pick!r}: give best, fastest or a trial of the front: "
                             f"{', '.join(r.trial for r in front)}")
    if chosen.checkpoint is None or not Path(chosen.checkpoint).is_file():
        raise HwnasError(f"{chosen.trial} ({chosen.arch}) has no checkpoint"
                         + (f" at {chosen.checkpoint}" if chosen.checkpoint else "")
                         + "; rerun the search to train its front, or pick another member")
    return chosen
