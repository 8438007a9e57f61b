"""The reference table: feature networks trained end-to-end, the ground truth a search is judged by.

A proxy is only worth what its ranking agrees with real training; this module makes the
real training. Each network of a table (a space's points, networks drawn from the space
by a seeded sampler spread over its FLOPs range, and named graphs such as NAS-FPN, GFPN
and the no-fusion floor) is trained with the *reference schedule* -- the whole detector,
backbone included, from scratch, with augmentation -- once per seed, and scored on the
search-val split (what proxies and studies may see) and on the test split (final claims
only). A job is one (network, seed); jobs live in a ``JobQueue`` (journal or PostgreSQL),
so the table is built across processes, machines and sessions, and a kill costs at most
the jobs in flight (each resumes from its own last epoch's checkpoint on the same machine).

The noise-floor gate (``gate``) is what makes the table worth ranking by: the no-fusion
neck must be worst by more than 3 pooled seed SDs, and the other floor networks (FPN,
PANet, BiFPN) must spread over more than 2 pooled SDs; otherwise the task or schedule is
too weak to tell necks apart, and the results say so.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

from .._io import atomic_write_text
from ..errors import ConfigError, DataError, SearchError
from ..graph import canonical_hash, graph_to_yaml
from .jobs import Job, JobQueue

__all__ = ["Schedule", "Network", "network_from_graph", "space_networks", "job_key", "model_yaml", "run_job",
           "ReferenceBuild", "summarize", "gate", "FLOOR"]

#: the noise-floor networks: the no-fusion neck and three published ones, with more seeds
FLOOR = ("nofusion", "fpn", "panet", "bifpn")


@dataclass(frozen=True)
class Schedule:
    """The reference schedule: what a user would train, sized for a 2-core CPU (one job
    is one core for a few minutes; see ``docs/reference-table.md`` for the measured cost)."""

    # PP-LCNet at 0.5 width: about a third of TinyNet-E's step time on one core (forward and
    # backward, 16 images at 192 px), which buys the epochs that the context classes need
    # (docs/reference-table.md)
    backbone: str = "lcnet_050"
    image_size: int = 192
    channels: int = 32
    # one layer of a named graph (a space's candidate brings its own repeat) and one head
    # layer: a no-fusion P3 prediction then sees 48.5 px from its cell's centre, less than
    # the marks' plates hide (docs/tasks.md); with two of each it saw about 65 px
    repeat: int = 1
    head_repeat: int = 1
    anchor_scale: float = 1.5
    epochs: int = 15
    # batches of 8: on a CPU a step costs about half of one of 16, so a job of the same
    # length takes twice the optimizer steps -- with 16, each fusing neck learned the
    # context classes in only some seeds within 15 epochs (docs/reference-table.md)
    batch_size: int = 8
    lr: float = 4e-3
    # the shared backbone is frozen for the first 2 epochs (TrainConfig.backbone_lr and
    # backbone_lr_epochs), then trains at lr: with the backbone trained from the first
    # step, the early steps wiped the panel colour from its P4 features (and from the
    # neck's P3 and P4) in some seeds, which then never named the marks; at 0.1 x lr for
    # the whole run the stuck seeds took the marks but the plain shapes were barely learned
    # (scripts/context_onset.py, scripts/probe_context.py; docs/reference-table.md)
    backbone_lr: float = 0.0
    backbone_lr_epochs: float = 2.0
    augment: bool = True
    threads: int = 1
    # No pretrained weights can be downloaded here, and a backbone trained from scratch in a
    # few minutes learns too little for necks to differ (measured: docs/reference-table.md).
    # So, as a user starts from ImageNet weights, every job starts from one backbone trained
    # once per table on the train split, then trains everything, backbone included.
    # "classify": multi-label classification of the classes in each image (no neck at all);
    # "detect": inside a detector with `pretrain_graph` as its neck -- measured to favour
    # that neck (the no-fusion neck then beat every fusing one), kept for comparison.
    pretrain_epochs: int = 10
    pretrain_task: str = "classify"
    pretrain_graph: str = "nofusion"
    # the pre-training's own batch and learning rate: a job setting (batch_size, lr, epochs)
    # can change without training the shared backbone again
    pretrain_batch_size: int = 16
    pretrain_lr: float = 4e-3

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "repeat", "epochs", "batch_size", "threads", "pretrain_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"schedule {name} must be >= 1, got {getattr(self, name)}")
        if not (self.backbone_lr >= 0 and math.isfinite(self.backbone_lr)):
            raise ConfigError(f"schedule backbone_lr must be a number >= 0 (a multiple of lr), got {self.backbone_lr}")
        if not (self.backbone_lr_epochs >= 0 and math.isfinite(self.backbone_lr_epochs)):
            raise ConfigError(f"schedule backbone_lr_epochs must be a number >= 0, got {self.backbone_lr_epochs}")
        for name in ("lr", "pretrain_lr"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"schedule {name} must be a positive number, got {getattr(self, name)}")
        if self.pretrain_task not in ("classify", "detect"):
            raise ConfigError(f"schedule pretrain_task must be classify or detect, got {self.pretrain_task!r}")

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    def pretrain_fingerprint(self) -> str:
        """The fields the shared backbone depends on (the detector's shape only where it is
        pre-trained inside one)."""
        fields = ["backbone", "image_size", "augment", "threads", "pretrain_epochs", "pretrain_task",
                  "pretrain_batch_size", "pretrain_lr"]
        if self.pretrain_task == "detect":
            fields += ["channels", "repeat", "head_repeat", "anchor_scale", "pretrain_graph"]
        key = {f: getattr(self, f) for f in fields}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Network:
    """One row of the table: a graph (one layer) and its depth, where it came from."""

    name: str
    graph_yaml: str
    repeat: int
    source: str  # "point" | "sampled" | "graph"
    params: dict = field(default_factory=dict)
    key: str = ""
    #: width of its feature network and heads where it is not the schedule's (a network
    #: matched to another's FLOPs by width)
    channels: int | None = None


def network_from_graph(name: str, graph, repeat: int, source: str, params: dict | None = None,
                       channels: int | None = None) -> Network:
    g = graph.copy()
    g.graph = {**graph.graph, "outputs": dict(graph.graph["outputs"]), "repeat": 1}
    # the width joins the key only where it is set: the keys of existing tables stay
    width = f"|w{channels}" if channels is not None else ""
    key = hashlib.sha256(f"{canonical_hash(g, ops=True)}|{repeat}{width}".encode()).hexdigest()[:12]
    return Network(name, graph_to_yaml(g), repeat, source, dict(params or {}), key, channels)


def space_networks(space_ref: str, sampled: int, seed: int = 0, pool: int = 400) -> list[Network]:
    """A space's points, then ``sampled`` networks drawn with ``random_ask`` (seeded) and
    picked at evenly spaced FLOPs quantiles of a pool of ``pool`` distinct valid draws, so
    the table covers the space's cost range instead of its most common cost."""
    from .cost import candidate_cost
    from .mapping import point_candidate, sample
    from .params import random_ask
    from .space import load_space

    space = load_space(space_ref)
    nets: list[Network] = []
    seen: set[str] = set()
    for name in space.spec.points:
        cand = point_candidate(space, name)
        net = network_from_graph(name, cand.graph, cand.repeat, "point", cand.params)
        if net.key not in seen:
            seen.add(net.key)
            nets.append(net)
    if sampled <= 0:
        return nets
    rng = random.Random(seed)
    drawn: list[tuple[int, Any]] = []
    for _ in range(pool * 5):
        if len(drawn) >= pool:
            break
        cand = sample(space, random_ask(rng))
        if cand.rejected:
            continue
        net = network_from_graph("", cand.graph, cand.repeat, "sampled", cand.params)
        if net.key in seen:
            continue
        seen.add(net.key)
        drawn.append((candidate_cost(cand, space.spec.cost).flops, net))
    drawn.sort(key=lambda x: (x[0], x[1].key))
    if len(drawn) < sampled:
        raise SearchError(f"space {space.name!r}: only {len(drawn)} distinct valid networks found in "
                          f"{pool * 5} draws, fewer than the {sampled} asked for")
    picks = sorted({min(len(drawn) - 1, int((i + 0.5) * len(drawn) / sampled)) for i in range(sampled)})
    for n, i in enumerate(picks):
        flops, net = drawn[i]
        nets.append(Network(f"{space.name}-s{n:02d}", net.graph_yaml, net.repeat, "sampled", net.params, net.key))
    return nets


