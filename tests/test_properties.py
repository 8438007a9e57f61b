"""Property tests: random valid specs round-trip; random corruptions raise SpecError only."""

import random
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from efficientdet_graph import (
    GraphSpec,
    SpecError,
    build_graph,
    canonical_hash,
    graph_to_yaml,
    load_graph,
    same_structure,
)
from efficientdet_graph.graph import spec_to_yaml
from efficientdet_graph.spec.builtin import builtin_dir

FUSIONS = [None, "sum", "softmax", "fast_normalized", "concat", "channel_fast_normalized"]
OPS = [None, "sep_conv", "conv_bn_act", "identity"]


@st.composite
def dag_specs(draw) -> dict:
    lo = draw(st.integers(0, 6))
    hi = lo + draw(st.integers(1, 4))
    available = [f"P{k}_in" for k in range(lo, hi + 1)]
    nodes, used = [], set()

    def node(name: str, level: int) -> dict:
        inputs = draw(st.lists(st.sampled_from(available), min_size=1, max_size=4, unique=True))
        used.update(inputs)
        out = {"id": name, "level": level, "inputs": inputs}
        for key, choices in (("fusion", FUSIONS), ("op", OPS)):
            value = draw(st.sampled_from(choices))
            if value:
                out[key] = value
        if draw(st.booleans()) and inputs:
            out["inputs"][0] = {"src": inputs[0], "downsample": draw(st.sampled_from(["avg_pool", "conv"]))}
        return out

    for i in range(draw(st.integers(0, 10))):
        nodes.append(node(f"n{i}", draw(st.integers(lo, hi))))
        available.append(f"n{i}")
    outs = []
    for level in range(lo, hi + 1):
        outs.append(node(f"out{level}", level))
    # every node must reach an output: hand the unused ones to the outputs
    for n in nodes:
        if n["id"] not in used:
            target = outs[draw(st.integers(0, len(outs) - 1))]
            target["inputs"].append(n["id"])
    return {
        "name": "random",
        "levels": [lo, hi],
        "nodes": nodes + outs,
        "outputs": {level: f"out{level}" for level in range(lo, hi + 1)},
        "repeat": draw(st.integers(1, 3)),
    }


def _load_text(text: str):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "spec.yaml"
        path.write_text(text)
        return load_graph(path)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_specs())
def test_random_specs_round_trip(data):
    spec = GraphSpec.model_validate(data)
    g = _load_text(spec_to_yaml(spec))
    text = graph_to_yaml(g)
    again = _load_text(text)
    assert graph_to_yaml(again) == text
    assert same_structure(g, again, ops=True)
    assert set(g.edges) == set(again.edges) and dict(g.nodes(data=True)) == dict(again.nodes(data=True))


@settings(max_examples=60, deadline=None)
@given(dag_specs(), st.randoms(use_true_random=False))
def test_hash_ignores_names(data, rnd):
    g = build_graph(GraphSpec.model_validate(data))
    inner = [v for v in g if g.nodes[v]["role"] == "node"]
    fresh = [f"x{i}" for i in range(len(inner))]
    rnd.shuffle(fresh)
    mapping = dict(zip(inner, fresh))
    import networkx as nx

    renamed = nx.relabel_nodes(g, mapping)
    renamed.graph["outputs"] = {k: mapping.get(v, v) for k, v in g.graph["outputs"].items()}
    assert canonical_hash(renamed) == canonical_hash(g)
    assert same_structure(renamed, g, ops=True)


def _corrupt(text: str, rnd: random.Random) -> str:
    lines = text.splitlines()
    kind = rnd.randrange(6)
    if kind == 0 and lines:  # delete a line
        del lines[rnd.randrange(len(lines))]
    elif kind == 1:  # rename one reference
        names = re.findall(r"\b(?:P\d+_\w+|[A-Za-z]\w*\d\w*)\b", text)
        if names:
            victim = rnd.choice(names)
            spots = [m.start() for m in re.finditer(re.escape(victim), text)]
            at = rnd.choice(spots)
            return text[:at] + victim + rnd.choice(["x", "_", "1"]) + text[at + len(victim):]
    elif kind == 2:  # swap a type: number -> word, word -> number, list -> scalar
        tokens = list(re.finditer(r"\d+|\[[^\[\]]*\]|\b[a-z_]+\b", text))
        if tokens:
            m = rnd.choice(tokens)
            repl = rnd.choice(["seven", "-3", "[]", "{}", "null", "1.5", "true", "[1, [2]]"])
            return text[: m.start()] + repl + text[m.end():]
    elif kind == 3 and lines:  # duplicate a line (duplicate keys / ids)
        i = rnd.randrange(len(lines))
        lines.insert(i, lines[i])
    elif kind == 4 and text:  # stray character
        i = rnd.randrange(len(text))
        return text[:i] + rnd.choice(":{}[]-,&*!|>'\"#%@`\t") + text[i:]
    elif kind == 5 and lines:  # shuffle indentation
        i = rnd.randrange(len(lines))
        lines[i] = " " * rnd.randrange(5) + lines[i].lstrip()
    return "\n".join(lines) + "\n"


BUILTIN_TEXTS = [p.read_text() for p in sorted(builtin_dir("graphs").glob("*.yaml"))]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(BUILTIN_TEXTS), st.randoms(use_true_random=False), st.integers(1, 3))
def test_corruptions_raise_spec_error_only(text, rnd, rounds):
    for _ in range(rounds):
        text = _corrupt(text, rnd)
    try:
        _load_text(text)
    except SpecError as e:
        assert e.problems and all(p.line >= 1 and p.column >= 1 for p in e.problems)


@settings(max_examples=100, deadline=None)
@given(dag_specs(), st.randoms(use_true_random=False))
def test_corruptions_of_random_specs(data, rnd):
    text = _corrupt(spec_to_yaml(GraphSpec.model_validate(data)), rnd)
    try:
        _load_text(text)
    except SpecError:
        pass
