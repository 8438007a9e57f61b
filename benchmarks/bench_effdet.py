"""Side-by-side speed of our compiled EfficientDet and effdet's, in one process.

Both models are built for the same configuration (effdet with pretrained_backbone=False),
ours is loaded with effdet's weights through the converter (and checked to give the same
outputs), and both run on identical inputs. Measurements alternate between the two
implementations, repetition by repetition and with the first one alternating, so drift
on a noisy machine and cache effects hit both alike. Inference rows run in eval mode
(the training row puts both models back). Reported: medians, ours/effdet ratios, peak
memory, and in the JSON the versions, repetitions and output difference.

    python benchmarks/bench_effdet.py --model d0 --device cpu --threads 2
    python benchmarks/bench_effdet.py --model d0 --device cuda --batch 1 8

Not part of the test run; there are no timing assertions anywhere.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

EFFDET = {"d0": "efficientdet_d0", "d1": "efficientdet_d1", "d2": "efficientdet_d2", "d3": "efficientdet_d3"}


def build(name: str, size: int, device: torch.device, only: str | None = None):
    """Both models with the same weights (``only="ours"``/``"effdet"``: just that one)."""
    import effdet

    from efficientdet_graph.model import convert_effdet, create_model

    torch.manual_seed(0)
    ref = effdet.create_model(EFFDET[name], pretrained=False, pretrained_backbone=False, image_size=(size, size))
    if only == "effdet":
        return ref.to(device)
    ours = create_model(f"efficientdet-{name}", image_size=size)
    convert_effdet(ours, ref.state_dict())
    if only == "ours":
        del ref
        return ours.to(device)
    return ours.to(device), ref.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def order(keys: list[str], rep: int) -> list[str]:
    """Which implementation runs first alternates from one repetition to the next."""
    return list(keys) if rep % 2 == 0 else list(reversed(keys))


def compare(label: str, fns: dict, device, warmup: int, reps: int) -> dict:
    """Median seconds of each function, measured alternately, the first one alternating."""
    for i in range(warmup):
        for k in order(list(fns), i):
            fns[k]()
    samples = {k: [] for k in fns}
    for i in range(reps):
        for k in order(list(fns), i):
            samples[k].append(timed(fns[k], device))
    med = {k: statistics.median(v) for k, v in samples.items()}
    row = {"what": label, "ours_ms": 1e3 * med["ours"], "effdet_ms": 1e3 * med["effdet"],
           "ratio": med["ours"] / med["effdet"], "reps": reps, "warmup": warmup}
    print(f"  {label:<44} ours {row['ours_ms']:9.2f} ms   effdet {row['effdet_ms']:9.2f} ms   ratio {row['ratio']:.3f}",
          flush=True)
    return row


def run(args, agreement: dict | None = None) -> list[dict]:
    """The timing rows; ``agreement`` receives the max abs output difference per batch."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    ours, ref = build(args.model, args.size, device)
    rows = []
    for batch in args.batch:
        x = torch.randn(batch, 3, args.size, args.size, device=device)
        ours.eval(), ref.eval()
        with torch.no_grad():
            a, b = ours(x), ref(x)
            diff = max(float((p - q).abs().max()) for p, q in zip(a[0] + a[1], b[0] + b[1]))
            feats_ours = ours.backbone(x)
            feats_ref = ref.backbone(x)
        print(f"batch {batch}: outputs agree to {diff:.2e}")
        if agreement is not None:
            agreement[batch] = diff
        variants = [("eager", False)] + ([("channels_last", True)] if device.type == "cuda" else [])
        amp = [None] + ([torch.bfloat16, torch.float16] if device.type == "cuda" else [])
        for tag, cl in variants:
            for dtype in amp:
                suffix = f"{tag}" + (f", {str(dtype).split('.')[-1]} autocast" if dtype else "")
                mf = torch.channels_last if cl else torch.contiguous_format
                o, r = ours.to(memory_format=mf).eval(), ref.to(memory_format=mf).eval()
                xi = x.to(memory_format=mf)

                def ctx():
                    return torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)

                def fpn_o():
                    with torch.no_grad(), ctx():
                        o.fpn(*o.adapter(feats_ours))

                def fpn_r():
                    with torch.no_grad(), ctx():
                        r.fpn(list(feats_ref))  # effdet appends P6, P7 to the list it is given

                def fwd_o():
                    with torch.no_grad(), ctx():
                        o(xi)

                def fwd_r():
                    with torch.no_grad(), ctx():
                        r(xi)

                rows.append({"batch": batch, "eval_mode": not (o.training or r.training),
                             **compare(f"feature network, inference ({suffix})",
                                       {"ours": fpn_o, "effdet": fpn_r}, device, args.warmup, args.reps)})
                rows.append({"batch": batch, "eval_mode": not (o.training or r.training),
                             **compare(f"full model forward ({suffix})",
                                       {"ours": fwd_o, "effdet": fwd_r}, device, args.warmup, args.reps)})
                opt_o = torch.optim.SGD(o.parameters(), lr=1e-4, momentum=0.9)
                opt_r = torch.optim.SGD(r.parameters(), lr=1e-4, momentum=0.9)

                def step(model, opt):
                    def f():
                        model.train()
                        with ctx():
                            c, bx = model(xi)
                            loss = sum(t.float().square().mean() for t in c + bx)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                    return f

                rows.append({"batch": batch, **compare(f"training step ({suffix})",
                                                       {"ours": step(o, opt_o), "effdet": step(r, opt_r)},
                                                       device, args.warmup, args.reps)})
                o.eval(), r.eval()  # the next rows are inference again
        if args.compile:
            ours.eval(), ref.eval()
            compiled = {}
            for k, m in (("ours", ours), ("effdet", ref)):
                compiled[k] = torch.compile(m)
                with torch.no_grad():
                    compiled[k](x)

            def cf(m):
                def f():
                    with torch.no_grad():
                        m(x)
                return f

            rows.append({"batch": batch, "eval_mode": not (ours.training or ref.training),
                         **compare("full model forward (torch.compile)",
                                                   {"ours": cf(compiled["ours"]), "effdet": cf(compiled["effdet"])},
                                                   device, args.warmup, args.reps)})
            if device.type == "cuda":  # CUDA graphs through inductor's reduce-overhead mode
                graphed = {k: torch.compile(m, mode="reduce-overhead") for k, m in (("ours", ours), ("effdet", ref))}
                rows.append({"batch": batch, **compare("full model forward (compile + CUDA graphs)",
                                                       {"ours": cf(graphed["ours"]), "effdet": cf(graphed["effdet"])},
                                                       device, args.warmup, args.reps)})
    if args.compile:
        t = compile_times(args)
        row = {"what": "torch.compile time (cold, first call)", "ours_ms": 1e3 * t["ours"],
               "effdet_ms": 1e3 * t["effdet"], "ratio": t["ours"] / t["effdet"], "batch": args.batch[0]}
        print(f"  {row['what']:<44} ours {row['ours_ms']:9.0f} ms   effdet {row['effdet_ms']:9.0f} ms   "
              f"ratio {row['ratio']:.3f}", flush=True)
        rows.append(row)
    return rows


