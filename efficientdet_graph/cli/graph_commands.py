"""Sub-commands on graphs: validate, schema, new, derive, compare, show, tour."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._io import atomic_write_text
from ..errors import EdgError, PassError, SpecError
from ..graph import build_graph, canonical_hash, describe_difference, graph_to_yaml, is_input, same_structure
from ..graph.topologies import GENERATORS, generate
from ..passes import load_graph, parse_pass_arg, run_passes
from ..spec import GraphSpec
from ..spec.builtin import builtin_dir, builtin_names

from ._args import bounded

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check graph specs, model specs, search spaces and training run files (the kind is told by the "
                       "keys); exit 2 on any error")
    p.add_argument("paths", nargs="+", metavar="NAME_OR_PATH")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of a graph spec (for editors)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--model", action="store_true", help="the schema of a model spec instead (default: graph spec)")
    kind.add_argument("--train", action="store_true", help="the schema of a training run file (edg train --config)")
    p.set_defaults(handler=cmd_schema)

    p = sub.add_parser("new", help="generate a published topology for any level range")
    p.add_argument("topology", choices=sorted(GENERATORS))
    p.add_argument("--levels", default="3-7", help="input levels MIN-MAX (default 3-7)")
    p.add_argument("-o", "--output", help="write YAML here instead of standard output")
    p.set_defaults(handler=cmd_new)

    p = sub.add_parser("derive", help="apply analysis passes to a graph and write the result as YAML")
    p.add_argument("base", metavar="NAME_OR_PATH")
    p.add_argument("--pass", dest="passes", action="append", default=[], metavar="PASS[:k=v,...]",
                   help="a pass to run, in order (repeatable), e.g. prune_single_input or repeat:n=3")
    p.add_argument("--name", help="name of the derived graph (default: BASE_derived)")
    p.add_argument("-o", "--output", help="write YAML here instead of standard output")
    p.set_defaults(handler=cmd_derive)

    p = sub.add_parser("compare", help="exit 0 if two graphs are the same up to node names, else 1")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--ops", action="store_true", help="also compare fusions, ops, activations, resampling")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser("show", help="summarise or draw a graph")
    p.add_argument("graph", metavar="NAME_OR_PATH")
    p.add_argument("--format", choices=("text", "mermaid", "dot", "yaml"), default="text")
    p.add_argument("-o", "--output", help="write to a file; .png or .svg draws the graph")
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("tour", help="a short tour: built-ins, BiFPN from PANet, compile, count, train briefly")
    p.add_argument("--out", default="runs/tour", help="folder for figures and the training run (default runs/tour)")
    p.add_argument("--train-epochs", type=bounded(int, 0, 1000), default=4, help="epochs of the short training run (0: skip)")
    p.set_defaults(handler=cmd_tour)


def _levels(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.replace(":", "-").split("-"))
    except ValueError:
        raise PassError(f"--levels {text!r}: expected MIN-MAX, e.g. 3-7") from None
    if not 0 <= lo < hi <= 12:
        raise PassError(f"--levels {text!r}: need 0 <= MIN < MAX <= 12")
    return lo, hi


def _emit(text: str, output: str | None) -> None:
    if output:
        atomic_write_text(output, text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _count(g) -> tuple[int, int]:
    return sum(1 for v in g if not is_input(g, v)), g.number_of_edges()


def _kind_of(ref: str) -> str:
    """What document ``ref`` is: ``model``, ``space`` (a search space), ``train`` (a run
    file for ``edg train --config``) or ``graph``, told by its top-level keys; a built-in
    name is a model spec when only ``specs/`` has it."""
    from ..search.space import SpaceSpec
    from ..spec import ModelSpec
    from ..spec.builtin import looks_like_path
    from ..spec.loader import read_limited
    from ..spec.source import parse_yaml
    from ..train.config_file import TrainFile

    if not looks_like_path(ref):
        return "model" if ref in builtin_names("specs") and ref not in builtin_names("graphs") else "graph"
    try:
        data, _, _ = parse_yaml(read_limited(ref), ref)
    except SpecError:
        return "graph"  # reported when read as a graph spec
    if not isinstance(data, dict):
        return "graph"
    keys = {k for k in data if isinstance(k, str)}
    graph, model = set(GraphSpec.model_fields), set(ModelSpec.model_fields)
    if keys & (set(SpaceSpec.model_fields) - graph - model):
        return "space"
    if keys & (set(TrainFile.model_fields) - graph - model):
        return "train"
    if keys & (model - graph) and not keys & (graph - model | {"from"}):
        return "model"
    return "graph"


def _validate_model(ref: str) -> str:
    from ..model.build import check_model, load_model_spec

    spec, src, path = load_model_spec(ref)
    resolved, g = check_model(spec, src, path.parent)
    return (f"ok  {ref}: model {spec.name}, graph {spec.graph} ({_count(g)[0]} nodes), "
            f"{resolved.fpn_channels} channels, {resolved.image_size} px, backbone {resolved.backbone.name}")


def _validate_space(ref: str) -> str:
    from ..search.space import load_space

    space = load_space(ref)
    return (f"ok  {ref}: search space {space.spec.name}, kind {space.spec.kind}, "
            f"{len(space.spec.points)} known point(s)")


def _validate_train(ref: str) -> str:
    from ..train.config_file import read_train_file

    values = read_train_file(ref)
    return f"ok  {ref}: training run file ({', '.join(f'{k} {v}' for k, v in list(values.items())[:4])}...)"


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for ref in args.paths:
        try:
            kind = _kind_of(ref)
            if kind != "graph":
                print({"model": _validate_model, "space": _validate_space, "train": _validate_train}[kind](ref))
                continue
            g = load_graph(ref)
        except SpecError as e:
            print(e, file=sys.stderr)
            failed += 1
            continue
        except EdgError as e:
            print(f"{ref}: {e}", file=sys.stderr)
            failed += 1
            continue
        nodes, edges = _count(g)
        rep = f", repeat {g.graph['repeat']}" if g.graph.get("repeat", 1) > 1 else ""
        print(f"ok  {ref}: {g.graph['name']}, {nodes} nodes, {edges} edges{rep}")
    if failed:
        print(f"{failed} of {len(args.paths)} spec(s) invalid", file=sys.stderr)
        return 2
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    if args.model:
        from ..spec import ModelSpec as schema_of
    elif args.train:
        from ..train.config_file import TrainFile as schema_of
    else:
        schema_of = GraphSpec
    print(json.dumps(schema_of.model_json_schema(by_alias=True), indent=2))
    return 0


def cmd_new(args: argparse.Namespace) -> int:
    lo, hi = _levels(args.levels)
    g = build_graph(generate(args.topology, lo, hi))
    _emit(graph_to_yaml(g), args.output)
    return 0


def cmd_derive(args: argparse.Namespace) -> int:
    g = load_graph(args.base)
    g, reports = run_passes(g, [parse_pass_arg(p) for p in args.passes])
    for r in reports:
        print(r, file=sys.stderr)
    g.graph["name"] = args.name or f"{g.graph['name']}_derived"
    g.graph["description"] = f"{args.base} after " + (", ".join(r.name for r in reports) or "no passes")
    _emit(graph_to_yaml(g), args.output)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = load_graph(args.a), load_graph(args.b)
    what = "structure and ops" if args.ops else "structure"
    if same_structure(a, b, ops=args.ops):
        print(f"same {what}: {args.a} and {args.b} (hash {canonical_hash(a, ops=args.ops)})")
        return 0
    print(f"different {what}: {args.a} vs {args.b}")
    print(describe_difference(a, b, args.a, args.b, ops=args.ops))
    return 1


def cmd_show(args: argparse.Namespace) -> int:
    from .. import viz

    suffix = Path(args.output).suffix.lower() if args.output else ""
    if args.output and suffix not in (".png", ".svg", ".txt", ".md", ".mmd", ".dot", ".gv", ".yaml", ".yml"):
        raise PassError(f"-o {args.output}: unknown extension {suffix or '(none)'!r}; use .png or .svg to draw, "
                        ".txt, .md/.mmd, .dot/.gv or .yaml/.yml for --format text, mermaid, dot or yaml")
    g = load_graph(args.graph)
    if args.output and suffix in (".png", ".svg"):
        viz.draw(g, args.output)
        print(f"wrote {args.output}", file=sys.stderr)
        return 0
    render = {"text": lambda: viz.summary(g) + "\n", "mermaid": lambda: viz.to_mermaid(g),
              "dot": lambda: viz.to_dot(g), "yaml": lambda: graph_to_yaml(g)}[args.format]
    _emit(render(), args.output)
    return 0


def cmd_tour(args: argparse.Namespace) -> int:
    from .. import viz

    out = Path(args.out)
    print(f"== 1. The built-in graphs ({builtin_dir('graphs')})")
    print(f"   {'name':<16} {'nodes':>5} {'edges':>5}  structure hash")
    for name in builtin_names("graphs"):
        g = load_graph(name)
        nodes, edges = _count(g)
        print(f"   {name:<16} {nodes:>5} {edges:>5}  {canonical_hash(g, ops=False)}")
    print("\n== 2. BiFPN derived from PANet by the paper's rules")
    derived, reports = run_passes(load_graph("panet"), ["prune_single_input", "add_same_level_skips"])
    for r in reports:
        print("   " + str(r).replace("\n", "\n   "))
    bifpn = load_graph("bifpn")
    verdict = "the same as" if same_structure(derived, bifpn) else "DIFFERENT from"
    print(f"   result: {_count(derived)[0]} nodes, {_count(derived)[1]} edges, {verdict} the hand-written bifpn")
    for lo, hi in ((3, 8), (2, 7)):
        d, _ = run_passes(build_graph(generate("panet", lo, hi)), ["prune_single_input", "add_same_level_skips"])
        ok = same_structure(d, build_graph(generate("bifpn", lo, hi)))
        print(f"   levels P{lo}-P{hi}: {_count(d)[0]} nodes, {_count(d)[1]} edges, {'same as' if ok else 'DIFFERENT from'} bifpn")
    print("\n== 3. BiFPN")
    print("   " + viz.summary(bifpn).replace("\n", "\n   "))
    for name in ("bifpn", "panet", "nasfpn"):
        viz.draw(load_graph(name), out / f"{name}.png")
    print(f"\n   figures: {out}/bifpn.png, {out}/panet.png, {out}/nasfpn.png")
    _tour_compile()
    _tour_family()
    if args.train_epochs > 0:
        _tour_train(out, args.train_epochs)
    return 0


def _tour_family() -> None:
    from ..profile import family_rows

    print("\n== 5. The EfficientDet family against the official counts (FLOPs = multiply-adds)")
    for r in family_rows():
        print(f"   {r['model']:<17} params {r['params']:>11,} ({r['params_diff_pct']:+.2f}%; with TF's conv biases "
              f"{r['params_with_tf_biases_diff_pct']:+.2f}%)  FLOPs {r['flops']:>16,} ({r['flops_diff_pct']:+.2f}%)")


def _tour_train(out: Path, epochs: int) -> None:
    from ..train import TrainConfig, train

    print(f"\n== 6. A short training run: tiny-bifpn (BiFPN at D0 width, MobileNetV3) on synthetic shapes, "
          f"{epochs} epochs")
    s = train(TrainConfig(model="tiny-bifpn", out=str(out / "train"), epochs=epochs, synthetic_train=256,
                          synthetic_val=64, eval_every=epochs))
    print(f"   val mAP@[.5:.95] {s.get('map', 0):.3f}, mAP@0.5 {s.get('map50', 0):.3f} after {s['step']} steps "
          f"(a short run; `make proof` trains long enough to reach mAP@0.5 >= 0.5)")
    print(f"   curves: {s['curves']}   checkpoint: {s['checkpoint']}")


def _tour_compile() -> None:
    import time

    import torch

    from ..compile import compile_graph, output_shapes
    from ..compile.export import example_inputs

    print("\n== 4. BiFPN compiled at EfficientDet-D0 width (64 channels, B0 inputs 40/112/320, 3 layers)")
    g = load_graph("bifpn")
    g.graph["repeat"] = 3
    t0 = time.perf_counter()
    m = compile_graph(g, 64, {3: 40, 4: 112, 5: 320}).eval()
    built = time.perf_counter() - t0
    params = sum(p.numel() for p in m.parameters())
    adapter = 320 * 64 + 2 * 64  # P6 from C5: 1x1 conv 320->64 + BN (made by the model stage)
    print(f"   built in {built * 1000:.0f} ms: {params:,} parameters; with the P6 input adapter "
          f"({adapter:,}) {params + adapter:,}, effdet's D0 BiFPN count is 194,361 (docs/reference.md)")
    lines = m.code.strip("\n").splitlines()
    print("   generated forward (first lines; `edg compile bifpn --print-code` shows all):")
    for line in lines[:5]:
        print("     " + line[:110])
    feats = example_inputs(m, 512)
    with torch.no_grad():
        t0 = time.perf_counter()
        outs = m(*feats)
        ran = time.perf_counter() - t0
    shapes = output_shapes(g, 64, 512, {3: 40, 4: 112, 5: 320})
    ok = all(tuple(o.shape[1:]) == shapes[k] for k, o in zip(range(3, 8), outs))
    print(f"   forward at 512x512 in {ran * 1000:.0f} ms; outputs "
          + ", ".join(f"P{k} {tuple(o.shape[1:])}" for k, o in zip(range(3, 8), outs))
          + (" (as inferred before running)" if ok else " (MISMATCH with the inferred shapes)"))
