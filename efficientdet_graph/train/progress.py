"""Progress bars, the metrics log (JSONL) and the curves PNG."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from .._io import atomic_write_text

__all__ = ["Progress", "MetricsLog", "plot_curves"]


class Progress:
    """A one-line bar on a terminal; a line every quarter when output is a file or pipe."""

    def __init__(self, total: int, desc: str, stream: TextIO | None = None, enabled: bool = True):
        self.total, self.desc, self.n = max(1, total), desc, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_pct = -1

    def update(self, n: int = 1, **fields: float) -> None:
        self.n += n
        if not self.enabled:
            return
        pct = int(100 * self.n / self.total)
        if not self.tty and pct // 25 == self._last_pct // 25 and self.n != self.total:
            return  # a log file gets a line per quarter, not a line per step
        self._last_pct = pct
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.n * (self.total - self.n) if self.n else 0.0
        width = 24
        filled = int(width * self.n / self.total)
        bar = "#" * filled + "." * (width - filled)
        extra = " ".join(f"{k} {v:.4g}" for k, v in fields.items())
        line = f"{self.desc} [{bar}] {self.n}/{self.total} {extra} eta {int(eta) // 60}:{int(eta) % 60:02d}"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


class MetricsLog:
    """Append-only JSONL; each line is flushed, so a crash loses at most the line in flight."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (lines a killed run wrote after its last checkpoint)."""
        if self.enabled and self.path.exists():
            keep = [r for r in self.read() if r.get("step", 0) <= step]
            # atomically: a kill between truncating and writing must not empty the log
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))


def plot_curves(records: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("type") == "step"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if steps:
        xs = [r["step"] for r in steps]
        for key, style in (("loss", "-"), ("cls", "--"), ("box_weighted", ":")):
            if key in steps[0]:
                axes[0].plot(xs, [r[key] for r in steps], style, label=key)
        axes[0].set_yscale("log")
        axes[0].set_xlabel("step")
        axes[0].set_title("training loss")
        axes[0].legend()
    evals = [r for r in epochs if "map50" in r]
    if evals:
        axes[1].plot([r["epoch"] for r in evals], [r["map50"] for r in evals], "o-", label="mAP@0.5")
        axes[1].plot([r["epoch"] for r in evals], [r["map"] for r in evals], "s-", label="mAP@[.5:.95]")
        axes[1].set_ylim(0, 1)
        axes[1].set_xlabel("epoch")
        axes[1].set_title("validation")
        axes[1].legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
