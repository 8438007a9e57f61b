"""When does a reference job pick up the marks' context? The first epochs of floor jobs,
evaluated after every epoch (mean AP@0.5 of the three mark classes on search-val).

    PYTHONPATH=. python scripts/context_onset.py --build reference/multiscale --graph fpn \\
        --runs 0:0 1:1 2:2 3:3 1:0 0:1 --epochs 4 --out search/results/context-onset-multiscale.json

A run ``I:D`` initialises the network from seed I and draws batches and augmentations
from seed D (the reference job of seed S is ``S:S``); every run follows the reference
schedule's learning-rate curve for its full length and stops after ``--epochs``. The
shared backbone is the build's own. Writes the per-epoch figures with the command,
versions, date and machine; exits 1 when a run fails. A diagnostic, not a gate: it
separates a seed that takes the context early from one that never does, in minutes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

MARKS = ("mark_red", "mark_green", "mark_blue")


def _one(build: Path, graph: str, init_seed: int, data_seed: int, epochs: int, out: Path, settings: list[str]) -> dict:
    import efficientdet_graph.train.loop as loop
    from efficientdet_graph import graph_to_yaml, load_graph
    from efficientdet_graph.search.reference import Network, Schedule, model_yaml, pretrained_backbone
    from efficientdet_graph.train import TrainConfig, train
    from efficientdet_graph.train.data import Augment

    from efficientdet_graph.cli.reference_commands import _schedule

    schedule = _schedule(settings)  # the reference schedule, with edg search reference's --schedule settings
    backbone = pretrained_backbone(build, str(build / "data"), schedule)  # the build's own (trained if missing)
    out.mkdir(parents=True, exist_ok=True)
    (out / "graph.yaml").write_text(graph_to_yaml(load_graph(graph)))
    (out / "model.yaml").write_text(model_yaml(Network(graph, "", schedule.repeat, "graph", key=graph), schedule, 10))

    images = len(json.loads((build / "data" / "train" / "annotations.json").read_text())["images"])
    real = loop.EpochBatches

    class Batches(real):  # batches and augmentations from the data seed, the model from the init seed
        def __init__(self, n, batch_size, seed, *a, **k):
            super().__init__(n, batch_size, data_seed, *a, **k)

    loop.EpochBatches = Batches
    try:
        t0 = time.perf_counter()
        train(TrainConfig(model=str(out / "model.yaml"), data=str(build / "data"), out=str(out),
                          epochs=schedule.epochs, batch_size=schedule.batch_size, lr=schedule.lr,
                          backbone_lr=schedule.backbone_lr, backbone_lr_epochs=schedule.backbone_lr_epochs,
                          seed=init_seed,
                          workers=0, eval_every=1, quiet=True, augment=Augment() if schedule.augment else None,
                          init=str(backbone), device="cpu", amp="off",
                          max_steps=epochs * (images // schedule.batch_size)))
        seconds = time.perf_counter() - t0
    finally:
        loop.EpochBatches = real
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("type") == "epoch" and "map50" in r]
    return {"graph": graph, "init_seed": init_seed, "data_seed": data_seed, "backbone": str(backbone),
            "seconds": round(seconds, 1),
            "mark_ap50": [round(sum(r[f"ap50/{m}"] for m in MARKS) / len(MARKS), 4) for r in evals],
            "map50": [round(r["map50"], 4) for r in evals]}


def _pair(text: str) -> tuple[int, int]:
    try:
        i, d = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected INIT_SEED:DATA_SEED, e.g. 1:0") from None
    if i < 0 or d < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are >= 0")
    return i, d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", type=Path, default=Path("reference/multiscale"))
    ap.add_argument("--graph", default="fpn")
    ap.add_argument("--runs", nargs="+", type=_pair, default=[(0, 0), (1, 1)], help="INIT_SEED:DATA_SEED")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--schedule", action="append", default=[], metavar="KEY=VALUE",
                    help="reference-schedule setting, as edg search reference takes it (repeatable)")
    ap.add_argument("--work", type=Path, default=Path("runs/context-onset"))
    ap.add_argument("--out", type=Path, default=Path("search/results/context-onset-multiscale.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = []
    if args.epochs < 1:
        ap.error(f"--epochs {args.epochs}: must be >= 1")
    for i, d in args.runs:
        row = _one(args.build, args.graph, i, d, args.epochs, args.work / f"{args.graph}-i{i}-d{d}", args.schedule)
        print(f"{args.graph} init {i} data {d}: mark AP@0.5 by epoch {row['mark_ap50']}", flush=True)
        runs.append(row)
    doc = {"command": " ".join(["python", *sys.argv]), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": platform.python_version()},
           "versions": {"torch": torch.__version__}, "epochs": args.epochs, "schedule": args.schedule, "runs": runs}
    from efficientdet_graph._io import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
