"""The data pipeline of ``edg train``: images/s of the loader alone, and the share of each
training step spent waiting for data.

On the built-in synthetic set at tiny-bifpn's image size (128 px; PNGs decoded, scale
jitter, flip, crop, normalise):

* loader alone: the ``DataLoader`` that ``train`` uses (``make_loader``: seeded batches,
  persistent workers) iterated over whole epochs with 0 (main process) and N workers;
  images/s of the first epoch (with the workers' start-up) and the median of the later ones;
* data wait: a short tiny-bifpn ``train`` run with N workers; ``metrics.jsonl`` carries per
  step the share of its time blocked on ``next(batches)`` (``data_wait``). Reported: the
  mean over the steps after the first (whose wait is the workers' start-up, reported apart),
  and the same run with 0 workers for comparison.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_loader.py --threads 1 \\
        --out benchmarks/results-loader.json

Exits 1 when the data-wait share with N workers is above the target (--target, 5%),
unless --no-check. Not part of the test run; no timing assertions anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from bench_effdet import versions  # benchmarks/ is the script's folder: on sys.path

TARGET = 0.05


def loader_speed(root: Path, size: int, batch: int, workers: int, epochs: int) -> dict:
    from efficientdet_graph.train.data import CocoDetection, EpochBatches, make_loader

    ds = CocoDetection(root / "train/annotations.json", root / "train/images", size, train=True)
    batches = EpochBatches(len(ds), batch, seed=0)
    loader = make_loader(ds, batches, workers)
    rates = []
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        t0, n = time.perf_counter(), 0
        for images, _ in loader:
            n += images.shape[0]
        rates.append(n / (time.perf_counter() - t0))
    return {"workers": workers, "images_per_epoch": len(batches) * batch, "epochs": epochs,
            "first_epoch_img_per_s": rates[0], "img_per_s": statistics.median(rates[1:] or rates)}


def data_wait(root: Path, out: Path, batch: int, workers: int, steps: int) -> dict:
    from efficientdet_graph.train import TrainConfig, train

    train(TrainConfig(model="tiny-bifpn", data=str(root), out=str(out), epochs=1, batch_size=batch, workers=workers,
                      max_steps=steps, eval_every=99, log_every=1, quiet=True, device="cpu"))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    wait = [r["data_wait"] for r in lines if r["type"] == "step"]
    return {"workers": workers, "steps": len(wait), "first_step": wait[0],
            "mean_after_first": statistics.mean(wait[1:]), "max_after_first": max(wait[1:]),
            "img_per_s": [r["img_per_s"] for r in lines if r["type"] == "step"][-1]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--images", type=int, default=256, help="synthetic training images")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4, help="loader-alone epochs per setting")
    p.add_argument("--steps", type=int, default=12, help="training steps of the data-wait runs")
    p.add_argument("--target", type=float, default=TARGET)
    p.add_argument("--no-check", action="store_true", help="exit 0 even when the target is missed")
    p.add_argument("--out", default=None, help="write the results JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from efficientdet_graph.model import create_model
    from efficientdet_graph.train import make_synthetic

    size = create_model("tiny-bifpn").spec.image_size
    load_before = os.getloadavg()
    env = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
           "system": platform.platform(), "node": platform.node(), "cpu_count": os.cpu_count(), **versions(),
           "threads": args.threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "model": "tiny-bifpn",
           "size": size, "images": args.images, "batch": args.batch, "workers": args.workers,
           "command": "python benchmarks/bench_loader.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    print(json.dumps(env), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(Path(tmp) / "data", args.images, 16, size, 3, seed=0)
        speed = [loader_speed(root, size, args.batch, w, args.epochs) for w in (0, args.workers)]
        for s in speed:
            print(f"  loader alone, {s['workers']} workers: {s['img_per_s']:.0f} images/s "
                  f"(first epoch, with start-up: {s['first_epoch_img_per_s']:.0f})", flush=True)
        waits = [data_wait(root, Path(tmp) / f"run{w}", args.batch, w, args.steps) for w in (args.workers, 0)]
        for w in waits:
            print(f"  tiny-bifpn training, {w['workers']} workers: data wait {100 * w['mean_after_first']:.1f}% of "
                  f"each step after the first (max {100 * w['max_after_first']:.1f}%; first step "
                  f"{100 * w['first_step']:.1f}%), {w['img_per_s']:.1f} images/s", flush=True)
    measured = waits[0]["mean_after_first"]
    passed = measured < args.target
    doc = {"env": {**env, "load_average_before": load_before, "load_average_after": os.getloadavg(),
                   "note": "shared machine, loaded by other work while measured (see load averages)"},
           "loader_alone": speed, "data_wait": waits,
           "target": {"data_wait_below": args.target, "workers": args.workers, "measured": measured, "passed": passed}}
    if args.out:
        from efficientdet_graph._io import atomic_write_text

        atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"data wait with {args.workers} workers {100 * measured:.1f}%: target < {100 * args.target:.0f}% "
          f"{'met' if passed else 'MISSED'}")
    return 0 if passed or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
