"""A seeded mutation fuzzer over the built-in graph and model specs.

Every mutant must end in one of two ways: valid, and then it compiles (graphs: the
feature network at a tiny width; model specs: the whole detector on the meta
device, so no memory is spent on weights), or a ``SpecError`` whose every line is
``FILE:LINE:COL: message``. Anything else -- another exception, a hang, a problem
without a place -- is a defect.

Used by ``tests/test_fuzz.py`` (a fixed seed and ~2,000 mutants under CI) and as a
program for long runs outside CI:

    PYTHONPATH=. python tests/fuzz.py --mutants 20000 --seed 1 --out benchmarks/results-fuzz.json

which writes its counts (and the first defects, if any) to ``--out`` and exits 1
when it found a defect.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import signal
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from efficientdet_graph import __version__
from efficientdet_graph.compile import compile_graph, level_size
from efficientdet_graph.errors import SpecError
from efficientdet_graph.graph import graph_to_yaml, has_all_levels, input_levels, output_levels
from efficientdet_graph.model import build as model_build
from efficientdet_graph.model.build import build_model, load_model_spec
from efficientdet_graph.passes import load_graph
from efficientdet_graph.spec.builtin import builtin_dir

LOCATED = re.compile(r"^.+:\d+:\d+: \S")
PER_MUTANT_SECONDS = 60  # a hang is a defect; a loaded machine (20 s timed out once under load) is not

KEYWORDS = ["class", "None", "lambda", "True", "def", "to", "n_to", "_x", "n__x", "training", "graph", "forward",
            "edges", "op", "fuse", "out_adapters", "P3_in", "n_P3_in", "code", "meta", "__init__", "L1_P3_td"]
ODD_REFS = ["/dev/zero", "/dev/urandom", "/dev/null", "/etc/passwd", "/proc/self/environ", "/", ".", "..",
            "g.yaml", "./base.yaml", "../base.yaml", "a" * 300 + ".yaml", "x/" * 2100 + "y.yaml", "'a\\0b.yaml'",
            "\"a\\0b\"", "pipe.yaml", "missing.yaml", "bifpn", "efficientdet-d0", "nasfpn", "~/x.yaml",
            "'" + "é" * 200 + ".yaml'", "self.yaml", "C:\\\\x.yaml", "https://example.com/x.yaml"]
HUGE = ["1e12", "1000000000000", "-1", "0", "99999999999999999999999", ".inf", "-.inf", ".nan", "4097",
        "65", "13", "2.5", "0x10", "1_000", "1e309", "-0", "8193", "10001"]
TAGS = ["!!int", "!!float", "!!bool", "!!str", "!!null", "!!timestamp", "!!binary", "!!set", "!!omap",
        "!!python/object/apply:os.system", "!!python/name:os.system", "!foo", "!!map", "!!seq", "!<tag:x>"]
CONTROL = ["\x00", "\x01", "\x07", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\ufeff", "\ud800", "\u2028", "\r"]


def _tokens(text: str) -> list[re.Match]:
    return list(re.finditer(r"-?\d+(?:\.\d+)?|\b[A-Za-z_][A-Za-z0-9_.\-]*\b|\[[^\[\]\n]*\]|\{[^{}\n]*\}", text))


def _replace_token(text: str, rnd: random.Random, choices: list[str]) -> str:
    toks = _tokens(text)
    if not toks:
        return text
    m = rnd.choice(toks)
    return text[: m.start()] + rnd.choice(choices) + text[m.end():]


def _lines(text: str) -> list[str]:
    return text.splitlines() or [""]


def m_delete_line(text, rnd):
    lines = _lines(text)
    del lines[rnd.randrange(len(lines))]
    return "\n".join(lines) + "\n"


def m_duplicate_line(text, rnd):
    lines = _lines(text)
    i = rnd.randrange(len(lines))
    lines.insert(rnd.randrange(len(lines) + 1), lines[i])
    return "\n".join(lines) + "\n"


def m_swap_lines(text, rnd):
    lines = _lines(text)
    i, j = rnd.randrange(len(lines)), rnd.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines) + "\n"


def m_indent(text, rnd):
    lines = _lines(text)
    i = rnd.randrange(len(lines))
    lines[i] = " " * rnd.randrange(7) + lines[i].lstrip()
    return "\n".join(lines) + "\n"


def m_truncate(text, rnd):
    return text[: rnd.randrange(len(text) + 1)]


def m_type_change(text, rnd):
    return _replace_token(text, rnd, ["seven", "-3", "[]", "{}", "null", "1.5", "true", "[1, [2]]", "~", "''",
                                      "{a: 1}", "[P3_in, P3_in]", "[[3, 7]]", "yes", "no", "3.0"])


def m_huge_number(text, rnd):
    nums = list(re.finditer(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", text))
    if not nums:
        return _replace_token(text, rnd, HUGE)
    m = rnd.choice(nums)
    return text[: m.start()] + rnd.choice(HUGE) + text[m.end():]


def m_tag(text, rnd):
    toks = _tokens(text)
    if not toks:
        return text
    m = rnd.choice(toks)
    return text[: m.start()] + rnd.choice(TAGS) + " " + text[m.start():]


def m_control_byte(text, rnd):
    i = rnd.randrange(len(text) + 1)
    return text[:i] + rnd.choice(CONTROL) + text[i:]


def m_stray_char(text, rnd):
    i = rnd.randrange(len(text) + 1)
    return text[:i] + rnd.choice(":{}[]-,&*!|>'\"#%@`\t?<=") + text[i:]


def m_nesting(text, rnd):
    depth = rnd.choice([10, 60, 70, 200, 600, 3000])
    what = rnd.choice(["[", "{a: "])
    close = "]" if what == "[" else "}"
    return _replace_token(text, rnd, [what * depth + "1" + close * depth])


def m_alias(text, rnd):
    lines = _lines(text)
    kind = rnd.randrange(1, 4) if rnd.random() > 0.05 else 0  # bombs cost a second each: rarely
    if kind == 0:  # an alias bomb
        bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
        bomb += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]"
                 for i in range(1, 9)]
        lines[1:1] = bomb
    elif kind == 1:  # an undefined alias
        return _replace_token(text, rnd, ["*nope"])
    elif kind == 2:  # a merge key
        lines.insert(rnd.randrange(len(lines) + 1), rnd.choice(["<<: {name: x}", "<<: [1, 2]", "<<: *x", "<<: 3"]))
    else:  # anchor a value, reuse it elsewhere
        toks = _tokens(text)
        if len(toks) >= 2:
            a, b = sorted(rnd.sample(toks, 2), key=lambda m: m.start())
            return text[: a.start()] + "&r " + a.group() + text[a.end(): b.start()] + "*r" + text[b.end():]
    return "\n".join(lines) + "\n"


def m_reference(text, rnd):
    ref = rnd.choice(ODD_REFS)
    if re.search(r"^graph:", text, re.M):
        return re.sub(r"^graph:.*$", f"graph: {ref}", text, count=1, flags=re.M)
    if re.search(r"from:", text):
        return re.sub(r"from:[^,}\n]*", f"from: {ref}", text, count=1)
    return re.sub(r"^name:.*$", lambda m: f"{m.group()}\nderive: {{from: {ref}}}", text, count=1, flags=re.M)


def m_keyword_id(text, rnd):
    ids = re.findall(r"\bid: *([A-Za-z_]\w*)", text)
    if not ids:
        return _replace_token(text, rnd, KEYWORDS)
    victim, new = rnd.choice(ids), rnd.choice(KEYWORDS)
    return re.sub(rf"\b{re.escape(victim)}\b", new, text)  # renamed everywhere: stays consistent


def m_rename_ref(text, rnd):
    names = re.findall(r"\b(?:P\d+_\w+|[A-Za-z]\w*\d\w*)\b", text)
    if not names:
        return text
    victim = rnd.choice(names)
    spots = [m.start() for m in re.finditer(re.escape(victim), text)]
    at = rnd.choice(spots)
    return text[:at] + victim + rnd.choice(["x", "_", "1", "_in"]) + text[at + len(victim):]


def m_model_field(text, rnd):
    """Model-spec keys with hostile values (the ones a graph mutation cannot reach)."""
    key = rnd.choice(["fpn_channels", "num_classes", "image_size", "head_channels", "fusion", "phi", "levels",
                      "backbone", "anchors", "fpn_repeat", "head_repeat", "act", "bn_eps", "padding"])
    value = rnd.choice(HUGE + ["gp", "concat", "sum", "7x", "[3, 8]", "[2, 6]", "{name: nope_net}",
                               "{name: resnet18}", "{scale: .inf}", "{aspect_ratios: [[1.0, 0.0]]}",
                               "{num_scales: 9}", "swish", "nonsense", "same", "{name: efficientnet_b9}"])
    text = re.sub(rf"^{key}:.*\n", "", text, flags=re.M)
    return text.rstrip("\n") + f"\n{key}: {value}\n"


def m_levels(text, rnd):
    """Declared input levels and outputs at other levels (level gaps), sane and hostile."""
    if rnd.random() < 0.6:
        value = rnd.choice(["[3, 5]", "[3]", "[5, 3]", "[3, 3]", "[]", "[2, 9]", "[4, 5, 6, 7]", "3", "[3, 4, 5]",
                            "[7]", "{a: 1}", "[3.5]", "[true]", "[3, 4, 5, 6, 7]", "[-1]", "[4, 6]"])
        text = re.sub(r"^inputs:.*\n", "", text, flags=re.M)
        return text.rstrip("\n") + f"\ninputs: {value}\n"
    outs = re.findall(r"\b(\d+): *([A-Za-z_]\w*)", (re.search(r"^outputs:.*$", text, re.M) or re.match("", "")).group())
    if not outs:
        return text
    keep = rnd.sample(outs, rnd.randint(1, len(outs)))
    mapping = ", ".join(f"{lvl}: {node}" for lvl, node in keep)
    return re.sub(r"^outputs:.*$", f"outputs: {{{mapping}}}", text, count=1, flags=re.M)


MUTATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "delete_line": m_delete_line, "duplicate_line": m_duplicate_line, "swap_lines": m_swap_lines,
    "indent": m_indent, "truncate": m_truncate, "type_change": m_type_change, "huge_number": m_huge_number,
    "tag": m_tag, "control_byte": m_control_byte, "stray_char": m_stray_char, "nesting": m_nesting,
    "alias": m_alias, "reference": m_reference, "keyword_id": m_keyword_id, "rename_ref": m_rename_ref,
    "model_field": m_model_field, "levels": m_levels,
}
GRAPH_KINDS = [k for k in MUTATIONS if k != "model_field"]
MODEL_KINDS = list(MUTATIONS)


class Hang(Exception):
    pass


@contextmanager
def _deadline(seconds: int):
    def fire(signum, frame):
        raise Hang(f"no result within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def _patched(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def _located(e: SpecError) -> bool:
    # problems are joined by "\n" (splitlines() would also split at a U+2028 a message quotes)
    return bool(e.problems) and all(LOCATED.match(line) for line in str(e).split("\n") if line)


def _prepare(folder: Path) -> None:
    """Neighbours a mutant's references may point at: a base graph, a FIFO."""
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "base.yaml"
    if not base.exists():
        base.write_text((builtin_dir("graphs") / "fpn.yaml").read_text())
    fifo = folder / "pipe.yaml"
    if not fifo.exists():
        try:
            import os

            os.mkfifo(fifo)
        except (AttributeError, OSError):
            pass


