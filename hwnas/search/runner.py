"""The search loop: propose, filter by predicted latency, claim, evaluate, tell; then re-measure the front.

One ``Search`` is one worker. Every worker of a search runs the same command against the same
storage; Optuna holds the trials (one study per stage, ``NAME/structural``, ``NAME/modular``,
``NAME/random``, ``NAME/baseline``) and ``Coordinator`` the claims, so workers never train the
same architecture twice and a killed worker's candidate is finished by whoever runs next.

A candidate's accuracy comes from the evaluator (``hwnas.search.evaluators``; ``train`` by
default), its latency from the table. Everything that reads trials back reads ``TrialRecord``s
(``hwnas.search.records``).

Budget: ``trials`` counts *evaluated* candidates (failures included: they cost compute).
Proposals that are duplicates or over ``latency_max_ms`` are recorded as pruned trials and cost
no evaluation; ``max_draws`` proposals in a row without an evaluable one end the stage.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hwnas.errors import HwnasError
from hwnas.fileio import check_writable, slug
from hwnas.limits import MAX_THREADS, check_batch, check_count, check_float, check_int, check_seed
from hwnas.search.coordination import GRACE_S, Coordinator, created_together, storage_url
from hwnas.search.evaluators import (SUPERNET_EVALUATORS, Budget, Evaluation, Evaluator, check_evaluator, make_evaluator,
                                     scores_proxies)
from hwnas.search.coverage import SCREENS
from hwnas.search.pareto import nadir_reference
from hwnas.search.proposals import (
    Parent,
    choose_parent,
    initial_structures,
    mutate,
    neck_choices,
    probe_choices,
    ranked_children,
    suggest_structural,
)
from hwnas.search.records import TrialRecord, records_of
from hwnas.spec.arch import Arch
from hwnas.spec.space import get_space
from hwnas.train.recipes import RECIPES

if TYPE_CHECKING:
    from hwnas.train.loop import TrainConfig

STAGES = ("structural", "modular", "both", "random")
Progress = Callable[[int, int, str], None]


# Settings ``SearchConfig.identity`` leaves out at these values, so that studies started before the
# setting existed still match; an absent key reads as its value here (a study from before --screen
# drew every neck choice). Other absent keys do not apply (supernet settings without a supernet).
IDENTITY_ABSENT = {"evaluator": "train", "probe": "spread", "screen": "none", "supernet_span": "family"}


@dataclass(frozen=True)
class SearchConfig:
    data: Path
    table: Path
    out: Path
    space: str = "default"
    resolutions: tuple[int, ...] = ()  # () : every resolution of the table
    stage: str = "both"
    trials: int = 16
    structural_share: float = 0.5
    probe: str = "spread"  # how structural probes are sized (hwnas.search.proposals.PROBES)
    screen: str = "coverage"  # which neck levels the structural stage draws (hwnas.search.coverage.SCREENS)
    population: int = 0  # 0: max(4, stage trials // 4), at most 50
    epochs: int = 3
    batch_size: int = 16
    lr: float = 2e-3
    max_train_images: int = 0
    device: str = "cpu"
    threads: int = 0  # 0: torch's default
    seed: int = 0
    latency_max_ms: float | None = None
    storage: str | None = None
    study: str = "search"
    baselines: tuple[str, ...] = ()
    measure: bool = True
    force: bool = False
    max_draws: int = 200
    max_failures: int = 5  # failed candidates in a row before the search stops (a systematic cause)
    recipe: str = ""  # a preset whose training recipe (hwnas.train.recipes.RECIPES) the candidates train with
    evaluator: str = "train"  # how a candidate's accuracy is scored: a name in hwnas.search.evaluators.EVALUATORS
    budget_s: float = 0.0  # wall-clock budget of the whole search (0: none; then --trials alone decides)
    front_share: float = 0.3  # of budget_s, the most kept for training a proxy evaluator's front standalone
    eta: int = 3  # evaluator halving: the best 1/eta of a rung go on, each rung eta times the epochs of the last
    supernet_epochs: int = 12  # evaluator supernet: epochs each neighbourhood's supernet trains
    supernet_strategy: str = "uniform"  # evaluator supernet: paths per step (hwnas.search.supernet.STRATEGIES)
    supernet_span: str = "family"  # evaluator supernet: what one supernet spans (hwnas.search.supernet.SPANS)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise HwnasError(f"--stage {self.stage!r}: valid stages are {', '.join(STAGES)}")
        if self.trials < 1 or (self.stage == "both" and self.trials < 2):
            raise HwnasError(f"--trials {self.trials}: need at least 1 (2 with --stage both)")
        if not 0 < self.structural_share < 1:
            raise HwnasError(f"--structural-share {self.structural_share}: must be between 0 and 1")
        if self.population < 0 or self.population == 1:
            raise HwnasError(f"--population {self.population}: give 0 (auto) or at least 2")
        if self.latency_max_ms is not None:
            check_float("--latency-max-ms", self.latency_max_ms, 0.0, 1e7, open_lo=True)
        check_count("--trials", self.trials)
        check_count("--epochs-per-trial", self.epochs)
        check_batch(self.batch_size)
        check_float("--lr", self.lr, 0.0, 1.0, open_lo=True)
        check_count("--max-train-images", self.max_train_images, 0)
        check_seed(self.seed)
        check_int("--threads", self.threads, 0, MAX_THREADS)
        check_count("--max-failures", self.max_failures)
        check_count("max_draws", self.max_draws)
        if self.recipe and self.recipe not in RECIPES:
            raise HwnasError(f"recipe {self.recipe!r}: presets with a recipe are {', '.join(RECIPES)}")
        if not self.study or "/" in self.study:
            raise HwnasError(f"--study {self.study!r}: give a name without '/'")
        check_evaluator(self.evaluator)
        probe_choices(self.probe)
        if self.screen not in SCREENS:
            raise HwnasError(f"--screen {self.screen!r}: valid screens are {', '.join(SCREENS)}")
        check_count("--supernet-epochs", self.supernet_epochs)
        check_int("--eta", self.eta, 2, 100)
        check_float("--budget-min", self.budget_s / 60, 0.0, 7 * 24 * 60)
        if not 0 <= self.front_share < 1:
            raise HwnasError(f"--front-share {self.front_share}: give a share of --budget-min from 0 up to (not "
                             "including) 1, e.g. 0.3")
        from hwnas.search.supernet import SupernetConfig, check_span

        SupernetConfig(epochs=self.supernet_epochs, strategy=self.supernet_strategy)  # checks the strategy
        check_span(self.supernet_span)

    def stage_trials(self) -> dict[str, int]:
        if self.stage == "both":
            n = min(self.trials - 1, max(1, round(self.trials * self.structural_share)))
            return {"structural": n, "modular": self.trials - n}
        return {self.stage: self.trials}

    def budget(self) -> Budget:
        """What one evaluation of one candidate may spend."""
        return Budget(epochs=self.epochs, max_train_images=self.max_train_images)

    def train_config(self) -> "TrainConfig":
        """How every candidate trains: the recipe brings its training tricks (box loss,
        data-anchor-sampling, jitter); batch, lr and seed are the search's, the same for every
        candidate. Built before anything is written, so bad settings fail first."""
        from hwnas.train.recipes import recipe_config

        budget = self.budget()
        return recipe_config(self.recipe, epochs=budget.epochs, max_train_images=budget.max_train_images,
                             batch_size=self.batch_size, lr=self.lr, seed=self.seed, device=self.device)

    def population_for(self, n: int) -> int:
        if self.population:
            return self.population
        # under a budget the number of candidates is unknown: a population that a few dozen fill
        return 8 if self.budget_s else min(50, max(4, n // 4))

    def identity(self) -> dict:
        """What must be equal for workers (or a rerun) to join a study: anything that changes
        what a candidate's mAP or latency means (the training recipe's version included)."""
        from hwnas.train.loop import RECIPE_VERSION

        return {"space": self.space, "resolutions": list(self.resolutions), "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "max_train_images": self.max_train_images,
                "latency_max_ms": self.latency_max_ms, "seed": self.seed, **({"recipe": self.recipe} if self.recipe else {}),
                # Only when not the default, so studies started before evaluators existed still match.
                **({"evaluator": self.evaluator} if self.evaluator != IDENTITY_ABSENT["evaluator"] else {}),
                **({"supernet_epochs": self.supernet_epochs, "supernet_strategy": self.supernet_strategy}
                   if self.evaluator in SUPERNET_EVALUATORS else {}),
                **({"supernet_span": self.supernet_span}
                   if self.evaluator in ("supernet", "bn") and self.supernet_span != IDENTITY_ABSENT["supernet_span"] else {}),
                **({"eta": self.eta} if self.evaluator == "halving" else {}),
                **({"probe": self.probe} if self.probe != IDENTITY_ABSENT["probe"] else {}),
                **({"screen": self.screen} if self.screen != IDENTITY_ABSENT["screen"] else {}),
                **({"recipe_version": RECIPE_VERSION} if RECIPE_VERSION != 1 else {})}  # absent: version 1


def setting(identity: dict, key: str) -> str:
    """One setting of a study's identity as a user would pass it (short: a table is named by its target)."""
    if key not in identity:
        return IDENTITY_ABSENT.get(key, "not set")
    value = identity[key]
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):  # a table's target
        return " ".join(str(value[k]) for k in ("backend", "precision", "device") if k in value) or "another"
    return str(value)