def job_key(net: Network, seed: int) -> str:
    return f"{net.key}@{seed}"


# ---------------------------------------------------------------------------- one job


def model_yaml(net: Network, schedule: Schedule, num_classes: int) -> str:
    """The model spec a job trains (its graph beside it as ``graph.yaml``)."""
    lines = [
        f"name: ref-{net.key}",
        "graph: graph.yaml",
        f"backbone: {{name: {schedule.backbone}}}",
        f"image_size: {schedule.image_size}",
        f"fpn_channels: {net.channels or schedule.channels}",
        f"fpn_repeat: {net.repeat}",
        f"head_repeat: {schedule.head_repeat}",
        f"num_classes: {num_classes}",
        f"anchors: {{scale: {schedule.anchor_scale}}}",
    ]
    return "\n".join(lines) + "\n"


def build_id(data: str, schedule: Schedule, fingerprint: str | None = None) -> str:
    """The schedule's fingerprint (or ``fingerprint``) and the data's: a backbone or a job
    trained on other data (a regenerated or changed task, another --data folder) is never
    resumed as this one."""
    from ..train.data import resolve_data

    h = hashlib.sha256((fingerprint or schedule.fingerprint()).encode())
    for split in ("train", "val", "test"):
        try:
            ann = resolve_data(data, split)[0]
        except DataError:  # a folder without a test split: train and val decide alone
            continue
        h.update(split.encode() + Path(ann).read_bytes())
    return h.hexdigest()[:10]