_BUILT: dict[str, str] = {}


class _CachedBackbone:
    """The real ``Backbone``, made once per (name, levels, rate) and copied after: timm
    spends seconds initialising an EfficientNet even on the meta device, and the
    backbone is timm's, not what the fuzzer tests. Errors are raised afresh each time."""


    cache: dict = {}

    def __new__(cls, name, levels, pretrained=False, drop_path_rate=0.0):
        key = (name, tuple(levels), pretrained, drop_path_rate)
        if key not in cls.cache:
            cls.cache[key] = _RealBackbone(name, levels, pretrained, drop_path_rate)
        return cls.cache[key]  # shared by the throw-away models: nothing changes it


_RealBackbone = model_build.Backbone


def check_graph(path: Path) -> str:
    """``valid``, ``spec_error``, or raise (a defect)."""
    try:
        g = load_graph(path)
    except SpecError as e:
        if not _located(e):
            raise AssertionError(f"SpecError without FILE:LINE:COL: {e}") from None
        return "spec_error"
    key = graph_to_yaml(g)
    if key not in _COMPILED:  # an identical IR compiles identically (a comment or description changed)
        with torch.device("meta"):  # the modules, without spending time on weights
            compile_graph(g, 4)
        if not has_all_levels(g):  # made levels take their size from the lowest input: run it, odd sizes
            gm = compile_graph(g, 2).eval()
            feats = [torch.zeros(1, 2, *level_size((37, 50), k)) for k in input_levels(g)]
            outs = gm(*feats)
            want = [level_size((37, 50), k) for k in output_levels(g)]
            if [tuple(o.shape[-2:]) for o in outs] != want:
                raise AssertionError(f"output sizes {[tuple(o.shape) for o in outs]}, expected {want}")
        _COMPILED.add(key)
    return "valid"


