"""Running a search: an Optuna study over a declared space, one trial per candidate.

A trial samples a point of the space (define-by-run, through ``trial.suggest_*``), maps
it to a graph, counts its cost without training, and — unless it was rejected by a
graph rule, is over a budget, or an identical network was already evaluated — trains it
on the proxy task. Objectives: ``pareto`` (maximize the proxy metric, minimize FLOPs;
no pruning: Optuna prunes single-objective studies only) or ``accuracy`` (maximize the
metric, optionally under ``max_flops``/``max_params``, with a pruner stopping weak
trials after each proxy epoch).

``trials`` counts *slots*: every trial that is not a re-run of a dead worker's trial
fills one; a re-run inherits its original's slot. Several workers (processes, or
machines on PostgreSQL) fill the slots of one study together, and a study stops at
exactly ``trials`` slots, each finished once.

Faults: a trial whose worker died (killed, out of memory; on the journal found by its
worker stamp, on PostgreSQL by the heartbeat) or whose training lost a process of its
own (a DataLoader worker) is retried once with the same parameters; a second loss
records it ``failed``. A candidate's own error (a shape error, a diverged loss) is
recorded ``failed`` with its reason at once. A trial stopped by SIGTERM or Ctrl-C is
``interrupted`` and run again, not counted as an attempt. A network is trained by one trial at a
time: a trial that draws a network another trial is training waits for its result.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import signal
import statistics
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import EdgError, SearchError, SpecError, WorkerLost
from ..graph import graph_to_yaml
from .cost import candidate_cost
from .evolution import RegularizedEvolutionSampler
from .mapping import Candidate, point_values, sample
from .params import Choice, Distribution, FloatRange, IntRange, RecordingAsk
from .proxy_scores import proxy_score
from .space import SearchSpace, load_space
from .storage import fail_dead_workers, open_storage, retry_of, study_lock, worker_stamp

__all__ = ["SAMPLERS", "StudyConfig", "open_study", "load_study", "run_worker", "run", "trial_status", "slots", "optuna_ask",
           "make_sampler", "ResultCache", "requeue_lost", "best_trials", "summary", "MAX_ATTEMPTS"]

SAMPLERS = ("random", "tpe", "nsga2", "evolution")
PRUNERS = ("hyperband", "halving", "median", "none")
FINISHED = {"done", "reused", "cached", "rejected", "over_budget", "failed", "pruned"}
# trials that hold no slot: started after the budget was full, or gave theirs back
# because the network they drew was being trained by a trial whose worker died
NO_SLOT = {"surplus", "duplicate"}
# runs of one slot's network before it is recorded failed: the first and one retry
MAX_ATTEMPTS = 2
# attempts that ended without a result and are run again: "stale" (its worker or a process
# of its training died: counts as an attempt) and "interrupted" (SIGTERM, Ctrl-C: the
# user's or the scheduler's doing, not the network's, so it does not count)
LOST = ("stale", "interrupted")


@dataclass(frozen=True)
class StudyConfig:
    """Everything a worker needs to join a study (the same on every worker)."""

    space: str
    out: str = "runs/search"
    study: str | None = None
    storage: str | None = None
    sampler: Literal["random", "tpe", "nsga2", "evolution"] = "tpe"
    seed: int = 0
    trials: int = 20
    objective: Literal["pareto", "accuracy"] = "pareto"
    max_flops: float | None = None
    max_params: float | None = None
    pruner: Literal["hyperband", "halving", "median", "none"] | None = None  # accuracy: hyperband
    seed_points: bool = True
    proxy: tuple[tuple[str, Any], ...] = ()
    # an edg search calibrate results file: its cheapest passing proxy variant (on its
    # reference's data) and trial score replace the space's; --proxy settings go on top
    calibration: str | None = None
    graph: str | None = None
    cache: str | None = None
    proxy_cache: str | None = None  # frozen-backbone features (default OUT/proxy-cache); shareable
    heartbeat: int = 10
    population: int = 12
    quiet: bool = False
    workers: int = 1  # local worker processes of this command (sizes the proxy's DataLoader workers)

    @property
    def study_name(self) -> str:
        return self.study or Path(str(self.space)).stem

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    @property
    def proxy_cache_dir(self) -> Path:
        return Path(self.proxy_cache) if self.proxy_cache else self.run_dir / "proxy-cache"


# ---------------------------------------------------------------------------- sampling


def optuna_ask(trial: optuna.Trial) -> Callable[[str, Distribution], Any]:
    """Our distributions as Optuna suggestions (bools go through as categorical choices)."""

    def ask(name: str, dist: Distribution) -> Any:
        if isinstance(dist, Choice):
            return trial.suggest_categorical(name, list(dist.choices))
        if isinstance(dist, IntRange):
            return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        if isinstance(dist, FloatRange):
            return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
        raise TypeError(f"unknown distribution {dist!r}")

    return ask


def _constraints(trial: FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("edg_constraints", [0.0]))


def make_sampler(name: str, seed: int, multi_objective: bool, constrained: bool,
                 population: int = 12) -> optuna.samplers.BaseSampler:
    cf = _constraints if constrained else None
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        # multivariate + group: TPE models the parameters jointly and splits the
        # conditional space into the groups that occur together; `population` random
        # trials first, as evolution's initial population
        with warnings.catch_warnings():  # "experimental"/deprecation notes of Optuna, not the user's concern
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=population,
                                              constraints_func=cf, warn_independent_sampling=False)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population, constraints_func=cf)
    if name == "evolution":
        return RegularizedEvolutionSampler(population_size=population, sample_size=max(2, population // 4),
                                           seed=seed, constraints_func=cf)
    from ..errors import RegistryError

    raise RegistryError("sampler", name, SAMPLERS)


def _pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 2), reduction_factor=2)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------------------- the study


def _space_fingerprint(space: SearchSpace, cfg: StudyConfig) -> str:
    from .proxy import ProxyConfig

    proxy = [list(kv) for kv in cfg.proxy if kv[0] not in ProxyConfig.RESULT_NEUTRAL]
    base = asdict(_proxy_config(space, cfg)) if cfg.calibration else None
    text = json.dumps({"space": space.spec.model_dump(mode="json"), "graph": cfg.graph,
                       "proxy": sorted(proxy), **({"calibrated": base} if base else {}),
                       "objective": cfg.objective, "max_flops": cfg.max_flops, "max_params": cfg.max_params},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_space(cfg: StudyConfig) -> SearchSpace:
    space = load_space(cfg.space)
    if cfg.graph:
        if space.spec.kind != "scaling":
            raise SearchError(f"--graph replaces the base topology of a scaling space; {space.name!r} is "
                              f"of kind {space.spec.kind!r}")
        space = SearchSpace(space.spec.model_copy(update={"scaling": space.spec.scaling.model_copy(
            update={"graph": cfg.graph})}), space.source, space.path, space.text)
    return space


#: a prime: the sampler seed of a command that finds n trials is ``seed + RESUME_SEED_STEP * n``,
#: away from the ``seed + 7919 * worker`` seeds of the workers of one command
RESUME_SEED_STEP = 104729


def open_study(cfg: StudyConfig) -> tuple[optuna.Study, SearchSpace]:
    """Create the study, or join it when it exists (it must be for the same space and settings)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = _load_space(cfg)
    _check_config(cfg)
    storage = open_storage(cfg.storage, cfg.run_dir, cfg.heartbeat)
    multi = cfg.objective == "pareto"
    constrained = cfg.max_flops is not None or cfg.max_params is not None
    fp = _space_fingerprint(space, cfg)
    directions = ["maximize", "minimize"] if multi else ["maximize"]
    pruner = _pruner(cfg.pruner or "hyperband", _proxy_config(space, cfg).epochs) if not multi else None
    study = optuna.create_study(
        storage=storage, study_name=cfg.study_name, directions=directions, load_if_exists=True,
        sampler=make_sampler(cfg.sampler, cfg.seed, multi, constrained, cfg.population), pruner=pruner,
    )
    if n := len(study.trials):
        # a resumed or joining command must not replay the stream its --seed drew from the
        # start (a random sampler re-drew the first trials' networks): seed it past them
        study.sampler = make_sampler(cfg.sampler, cfg.seed + RESUME_SEED_STEP * n, multi, constrained,
                                     cfg.population)
    attrs = study.user_attrs
    if "edg_fingerprint" not in attrs:
        study.set_user_attr("edg_fingerprint", fp)
        study.set_user_attr("edg_space", space.name)
        study.set_user_attr("edg_metric", study_metric(space, cfg))
        study.set_user_attr("edg_config", {k: v for k, v in asdict(cfg).items() if k not in LOCAL_SETTINGS})
        study.set_user_attr("edg_space_yaml", space.text[:200_000])
    elif attrs["edg_fingerprint"] != fp:
        was = attrs.get("edg_config", {})
        raise SearchError(f"study {cfg.study_name!r} in this storage was made for space {attrs.get('edg_space')!r} "
                          f"with other settings (objective {was.get('objective')}, proxy {was.get('proxy')}); "
                          "use another --study name or the same settings")
    elif attrs.get("edg_config", {}).get("trials") != cfg.trials:
        # the budget is not part of the fingerprint: a study may be extended (or ended early),
        # and `status`/`best` should count against the budget it was last run with
        study.set_user_attr("edg_config", {**attrs.get("edg_config", {}), "trials": cfg.trials})
    if cfg.seed_points and not attrs.get("edg_seeded"):
        # under the lock, and read again there: workers started together enqueue the seeds once
        with study_lock(study, cfg.run_dir):
            if not study.user_attrs.get("edg_seeded"):
                for name in space.spec.points:
                    study.enqueue_trial(point_values(space, name), user_attrs={"edg_point": name},
                                        skip_if_exists=True)
                study.set_user_attr("edg_seeded", True)
    return study, space