def rss_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: now; VmHWM: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def compile_times(args, rounds: int = 2) -> dict:
    """Cold ``torch.compile`` time (first call) of each implementation, each in a fresh
    process with the compile caches off, alternating, median over ``rounds``."""
    times = {"ours": [], "effdet": []}
    for _ in range(rounds):
        for impl in ("ours", "effdet"):
            code = (
                "import sys, time, torch; sys.path.insert(0, 'benchmarks');"
                "from bench_effdet import build;"
                f"d = torch.device('{args.device}'); torch.set_num_threads({args.threads});"
                f"m = build('{args.model}', {args.size}, d, only='{impl}').eval();"
                f"x = torch.randn({args.batch[0]}, 3, {args.size}, {args.size}, device=d);"
                "cm = torch.compile(m); t0 = time.perf_counter();"
                "torch.no_grad().__enter__(); cm(x);"
                "torch.cuda.synchronize() if d.type == 'cuda' else None;"
                "print(time.perf_counter() - t0)"
            )
            env = {**__import__("os").environ, "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            times[impl].append(float(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else float("nan"))
    return {k: statistics.median(v) for k, v in times.items()}


def peak_memory(args) -> dict:
    """Memory of one forward + backward in training mode, each implementation in a fresh
    child process so neither sees the other's: on CUDA the peak allocated; on the CPU the
    growth of peak resident memory over what the built model already held."""
    out = {}
    for impl in ("ours", "effdet"):
        code = (
            "import sys, gc, resource, torch; sys.path.insert(0, 'benchmarks');"
            "from bench_effdet import build;"
            f"d = torch.device('{args.device}'); torch.set_num_threads({args.threads});"
            f"m = build('{args.model}', {args.size}, d, only='{impl}').train(); gc.collect();"
            f"x = torch.randn({args.batch[0]}, 3, {args.size}, {args.size}, device=d);"
            "from bench_effdet import rss_kib, reset_peak_rss;"
            "base = rss_kib('VmRSS'); reset_peak_rss();"
            "torch.cuda.reset_peak_memory_stats() if d.type == 'cuda' else None;"
            "c, b = m(x); sum(t.square().mean() for t in c + b).backward();"
            "peak = (torch.cuda.max_memory_allocated() / 2**20) if d.type == 'cuda' else "
            "((rss_kib('VmHWM') - base) / 1024);"
            "print(peak)"
        )
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        out[impl] = float(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else float("nan")
    return out


def versions() -> dict:
    """Versions of everything timed (effdet has no ``__version__``: ask the installed metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("effdet", "timm", "efficientdet-graph"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="d0", choices=sorted(EFFDET))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=None, help="image size (default: the model's)")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="also torch.compile both (slow to build on a CPU)")
    p.add_argument("--out", default=None, help="write results JSON here")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    args = p.parse_args(argv)
    args.size = args.size or {"d0": 512, "d1": 640, "d2": 768, "d3": 896}[args.model]
    env = {"date": str(date.today()), "machine": platform.processor() or platform.machine(),
           "node": platform.node(), "cpu_count": __import__("os").cpu_count(), **versions(),
           "device": args.device, "threads": args.threads if args.device == "cpu" else None, "model": args.model,
           "size": args.size, "batch": args.batch, "reps": args.reps, "warmup": args.warmup,
           "command": "python benchmarks/bench_effdet.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    if args.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(env))
    agreement: dict = {}
    rows = run(args, agreement)
    doc = {"env": env, "max_abs_output_difference": {str(b): d for b, d in agreement.items()}, "rows": rows}
    if not args.no_memory:
        mem = peak_memory(args)
        what = "peak allocated" if args.device.startswith("cuda") else "peak RSS growth"
        print(f"  memory of forward + backward, {what} (MiB): ours {mem['ours']:.0f}, effdet {mem['effdet']:.0f}, "
              f"ratio {mem['ours'] / mem['effdet']:.3f}")
        doc["peak_memory_mib"] = mem
    if args.out:
        from efficientdet_graph._io import atomic_write_text

        atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
