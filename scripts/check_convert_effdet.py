"""Every effdet config through `model_for_effdet`: our raw outputs equal effdet's within
1e-4 relative, or a clear refusal. Random weights and BN statistics, a small image.

    python scripts/check_convert_effdet.py [--size 128] [--out docs/convert-effdet.json] [NAME ...]

Writes one row per config (status "equal", "refused" with the reason, or "DIFFERENT"/
"error", which are failures) with the versions, date and machine; exits 1 on a failure.
tests/test_convert.py runs a representative subset of the same check.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time

import torch

TOLERANCE = 1e-4  # relative to the largest output of effdet


def randomized_effdet(name: str, size: int, seed: int = 0):
    """effdet's model with random weights, biases, fusion weights and BN statistics (so no
    term is trivially 0 or 1) and gentle BN scales (deep nets stay in a sane range)."""
    import effdet

    torch.manual_seed(seed)
    ref = effdet.create_model(name, pretrained=False, pretrained_backbone=False, image_size=(size, size)).eval()
    with torch.no_grad():
        for pname, p in ref.named_parameters():
            if "edge_weights" in pname:
                p.uniform_(0.2, 1.5)
            elif pname.endswith("bias") and ".bn." not in pname and not pname.startswith("backbone"):
                p.normal_(0, 0.1)
        for mod in ref.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.2, 0.6)
                mod.bias.normal_(0, 0.1)
    return ref


def check(name: str, size: int = 128) -> dict:
    """{"config", "status": equal|refused|DIFFERENT, "rel_diff" or "reason"}."""
    from efficientdet_graph.errors import EdgError
    from efficientdet_graph.model import model_for_effdet

    ref = randomized_effdet(name, size)
    try:
        ours = model_for_effdet(ref.state_dict(), effdet_config=name).eval()
    except EdgError as e:
        return {"config": name, "status": "refused", "reason": str(e)}
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        (rc, rb), (oc, ob) = ref(x), ours(x)
    if [c.shape for c in rc + rb] != [c.shape for c in oc + ob]:
        return {"config": name, "status": "DIFFERENT", "reason": "output shapes differ"}
    scale = max(1.0, max(float(t.abs().max()) for t in rc + rb))
    diff = max(float((a - b).abs().max()) for a, b in zip(rc + rb, oc + ob)) / scale
    return {"config": name, "status": "equal" if diff <= TOLERANCE else "DIFFERENT", "rel_diff": diff}


def main(argv=None) -> int:
    from importlib.metadata import version

    import timm
    from effdet.config.model_config import efficientdet_model_param_dict

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="default: every config effdet has")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--out", default="docs/convert-effdet.json")
    args = p.parse_args(argv)
    names = args.names or list(efficientdet_model_param_dict)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        try:
            row = check(name, args.size)
        except Exception as e:  # noqa: BLE001 - a config effdet itself cannot build offline is reported
            row = {"config": name, "status": "error", "reason": f"{type(e).__name__}: {e}"}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    import efficientdet_graph

    result = {
        "command": "python scripts/check_convert_effdet.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                     "effdet": version("effdet"), "efficientdet_graph": efficientdet_graph.__version__},
        "image_size": args.size, "tolerance": TOLERANCE,
        "counts": {s: sum(r["status"] == s for r in rows) for s in ("equal", "refused", "DIFFERENT", "error")},
        "rows": rows,
    }
    from efficientdet_graph._io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"{result['counts']}; wrote {args.out}")
    return 1 if result["counts"]["DIFFERENT"] or result["counts"]["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