# settings of one command, not of the study: neither stored nor compared
LOCAL_SETTINGS = ("quiet", "proxy_cache", "workers")


def load_study(out: str | os.PathLike, study_name: str | None = None,
               storage: str | None = None) -> tuple[optuna.Study, StudyConfig]:
    """An existing study of a run folder (or ``storage`` URL) and the settings it was run
    with; the one study there unless ``study_name`` picks one. Never creates a study."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out = Path(out)
    if storage is None and not (out / "study.journal").is_file():
        raise SearchError(f"no study in {out} (no {out / 'study.journal'}); run `edg search run SPACE --out {out}`")
    opened = open_storage(storage, out)
    names = [s.study_name for s in optuna.get_all_study_summaries(opened)]
    name = study_name or (names[0] if len(names) == 1 else None)
    if name is None or name not in names:
        from ..errors import RegistryError

        raise RegistryError("study", str(name), names)
    study = optuna.load_study(study_name=name, storage=opened)
    saved = study.user_attrs.get("edg_config", {})
    cfg = StudyConfig(**{k: (tuple(tuple(x) for x in v) if k == "proxy" else v) for k, v in saved.items()
                         if k in StudyConfig.__dataclass_fields__ and k not in LOCAL_SETTINGS})
    return study, cfg


def _check_config(cfg: StudyConfig) -> None:
    if cfg.sampler not in SAMPLERS:
        from ..errors import RegistryError

        raise RegistryError("sampler", cfg.sampler, SAMPLERS)
    if cfg.pruner is not None and cfg.pruner not in PRUNERS:
        from ..errors import RegistryError

        raise RegistryError("pruner", cfg.pruner, PRUNERS)
    if not 1 <= cfg.trials <= 100_000:
        raise SearchError(f"--trials {cfg.trials}: allowed 1..100000")
    if cfg.objective == "pareto" and cfg.pruner not in (None, "none"):
        raise SearchError("pruning needs a single objective: use --objective accuracy (with --max-flops for a budget)")
    if cfg.sampler == "nsga2" and cfg.objective != "pareto":
        raise SearchError("NSGA-II is a multi-objective sampler: use it with --objective pareto")
    for name, value in (("--max-flops", cfg.max_flops), ("--max-params", cfg.max_params)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise SearchError(f"{name} {value}: must be a positive number")


def study_metric(space: SearchSpace, cfg: StudyConfig) -> str:
    """The trial score a study maximizes (``proxy_scores.SCORES``): the calibration's where
    one is given, else the space's ``metric``."""
    if cfg.calibration:
        from .calibrate import calibrated_proxy

        return calibrated_proxy(cfg.calibration)[1]
    return space.spec.metric


