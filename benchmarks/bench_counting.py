"""Counting without building: how long parameters and FLOPs take.

Times, in this process (medians over repetitions):
  * ``model_cost`` of EfficientDet-D7x at 1536 px with the backbone's count cached
    (reads and validates the spec and graph YAML, then the formulas), and once with
    an empty cache (the backbone counted on the meta device and written to disk);
  * the previous way for comparison: build D7x on the meta device and run the
    dispatch counter (``count_flops``);
  * ``graph_cost`` of feature-network candidates (the search's cost objective): D0's
    and D7x's feature networks;
  * ``model_cost`` of every built-in spec;
and, in subprocesses, the wall time of ``edg profile --family efficientdet`` (warm
cache) beside that of ``python -c "import torch"``, the floor any torch CLI pays.

Exactness (analytic == fvcore) is what ``tests/test_counting.py`` checks; here only time.
Exits 1 when a target is missed: D7x < 50 ms, a candidate < 5 ms, the family < 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

TARGETS_MS = {"model_cost_d7x_1536_warm": 50.0, "graph_cost_d0_candidate": 5.0, "graph_cost_d7x_fpn": 5.0,
              "edg_profile_family_wall": 5000.0}


def median_ms(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def wall_ms(cmd: list[str], reps: int, env: dict) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--cli-reps", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results-counting.json")
    args = p.parse_args()

    cache = tempfile.mkdtemp(prefix="edg-bench-cache-")
    os.environ["EDG_CACHE_DIR"] = cache  # an empty cache: the cold row is honest
    load_before = os.getloadavg()

    import timm
    import torch

    from efficientdet_graph import load_graph
    from efficientdet_graph.model import builtin_models, create_model
    from efficientdet_graph.profile import count_flops, graph_cost, model_cost

    rows: dict[str, float] = {}
    t = time.perf_counter()
    d7x = model_cost("efficientdet-d7x")
    rows["model_cost_d7x_1536_cold"] = (time.perf_counter() - t) * 1e3
    rows["model_cost_d7x_1536_warm"] = median_ms(lambda: model_cost("efficientdet-d7x"), args.reps)

    def meta_build_and_count():
        with torch.device("meta"):
            m = create_model("efficientdet-d7x").eval()
        return count_flops(m, (torch.empty(1, 3, 1536, 1536, device="meta"),)).total

    rows["meta_build_and_count_d7x_1536"] = median_ms(meta_build_and_count, 3)
    assert meta_build_and_count() == d7x.flops

    bifpn, p3p8 = load_graph("bifpn"), load_graph("bifpn_p3p8")
    bifpn.graph["repeat"], p3p8.graph["repeat"] = 3, 8
    b0, b7 = {3: 40, 4: 112, 5: 320}, {3: 80, 4: 224, 5: 640}
    rows["graph_cost_d0_candidate"] = median_ms(lambda: graph_cost(bifpn, 64, b0, 512), args.reps)
    rows["graph_cost_d7x_fpn"] = median_ms(lambda: graph_cost(p3p8, 384, b7, 1536), args.reps)
    for name in builtin_models():
        model_cost(name)  # count its backbone once
        rows[f"model_cost_{name}"] = median_ms(lambda: model_cost(name), max(5, args.reps // 3))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    edg = [sys.executable, "-m", "efficientdet_graph", "profile", "--family", "efficientdet"]
    subprocess.run(edg, check=True, capture_output=True, env=env, timeout=600)  # warm the cache for every size
    rows["edg_profile_family_wall"] = wall_ms(edg, args.cli_reps, env)
    rows["python_import_torch_wall"] = wall_ms([sys.executable, "-c", "import torch"], args.cli_reps, env)

    missed = {k: (rows[k], limit) for k, limit in TARGETS_MS.items() if rows[k] >= limit}
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "system": platform.platform(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg(),
                    "note": "shared machine, loaded by other work while measured (see load averages)"},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__},
        "repetitions": {"in_process": args.reps, "cli": args.cli_reps},
        "unit": "ms (medians; *_cold: one run)",
        "results_ms": {k: round(v, 3) for k, v in rows.items()},
        "targets_ms": TARGETS_MS,
        "missed": {k: {"ms": round(v, 3), "target_ms": t} for k, (v, t) in missed.items()},
        "d7x_1536": {"params": d7x.params, "flops": d7x.flops},
    }
    from efficientdet_graph._io import atomic_write_text

    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    width = max(map(len, rows))
    for k, v in rows.items():
        mark = "" if k not in TARGETS_MS else ("  MISSED" if k in missed else f"  (target < {TARGETS_MS[k]:g})")
        print(f"{k:<{width}} {v:>10.2f} ms{mark}")
    print(f"wrote {args.out}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