_COMPILED: set[str] = set()


def check_model(path: Path) -> str:
    try:
        spec, src, p = load_model_spec(path)
        key = spec.model_dump_json()
        if key in _BUILT:  # the same detector as one built before (e.g. a comment changed)
            if _BUILT[key] != "valid":
                raise _BUILT_ERRORS[key]
            return "valid"
        try:
            with torch.device("meta"), _patched(model_build, "Backbone", _CachedBackbone):
                build_model(spec, src, p.parent)
        except SpecError as e:
            _BUILT[key], _BUILT_ERRORS[key] = "spec_error", e
            raise
        _BUILT[key] = "valid"
    except SpecError as e:
        if not _located(e):
            raise AssertionError(f"SpecError without FILE:LINE:COL: {e}") from None
        return "spec_error"
    return "valid"


_BUILT_ERRORS: dict[str, SpecError] = {}


def sources() -> list[tuple[str, str, str]]:
    """(kind, name, text) of every built-in graph and model spec, and the level-gap graphs of the tests."""
    from test_level_gaps import ADAPTER, ADAPTER_TD, GAP  # graphs with level gaps: no built-in has one

    out = [("graph", p.stem, p.read_text()) for p in sorted(builtin_dir("graphs").glob("*.yaml"))]
    out += [("graph", name, text) for name, text in (("gap35", GAP), ("adapter", ADAPTER), ("adapter_td", ADAPTER_TD))]
    out += [("model", p.stem, p.read_text()) for p in sorted(builtin_dir("specs").glob("*.yaml"))]
    return out