def pretrained_backbone(out: Path, data: str, schedule: Schedule, say: Callable[[str], None] = print) -> Path | None:
    """The checkpoint every job's backbone starts from (``None`` when ``pretrain_epochs`` is
    0): trained once per table and schedule, under a lock, resumed if a kill interrupted it."""
    if schedule.pretrain_epochs == 0:
        return None
    import torch

    from .._io import locked
    from ..train import TrainConfig, train
    from ..train.data import Augment, num_categories, resolve_data

    work = out / f"pretrain-{build_id(data, schedule, schedule.pretrain_fingerprint())}"
    done, backbone = work / "done.json", work / "backbone.pt"
    work.mkdir(parents=True, exist_ok=True)
    with locked(work / ".lock"):
        if done.exists() and backbone.exists():
            return backbone
        if schedule.pretrain_task == "classify":
            return _classify_backbone(work, data, schedule, backbone, done, say)
        say(f"pre-training the shared backbone ({schedule.pretrain_epochs} epochs, {schedule.pretrain_graph} neck)")
        net = Network("pretrain", "", schedule.repeat, "graph", key="pretrain")
        num_classes = num_categories(resolve_data(data, "train")[0])
        atomic_write_text(work / "model.yaml", model_yaml(net, schedule, num_classes).replace(
            "graph: graph.yaml", f"graph: {schedule.pretrain_graph}"))
        # one job's threads: on a shared machine more threads than free cores make PyTorch's
        # thread pool wait on itself (measured: 6 images/s with 2 threads on one free core,
        # 21 with the core to itself)
        threads = torch.get_num_threads()
        torch.set_num_threads(schedule.threads)
        try:
            summary = train(TrainConfig(model=str(work / "model.yaml"), data=data, out=str(work),
                                        epochs=schedule.pretrain_epochs, batch_size=schedule.pretrain_batch_size,
                                        lr=schedule.pretrain_lr, seed=0, workers=0, eval_every=schedule.pretrain_epochs,
                                        resume=(work / "last.pt").exists(), quiet=True,
                                        augment=Augment() if schedule.augment else None))
        finally:
            torch.set_num_threads(threads)
        if summary.get("interrupted"):
            raise KeyboardInterrupt(f"pre-training stopped by {summary['interrupted']}")
        # the backbone alone (2 MB, committed with the build's journal so that a later session
        # goes on from the same start); the full checkpoint stays a local file
        from ..model.checkpoint import read_checkpoint

        weights = {k: v for k, v in read_checkpoint(work / "last.pt")["state_dict"].items() if k.startswith("backbone.")}
        _save_backbone(backbone, weights, schedule)
        atomic_write_text(done, json.dumps({k: v for k, v in summary.items() if isinstance(v, (int, float, str))}))
        return backbone