def _proxy_config(space: SearchSpace, cfg: StudyConfig):
    from .proxy import ProxyConfig, coerce_proxy_settings, proxy_setting_problem

    given = {**space.spec.proxy, **dict(cfg.proxy)}
    if cfg.calibration:  # the calibrated proxy, then only what the command line sets
        from .calibrate import calibrated_proxy

        given = {**asdict(calibrated_proxy(cfg.calibration)[0]), **dict(cfg.proxy)}
    problems = []
    for key in given:
        msg = proxy_setting_problem(key)
        if msg is None:
            continue
        if key in space.spec.proxy:
            problems.append(space.source.problem(("proxy", key), msg, key=True))
        else:
            raise SearchError(f"--proxy {key}=...: {msg}")
    if problems:
        raise SpecError(problems)
    try:
        return ProxyConfig(**coerce_proxy_settings(given))
    except (TypeError, ValueError) as e:
        raise SearchError(f"proxy settings: {e}") from None


# ---------------------------------------------------------------------------- slots


def trial_status(t: FrozenTrial) -> str:
    """done / reused / cached / pruned / rejected / over_budget / failed / stale (its worker
    or a process of its training died: retried) / interrupted (retried) / surplus /
    duplicate / running / waiting."""
    if t.state == TrialState.RUNNING:
        return "running"
    if t.state == TrialState.WAITING:
        return "waiting"
    if t.state == TrialState.PRUNED:
        return "pruned"
    status = t.user_attrs.get("edg_status")
    if t.state == TrialState.COMPLETE:
        return status if status in ("done", "reused", "cached", "over_budget") else "done"
    return status if status in ("rejected", "failed", *LOST, *NO_SLOT) else "stale"