@dataclass
class Outcome:
    """What this worker did, for the CLI's closing lines."""
    trained: int = 0  # evaluated (by whatever evaluator): the name the CLI's closing line has always used
    failed: int = 0
    pruned_budget: int = 0
    pruned_duplicate: int = 0
    adopted: int = 0
    report: Path | None = None
    notes: list[str] = field(default_factory=list)


def open_storage(url: str):
    """Optuna's RDB storage; workers started together race to create its tables (``created_together``)."""
    import optuna

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return created_together(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine))


def _front_text(records: list[TrialRecord]) -> str:
    from hwnas.search.report import final_front

    front = final_front(records)
    if not front:
        return "front: -"
    return f"front {len(front)}: " + " ".join(f"{r.score:.3f}@{r.predicted_latency_ms:.1f}ms" for r in front[:4]) + \
        (" ..." if len(front) > 4 else "")


class Search:
    def __init__(self, cfg: SearchConfig, progress: Progress | None = None, say: Callable[[str], None] = print,
                 evaluator: Evaluator | None = None):
        """``evaluator``: scores the candidates; default, the one ``cfg.evaluator`` names (the study
        records that name, so an injected one should be what the name says)."""
        import optuna
        import torch

        from hwnas.data.wider import open_dataset
        from hwnas.latency.table import LatencyTable

        self.cfg, self.progress, self.say = cfg, progress, say
        # Everything is checked before the first file is written.
        self.table = LatencyTable.load(cfg.table)
        res = cfg.resolutions or self.table.resolutions
        self.space = get_space(cfg.space).with_resolutions(tuple(res))
        self.cfg = cfg = replace(cfg, resolutions=tuple(res))
        train_set = open_dataset(cfg.data, "train")
        self.class_names = train_set.class_names
        self._check_table()
        self.evaluator = evaluator if evaluator is not None else make_evaluator(cfg)
        self.baselines = [self._baseline_arch(b) for b in cfg.baselines]
        self.backend = None
        if cfg.measure:
            from hwnas.backends import backend_for_target

            self.backend = backend_for_target(self.table.target)
            self.table.check_target(self.backend.target(), force=cfg.force, path=str(cfg.table))
        check_writable(Path(cfg.out) / "report.md", "search folder")
        Path(cfg.out).mkdir(parents=True, exist_ok=True)  # the study's SQLite file lives in it
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.url = storage_url(cfg.storage, cfg.out)
        self.coord = Coordinator(self.url, cfg.study)
        self.storage = open_storage(self.url)
        self.outcome = Outcome()
        self.studies: dict[str, optuna.Study] = {}
        self.slot = -1
        self._done, self._front, self.total, self._spent = 0, "front: -", 0, 0.0
        self._failures_in_a_row, self._last_reason = 0, ""
        # When the time charged to this worker's next candidate began: the end of its last logged row
        # (or of the stage's start). Everything between two candidates (the duplicates drawn, the
        # progress line, the budget check) is charged, so --budget-min holds to the wall clock even
        # when a fast proxy leaves most proposals duplicates (a 20-minute search that drew 3,121 of
        # them overran by 2.8 minutes when only each candidate's own draw was charged).
        self._mark = 0.0
        self._necks: list[str] | None = None

    # ------------------------------------------------------------------ checks
    def _check_table(self) -> None:
        k = len(self.class_names)
        if self.table.num_classes != k:
            raise HwnasError(f"{self.cfg.table} was profiled for {self.table.num_classes} classes, {self.cfg.data} has {k}; "
                             f"profile it for this data: hwnas profile --space {self.cfg.space} --resolutions "
                             f"{','.join(map(str, self.cfg.resolutions))} --num-classes {k} --out TABLE")
        missing = [u for u in self.space.all_units(k) if u.key() not in self.table.entries]
        if missing:
            raise HwnasError(f"{self.cfg.table} lacks {len(missing)} units of space {self.cfg.space!r} at "
                             f"{','.join(map(str, self.cfg.resolutions))} px (e.g. {missing[0].key()}); complete it: "
                             f"hwnas profile --space {self.cfg.space} --resolutions {','.join(map(str, self.cfg.resolutions))} "
                             f"--num-classes {k} --out {self.cfg.table}")

    def _baseline_arch(self, name: str) -> Arch:
        from hwnas.spec.presets import resolve_arch

        arch = resolve_arch(name)
        self.table.predict(arch)  # a baseline outside the table fails now, with the profile command
        return arch

    def _study(self, stage: str, n: int):
        import optuna

        if stage not in self.studies:
            pop = self.cfg.population_for(n)
            sampler = (optuna.samplers.NSGAIISampler(population_size=pop, seed=self.worker_seed)
                       if stage == "structural" else optuna.samplers.RandomSampler(seed=self.worker_seed))
            name = f"{self.cfg.study}/{stage}"
            study = optuna.create_study(storage=self.storage, study_name=name, sampler=sampler, load_if_exists=True,
                                        directions=["maximize", "minimize"])
            if study.metric_names is None:  # named for optuna-dashboard and study.trials_dataframe()
                import warnings

                with warnings.catch_warnings():  # "experimental" since Optuna 3.2; not news to a user
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(["mAP", "latency_ms"])
            ident = {**self.cfg.identity(), "table": self.table.target.to_dict(), "table_created": self.table.created,
                     "classes": self.class_names}
            ident = json.loads(json.dumps(ident))
            old = study.user_attrs.get("identity")
            if old is None:
                study.set_user_attr("identity", ident)
            elif old != ident:
                diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
                if "recipe_version" in diff:  # no option brings the old recipe back
                    raise HwnasError(f"study {name} in {self.url} was trained with recipe version "
                                     f"{old.get('recipe_version', 1)}, this hwnas trains with version "
                                     f"{ident.get('recipe_version', 1)}: new candidates would not compare with its "
                                     f"scores; use another --study or --out")
                settings = "; ".join(f"{k}: {setting(old, k)} in the study, {setting(ident, k)} now" for k in diff)
                raise HwnasError(f"study {name} in {self.url} was started with other settings ({settings}); "
                                 f"rerun with the study's settings, or use another --study or --out")
            self.studies[stage] = study
        return self.studies[stage]

    # ------------------------------------------------------------------ main
    def records(self) -> list[TrialRecord]:
        """Every record of the stages this worker has opened (pruned and failed ones included)."""
        return records_of(self.studies.values())

    def write_report(self) -> Path:
        from hwnas.search.report import write_report

        return write_report(self.records(), self.cfg, self.table.target, self.url)

    def run(self) -> Outcome:
        self.slot = self.coord.join()
        self.worker_seed = self.cfg.seed + 7919 * self.slot
        try:
            budgets = self.cfg.stage_trials()
            self.total = sum(budgets.values())
            if "modular" in budgets and "structural" not in budgets:
                self._structural_records_or_fail()
            if self.baselines:
                self._run_baselines()
            ended = ""
            for stage, n in budgets.items():
                ended = self._run_stage(stage, n)
                self._stop_on_failures()
            if self.cfg.stage == "both" and self.cfg.budget_s and ended == "moves":
                self._new_structures_while_time(budgets)
            if self._reporter():
                self._train_front()
                self._measure_front()
            self.outcome.report = self.write_report()
            return self.outcome
        finally:
            self.coord.leave()

    def _stop_on_failures(self) -> None:
        if self._failures_in_a_row >= self.cfg.max_failures:
            self.outcome.report = self.write_report()
            raise HwnasError(f"{self._failures_in_a_row} candidates in a row failed, the last with: "
                             f"{self._last_reason}; the search stopped (failures are listed in "
                             f"{self.outcome.report}); fix the cause and rerun the same command to go on")

    def _new_structures_while_time(self, budgets: dict[str, int]) -> None:
        """Under ``--budget-min``, a modular stage that ran out of new moves would leave the rest of
        the time unused: a small space does, and so does a proxy evaluator that scores in seconds
        (train+depth's modular stage ended with a sixth of a 10-minute budget left, docs/benchmarks.md
        section 9). The search goes back to the structural stage for one population of new
        structures (its NSGA-II sampler, past its share of the time), refines them in the modular
        stage, and repeats until the time is spent or a round finds no new candidate."""
        rounds, added = 0, 0
        pop = self.cfg.population_for(budgets["structural"])
        claimed = lambda stage: len(self.coord.claimed(f"{self.cfg.study}/{stage}"))  # noqa: E731
        ended, new = "moves", True
        while new and ended == "moves" and not self._out_of_time("modular"):
            s0, m0 = claimed("structural"), claimed("modular")
            self._run_stage("structural", budgets["structural"], until=s0 + pop, quiet=True)
            self._stop_on_failures()
            ended = self._run_stage("modular", budgets["modular"], quiet=True)
            self._stop_on_failures()
            rounds, added = rounds + 1, added + claimed("structural") - s0
            new = claimed("structural") + claimed("modular") > s0 + m0
        dry = "" if new else "; the last round found no new candidate"
        self.outcome.notes.append(f"modular: ran out of new moves with time left; the search went back to new "
                                  f"structures {rounds} time(s) and scored {added} more structural candidate(s){dry}")

    def _reporter(self) -> bool:
        """The lowest live slot re-measures the front: one measurement at a time on a machine."""
        live = self.coord.live_slots()
        return not live or self.slot <= min(live)

    # ------------------------------------------------------------------ stages
    def _run_stage(self, stage: str, n: int, until: int = 0, quiet: bool = False) -> str:
        """Propose, evaluate and tell candidates of ``stage`` until its ``n`` trials are claimed,
        or ``until`` of them (a structural stage reopened for one more population, which may then
        run past its share of the time), or the budget is spent, or ``max_draws`` proposals in a row
        bring nothing new. Returns why it ended: ``trials``, ``time``, ``moves`` or ``failures``;
        ``quiet``: no note of it (a round of :meth:`_new_structures_while_time` notes its own)."""
        study = self._study(stage, n)
        if stage == "structural" and self.coord.claim("init:structural", study.study_name + "#init", -1):
            # One worker, once: the first candidates cover every block family and head type (every
            # pair of them when the stage's budget allows).
            for params in initial_structures(self.space, self.cfg.population_for(n), self.cfg.seed, n,
                                             self.cfg.probe, self.structural_necks()):
                study.enqueue_trial(params, skip_if_exists=True)
        propose = {"structural": self._propose_structural, "modular": self._propose_modular,
                   "random": self._propose_random}[stage]
        ended = "trials"
        self._mark = time.perf_counter()
        while True:
            self._resume_stale(stage, study)
            if self._failures_in_a_row >= self.cfg.max_failures:
                ended = "failures"
                break
            if self._out_of_time("modular" if until else stage):
                if not quiet:
                    self.outcome.notes.append(f"{stage}: its share of --budget-min was spent after "
                                              f"{len(self.coord.claimed(study.study_name))} candidate(s)")
                ended = "time"
                break
            if self._promote(study):  # due promotions first, also once the stage's candidates are all scored
                continue
            if len(self.coord.claimed(study.study_name)) >= (until or n):
                break
            if not self._one(stage, study, n, propose):
                if not quiet:
                    self.outcome.notes.append(f"{stage}: {self.cfg.max_draws} proposals in a row were duplicates or "
                                              f"over the latency budget; the stage ended with "
                                              f"{len(self.coord.claimed(study.study_name))} of {n} trials")
                ended = "moves"
                break
        self._wait_for_others(stage, study)
        return ended

    def spent_s(self) -> float:
        """Seconds this search's workers have spent on candidates (evaluations, and the draws and
        bookkeeping between them),
        read back from ``bookkeeping.jsonl``, so a resumed search goes on with the budget it had left."""
        from hwnas.search.report import bookkeeping_rows

        return sum(r["train_s"] + r["overhead_s"] for r in bookkeeping_rows(Path(self.cfg.out)))

    def front_cap_s(self) -> float:
        """The most the front's standalone training may keep from the candidate stages: none with
        ``train`` (its front is trained already), else ``front_share`` of the budget."""
        return self.cfg.front_share * self.cfg.budget_s if scores_proxies(self.cfg.evaluator) else 0.0

    def front_reserve_s(self) -> float:
        """What training the front standalone will take, by now: the proxy-scored members on it times
        what one training cost in this search (its trained candidates', anchors for ``train+bn``),
        at most :meth:`front_cap_s`, which is also the reserve while nothing was trained. A small
        front leaves the candidates the time a fixed share would have left unused."""
        from hwnas.search.report import final_front, searched

        cap = self.front_cap_s()
        if not cap:
            return 0.0
        recs = self.records()
        costs = [r.cost_s for r in searched(recs) if not r.is_proxy and r.cost_s]
        if not costs:
            return cap
        todo = sum(r.is_proxy and r.map is None for r in final_front(recs))
        return min(cap, todo * sum(costs) / len(costs))

    def _out_of_time(self, stage: str) -> bool:
        """With ``budget_s``: the structural stage (of ``both``) may spend ``structural_share`` of
        what the front's cap leaves; a later stage, or one run alone, goes on while the time spent
        and the front's reserve (:meth:`front_reserve_s`) fit the budget. Checked before each
        candidate: one that starts in time finishes, so a stage overruns by at most one evaluation."""
        if not self.cfg.budget_s:
            return False
        if stage == "structural" and self.cfg.stage == "both":
            return self.spent_s() >= self.cfg.structural_share * (self.cfg.budget_s - self.front_cap_s())
        return self.spent_s() + self.front_reserve_s() >= self.cfg.budget_s

    def _one(self, stage: str, study, n: int, propose) -> bool:
        """Propose until one candidate is trainable, then train and tell it. False: nothing trainable."""
        import optuna

        pruned = optuna.trial.TrialState.PRUNED
        for draw in range(self.cfg.max_draws):
            arch, trial, meta = propose(study, n, draw)
            if arch is None:
                continue
            if trial is None:
                trial = study.ask()
            pred = self.table.predict(arch)
            meta = {"arch": str(arch), "stage": stage, "predicted_latency_ms": pred.latency_ms,
                    "unit_sum_ms": pred.raw_ms, "worker": self.slot, "evaluator": self.cfg.evaluator, **meta}
            trial.set_user_attr("hwnas", meta)
            if self.cfg.latency_max_ms is not None and pred.latency_ms > self.cfg.latency_max_ms:
                trial.set_user_attr("reason", f"over the latency budget: {pred.latency_ms:.2f} > {self.cfg.latency_max_ms} ms")
                study.tell(trial, state=pruned)
                self.outcome.pruned_budget += 1
                continue
            if not self.coord.claim(str(arch), study.study_name, trial.number, budget=n):
                owner = self.coord.owner(str(arch))
                if owner is None:  # other workers filled the stage's budget meanwhile
                    trial.set_user_attr("reason", "the stage's budget was reached by other workers")
                    study.tell(trial, state=pruned)
                    return True
                trial.set_user_attr("reason", f"duplicate of {owner.study}#{owner.trial_number}")
                study.tell(trial, state=pruned)
                self.outcome.pruned_duplicate += 1
                continue
            self._evaluate(study, trial.number, arch, meta, time.perf_counter() - self._mark)
            return True
        return False

    def structural_necks(self) -> list[str]:
        """The neck choices the structural stage draws: every one, or with ``--screen coverage``
        those whose levels cover the data's boxes (``hwnas.search.coverage.screen_necks``; the
        same for every worker of a study, as it follows from the data and the space alone)."""
        if self._necks is None:
            if self.cfg.screen == "none":
                self._necks = neck_choices(self.space)
            else:
                from hwnas.search.coverage import screen_necks

                t0 = time.perf_counter()
                self._necks, shares = screen_necks(self.space, self.cfg.data, self.cfg.train_config())
                dropped = [f"{n} {s:.2f}" for n, s in shares.items() if n not in self._necks]
                self.outcome.notes.append(
                    f"structural: --screen coverage kept necks {', '.join(f'{n} {shares[n]:.2f}' for n in self._necks)}"
                    f" and dropped {', '.join(dropped) or 'none'} (share of training boxes the heads cover, "
                    f"{time.perf_counter() - t0:.1f} s)")
        return self._necks

    # proposals: each returns (arch or None, an asked trial or None, extra attributes)
    def _propose_structural(self, study, n, draw):
        trial = study.ask()
        try:
            return suggest_structural(trial, self.space, self.cfg.probe, self.structural_necks()), trial, {}
        except HwnasError as e:  # a combination the grammar refuses (e.g. levels above a small input)
            import optuna

            trial.set_user_attr("reason", f"invalid combination: {e}")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return None, None, {}

    def _propose_random(self, study, n, draw):
        if draw == 0:
            self._claimed = len(self.coord.claimed(study.study_name))
        claimed = self._claimed
        seed = (self.worker_seed * 1_000_003 + claimed * 1009 + draw) % 2**63
        arch = self.space.sample(seed)
        return (None, None, {}) if self.coord.owner(str(arch)) else (arch, None, {"generation": 0})

    def _propose_modular(self, study, n, draw):
        pop = self.cfg.population_for(n)
        if draw == 0:  # the pool changes only between trials: rank the moves once per trial, not per draw
            claimed = len(self.coord.claimed(study.study_name))
            generation = 1 + claimed // pop
            parents = self._parents()
            pool = [p for p, g in parents if g < generation]
            if not pool:
                raise HwnasError("the modular stage needs finished structural trials; run --stage structural first "
                                 "(or --stage both)")
            # Children still training (this generation's, any worker's) count at their estimated
            # mAP, so the moves of one generation spread out instead of all taking the same gain.
            known = [(p.map, p.latency_ms) for p, _ in parents] + self._pending_estimates(study)
            ref = self.cfg.latency_max_ms or nadir_reference([lat for _, lat in known])
            rng = random.Random(hash((self.worker_seed, generation, claimed)))
            ranked = ranked_children(self.space, pool, pop, known, ref, lambda a: self.table.predict(a).latency_ms,
                                     rng, latency_max_ms=self.cfg.latency_max_ms,
                                     taken=frozenset(c.arch for c in self.coord.claimed()))
            self._pool = (claimed, generation, pool, ranked, rng)
        claimed, generation, pool, ranked, rng = self._pool
        if draw < len(ranked):
            c = ranked[draw]
            child, parent = c.arch, c.parents[0]
            extra = {"estimated_map": c.estimated_map, "hv_gain": c.gain}
            if len(c.parents) == 2:
                extra["crossed_with"] = c.parents[1].arch
        else:  # the ranked moves were all taken: plain tournament and mutation
            parent, extra = choose_parent(pool, pop, rng), {}
            try:
                child = mutate(self.space, parent, rng.randrange(2**31))
            except HwnasError:
                return None, None, {}
        if self.coord.owner(str(child)):
            return None, None, {}
        return child, None, {"generation": generation, "parent": parent.arch, "parent_trial": parent.trial, **extra}

    def _pending_estimates(self, study) -> list[tuple[float, float]]:
        return [(r.estimated_map, r.predicted_latency_ms) for r in records_of([study])
                if r.state == "running" and r.estimated_map is not None]

    def _parents(self) -> list[tuple[Parent, int]]:
        """Every completed structural (generation 0) and modular candidate, with its generation."""
        self._study("structural", 1)
        studies = [self.studies[st] for st in ("structural", "modular") if st in self.studies]
        return [(Parent(str(r.arch), r.score, r.predicted_latency_ms, r.trial), 0 if r.stage == "structural" else r.generation)
                for r in records_of(studies) if r.complete]

    def _structural_records_or_fail(self) -> None:
        import optuna

        exists = f"{self.cfg.study}/structural" in optuna.study.get_all_study_names(self.storage)
        if not exists or not self._parents():
            raise HwnasError(f"--stage modular needs a finished structural stage in study {self.cfg.study!r} of "
                             f"{self.url}; run --stage structural first (same --out/--storage/--study)")

    # ------------------------------------------------------------------ successive halving
    def _promote(self, study) -> bool:
        """``--evaluator halving``: continue one candidate of ``study`` that stands in the best
        ``1/eta`` of its rung (``len // eta`` of them) to the next rung (the highest rungs first, so
        that some candidates reach the full budget early), or finish a promotion a killed worker
        left. False when none is due. A promotion's score is kept in the study (``rung<E>:<arch>``) and read by the records."""
        from hwnas.search.halving import promoted

        if self.cfg.evaluator != "halving":
            return False
        rungs = self.evaluator.rungs
        done = [r for r in records_of([study]) if r.complete]
        scores = {str(r.arch): {int(e): v for e, v in (r.rungs or {}).items()} for r in done}
        latency = {str(r.arch): r.predicted_latency_ms for r in done}
        book = study.study_name + "#promotions"
        for i in range(len(rungs) - 2, -1, -1):
            at = [a for a, by in scores.items() if by.get(rungs[i]) is not None]
            if len(at) < self.cfg.eta:  # the best 1/eta of fewer than eta candidates: none yet (ASHA)
                continue
            for j in promoted([(scores[a][rungs[i]], latency[a]) for a in at], self.cfg.eta):
                arch, nxt = at[j], rungs[i + 1]
                if nxt in scores[arch]:
                    continue
                key = f"promote:{nxt}:{arch}"
                claim = next((c for c in self.coord.claimed(book) if c.arch == key), None)
                mine = claim is None and self.coord.claim(key, book, -1)
                if not mine and claim is not None and claim.slot in (self.coord.dead_slots() | {self.slot}):
                    mine = claim.slot == self.slot or self.coord.adopt(claim)  # a killed worker's promotion
                if mine:
                    self._run_promotion(study, Arch.parse(arch), nxt, f"promote to {nxt} epochs")
                    return True
        return False

    def _run_promotion(self, study, arch: Arch, epochs: int, label: str) -> None:
        t0 = time.perf_counter()
        ev = self.evaluator.to_rung(arch, epochs, self.cfg.budget(), Path(self.cfg.out) / "trials" / slug(str(arch)),
                                    lambda item: self._show(f"{label} {arch} {item}") if self.progress else None)
        study.set_user_attr(f"rung{epochs}:{arch}", ev.to_dict())
        self._log_bookkeeping({"study": study.study_name, "trial": -1, "arch": str(arch), "train_s":
                               time.perf_counter() - t0, "overhead_s": 0.0, "worker": self.slot,
                               "ok": ev.failure is None, "promotion": epochs})
        self._tick(f"{label} done")

    # ------------------------------------------------------------------ evaluating one candidate
    def _evaluate(self, study, number: int, arch: Arch, meta: dict, overhead_s: float) -> None:
        import optuna

        label = f"{meta['stage']} #{number}"

        def note(item: str) -> None:
            if self.progress:
                self._show(f"{label} {arch} {item}")

        t0 = time.perf_counter()
        ev: Evaluation = self.evaluator(arch, self.cfg.budget(), Path(self.cfg.out) / "trials" / slug(str(arch)), note)
        wall_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(
            self.storage.get_study_id_from_name(study.study_name), number)
        self.storage.set_trial_user_attr(trial_id, "evaluation", ev.to_dict())
        if ev.failure is None:
            study.tell(number, [ev.score, float(meta["predicted_latency_ms"])])
            self.outcome.trained += 1
            self._failures_in_a_row = 0
        else:
            self._failures_in_a_row += 1
            self._last_reason = ev.failure
            self.storage.set_trial_user_attr(trial_id, "reason", ev.failure)
            study.tell(number, state=optuna.trial.TrialState.FAIL)
            self.outcome.failed += 1
            self.say(f"trial {label} failed: {ev.failure}")
        overhead_s += time.perf_counter() - t1
        self._log_bookkeeping({"study": study.study_name, "trial": number, "arch": str(arch), "train_s": wall_s,
                               "overhead_s": overhead_s, "worker": self.slot, "ok": ev.failure is None})
        self._tick(f"{label} done")

    def _log_bookkeeping(self, rec: dict) -> None:
        # Append-only, one line per trial: a line cut by kill -9 is skipped when read.
        with open(Path(self.cfg.out) / "bookkeeping.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        self._mark = time.perf_counter()

    def _tick(self, item: str) -> None:
        """Refresh the progress line (trials finished by all workers, the front so far); once a trial."""
        if self.progress is None:
            return
        records = self.records()
        self._done = min(self.total, sum(r.stage != "baseline" and r.state in ("complete", "fail") for r in records))
        self._spent = self.spent_s() if self.cfg.budget_s else 0.0
        self._front = _front_text(records)
        self._show(item)

    def _show(self, item: str) -> None:
        """One progress line: candidates done of the trials, or under a budget seconds of it."""
        if self.cfg.budget_s:
            b = int(self.cfg.budget_s)
            self.progress(min(b, int(self._spent)), b, f"{self._done} scored | {self._front} | {item}")
        else:
            self.progress(self._done, self.total, f"{self._front} | {item}")

    # ------------------------------------------------------------------ resumption
    def _resume_stale(self, stage: str, study) -> None:
        """Finish candidates whose worker died mid-training (this slot's own, from a killed earlier
        run, included), and fail trials abandoned before they were claimed."""
        import optuna

        running = {t.number: t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
        if not running:
            return
        dead = self.coord.dead_slots() | {self.slot}  # between trials, nothing of this worker is in flight
        claims = {c.trial_number: c for c in self.coord.claimed(study.study_name)}
        for number, t in running.items():
            c = claims.get(number)
            if c is None:
                h = t.user_attrs.get("hwnas")
                age = time.time() - t.datetime_start.timestamp() if t.datetime_start else 0.0
                if (h is not None and h.get("worker") in dead) or age > GRACE_S:
                    self.storage.set_trial_user_attr(t._trial_id, "reason", "abandoned before training (its worker stopped)")
                    study.tell(number, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
                continue
            if c.slot in dead and (c.slot == self.slot or self.coord.adopt(c)):
                self.outcome.adopted += 1
                self.say(f"resuming {stage} #{number} ({c.arch}), interrupted in a previous run")
                meta = dict(t.user_attrs.get("hwnas", {}))
                meta.setdefault("stage", stage)
                arch = Arch.parse(c.arch)
                meta.setdefault("predicted_latency_ms", self.table.predict(arch).latency_ms)
                self._evaluate(study, number, arch, meta, 0.0)

    def _wait_for_others(self, stage: str, study) -> None:
        import optuna

        while True:
            self._resume_stale(stage, study)
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if not running:
                return
            self._tick(f"{stage}: waiting for {len(running)} trial(s) of other workers")
            time.sleep(2.0)

    # ------------------------------------------------------------------ baselines and the front
    def _run_baselines(self) -> None:
        import optuna

        study = self._study("baseline", 1)
        for arch in self.baselines:
            self._resume_stale("baseline", study)
            key = f"baseline:{arch}"
            if self.coord.owner(key):
                continue
            trial = study.ask()
            pred = self.table.predict(arch)
            meta = {"arch": str(arch), "stage": "baseline", "predicted_latency_ms": pred.latency_ms,
                    "unit_sum_ms": pred.raw_ms, "worker": self.slot, "generation": 0, "evaluator": self.cfg.evaluator}
            trial.set_user_attr("hwnas", meta)
            if not self.coord.claim(key, study.study_name, trial.number):
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            self._evaluate(study, trial.number, arch, meta, 0.0)
        self._wait_for_others("baseline", study)

    def _train_front(self) -> None:
        """A proxy evaluator's front, trained standalone (``train``, ``--epochs-per-trial`` epochs) so
        that the mAP of every front member a user reads is a trained detector's. Kept by arch in the
        search's ``standalone`` attribute: a rerun trains only what is missing (and resumes a killed training)."""
        from hwnas.search.evaluators.train import TrainEvaluator
        from hwnas.search.report import final_front

        front = final_front(self.records())
        todo = [front[i] for i in spread_order(len(front)) if front[i].is_proxy and front[i].map is None]
        if not todo:
            return
        self.say(f"training the {len(todo)} proxy-scored front member(s) standalone ({self.cfg.epochs} epoch(s) each)")
        trainer = TrainEvaluator(self.cfg)
        store = self._measure_store()
        # the candidates' time does not move while the front trains: read it (and what a killed run
        # trained already) once, then add each training's cost
        used = self.spent_s() + sum(e["cost_s"] for e in store.user_attrs.get("standalone", {}).values())
        for i, r in enumerate(todo):
            if self.cfg.budget_s:  # one that starts in time finishes, as with the candidates
                if used >= self.cfg.budget_s:
                    self.outcome.notes.append(
                        f"front: --budget-min ran out with {len(todo) - i} of its {len(front)} member(s) not trained "
                        "standalone; they keep only their proxy score (no mAP in pareto.json)")
                    return
            label = f"standalone {i + 1}/{len(todo)} {r.trial} {r.arch}"

            def note(item: str) -> None:
                if self.progress:
                    self._show(f"{label} {item}")

            ev = trainer(r.arch, self.cfg.budget(), Path(self.cfg.out) / "trials" / slug(str(r.arch)), note)
            used += ev.cost_s
            store.set_user_attr("standalone", {**store.user_attrs.get("standalone", {}), str(r.arch): ev.to_dict()})
            if ev.failure:
                self.say(f"standalone training of {r.trial} failed: {ev.failure}")

    def _measure_front(self) -> None:
        """Re-measure every front member (and every baseline) end to end on the table's backend;
        results are kept in the study, so a rerun or another worker does not measure again."""
        if self.backend is None:
            return
        from hwnas.latency.validate import measured_latency_ms
        from hwnas.search.report import final_front

        archs = [str(r.arch) for r in final_front(self.records())] + [str(a) for a in self.baselines]
        store = self._measure_store()
        measured = dict(store.user_attrs.get("measured_ms", {}))
        todo = [a for a in dict.fromkeys(archs) if a not in measured]
        if todo:
            self.say(f"re-measuring {len(todo)} detector(s) end to end on {self.table.target.backend}")
        for a in todo:
            measured[a] = measured_latency_ms(self.backend, Arch.parse(a), self.table.num_classes, self.table.timing,
                                              self.table.target.batch)
            store.set_user_attr("measured_ms", measured)

    def _measure_store(self):
        return next(iter(s for k, s in self.studies.items() if k != "baseline"))


def spread_order(n: int) -> list[int]:
    """Indices 0..n-1 of a front sorted fastest first, in the order that covers it evenly: the most
    accurate end (the last), the fastest, then the middle of the widest gap left, and so on. A
    budget that runs out while the front trains leaves trained members all along it."""
    chosen = list(dict.fromkeys([n - 1, 0]))[:n]
    while len(chosen) < n:
        ends = sorted(chosen)
        lo, hi = max(zip(ends, ends[1:]), key=lambda p: p[1] - p[0])
        chosen.append((lo + hi) // 2)
    return chosen