def _save_backbone(path: Path, weights: dict, schedule: Schedule) -> None:
    """The shared start as ``edg train --init`` reads it: backbone tensors only (2 MB)."""
    import torch

    from .._io import atomic_open

    with atomic_open(path, "wb") as f:
        torch.save({"state_dict": weights, "schedule": asdict(schedule)}, f)


def _classify_backbone(work: Path, data: str, schedule: Schedule, backbone: Path, done: Path,
                       say: Callable[[str], None]) -> Path:
    import torch

    from ..train.classify import pretrain_classifier
    from ..train.data import resolve_data

    say(f"pre-training the shared backbone by classification ({schedule.pretrain_epochs} epochs, no neck)")
    threads = torch.get_num_threads()
    torch.set_num_threads(schedule.threads)
    try:
        ann, img = resolve_data(data, "train")
        state = pretrain_classifier(schedule.backbone, ann, img, schedule.image_size, schedule.pretrain_epochs, work,
                                    schedule.pretrain_batch_size, schedule.pretrain_lr, seed=0, say=say)
    finally:
        torch.set_num_threads(threads)
    _save_backbone(backbone, {f"backbone.{k}": v for k, v in state.items()}, schedule)
    atomic_write_text(done, json.dumps({"task": "classify", "epochs": schedule.pretrain_epochs}))
    return backbone


