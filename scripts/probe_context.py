"""Where does a network keep the marks' context? A linear probe on the features at each
mark's centre: from which level's input (backbone) or output (feature network) can the
mark's class (its panel's colour) be read?

    PYTHONPATH=. python scripts/probe_context.py --build reference/multiscale \\
        init:548702831b60:0 reference/multiscale/jobs/a7ee14f115/548702831b60-s1/last.pt \\
        --out search/results/probe-context-multiscale.json

A model is a checkpoint (``.pt``, scored with its BatchNorm statistics) or
``init:JOB:SEED``: the job's model as ``edg search reference`` starts it (network weights
from SEED, the build's shared backbone), its BatchNorm in training mode because its
running statistics are not estimated yet. The probe (multinomial logistic regression on
standardised features, L-BFGS, light L2) is fitted on the marks of the first
``--train-images`` training images and scored on those of the first ``--val-images``
search-val images; chance is about 1/3. A diagnostic of this repository's reference
build, not a gate: it writes its figures with the command, versions, date and machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

MARKS = ("mark_red", "mark_green", "mark_blue")


def _split(build: Path, split: str, n: int):
    from efficientdet_graph.train.data import CocoDetection, resolve_data

    ann, img = resolve_data(build / "data", split)
    ds = CocoDetection(ann, img, 192, train=False, augment=None, check_images=False)
    ds.items = ds.items[:n]
    return ds


def _model(build: Path, ref: str):
    from efficientdet_graph.model import create_model
    from efficientdet_graph.model.checkpoint import model_from_checkpoint, read_checkpoint
    from efficientdet_graph.search.reference import Schedule, pretrained_backbone
    from efficientdet_graph.train.loop import _init_backbone

    if ref.startswith("init:"):
        _, job, seed = ref.split(":")
        yaml = next((build / "jobs").glob(f"*/{job}-s*/model.yaml"), None)
        if yaml is None:
            raise SystemExit(f"{ref}: no job {job} under {build / 'jobs'}")
        torch.manual_seed(int(seed))  # as the reference job seeds its model
        model = create_model(str(yaml), num_classes=len(MARKS) + 7)
        _init_backbone(model, str(pretrained_backbone(build, str(build / "data"), Schedule())))
        return model.train()
    return model_from_checkpoint(read_checkpoint(ref), Path(ref)).eval()


def _features(model, ds) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    names = [ds.category_names[c] for c in ds.category_ids]
    mark = {names.index(m): k for k, m in enumerate(MARKS)}
    found: dict[str, list] = {}
    labels = []
    loader = torch.utils.data.DataLoader(ds, batch_size=16, collate_fn=lambda b: b)
    with torch.no_grad():
        for batch in loader:
            inputs = model.adapter(model.backbone(torch.stack([b[0] for b in batch])))
            outputs = model.fpn(*inputs)
            maps = ({f"P{lv}_in": t for lv, t in zip(model.levels, inputs)}
                    | {f"P{lv}_out": t for lv, t in zip(model.levels, outputs)})
            for i, (_, target) in enumerate(batch):
                for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
                    if label not in mark:
                        continue
                    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                    for key, f in maps.items():
                        stride = ds.image_size / f.shape[-1]
                        x, y = min(int(cx / stride), f.shape[-1] - 1), min(int(cy / stride), f.shape[-2] - 1)
                        found.setdefault(key, []).append(f[i, :, y, x])
                    labels.append(mark[label])
    return {k: torch.stack(v) for k, v in found.items()}, torch.tensor(labels)


def _probe(xa: torch.Tensor, ya: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> float:
    mu, sd = xa.mean(0), xa.std(0) + 1e-6
    xa, xb = (xa - mu) / sd, (xb - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(xa.shape[1], len(MARKS))
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xa), ya) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return round((lin(xb).argmax(1) == yb).float().mean().item(), 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="a checkpoint, or init:JOB:SEED")
    ap.add_argument("--build", type=Path, default=Path("reference/multiscale"))
    ap.add_argument("--train-images", type=int, default=600)
    ap.add_argument("--val-images", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("search/results/probe-context-multiscale.json"))
    args = ap.parse_args()
    if args.train_images < 1 or args.val_images < 1:
        ap.error("--train-images and --val-images must be >= 1")
    torch.set_num_threads(1)
    train_split, val_split = _split(args.build, "train", args.train_images), _split(args.build, "val", args.val_images)
    rows = []
    for ref in args.models:
        model = _model(args.build, ref)
        (xa, ya), (xb, yb) = _features(model, train_split), _features(model, val_split)
        acc = {k: _probe(xa[k], ya, xb[k], yb) for k in sorted(xa)}
        rows.append({"model": ref, "train_marks": len(ya), "val_marks": len(yb), "accuracy": acc})
        print(ref, " ".join(f"{k}={v:.2f}" for k, v in acc.items()), flush=True)
    doc = {"command": " ".join(["python", *sys.argv]), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "python": platform.python_version()},
           "versions": {"torch": torch.__version__}, "chance": round(1 / len(MARKS), 3), "models": rows}
    from efficientdet_graph._io import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