@dataclass
class Slots:
    budget: int
    latest: dict[int, FrozenTrial] = field(default_factory=dict)  # slot -> its latest attempt
    surplus: set[int] = field(default_factory=set)  # trial numbers holding no slot (NO_SLOT, or beyond the budget)

    def status(self, slot: int) -> str:
        return trial_status(self.latest[slot])

    @property
    def finished(self) -> int:
        return sum(1 for s in self.latest if self.status(s) in FINISHED)

    @property
    def open(self) -> int:
        """Slots no trial has taken yet."""
        return self.budget - len(self.latest)

    def unfinished(self) -> list[FrozenTrial]:
        return [t for s, t in self.latest.items() if trial_status(t) not in FINISHED]


def slots(trials: list[FrozenTrial], budget: int) -> Slots:
    """Assign trials to slots in number order: a re-run takes its original's slot, any
    other trial the next free one, or none (surplus) once ``budget`` are taken. A trial
    recorded as holding no slot (``NO_SLOT``) takes none, also when the budget is raised
    later: its place is filled by a new trial."""
    out = Slots(budget)
    slot_of: dict[int, int] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.user_attrs.get("edg_status") in NO_SLOT:
            out.surplus.add(t.number)
            continue
        origin = retry_of(t)
        if origin is not None and origin in slot_of:
            slot = slot_of[origin]
        elif origin is None and len(out.latest) < budget:
            slot = len(out.latest)
        else:
            out.surplus.add(t.number)
            continue
        slot_of[t.number] = slot
        out.latest[slot] = t
    return out


# ---------------------------------------------------------------------------- a shared results cache


