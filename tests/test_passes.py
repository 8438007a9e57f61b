"""The analysers: BiFPN from PANet, idempotence, purity, repeat, dead nodes, derive: specs."""

import copy

import pytest

from efficientdet_graph import (
    PassError,
    RegistryError,
    SpecError,
    build_graph,
    generate,
    load_graph,
    load_spec_text,
    run_passes,
    same_structure,
)
from efficientdet_graph.graph import inputs_of, is_input
from efficientdet_graph.passes import (
    expand_repeat,
    parse_pass_arg,
    prune_single_input,
    remove_dead_nodes,
    repeat,
    run_pass,
)

BIFPN_RULES = ["prune_single_input", "add_same_level_skips"]


def inner(g):
    return [v for v in g if not is_input(g, v)]


def snapshot(g):
    return (copy.deepcopy(g.graph), list(g.nodes(data=True)), list(g.edges(data=True)))


@pytest.mark.parametrize("lo,hi", [(3, 7), (3, 8), (2, 7), (4, 6)])
def test_panet_becomes_bifpn(lo, hi):
    panet = build_graph(generate("panet", lo, hi))
    derived, reports = run_passes(panet, BIFPN_RULES)
    assert same_structure(derived, build_graph(generate("bifpn", lo, hi)))
    removed = [c for c in reports[0].changes if c.startswith("removed")]
    assert len(removed) == 2  # T_max and B_min, the two single-input nodes
    assert len(reports[1].changes) == hi - lo - 1  # a skip at every level but the ends


def test_panet_becomes_builtin_bifpn_from_files():
    derived, _ = run_passes(load_graph("panet"), BIFPN_RULES)
    assert same_structure(derived, load_graph("bifpn"))
    assert not same_structure(derived, load_graph("bifpn"), ops=True)  # panet sums, bifpn weighs


@pytest.mark.parametrize("name", ["panet", "fpn", "bifpn", "nasfpn", "qufpn", "fully_connected"])
@pytest.mark.parametrize("pass_name", ["prune_single_input", "add_same_level_skips", "remove_dead_nodes"])
def test_passes_are_idempotent_and_pure(name, pass_name):
    g = load_graph(name)
    before = snapshot(g)
    once, _ = run_pass(g, pass_name)
    assert snapshot(g) == before, "a pass mutated its input"
    twice, report = run_pass(once, pass_name)
    assert snapshot(twice) == snapshot(once)
    assert report.changes == ()


def test_prune_remaps_outputs_and_consumers():
    g, changes = prune_single_input(load_graph("panet"))
    assert "T7" not in g and "B3" not in g
    assert g.graph["outputs"][3] == "T3"
    assert inputs_of(g, "T6") == ["P6_in", "P7_in"]  # T6 took T7's place, same position
    assert inputs_of(g, "B4") == ["T4", "T3"]
    assert inputs_of(g, "B7") == ["T7", "B6"] or inputs_of(g, "B7") == ["P7_in", "B6"]
    assert len(changes) == 2


def test_prune_on_fpn_makes_the_top_output_an_input():
    g, _ = prune_single_input(load_graph("fpn"))
    assert g.graph["outputs"][7] == "P7_in"
    assert inputs_of(g, "P6_out") == ["P6_in", "P7_in"]


def test_prune_merges_a_duplicate_edge(write):
    spec, src = load_spec_text(
        """
        name: dup
        levels: [3, 4]
        nodes:
          - {id: A, level: 3, inputs: [P3_in]}
          - {id: B, level: 3, inputs: [P3_in, A]}
          - {id: C, level: 4, inputs: [P4_in, B]}
        outputs: {3: B, 4: C}
        """
    )
    g, changes = prune_single_input(build_graph(spec, src))
    # A goes, B keeps one P3_in edge, so B has one input and goes too.
    assert any("B already took P3_in" in c for c in changes)
    assert "A" not in g and "B" not in g and g.graph["outputs"][3] == "P3_in"
    assert inputs_of(g, "C") == ["P4_in", "P3_in"]
    assert sorted(g.edges[s, "C"]["index"] for s in g.predecessors("C")) == [0, 1]


