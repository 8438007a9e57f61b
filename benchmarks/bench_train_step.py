"""The real training step, ours beside effdet's ``DetBenchTrain``, in one process.

Ours is ``efficientdet_graph.train.loop.train_step``, the function ``edg train`` runs:
forward, anchor matching, focal + Huber loss, backward, gradient clipping, AdamW,
learning-rate schedule and EMA. effdet's is its training bench (``DetBenchTrain``:
its ``AnchorLabeler`` and ``DetectionLoss``) followed by the same clipping, AdamW and
timm's ``ModelEmaV2`` (what effdet's train.py uses). Both D0s get the same weights
(effdet's, through our converter) and identical batches with boxes (ours as x1y1x2y2 +
0-based labels, effdet's as padded y1x1y2x2 + 1-based classes); both losses are printed
on the first batch as a sanity check. Steps alternate between the two, repetition by
repetition and which goes first, after warm-up; medians and the ratio ours / effdet.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_train_step.py --threads 1 \\
        --out benchmarks/results-train-step-cpu-d0.json

Exits 1 when the ratio is above the target (--target, default 0.85), unless --no-check.
Not part of the test run; there are no timing assertions anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import date

import torch

from bench_effdet import compare, versions  # benchmarks/ is the script's folder: on sys.path

TARGET = 0.85


def make_batch(batch: int, size: int, num_classes: int, seed: int = 0, max_boxes: int = 8):
    """Images and boxes (1..``max_boxes`` per image, 5-50% of the side), in both formats."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    ours, boxes_yx, classes = [], [], []
    for _ in range(batch):
        n = int(torch.randint(1, max_boxes + 1, (), generator=g))
        wh = (0.05 + 0.45 * torch.rand(n, 2, generator=g)) * size
        xy = torch.rand(n, 2, generator=g) * (size - wh)
        xyxy = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        ours.append({"boxes": xyxy, "labels": labels})
        boxes_yx.append(xyxy[:, [1, 0, 3, 2]])
        classes.append(labels + 1)
    most = max(len(b) for b in boxes_yx)
    bbox = torch.zeros(batch, most, 4)
    cls = torch.full((batch, most), -1.0)  # effdet's labeler drops classes <= -1: the padding
    for i, (b, c) in enumerate(zip(boxes_yx, classes)):
        bbox[i, :len(b)], cls[i, :len(c)] = b, c.float()
    return images, ours, {"bbox": bbox, "cls": cls}


def build(size: int, num_classes: int, effdet_channels_last: bool = False):
    """effdet's DetBenchTrain and our D0 with the same weights, ours in the memory format
    ``train`` gives it (channels_last on the CPU), effdet's contiguous unless asked."""
    import effdet

    from efficientdet_graph.model import convert_effdet, create_model
    from efficientdet_graph.train.loop import memory_format

    torch.manual_seed(0)
    ref = effdet.create_model("efficientdet_d0", bench_task="train", bench_labeler=True, pretrained=False, pretrained_backbone=False,
                              num_classes=num_classes, image_size=(size, size))
    ours = create_model("efficientdet-d0", image_size=size, num_classes=num_classes)
    convert_effdet(ours, ref.model.state_dict())
    ours = ours.to(memory_format=memory_format(torch.device("cpu")))
    if effdet_channels_last:
        ref = ref.to(memory_format=torch.channels_last)
    return ours.train(), ref.train()


def steps(ours, ref, images, targets_ours, targets_ref, effdet_channels_last: bool = False):
    """One training step of each, as closures; and their first losses."""
    from timm.utils import ModelEmaV2

    from efficientdet_graph.train.loop import _Ema, _lr_lambda, memory_format, train_step
    from efficientdet_graph.train.targets import DetectionLoss

    loss_fn = DetectionLoss(ours.anchors, ours.spec.num_classes)
    # as train() builds them: AdamW (foreach), warm-up + cosine schedule, no AMP on the CPU
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-4, weight_decay=0.01, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt_o, _lr_lambda(10_000, 100))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    ema_o = _Ema(ours, 0.9998)
    # effdet's train.py: timm's AdamW (torch's, default implementation), ModelEmaV2
    opt_r = torch.optim.AdamW(ref.parameters(), lr=1e-4, weight_decay=0.01)
    ema_r = ModelEmaV2(ref.model, decay=0.9998)
    x_o = images.contiguous(memory_format=memory_format(images.device))  # as train() hands them over
    x_r = images.contiguous(memory_format=torch.channels_last) if effdet_channels_last else images
    count = [0]

    def ours_step():
        report, applied = train_step(ours, loss_fn, opt_o, sched, scaler, ema_o, x_o, targets_ours, count[0],
                                     clip_grad=10.0)
        assert applied
        count[0] += 1
        return float(report[0])

    def effdet_step():
        out = ref(x_r, targets_ref)
        opt_r.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 10.0)
        opt_r.step()
        ema_r.update(ref.model)
        return float(out["loss"].detach())

    return {"ours": ours_step, "effdet": effdet_step}


