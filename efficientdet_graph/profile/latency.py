"""Measured latency and throughput of a model on this machine, to put beside its FLOPs."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["measure_latency"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[], object], device: torch.device, reps: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), times


def measure_latency(
    model: nn.Module,
    image_size: int,
    batch_sizes: Sequence[int] = (1,),
    reps: int = 10,
    warmup: int = 3,
    compile: bool = True,
    backend: str = "inductor",
    device: str | torch.device | None = None,
) -> list[dict]:
    """Eager and ``torch.compile`` forward latency (eval, ``no_grad``) per batch size:
    medians of ``reps`` timed runs after ``warmup`` untimed ones, and images/s.

    The model is moved to ``device`` (default: CUDA when available, else the CPU). The
    first compiled call (compilation) is timed apart and never in the median."""
    if reps < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError("need reps >= 1, warmup >= 0 and batch sizes >= 1")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.eval().to(dev)
    compiled = torch.compile(model, backend=backend) if compile else None
    rows = []
    with torch.no_grad():
        for b in batch_sizes:
            x = torch.rand(b, 3, image_size, image_size, device=dev)
            modes: list[tuple[str, Callable]] = [("eager", lambda: model(x))]
            if compiled is not None:
                modes.append((f"compiled ({backend})", lambda: compiled(x)))
            for mode, fn in modes:
                row: dict = {"mode": mode, "batch": b, "device": str(dev), "image_size": image_size}
                if compiled is not None and fn is modes[-1][1]:
                    t = time.perf_counter()
                    fn()
                    _sync(dev)
                    row["first_call_ms"] = (time.perf_counter() - t) * 1e3
                median, times = _median_ms(fn, dev, reps, warmup)
                row.update(latency_ms=median, images_per_s=1e3 * b / median, reps=reps, warmup=warmup,
                           min_ms=min(times), max_ms=max(times))
                rows.append(row)
    return rows
