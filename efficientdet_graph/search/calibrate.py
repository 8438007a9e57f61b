"""A proxy's scores for every network of a reference table: the data a proxy is calibrated on.

``edg search fidelity REFERENCE --proxy KEY=VALUE ...`` trains the proxy (``ProxyTask``)
once per network of the table and per seed, and judges its ranking against the table
(``ranking.fidelity``). The proxy starts from the reference's own setting -- its data
folder, backbone, image size, anchors, widths, and the shared backbone the reference
jobs start from (pre-trained by classification, with no neck, so no topology is
favoured) -- and a variant is a change of ``ProxyConfig`` fields, never other code.

Trials are appended to a log (JSON lines) named by the proxy's settings, so a run cut
short goes on where it stopped, and another score or split can be judged from the same
trials without training again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..errors import SearchError
from .proxy import ProxyConfig

__all__ = ["reference_proxy", "TrialLog", "score_table", "network_scores", "zero_cost_table", "calibrate", "choose",
           "markdown", "calibrated_proxy", "study_row", "speed", "MAX_TRIAL_S", "MAX_JOB_SHARE"]


def reference_proxy(doc: Mapping, settings: Mapping) -> ProxyConfig:
    """The proxy of a reference results file ``doc``, with ``settings`` (ProxyConfig
    fields, already typed) laid over it."""
    sched, task = doc.get("schedule") or {}, doc.get("task") or {}
    if not task.get("data"):
        raise SearchError("the reference file names no data folder (task.data): write it again with the same "
                          "edg search reference command and --report --no-gate")
    # BatchNorm momentum 0.1: after a trial's ~250 steps the detector's 0.01 would leave
    # the running statistics 8% on their initial values (0.99^250), which the evaluation uses
    base = {"data": task["data"], "max_detections": 100, "bn_momentum": 0.1}
    # the reference's batch and learning rate too: on a CPU a step's cost grows with its
    # batch, so batches of 8 make four times the updates of 32 for the same seconds
    for field in ("backbone", "image_size", "anchor_scale", "head_repeat", "channels", "batch_size", "lr"):
        if field in sched:
            base[field] = sched[field]
    if task.get("backbone_init"):
        base["backbone_weights"] = task["backbone_init"]
    try:
        return ProxyConfig(**{**base, **settings})
    except (TypeError, ValueError) as e:
        raise SearchError(f"proxy settings: {e}") from None


#: rows within this fraction of the cheapest passing row's CPU seconds tie on cost
COST_TIE = 0.10
#: fast enough to search (issue 18): a median trial within 20 CPU s of one thread and a
#: tenth of a reference job
MAX_TRIAL_S = 20.0
MAX_JOB_SHARE = 0.10


def _settings_id(cfg: ProxyConfig) -> str:
    """Every setting that can change a trial's result (not the loader's worker count), the
    data and the frozen backbone by content, not by path: a log committed in one checkout
    is found in another."""
    from .proxy import CACHE_FORMAT, _file_digest
    from ..train.data import resolve_data

    key = {k: v for k, v in asdict(cfg).items() if k not in ProxyConfig.RESULT_NEUTRAL}
    key["format"] = CACHE_FORMAT
    if cfg.data != "synthetic":
        files = [Path(resolve_data(cfg.data, split)[0]) for split in ("train", "val")]
        key["data"] = _annotations_digest(tuple((str(f), f.stat().st_mtime_ns) for f in files))
    if cfg.backbone_weights is not None:
        key["backbone_weights"] = _file_digest(cfg.backbone_weights)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def _annotations_digest(files: tuple[tuple[str, int], ...]) -> str:
    # a calibration asks once per variant; the annotation files are read once per version
    h = hashlib.sha256()
    for split, (path, _) in zip(("train", "val"), files):
        h.update(split.encode() + Path(path).read_bytes())
    return h.hexdigest()[:16]


@dataclass
class TrialLog:
    """Finished trials, one JSON object per line, appended and flushed to disk one by one:
    a kill loses only the trial in flight (a torn last line is ignored when read)."""

    path: Path

    def read(self) -> dict[str, dict]:
        done: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill mid-write
                if isinstance(row, dict) and "trial" in row:
                    done[row["trial"]] = row
        return done

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            # a torn line left by an earlier kill must not swallow this one
            if f.tell() and not self.path.read_bytes().endswith(b"\n"):
                f.write("\n")
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _graph(row: Mapping, where: str):
    from ..graph import build_graph
    from ..spec import load_spec_text

    if not row.get("graph_yaml"):
        raise SearchError(f"{where}: no graph for {row.get('network', '?')} (a file written before graphs were kept "
                          "in the table: write it again with the same edg search reference command and --no-gate)")
    repeat = row.get("repeat") or 1
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= 64:
        raise SearchError(f"{where}: {row['network']}: repeat {repeat!r} is not a whole number 1..64")
    graph = build_graph(*load_spec_text(str(row["graph_yaml"]), f"{where}#{row['network']}"))
    graph.graph = {**graph.graph, "repeat": repeat}
    return graph


def score_table(table: Sequence[Mapping], cfg: ProxyConfig, cache_dir: str | Path, seeds: Sequence[int],
                where: str = "reference", say: Callable[[str], None] = print) -> tuple[list[dict], Path]:
    """One proxy trial per table network and seed (one thread: seconds are one core's),
    those already in the log reused. Returns the trials, in table order, and the log's path."""
    import torch

    from .proxy import ProxyTask

    log = TrialLog(Path(cache_dir) / f"trials-{_settings_id(cfg)}.jsonl")
    done = log.read()
    graphs = {r["network"]: _graph(r, where) for r in table}  # every graph checked before any training
    todo = [(r, s) for r in table for s in seeds if f"{r.get('key') or r['network']}@{s}" not in done]
    say(f"proxy trials: {len(table) * len(seeds) - len(todo)} in {log.path}, {len(todo)} to run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task = ProxyTask(cfg, cache_dir) if todo else None
        for i, (r, seed) in enumerate(todo, 1):
            trial = f"{r.get('key') or r['network']}@{seed}"
            c0 = time.process_time()
            res = task.evaluate(graphs[r["network"]], seed=seed)
            row = {"trial": trial, "network": r["network"], "seed": seed, **asdict(res),
                   "cpu_seconds": round(time.process_time() - c0, 2)}
            row["history"], row["train_losses"] = list(res.history), list(res.train_losses)
            log.append(row)
            done[trial] = row
            say(f"[{i}/{len(todo)}] {r['network']} seed {seed}: mAP@0.5 {res.map50:.3f}, "
                f"val loss {res.val_loss:.3f}, {res.seconds:.1f} s")
    finally:
        torch.set_num_threads(threads)
    trials = [done[f"{r.get('key') or r['network']}@{s}"] for r in table for s in seeds]
    return trials, log.path


def network_scores(trials: Sequence[Mapping], kind: str) -> dict[str, float]:
    """Each network's score ``kind`` (``proxy_scores.SCORES``), the mean over its trials' seeds."""
    from .proxy_scores import proxy_score

    per: dict[str, list[float]] = {}
    for t in trials:
        per.setdefault(t["network"], []).append(proxy_score(kind, t))
    return {name: statistics.fmean(values) for name, values in per.items()}


def zero_cost_table(doc: Mapping, table: Sequence[Mapping], name: str, where: str = "reference"
                    ) -> tuple[dict[str, float], dict]:
    """Every table network's training-free score ``name`` (``zerocost.zero_cost_score``),
    on the shapes of the reference file's schedule, and what a results file keeps of it."""
    import torch

    from .zerocost import ZeroCostSettings, zero_cost_score

    sched = doc.get("schedule") or {}
    classes = ((doc.get("task") or {}).get("splits") or {}).get("train", {}).get("classes")
    settings = ZeroCostSettings(**{k: sched[k] for k in ("backbone", "image_size", "channels", "head_repeat",
                                                         "anchor_scale") if k in sched},
                                **({"num_classes": len(classes)} if classes else {}))
    graphs = {r["network"]: _graph(r, where) for r in table}  # every graph checked before any is scored
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the seconds below are one core's
    try:
        scores, seconds, cpu = {}, {}, {}
        for r in table:
            g = graphs[r["network"]]
            c0 = time.process_time()
            scores[r["network"]], seconds[r["network"]] = zero_cost_score(name, g, g.graph["repeat"], settings)
            cpu[r["network"]] = time.process_time() - c0
    finally:
        torch.set_num_threads(threads)
    return scores, {"score": name, "settings": asdict(settings), "scores": scores, "seconds": seconds,
                    "median_seconds": statistics.median(seconds.values()),
                    "median_cpu_seconds": statistics.median(cpu.values())}


def calibrate(doc: Mapping, variants: Sequence, zero_cost: Sequence[str], cache_dir: str | Path,
              split: str = "val", n_boot: int = 2000, seed: int = 0, where: str = "reference",
              say: Callable[[str], None] = print) -> dict:
    """Every (variant, score) pair, every training-free score and the two priors, judged
    against the reference table's ``split`` (``ranking.judge``), one row each; the
    default proxy is the cheapest passing row (CPU seconds of one thread per network:
    its trials' training and scoring, all seeds)."""
    from .proxy_scores import SCORES
    from .ranking import fidelity, judge

    table = [r for r in doc["table"] if (r.get(split) or {}).get("values")]
    rows: list[dict] = []

    def add(kind: str, name: str, score: str, result: dict, ranking: str, seconds: float | None,
            cpu: float | None, settings: dict | None) -> None:
        fig, verdict = result["rankings"][ranking], judge(result, ranking)
        rows.append({"kind": kind, "variant": name, "score": score, "tau": fig["tau"],
                     "tau_interval": fig["tau_interval"], "rho": fig["rho"], "top_k_recall": fig["top_k_recall"],
                     "seconds_per_network": seconds, "cpu_seconds_per_network": cpu, "settings": settings,
                     "passed": verdict["passed"], "reasons": verdict["reasons"]})

    priors = fidelity(table, None, split=split, n_boot=n_boot, seed=seed)
    for prior in ("flops", "params"):
        add("prior", prior, prior, priors, prior, 0.0, 0.0, None)
    for name in zero_cost:
        scores, info = zero_cost_table(doc, table, name, where)
        add("zero-cost", name, name, fidelity(table, scores, split=split, n_boot=n_boot, seed=seed), "proxy",
            info["median_seconds"], info["median_cpu_seconds"], None)
    trials_of: dict[str, list[dict]] = {}
    for v in variants:
        cfg = reference_proxy(doc, v.settings)
        say(f"variant {v.name}: {v.why}")
        trials, _ = score_table(table, cfg, cache_dir, range(v.seeds), where, say)
        trials_of[v.name] = trials
        per_net: dict[str, list[float]] = {}
        per_cpu: dict[str, list[float]] = {}
        for t in trials:
            per_net.setdefault(t["network"], []).append(t["seconds"])
            per_cpu.setdefault(t["network"], []).append(t["cpu_seconds"])
        seconds = statistics.median(sum(s) for s in per_net.values())
        cpu = statistics.median(sum(s) for s in per_cpu.values())
        # where a trial's time goes: each phase's median over the trials (logs older than
        # the phase timers have none)
        timed = [t["phases"] for t in trials if t.get("phases")]
        phases = {k: round(statistics.median(p[k] for p in timed), 2) for k in timed[0]} if timed else None
        per_trial = statistics.median(t["cpu_seconds"] for t in trials)
        for score in v.scores or SCORES:
            if score == "extrapolated" and not cfg.score_every_epoch:
                continue  # one scored epoch: the extrapolated score is mAP@0.5 itself
            result = fidelity(table, network_scores(trials, score), split=split, n_boot=n_boot, seed=seed)
            add("proxy", v.name, score, result, "proxy", seconds, cpu, dict(v.settings, seeds=v.seeds))
            rows[-1]["trial_phases_median_s"] = phases
            rows[-1]["cpu_seconds_per_trial"] = per_trial
    job_s = (doc.get("cost") or {}).get("median_job_s")
    found = study_row(rows)
    study = found and {"variant": found[0]["variant"], "score": found[0]["score"], "tau": found[0]["tau"],
                       "why": found[1],
                       **speed(found[0]["cpu_seconds_per_trial"], job_s)}
    if found:  # where it ranks well: within each source of networks, beside the table's own seeds
        study["tau_by_source"] = _tau_by_source(table, network_scores(trials_of[study["variant"]], study["score"]),
                                                split)
    # the proxy a study given this file trains (``calibrated_proxy``), with its speed
    return {"split": split, "networks": len(table), "n_boot": n_boot, "bootstrap_seed": seed, "rows": rows,
            **choose(rows), "study_proxy": study, "seed_agreement": seed_agreement(table, split)}


def seed_agreement(table: Sequence[Mapping], split: str = "val") -> dict:
    """How well the reference reproduces its own order: Kendall tau-b between the values of
    its first and second seeds, over every network with two, and within each source of
    networks (``graph``, ``point``, ``sampled``...). No proxy can be expected to rank a
    group more surely than a second seed of the real training does."""
    def tau(rows: list[Mapping]) -> dict:
        two = [r for r in rows if len(r[split]["values"]) >= 2]
        return _tau_of([r[split]["values"][0] for r in two], [r[split]["values"][1] for r in two])

    return {"all": tau(list(table)), **_by_source(table, tau)}


def _tau_by_source(table: Sequence[Mapping], scores: Mapping[str, float], split: str) -> dict:
    def tau(rows: list[Mapping]) -> dict:
        rows = [r for r in rows if r["network"] in scores]
        return _tau_of([scores[r["network"]] for r in rows], [statistics.fmean(r[split]["values"]) for r in rows])

    return _by_source(table, tau)


def _by_source(table: Sequence[Mapping], tau: Callable[[list[Mapping]], dict]) -> dict:
    """``tau`` of the table's rows of each source of networks."""
    sources = sorted({r.get("source", "?") for r in table})
    return {src: tau([r for r in table if r.get("source", "?") == src]) for src in sources}


def _tau_of(x: Sequence[float], y: Sequence[float]) -> dict:
    from .ranking import kendall_tau_b

    return {"networks": len(x), "kendall_tau": kendall_tau_b(x, y) if len(x) >= 2 else None}


def speed(trial_cpu_s: float, reference_job_s: float | None) -> dict:
    """Is a proxy fast enough to search: its median trial at most ``MAX_TRIAL_S`` CPU
    seconds of one thread and at most ``MAX_JOB_SHARE`` of a reference job (the training
    it stands in for); with trials per hour per core."""
    share = trial_cpu_s / reference_job_s if reference_job_s else None
    return {"trial_cpu_s": trial_cpu_s, "trials_per_hour_per_core": 3600.0 / trial_cpu_s if trial_cpu_s else None,
            "reference_median_job_s": reference_job_s, "share_of_reference_job": share,
            "max_trial_s": MAX_TRIAL_S, "max_job_share": MAX_JOB_SHARE,
            "passed": trial_cpu_s <= MAX_TRIAL_S and (share is None or share <= MAX_JOB_SHARE)}


def choose(rows: Sequence[Mapping]) -> dict:
    """``default``: the cheapest passing row -- fewest CPU seconds per network, where rows
    within ``COST_TIE`` of the cheapest count as equally cheap and the highest tau among
    them wins (variants of the same steps differ in cost by measurement noise only);
    ``best``: the highest tau among the rankings that are not priors (a NaN tau ranks
    last), what a report names when nothing passes."""
    default = _cheapest([r for r in rows if r["passed"]])
    best = max((r for r in rows if r["kind"] != "prior"), key=lambda r: r["tau"] if r["tau"] == r["tau"] else -2,
               default=None)
    return {"default": default and {"variant": default["variant"], "score": default["score"]},
            "best": best and {"variant": best["variant"], "score": best["score"], "tau": best["tau"],
                              "tau_interval": best["tau_interval"]}}


def _cheapest(passing: Sequence[Mapping]) -> Mapping | None:
    # CPU seconds (one thread), not wall: on a shared machine the wall time of a trial
    # says more about the other jobs than about the trial
    if not passing:
        return None
    cheapest = min(r["cpu_seconds_per_network"] for r in passing)
    tied = [r for r in passing if r["cpu_seconds_per_network"] <= cheapest * (1 + COST_TIE)]
    return max(tied, key=lambda r: r["tau"])


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def study_row(rows: Sequence[Mapping]) -> tuple[Mapping, str] | None:
    """The proxy row a study trains, and why: the cheapest passing *proxy* row (as
    ``choose`` picks; a training-free score may be cheaper still, but a study has no trial
    to give it), else the proxy row of best tau; None where no proxy was judged."""
    proxies = [r for r in rows if isinstance(r, Mapping) and r.get("kind") == "proxy"]
    if not proxies:
        return None
    default = _cheapest([r for r in proxies if r.get("passed")])
    if default is not None:
        return default, "the cheapest proxy that clears the bar"
    # a NaN tau (written as null) ranks last
    return (max(proxies, key=lambda r: r["tau"] if _number(r["tau"]) and r["tau"] == r["tau"] else -2),
            "no proxy cleared the bar: the one of best tau")


def markdown(result: Mapping) -> str:
    """The calibration table, one row per ranking, cheapest first."""
    def f(x) -> str:
        return "–" if x is None or x != x else f"{x:.3f}" if abs(x) < 10 else f"{x:.0f}"

    lines = [f"Rankings against the reference table's {result['split']} mAP@0.5 (seed means), "
             f"{result['networks']} networks; 90% bootstrap interval of Kendall tau.", "",
             "| ranking | score | tau | 90% interval | rho | top-3 recall | CPU s per network | passes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: (r["cpu_seconds_per_network"] or 0, r["variant"], r["score"])):
        lo, hi = r["tau_interval"]
        lines.append(f"| {r['kind']}: {r['variant']} | {r['score']} | {f(r['tau'])} | [{f(lo)}, {f(hi)}] | "
                     f"{f(r['rho'])} | {f(r['top_k_recall'])} | {f(r['cpu_seconds_per_network'])} | "
                     f"{'yes' if r['passed'] else 'no'} |")
    d, sp = result["default"], result.get("study_proxy")
    lines += ["", f"Default proxy: {d['variant']} scored by {d['score']}." if d else
              "No ranking clears the bar (tau >= 0.6, interval's lower bound >= 0.3, above FLOPs and params only); "
              f"the best is {result['best']['variant']} / {result['best']['score']} at tau "
              f"{result['best']['tau']:.3f}." if result["best"] else "No ranking was judged."]
    if sp:
        share = f", {100 * sp['share_of_reference_job']:.1f}% of a reference job" if sp["share_of_reference_job"] else ""
        lines += ["", f"A study given this file trains {sp['variant']} scored by {sp['score']} ({sp['why']}). Its "
                      f"median trial: {sp['trial_cpu_s']:.1f} CPU s of one thread, {sp['trials_per_hour_per_core']:.0f} "
                      f"trials per hour per core{share} ({'fast enough' if sp['passed'] else 'TOO SLOW'} to search: "
                      f"at most {sp['max_trial_s']:.0f} s and {100 * sp['max_job_share']:.0f}% of a job)."]
    agree = result.get("seed_agreement")
    if agree and sp and sp.get("tau_by_source"):
        lines += ["", "Where it ranks: Kendall tau within each source of networks, beside the reference's own "
                      "seed 0 against seed 1 (what a second real training run agrees on):", "",
                  "| networks | count | proxy tau | seed 0 vs seed 1 tau |", "|---|---|---|---|",
                  f"| all | {result['networks']} | {f(sp['tau'])} | {f(agree['all']['kendall_tau'])} |"]
        for src, fig in sp["tau_by_source"].items():
            lines.append(f"| {src} | {fig['networks']} | {f(fig['kendall_tau'])} | "
                         f"{f((agree.get(src) or {}).get('kendall_tau'))} |")
    return "\n".join(lines) + "\n"


def calibrated_proxy(path: str | Path) -> tuple[ProxyConfig, str, str, int]:
    """The proxy a study should train, from a calibration results file (``edg search
    calibrate --results``): its cheapest proxy row that clears the bar, or where none
    does the one of best tau, on the reference it was calibrated against. Returns the
    proxy, the trial score to maximize, a line saying which it is, and the seeds a trial
    averages (a variant judged on the mean of two seeds is searched with two)."""
    try:
        st = Path(path).stat()
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)  # a rewrite within the clock's tick changes size or inode
    except OSError:
        stamp = None  # reported by the read below
    return _calibrated_proxy(str(path), stamp)


@functools.lru_cache(maxsize=8)
def _calibrated_proxy(path: str, stamp: tuple | None) -> tuple[ProxyConfig, str, str, int]:
    # a study start asks for the proxy and its score several times (per worker): one read
    # per file version (``stamp``), not one per question
    from .variants import get_variant

    def read(p: str | Path, what: str) -> dict:
        try:
            doc = json.loads(Path(p).read_text())
        except FileNotFoundError:
            raise SearchError(f"{what} {p}: no such file") from None
        except (OSError, ValueError) as e:
            raise SearchError(f"{what} {p}: not a JSON results file ({e})") from None
        if not isinstance(doc, dict):
            raise SearchError(f"{what} {p}: not a JSON object")
        return doc

    doc = read(path, "calibration")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not doc.get("reference_file"):
        raise SearchError(f"calibration {path}: not an edg search calibrate results file (no rows or reference_file)")
    bad = [i for i, r in enumerate(rows) if isinstance(r, dict) and r.get("kind") == "proxy" and not (
        _number(r.get("cpu_seconds_per_network")) and (r.get("tau") is None or _number(r.get("tau")))
        and isinstance(r.get("variant"), str)
        and isinstance(r.get("score"), str))]
    if bad:
        raise SearchError(f"calibration {path}: proxy row {bad[0]} lacks a numeric tau (or null) and cpu_seconds_per_network "
                          "or a variant and score name (not a file edg search calibrate wrote)")
    found = study_row(rows)
    if found is None:
        raise SearchError(f"calibration {path}: it judged no proxy variant (run edg search calibrate with --variants)")
    pick, how = found
    variant = get_variant(pick["variant"])
    cfg = reference_proxy(read(doc["reference_file"], "reference"), variant.settings)
    return (cfg, pick["score"], f"{how}, variant {variant.name} scored by {pick['score']} ({path})",
            variant.seeds)