class ResultCache:
    """Proxy results by (proxy fingerprint, candidate key) in a JSON-lines file shared by
    studies (several samplers compared on one space train each network once)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._seen: dict[tuple[str, str], dict] = {}

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
                self._seen[(r["proxy"], r["key"])] = r["result"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a killed writer

    def get(self, proxy: str, key: str) -> dict | None:
        if self.path is None:
            return None
        if (proxy, key) not in self._seen:
            self._load()
        return self._seen.get((proxy, key))

    def put(self, proxy: str, key: str, result: dict) -> None:
        if self.path is None:
            return
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(json.dumps({"proxy": proxy, "key": key, "result": result}) + "\n")
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)
        self._seen[(proxy, key)] = result


# ---------------------------------------------------------------------------- the objective


class Evaluator:
    """Proxy tasks by image size (a scaling space trains at several), built on first use."""

    def __init__(self, space: SearchSpace, cfg: StudyConfig):
        self.space, self.cfg = space, cfg
        self.base = _proxy_config(space, cfg)
        self.metric = study_metric(space, cfg)
        # a calibrated proxy judged on the mean of several seeds is searched that way
        self.seeds = 1
        if cfg.calibration:
            from .calibrate import calibrated_proxy

            self.seeds = calibrated_proxy(cfg.calibration)[3]
        self.tasks: dict[int, Any] = {}

    def config_for(self, cand: Candidate):
        size = max(32, int(round(self.base.image_size * cand.size_scale / 32)) * 32)
        channels = max(8, int(round(self.base.channels * cand.width_scale / 8)) * 8)
        return replace(self.base, image_size=size, channels=channels)

    def fingerprint(self, cand: Candidate) -> str:
        cfg = self.config_for(cand)
        settings = {k: v for k, v in asdict(cfg).items() if k not in cfg.RESULT_NEUTRAL}
        if self.metric != "map50":  # a shared result cache holds the metric: another one is another result
            settings["_metric"] = self.metric
        if self.seeds > 1:
            settings["_seeds"] = self.seeds
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def evaluate(self, cand: Candidate, report: Callable[[int, float], None] | None) -> list:
        """The proxy's results for ``cand``: one per seed (``self.seeds``, from the proxy's
        own seed up); a per-epoch ``report`` (the pruner's) goes with a single seed only."""
        from .proxy import ProxyTask

        cfg = self.config_for(cand)
        if cfg.image_size not in self.tasks:
            self.tasks[cfg.image_size] = ProxyTask(cfg, self.cfg.proxy_cache_dir, search_workers=self.cfg.workers)
        return [self.tasks[cfg.image_size].evaluate(cand.stacked(), channels=cfg.channels, seed=self.base.seed + i,
                                                    report=report if self.seeds == 1 else None)
                for i in range(self.seeds)]


def _objective(study: optuna.Study, space: SearchSpace, cfg: StudyConfig, evaluator: Evaluator,
               cache: ResultCache) -> Callable[[optuna.Trial], Any]:
    multi = cfg.objective == "pareto"
    metric = study_metric(space, cfg)
    stamp = worker_stamp()

    def finish(trial: optuna.Trial, status: str, **attrs: Any) -> None:
        for k, v in attrs.items():
            trial.set_user_attr(f"edg_{k}", v)
        trial.set_user_attr("edg_status", status)

    def values(score: float, flops: int):
        return (score, float(flops)) if multi else score

    # A trial that ends without a result (rejected, failed, surplus) returns NaN: Optuna
    # records it as FAIL, and its ``edg_status``/``edg_reason`` say why.
    none = (math.nan, math.nan) if multi else math.nan

    def objective(trial: optuna.Trial):
        try:
            return attempt_trial(trial)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (run_worker): run again, not counted as an attempt
            trial.set_user_attr("edg_status", "interrupted")
            raise

    def attempt_trial(trial: optuna.Trial):
        trial.set_user_attr("edg_worker", stamp)
        if trial.number in slots(study.get_trials(deepcopy=False), cfg.trials).surplus:
            finish(trial, "surplus")
            return none
        attempt = int(trial.user_attrs.get("edg_attempt", 1))
        if attempt > MAX_ATTEMPTS:
            # the retry of a retry: this network's runs lost their worker every time
            finish(trial, "failed", reason=f"lost its worker or a process of its training {attempt - 1} times "
                                           "(killed, or out of memory); not run again")
            return none
        rec = RecordingAsk(optuna_ask(trial))
        try:
            cand = sample(space, rec)
        except EdgError as e:
            finish(trial, "rejected", reason=str(e))
            return none
        if cand.rejected:
            finish(trial, "rejected", reason=cand.reason)
            return none
        try:
            t0 = time.perf_counter()
            cost = candidate_cost(cand, space.spec.cost)
            trial.set_user_attr("edg_cost_ms", round(1000 * (time.perf_counter() - t0), 3))
        except EdgError as e:
            finish(trial, "rejected", reason=f"cannot be built: {e}")
            return none
        key = cand.key
        violations = [cost.flops - cfg.max_flops if cfg.max_flops else 0.0,
                      cost.params - cfg.max_params if cfg.max_params else 0.0]
        named = cand.graph.copy()
        named.graph = {**cand.graph.graph, "name": f"{space.name}_t{trial.number}",
                       "description": f"trial {trial.number} of search {cfg.study_name!r} (space {space.name!r})"}
        trial.set_user_attr("edg_key", key)
        trial.set_user_attr("edg_flops", cost.flops)
        trial.set_user_attr("edg_params", cost.params)
        trial.set_user_attr("edg_repeat", cand.repeat)
        trial.set_user_attr("edg_channels", cand.channels)
        trial.set_user_attr("edg_image_size", cand.image_size)
        trial.set_user_attr("edg_graph", graph_to_yaml(named))
        trial.set_user_attr("edg_constraints", violations)
        if any(v > 0 for v in violations):
            trial.set_user_attr("edg_key", key)
            finish(trial, "over_budget", metric=0.0)
            return values(0.0, cost.flops)
        earlier = _claim(study, cfg, trial, key)
        if earlier is not None:
            trial.set_user_attr("edg_key", key)
            st = trial_status(earlier)
            if st in ("done", "cached"):
                finish(trial, "reused", reused_from=earlier.number, metric=earlier.user_attrs["edg_metric"],
                       map=earlier.user_attrs.get("edg_map"), map50=earlier.user_attrs.get("edg_map50"))
                return values(earlier.user_attrs["edg_metric"], cost.flops)
            if st == "failed":  # the same network with the same seed fails the same way
                finish(trial, "failed", reused_from=earlier.number,
                       reason=f"the same network as trial {earlier.number}: {earlier.user_attrs.get('edg_reason', '')}")
                return none
            # its worker died: the retry of that trial evaluates the network; this trial gives its slot back
            finish(trial, "duplicate", reason=f"the same network as trial {earlier.number}, whose worker died; "
                                             "its retry evaluates it")
            return none
        fingerprint = evaluator.fingerprint(cand)
        hit = cache.get(fingerprint, key)
        if hit is not None:
            finish(trial, "cached", **hit)
            return values(hit["metric"], cost.flops)

        def report(epoch: int, value: float) -> None:
            if multi or metric != "map50":  # the per-epoch history is mAP@0.5: prune only on it
                return
            trial.report(value, epoch)
            if trial.should_prune():
                finish(trial, "pruned", metric=value, epochs=epoch)
                raise optuna.TrialPruned(f"pruned after epoch {epoch} at {metric} {value:.4f}")

        c0 = time.process_time()
        try:
            results = evaluator.evaluate(cand, report if not multi else None)
        except optuna.TrialPruned:
            raise
        except EdgError as e:  # the candidate's own failure: a shape error, a diverged loss
            finish(trial, "failed", reason=str(e))
            return none
        except Exception as e:
            reason = f"{type(e).__name__}: {str(e)[:300]}"
            if not _lost_a_process(e):  # the candidate's own failure too: not retried
                finish(trial, "failed", reason=reason)
            elif attempt < MAX_ATTEMPTS:  # FAIL as "stale": requeue_lost gives it another attempt
                finish(trial, "stale", reason=reason)
            else:
                finish(trial, "failed", reason=f"{reason} (attempt {attempt} of {MAX_ATTEMPTS}; not retried again)")
            return none
        # several seeds: the mean of each seed's score, as the calibration judged it
        score = statistics.fmean(proxy_score(metric, asdict(r)) for r in results)
        found = {"metric": score, "map": statistics.fmean(r.map for r in results),
                 "map50": statistics.fmean(r.map50 for r in results), "epochs": results[0].epochs,
                 "seconds": round(sum(r.seconds for r in results), 3),
                 # the process's CPU seconds (all its threads): what the trial cost, however shared the cores
                 "cpu_seconds": round(time.process_time() - c0, 2), "history": list(results[0].history),
                 **({"seeds": len(results)} if len(results) > 1 else {})}
        finish(trial, "done", **found)
        cache.put(fingerprint, key, found)
        return values(score, cost.flops)

    return objective


def _lost_a_process(e: BaseException) -> bool:
    """Whether the trial failed because the machine took something from it -- a DataLoader
    worker killed (the out-of-memory killer's usual victim) or memory running out --
    rather than because of the network: worth one more attempt."""
    if isinstance(e, (MemoryError, WorkerLost)) or type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError
        return True
    text = str(e)
    # torch's words for a dead loader process (torch/utils/data/dataloader.py, _utils/signal_handling.py)
    return isinstance(e, RuntimeError) and "DataLoader worker" in text and (
        "killed by signal" in text or "exited unexpectedly" in text)


def _claim(study: optuna.Study, cfg: StudyConfig, trial: optuna.Trial, key: str,
           poll: float = 1.0) -> FrozenTrial | None:
    """Make ``trial`` the one that trains network ``key``, or return the trial that
    settled it: one that evaluated it (done, cached) or failed on it, or that was
    training it when its worker died. While another trial trains it, wait (checking
    for dead workers meanwhile): two workers never train one network at once."""
    while True:
        with study_lock(study, cfg.run_dir):
            trials = study.get_trials(deepcopy=False)
            training = None
            for t in trials:
                if t.number == trial.number or t.user_attrs.get("edg_key") != key:
                    continue
                if t.state == TrialState.COMPLETE and trial_status(t) in ("done", "cached"):
                    return t
                if t.state == TrialState.FAIL and trial_status(t) == "failed":
                    return t
                if t.state == TrialState.RUNNING and "edg_status" not in t.user_attrs:
                    training = t
            if training is None:
                trial.set_user_attr("edg_key", key)  # the claim, made under the lock
                return None
        while True:  # wait for the trial that trains it
            time.sleep(poll)
            requeue_lost(study, cfg)
            now = study._storage.get_trial(training._trial_id)
            if now.state != TrialState.RUNNING:
                break
        if trial_status(now) in LOST:
            return now


# ---------------------------------------------------------------------------- workers


def requeue_lost(study: optuna.Study, cfg: StudyConfig) -> list[int]:
    """Give every slot whose latest attempt died (its worker was killed or interrupted, or
    its training lost a process) a new attempt with the same parameters, once per dead
    attempt: under the study lock, which every worker of the study takes. An attempt
    past ``MAX_ATTEMPTS`` records the slot failed without training. Returns the numbers
    of the trials requeued."""
    requeued = []
    with study_lock(study, cfg.run_dir):
        fail_dead_workers(study)
        trials = study.get_trials(deepcopy=False)
        retried = {retry_of(t) for t in trials}
        s = slots(trials, cfg.trials)
        for t in s.latest.values():
            if t.state == TrialState.FAIL and trial_status(t) in LOST and t.number not in retried:
                attempt = int(t.user_attrs.get("edg_attempt", 1)) + (trial_status(t) == "stale")
                study.enqueue_trial(dict(t.params), user_attrs={"edg_retry_of": t.number, "edg_attempt": attempt})
                requeued.append(t.number)
    return requeued


def _line(study: optuna.Study, cfg: StudyConfig, last: FrozenTrial | None, started: float) -> str:
    trials = study.get_trials(deepcopy=False)
    s = slots(trials, cfg.trials)
    done = s.finished
    width = 20
    bar = "#" * int(width * done / cfg.trials) + "." * (width - int(width * done / cfg.trials))
    parts = [f"[{bar}] {done}/{cfg.trials}"]
    if last is not None:
        st = trial_status(last)
        if "edg_metric" in last.user_attrs and st not in ("rejected", "failed"):
            parts.append(f"trial {last.number} {st}: {last.user_attrs['edg_metric']:.3f} @ "
                         f"{last.user_attrs.get('edg_flops', 0) / 1e9:.3f} GFLOPs")
        else:
            parts.append(f"trial {last.number} {st}" + (f" ({last.user_attrs.get('edg_reason', '')[:80]})"
                                                         if st in ("rejected", "failed") else ""))
    best = best_trials(trials, cfg.objective, 1)
    if best:
        b = best[0]
        parts.append(f"best {b.user_attrs['edg_metric']:.3f} @ {b.user_attrs['edg_flops'] / 1e9:.3f} GFLOPs (#{b.number})")
    elapsed = time.perf_counter() - started
    return "  ".join(parts) + f"  {int(elapsed) // 60}:{int(elapsed) % 60:02d}"


def best_trials(trials: list[FrozenTrial], objective: str, top: int | None = None) -> list[FrozenTrial]:
    """Feasible finished trials: the Pareto front (max metric, min FLOPs; one per network)
    in ``pareto`` mode, the best by metric in ``accuracy`` mode; best first."""
    good = [t for t in trials if t.state == TrialState.COMPLETE and trial_status(t) in ("done", "reused", "cached")
            and "edg_metric" in t.user_attrs]
    by_key: dict[str, FrozenTrial] = {}
    for t in sorted(good, key=lambda t: t.number):
        by_key.setdefault(t.user_attrs.get("edg_key", str(t.number)), t)
    good = list(by_key.values())
    if objective == "pareto":
        front = [t for t in good if not any(_dominates(o, t) for o in good)]
        front.sort(key=lambda t: (-t.user_attrs["edg_metric"], t.user_attrs["edg_flops"]))
    else:
        front = sorted(good, key=lambda t: (-t.user_attrs["edg_metric"], t.user_attrs["edg_flops"]))
    return front[:top] if top else front


def _dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
    am, af = a.user_attrs["edg_metric"], a.user_attrs["edg_flops"]
    bm, bf = b.user_attrs["edg_metric"], b.user_attrs["edg_flops"]
    return am >= bm and af <= bf and (am > bm or af < bf)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_worker(cfg: StudyConfig, log: Callable[[str], None] | None = None, poll: float = 2.0) -> dict:
    """Take trials of the study until all its slots are finished; returns the counts.
    SIGTERM (how schedulers stop a job) is taken as Ctrl-C: the running trial is recorded
    ``interrupted`` and run again by the study's next worker."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        return _take_trials(cfg, log, poll)
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)


def _take_trials(cfg: StudyConfig, log: Callable[[str], None] | None, poll: float) -> dict:
    import torch

    from .proxy import trial_threads

    threads = torch.get_num_threads()
    torch.set_num_threads(trial_threads(cfg.workers))  # this worker's share of the cores
    try:
        return _take_trials_with(cfg, log, poll)
    finally:
        torch.set_num_threads(threads)


def _take_trials_with(cfg: StudyConfig, log: Callable[[str], None] | None, poll: float) -> dict:
    say = log or (lambda text: None if cfg.quiet else print(text, flush=True))
    study, space = open_study(cfg)
    evaluator = Evaluator(space, cfg)
    cache = ResultCache(cfg.cache)
    objective = _objective(study, space, cfg, evaluator, cache)
    started = time.perf_counter()
    ran = 0
    while True:
        for n in requeue_lost(study, cfg):
            say(f"trial {n} was lost with its worker (killed or interrupted): requeued")
        trials = study.get_trials(deepcopy=False)
        s = slots(trials, cfg.trials)
        if s.finished >= cfg.trials:
            break
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if s.open <= 0 and not waiting:
            # every slot is taken and some still run elsewhere: wait for them (or for a
            # dead worker's trial to be requeued by requeue_lost above)
            time.sleep(poll)
            continue
        before = {t.number for t in trials if t.state.is_finished()}  # a requeued trial existed, waiting
        study.optimize(objective, n_trials=1, gc_after_trial=False, show_progress_bar=False)
        ran += 1
        mine = [t for t in study.get_trials(deepcopy=False) if t.number not in before and t.state.is_finished()
                and t.user_attrs.get("edg_worker") == worker_stamp()]
        say(_line(study, cfg, mine[-1] if mine else None, started))
    return summary(study, cfg) | {"trials_this_worker": ran}


def summary(study: optuna.Study, cfg: StudyConfig) -> dict:
    trials = study.get_trials(deepcopy=False)
    s = slots(trials, cfg.trials)
    counts: dict[str, int] = {}
    for t in s.latest.values():
        st = trial_status(t)
        counts[st] = counts.get(st, 0) + 1
    counts["requeued"] = sum(1 for t in trials if retry_of(t) is not None)
    best = best_trials(trials, cfg.objective, 1)
    out = {"study": cfg.study_name, "budget": cfg.trials, "finished": s.finished, "counts": counts}
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    if starts and ends:
        out["wall_seconds"] = round((max(ends) - min(starts)).total_seconds(), 1)
    for key, name in (("edg_seconds", "proxy_seconds"), ("edg_cpu_seconds", "proxy_cpu_seconds"),
                      ("edg_cost_ms", "cost_ms")):
        values = sorted(float(t.user_attrs[key]) for t in trials if key in t.user_attrs)
        if values:
            out[f"{name}_median"] = values[len(values) // 2]
    if best:
        b = best[0]
        out["best"] = {"trial": b.number, "metric": b.user_attrs["edg_metric"], "flops": b.user_attrs["edg_flops"]}
    return out


def _worker_entry(cfg: StudyConfig) -> None:
    try:
        run_worker(replace(cfg, quiet=True))
    except EdgError as e:
        print(f"worker {os.getpid()}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker of the terminal: no traceback from each
        sys.exit(130)


class _Workers:
    """The extra local worker processes of ``run``. A thread reaps each one that exits
    (a killed child must not stay a zombie, whose pid looks alive) and starts a new
    worker for one killed by a signal, up to one replacement per extra worker in all:
    its trial is retried by ``requeue_lost``, and the study keeps its workers."""

    def __init__(self, cfg: StudyConfig, extra: int, say: Callable[[str], None]):
        self.cfg, self.say = cfg, say
        self.ctx = multiprocessing.get_context("spawn")
        self.started = 0
        self.replacements_left = extra
        self.procs = [self._start() for _ in range(extra)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _start(self) -> multiprocessing.Process:
        self.started += 1
        # each worker draws from its own seed, or they would all propose the same points
        p = self.ctx.Process(target=_worker_entry, args=(replace(self.cfg, seed=self.cfg.seed + 7919 * self.started),),
                             daemon=False)
        p.start()
        return p

    def _watch(self, every: float = 1.0) -> None:
        while not self._stop.wait(every):
            for i, p in enumerate(self.procs):
                if p.is_alive() or p.exitcode is None or p.exitcode >= 0:  # is_alive() reaps an exited child
                    continue
                if self.replacements_left > 0 and not self._stop.is_set():
                    self.replacements_left -= 1
                    self.procs[i] = self._start()
                    self.say(f"worker {p.pid} was killed (signal {-p.exitcode}): its trial is retried; "
                             f"started worker {self.procs[i].pid} in its place")
                else:
                    self.say(f"worker {p.pid} was killed (signal {-p.exitcode}): its trial is retried")
                    self.procs[i] = _Reaped(p.pid)

    def join(self, stop: bool = False) -> None:
        """Wait for the workers (they end with the study), or ``stop`` them first (SIGTERM:
        each records its trial ``interrupted``)."""
        self._stop.set()
        self._thread.join()
        for p in self.procs:
            if stop and p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join()


class _Reaped:
    """A killed worker already reported and not replaced."""

    def __init__(self, pid: int):
        self.pid, self.exitcode = pid, 0

    def is_alive(self) -> bool:
        return False

    def join(self) -> None:
        pass


def run(cfg: StudyConfig, workers: int = 1, log: Callable[[str], None] | None = None) -> dict:
    """Run the study with ``workers`` local processes (this one and ``workers - 1`` more)."""
    if not 1 <= workers <= 64:
        raise SearchError(f"--workers {workers}: allowed 1..64")
    cfg = replace(cfg, workers=workers)
    open_study(cfg)  # create it (and enqueue the seeds) once, before the workers race
    say = log or (lambda text: None if cfg.quiet else print(text, flush=True))
    extra = _Workers(cfg, workers - 1, say) if workers > 1 else None
    stopped = True
    try:
        result = run_worker(cfg, log)
        stopped = False
    finally:
        if extra is not None:
            extra.join(stop=stopped)  # an error or an interrupt here stops the other workers too
    return result