def mutants(n: int, seed: int) -> list[tuple[str, str, str, str]]:
    """``n`` mutants (kind, source name, mutation kinds, text): graphs and model specs
    alternate, each cycling over its built-ins."""
    rnd = random.Random(seed)
    graphs = [s for s in sources() if s[0] == "graph"]
    models = [s for s in sources() if s[0] == "model"]
    out = []
    for i in range(n):
        pool = graphs if i % 2 == 0 else models
        kind, name, text = pool[(i // 2) % len(pool)]
        applied = []
        for _ in range(rnd.choice([1, 1, 1, 2, 3])):
            m = rnd.choice(MODEL_KINDS if kind == "model" else GRAPH_KINDS)
            text = MUTATIONS[m](text, rnd)
            applied.append(m)
        out.append((kind, name, "+".join(applied), text))
    return out


def run(n: int, seed: int, folder: Path, stop_after: int = 20, max_seconds: float | None = None) -> dict:
    """Check ``n`` mutants (fewer when ``max_seconds`` runs out); the counts, and up to
    ``stop_after`` defects."""
    _prepare(folder)
    counts: Counter = Counter()
    by_kind: Counter = Counter()
    defects = []
    t0 = time.time()
    for i, (kind, name, how, text) in enumerate(mutants(n, seed)):
        path = folder / f"mutant_{i % 8}.yaml"
        try:
            path.write_bytes(text.encode("utf-8", "surrogatepass"))
        except OSError:
            continue
        try:
            with _deadline(PER_MUTANT_SECONDS):
                outcome = (check_model if kind == "model" else check_graph)(path)
        except Exception as e:  # noqa: BLE001 - that is what the fuzzer is for
            outcome = "defect"
            defects.append({"index": i, "source": name, "mutations": how, "error": f"{type(e).__name__}: {e}"[:500],
                            "text": text[:2000]})
        counts[outcome] += 1
        for m in how.split("+"):
            by_kind[m] += 1
        if len(defects) >= stop_after or (max_seconds and time.time() - t0 > max_seconds):
            break
    return {"mutants": sum(counts.values()), "asked": n, "valid": counts["valid"], "spec_error": counts["spec_error"],
            "defects": counts["defect"], "seconds": round(time.time() - t0, 1), "seed": seed,
            "mutations_applied": dict(sorted(by_kind.items())), "first_defects": defects}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutants", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", default="runs/fuzz", help="scratch folder for the mutant files")
    ap.add_argument("--out", default="benchmarks/results-fuzz.json")
    ap.add_argument("--max-seconds", type=float, default=None, help="stop early, recording how many were checked")
    args = ap.parse_args(argv)
    result = run(args.mutants, args.seed, Path(args.dir), stop_after=100, max_seconds=args.max_seconds)
    result.update({
        "command": "PYTHONPATH=. python tests/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__, "efficientdet_graph": __version__,
        "sources": [f"{k}:{n}" for k, n, _ in sources()],
    })
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("mutants", "valid", "spec_error", "defects", "seconds")}))
    return 1 if result["defects"] or result["mutants"] < args.mutants else 0


if __name__ == "__main__":
    sys.exit(main())