def run_job(spec: dict, data: str, job_dir: Path, init: Path | None = None, quiet: bool = True,
            device: str = "cpu") -> tuple[float, dict]:
    """Train one (network, seed) with the reference schedule; score search-val and test.
    Resumes from ``job_dir/last.pt`` when a killed attempt left one (bit-identical to an
    uninterrupted run on the same machine: the training loop's resume is exact).

    ``device`` is where it runs, not part of the schedule: on a GPU the job trains in
    float32 (no mixed precision) so that its figures are the CPU's up to rounding, and
    the row records the device."""
    import torch

    from ..train.data import num_categories, resolve_data

    schedule = Schedule(**spec["schedule"])
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_dir / "graph.yaml", spec["graph_yaml"])
    num_classes = num_categories(resolve_data(data, "train")[0])
    atomic_write_text(job_dir / "model.yaml", model_yaml(Network(**spec["network"]), schedule, num_classes))
    torch.set_num_threads(schedule.threads)
    t0 = time.perf_counter()
    # the job's cost across attempts: an attempt stopped by a signal or an error adds its
    # seconds here on the way out (a SIGKILL's are lost), and the finishing one reports the sum
    spent_file = job_dir / "spent.json"
    try:
        before = float(json.loads(spent_file.read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        before = 0.0
    try:
        return _train_and_score(spec, schedule, data, job_dir, init, quiet, device, t0, before)
    except BaseException:
        atomic_write_text(spent_file, json.dumps({"seconds": round(before + time.perf_counter() - t0, 1)}))
        raise


def _train_and_score(spec: dict, schedule: Schedule, data: str, job_dir: Path, init: Path | None, quiet: bool,
                     device: str, t0: float, before: float) -> tuple[float, dict]:
    import torch

    from ..model import load_model
    from ..profile import profile_model
    from ..train import TrainConfig, evaluate, train
    from ..train.data import Augment

    cfg = TrainConfig(model=str(job_dir / "model.yaml"), data=data, out=str(job_dir), epochs=schedule.epochs,
                      batch_size=schedule.batch_size, lr=schedule.lr, backbone_lr=schedule.backbone_lr,
                      backbone_lr_epochs=schedule.backbone_lr_epochs,
                      seed=int(spec["seed"]), workers=0,
                      eval_every=schedule.epochs, resume=(job_dir / "last.pt").exists(), quiet=quiet,
                      augment=Augment() if schedule.augment else None, init=str(init) if init else None,
                      device=device, amp="off")
    summary = train(cfg)
    if summary.get("interrupted"):
        raise KeyboardInterrupt(f"training stopped by {summary['interrupted']}")
    model = load_model(job_dir / "last.pt")
    # both splits scored here from the final checkpoint: a job resumed after its last
    # epoch (killed before it was recorded) has no evaluation in its training summary
    val = evaluate(model, data, schedule.batch_size, device, split="val")
    try:
        test = evaluate(model, data, schedule.batch_size, device, split="test")
    except Exception as e:  # noqa: BLE001 -- a folder without a test split scores val only
        from ..train.data import DataError

        if not isinstance(e, DataError):
            raise
        test = {}
    prof = profile_model(model)
    attrs = {
        "network": spec["network"]["name"], "seed": int(spec["seed"]),
        # with each class's AP50 and found/named shares: which classes a network learns (a
        # context class found but named at chance)
        "val": {k: float(v) for k, v in val.items() if k in ("map", "map50", "map75") or "/" in k},
        "test": {k: float(v) for k, v in test.items() if k in ("map", "map50", "map75") or "/" in k},
        "flops": int(prof.flops), "params": int(prof.params),
        "fpn_flops": int(prof.components["fpn"]["flops"]), "fpn_params": int(prof.components["fpn"]["params"]),
        "wall_s": round(time.perf_counter() - t0, 1), "threads": schedule.threads,
        **({"wall_s_all_attempts": round(before + time.perf_counter() - t0, 1)} if before else {}),
        "device": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu",
    }
    return float(val.get("map50", 0.0)), attrs


# ---------------------------------------------------------------------------- the build


class ReferenceBuild:
    """The jobs of one table (networks x seeds at one schedule, on one data folder)."""

    def __init__(self, name: str, out: str | Path, data: str, schedule: Schedule, storage: str | None = None,
                 heartbeat: float = 10.0, device: str = "cpu"):
        self.out = Path(out)
        self.device = device
        self.data = data
        self.schedule = schedule
        self.id = build_id(data, schedule)
        self.queue = JobQueue(f"{name}-{self.id}", self.out, storage, heartbeat=heartbeat)

    def backbone_path(self) -> Path | None:
        """The shared pre-trained backbone every job starts from, once it exists."""
        if self.schedule.pretrain_epochs == 0:
            return None
        path = self.out / f"pretrain-{build_id(self.data, self.schedule, self.schedule.pretrain_fingerprint())}"
        return path / "backbone.pt" if (path / "done.json").exists() and (path / "backbone.pt").exists() else None

    def add(self, networks: Sequence[Network], seeds: Sequence[int]) -> int:
        """Queue every network at every seed, seed-major (all networks at the first seed first)."""
        jobs = []
        for seed in seeds:
            for net in networks:
                jobs.append((job_key(net, seed), {"network": asdict(net), "seed": seed,
                                                  "graph_yaml": net.graph_yaml, "schedule": asdict(self.schedule)}))
        return self.queue.add(jobs)

    def work(self, say: Callable[[str], None] = print, stop: Callable[[], bool] = lambda: False,
             keys: Collection[str] | None = None) -> int:
        """Run jobs until none is left (of ``keys`` only, when given: a --floor-only command
        on a folder whose queue also holds the full table's jobs)."""
        init: list[Path | None] = []

        def run(job: Job) -> tuple[float, dict]:
            if not init:
                init.append(pretrained_backbone(self.out, self.data, self.schedule, say))
            name = job.spec["network"]["name"]
            say(f"job {name} seed {job.spec['seed']} (attempt {job.attempt}) ...")
            # a job's folder is its schedule's and data's too: another schedule's checkpoint of
            # the same network and seed must never be resumed as this one
            job_dir = self.out / "jobs" / self.id / job.key.replace("@", "-s")
            value, attrs = run_job(job.spec, self.data, job_dir, init[0], device=self.device)
            say(f"job {name} seed {job.spec['seed']}: val mAP@0.5 {attrs['val'].get('map50', 0):.3f}, "
                f"test {attrs['test'].get('map50', float('nan')):.3f}, {attrs['wall_s']:.0f} s")
            return value, attrs

        return self.queue.work(run, say=say, stop=stop, keys=keys)

    def rows(self) -> list[dict]:
        """One row per finished job, in key order."""
        rows = []
        for t in self.queue.finished():
            spec = t.user_attrs["edg_job"]
            net = spec["network"]
            rows.append({"network": net["name"], "key": net["key"], "source": net["source"], "repeat": net["repeat"],
                         "channels": net.get("channels"),
                         "graph_yaml": spec.get("graph_yaml"),
                         "params_space": net["params"], "seed": spec["seed"], "attempt": t.user_attrs.get("edg_attempt", 1),
                         **{k: t.user_attrs[k] for k in ("val", "test", "flops", "params", "fpn_flops", "fpn_params",
                                                         "wall_s", "wall_s_all_attempts", "threads", "device")
                            if k in t.user_attrs}})
        return sorted(rows, key=lambda r: (r["network"], r["seed"]))


# ---------------------------------------------------------------------------- statistics


def _stats(values: list[float]) -> dict:
    return {"n": len(values), "mean": statistics.fmean(values) if values else float("nan"),
            "sd": statistics.stdev(values) if len(values) > 1 else float("nan"),
            "min": min(values, default=float("nan")), "max": max(values, default=float("nan")), "values": values}


def summarize(rows: Sequence[dict], metric: str = "map50") -> list[dict]:
    """Per network (its key: a space's point may share a named graph's name, e.g. ``fpn`` at
    another depth): seeds, mean/SD/range on search-val and on test, FLOPs and parameters.
    A named graph keeps its name; a network whose name another key also has is labelled
    with its source and depth, so the floor's rows are never pooled with another network."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["key"], []).append(r)
    names: dict[str, int] = {}
    for rs in by.values():
        names[rs[0]["network"]] = names.get(rs[0]["network"], 0) + 1
    out = []
    for rs in by.values():
        rs = sorted(rs, key=lambda r: r["seed"])
        name = rs[0]["network"]
        if names[name] > 1 and rs[0]["source"] != "graph":
            name = f"{name} ({rs[0]['source']} x{rs[0]['repeat']})"
        out.append({"network": name, "key": rs[0]["key"], "source": rs[0]["source"], "repeat": rs[0]["repeat"],
                    **({"channels": rs[0]["channels"]} if rs[0].get("channels") else {}),
                    "graph_yaml": rs[0].get("graph_yaml"),
                    "seeds": [r["seed"] for r in rs], "flops": rs[0].get("flops"), "params": rs[0].get("params"),
                    "fpn_flops": rs[0].get("fpn_flops"), "fpn_params": rs[0].get("fpn_params"),
                    "val": _stats([r["val"][metric] for r in rs if metric in r.get("val", {})]),
                    "test": _stats([r["test"][metric] for r in rs if metric in r.get("test", {})]),
                    "wall_s": _stats([r["wall_s"] for r in rs if "wall_s" in r])})
    return sorted(out, key=lambda s: -s["val"]["mean"])


def pooled_sd(groups: Sequence[Sequence[float]]) -> float:
    """sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)): the seed SD shared by the groups."""
    num = den = 0.0
    for g in groups:
        if len(g) > 1:
            num += (len(g) - 1) * statistics.variance(g)
            den += len(g) - 1
    return math.sqrt(num / den) if den else float("nan")


def gate(summary: Sequence[dict], floor: Sequence[str] = FLOOR, split: str = "val", min_seeds: int = 5,
         worst_by: float = 3.0, spread_by: float = 2.0) -> dict:
    """The noise-floor gate on ``split``: ``floor[0]`` (the no-fusion neck) is worst by more
    than ``worst_by`` pooled SDs, and the means of the others spread over more than
    ``spread_by`` pooled SDs. ``passed`` is None while a floor network lacks seeds."""
    rows = {s["network"]: s for s in summary}
    missing = [n for n in floor if n not in rows or rows[n][split]["n"] < min_seeds]
    result: dict[str, Any] = {"floor": list(floor), "split": split, "min_seeds": min_seeds,
                              "worst_by_sd": worst_by, "spread_by_sd": spread_by}
    if missing:
        return {**result, "passed": None, "reason": f"waiting for {min_seeds} seeds of: {', '.join(missing)}"}
    groups = [rows[n][split]["values"] for n in floor]
    sd = pooled_sd(groups)
    if not math.isfinite(sd):
        return {**result, "passed": None, "reason": "the seed noise needs at least 2 seeds per floor network"}
    means = {n: rows[n][split]["mean"] for n in floor}
    base, others = floor[0], list(floor[1:])
    margin = min(means[o] for o in others) - means[base]
    spread = max(means[o] for o in others) - min(means[o] for o in others)
    worst_ok = margin > worst_by * sd
    spread_ok = spread > spread_by * sd
    return {**result, "pooled_sd": sd, "means": means, "margin": margin, "margin_in_sd": margin / sd if sd else None,
            "spread": spread, "spread_in_sd": spread / sd if sd else None,
            "worst_ok": worst_ok, "spread_ok": spread_ok, "passed": bool(worst_ok and spread_ok)}