PARTS = {"convolution": ("conv",), "batch norm": ("batch_norm",), "SiLU": ("silu",)}
LOSS = ("_FocalSum", "_FocalSumBackward")  # our focal loss's autograd Function, forward and backward


def profile(fn, rows: int = 25) -> tuple[str, dict]:
    """torch.profiler's table of one call, and the share of its self CPU time per part."""
    from torch.profiler import ProfilerActivity, profile as prof

    with prof(activities=[ProfilerActivity.CPU]) as p:
        fn()
    events = p.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {part: sum(e.self_cpu_time_total for e in events if any(k in e.key for k in keys)) / total
              for part, keys in PARTS.items()}
    shares["focal loss (forward + backward)"] = sum(e.cpu_time_total for e in events if e.key in LOSS) / total
    top = [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count}
           for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]]
    return events.table(sort_by="self_cpu_time_total", row_limit=rows), {
        "self_cpu_ms": total / 1e3, "shares": shares, "top": top,
        "note": "shares of the self CPU time: ops matched by name (convolution, batch norm, SiLU: self time; "
                "focal loss: the total time of its autograd Function, forward and backward)"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=90, help="COCO's 90 by default")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--effdet-channels-last", action="store_true",
                   help="effdet's model and images in channels_last too (ours always is on the CPU, as in train)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's table of one step of ours")
    p.add_argument("--target", type=float, default=TARGET)
    p.add_argument("--no-check", action="store_true", help="exit 0 even when the target is missed")
    p.add_argument("--out", default=None, help="write the results JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    load_before = os.getloadavg()
    env = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
           "system": platform.platform(), "node": platform.node(), "cpu_count": os.cpu_count(), **versions(),
           "device": "cpu", "threads": args.threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "model": "d0", "size": args.size, "batch": args.batch, "classes": args.classes, "reps": args.reps,
           "warmup": args.warmup, "effdet_channels_last": args.effdet_channels_last,
           "command": "python benchmarks/bench_train_step.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    print(json.dumps(env), flush=True)
    ours, ref = build(args.size, args.classes, args.effdet_channels_last)
    images, t_ours, t_ref = make_batch(args.batch, args.size, args.classes)
    fns = steps(ours, ref, images, t_ours, t_ref, args.effdet_channels_last)
    first = {k: fn() for k, fn in fns.items()}  # same weights, same batch: the losses should be close
    print(f"first-step loss: ours {first['ours']:.4f}, effdet {first['effdet']:.4f}", flush=True)
    what = f"training step, D0 {args.size}px, batch {args.batch}" + (
        ", both channels_last" if args.effdet_channels_last else ", effdet contiguous")
    row = compare(what, fns, device, args.warmup, args.reps)
    prof = None
    if args.profile:
        table, prof = profile(fns["ours"])
        print(table)
        print("shares of our step: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in prof["shares"].items()))
    passed = row["ratio"] <= args.target
    doc = {"env": {**env, "load_average_before": load_before, "load_average_after": os.getloadavg(),
                   "note": "shared machine, loaded by other work while measured (see load averages)"},
           "first_step_loss": first, "rows": [row], **({"profile_ours": prof} if prof else {}),
           "target": {"ratio_at_most": args.target, "measured": row["ratio"], "passed": passed}}
    if args.out:
        from efficientdet_graph._io import atomic_write_text

        atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"ours / effdet = {row['ratio']:.3f}: target <= {args.target} {'met' if passed else 'MISSED'}")
    return 0 if passed or args.no_check else 1


if __name__ == "__main__":
    sys.exit(main())