def test_prune_keeps_an_output_whose_input_is_at_another_level():
    spec, src = load_spec_text(
        """
        name: resample_out
        levels: [3, 4]
        nodes:
          - {id: A, level: 3, inputs: [P3_in, P4_in]}
          - {id: B, level: 4, inputs: [A]}
        outputs: {3: A, 4: B}
        """
    )
    g, changes = prune_single_input(build_graph(spec, src))
    assert "B" in g and g.graph["outputs"][4] == "B"
    assert any(c.startswith("kept B") for c in changes)


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_repeat_gives_n_times_the_nodes(n):
    g = load_graph("bifpn")
    out, changes = repeat(g, n)
    assert len(inner(out)) == n * len(inner(g))
    assert out.number_of_edges() == n * g.number_of_edges()
    if n > 1:
        # layer 2 reads layer 1's outputs by level
        assert "L1_P6_out" in inputs_of(out, "L2_P6_td") and "L1_P7_out" in inputs_of(out, "L2_P6_td")
        assert out.graph["outputs"][3] == f"L{n}_P3_out"


def test_repeat_attribute_is_the_same_as_the_pass():
    g = load_graph("bifpn")
    g3 = g.copy()
    g3.graph = {**g.graph, "repeat": 3}
    assert same_structure(g3, repeat(g, 3).graph, ops=True)
    assert not same_structure(g3, g)
    expanded, _ = expand_repeat(g3)
    assert len(inner(expanded)) == 24 and expanded.graph["repeat"] == 1


def test_repeat_rejects_bad_n():
    with pytest.raises(PassError):
        repeat(load_graph("fpn"), 0)
    with pytest.raises(PassError):
        run_pass(load_graph("fpn"), "repeat", {"m": 2})


def test_remove_dead_nodes():
    g = load_graph("bifpn")
    g2 = g.copy()
    g2.graph = copy.deepcopy(g.graph)
    g2.add_node("orphan", role="node", level=5)
    g2.add_edge("P5_in", "orphan", index=0)
    out, changes = remove_dead_nodes(g2)
    assert "orphan" not in out and changes == ("removed orphan (reaches no output)",)
    assert same_structure(out, g, ops=True)


def test_unknown_pass_has_a_close_match():
    with pytest.raises(RegistryError, match="prune_single_input"):
        run_passes(load_graph("fpn"), ["prune_single_inputs"])


def test_parse_pass_arg():
    assert parse_pass_arg("repeat:n=3") == ("repeat", {"n": 3})
    assert parse_pass_arg("repeat(n=3)") == ("repeat", {"n": 3})
    assert parse_pass_arg("prune_single_input") == ("prune_single_input", {})


def test_derived_spec_file(write):
    write(
        """
        name: my_bifpn
        derive:
          from: panet
          passes: [prune_single_input, add_same_level_skips]
        defaults: {fusion: fast_normalized}
        repeat: 3
        """,
        "derived.yaml",
    )
    base = write("name: base\nderive: {from: derived.yaml, passes: [{name: repeat, n: 1}]}\n", "base.yaml")
    g = load_graph(base.parent / "derived.yaml")
    assert g.graph["name"] == "my_bifpn" and g.graph["repeat"] == 3
    bifpn = load_graph("bifpn")
    bifpn.graph["repeat"] = 3
    assert same_structure(g, bifpn, ops=True)
    chained = load_graph(base)  # a derived spec may derive from a derived spec, by relative path
    assert len(inner(chained)) == 24


def test_derivation_errors_are_located(write):
    path = write(
        """
        name: d
        derive:
          from: panet
          passes:
            - prune_single_input
            - prune_single_imput
        """
    )
    with pytest.raises(SpecError) as e:
        load_graph(path)
    (p,) = e.value.problems
    assert (p.line, p.column) == (6, 7) and "prune_single_input" in p.message


def test_derivation_cycle(write):
    write("name: a\nderive: {from: b.yaml}\n", "a.yaml")
    b = write("name: b\nderive: {from: a.yaml}\n", "b.yaml")
    with pytest.raises(SpecError, match="derivation cycle"):
        load_graph(b)


def test_derived_spec_may_not_also_declare_nodes(write):
    path = write("name: a\nderive: {from: panet}\nlevels: [3, 7]\n")
    with pytest.raises(SpecError) as e:
        load_graph(path)
    assert e.value.problems[0].line == 3
