"""Every kind of spec mistake is a SpecError naming file:line:column (1-based)."""

import pytest

from efficientdet_graph import SpecError, load_graph
from efficientdet_graph.spec import MAX_NODES
from efficientdet_graph.spec.source import MAX_FILE_BYTES

GOOD = """\
name: tiny
levels: [3, 4]
nodes:
  - {id: A, level: 4, inputs: [P4_in]}
  - {id: B, level: 3, inputs: [P3_in, A]}
outputs: {3: B, 4: A}
"""


def problems(write, text):
    path = write(text)
    with pytest.raises(SpecError) as e:
        load_graph(path)
    for p in e.value.problems:
        assert p.file == str(path)
    return [(p.line, p.column, p.message) for p in e.value.problems]


def only(write, text):
    (p,) = problems(write, text)
    return p


def test_good_spec_loads(write):
    assert load_graph(write(GOOD)).graph["name"] == "tiny"


def test_typo_in_top_level_key(write):
    line, col, msg = only(write, GOOD.replace("outputs:", "outptus:") + "outputs: {3: B, 4: A}\n")
    assert (line, col) == (6, 1) and "'outptus'" in msg and "did you mean 'outputs'" in msg


def test_typo_in_node_key(write):
    line, col, msg = only(write, GOOD.replace("{id: A, level: 4,", "{id: A, levl: 4, level: 4,"))
    assert (line, col) == (4, 13) and "did you mean 'level'" in msg


def test_duplicate_yaml_key(write):
    line, col, msg = only(write, GOOD.replace("outputs: {3: B, 4: A}", "outputs: {3: B, 4: A, 3: A}"))
    assert (line, col) == (6, 23) and "duplicate key 3" in msg


def test_duplicate_node_id(write):
    text = GOOD.replace("outputs:", "  - {id: A, level: 4, inputs: [P4_in]}\noutputs:")
    line, col, msg = only(write, text)
    assert (line, col) == (6, 10) and "duplicate node id 'A'" in msg and "line 4" in msg


def test_node_id_clashing_with_an_input(write):
    line, col, msg = only(write, GOOD.replace("{id: A,", "{id: P4_in,").replace("[P3_in, A]", "[P3_in, P4_in]").replace("4: A", "4: P4_in"))
    assert (line, col) == (4, 10) and "graph input" in msg


def test_unknown_reference_with_close_match(write):
    line, col, msg = only(write, GOOD.replace("[P3_in, A]", "[P3_inn, A]"))
    assert (line, col) == (5, 32) and "unknown node 'P3_inn'" in msg and "did you mean 'P3_in'" in msg


def test_unknown_reference_in_edges_list(write):
    text = GOOD.replace("inputs: [P3_in, A]", "inputs: [P3_in]").replace("outputs:", "edges:\n  - {src: Ax, dst: B}\noutputs:")
    line, col, msg = only(write, text)
    assert (line, col) == (7, 11) and "did you mean 'A'" in msg


def test_cycle_is_printed(write):
    text = GOOD.replace("inputs: [P4_in]}", "inputs: [P4_in, B]}")
    line, col, msg = only(write, text)
    assert "cycle:" in msg and "A -> B -> A" in msg or "B -> A -> B" in msg
    assert line in (4, 5)


def test_node_reaching_no_output(write):
    text = GOOD.replace("outputs:", "  - {id: C, level: 3, inputs: [P3_in]}\noutputs:")
    line, col, msg = only(write, text)
    assert (line, col) == (6, 10) and "'C' reaches no output" in msg


def test_node_no_input_reaches(write):
    text = GOOD.replace("{id: A, level: 4, inputs: [P4_in]}", "{id: A, level: 4}")
    line, col, msg = only(write, text)
    assert (line, col) == (4, 10) and "no inputs" in msg


def test_level_outside_input_range(write):
    found = problems(write, GOOD.replace("{id: B, level: 3,", "{id: B, level: 5,").replace("3: B", "5: B"))
    assert [(line, col) for line, col, _ in found] == [(5, 20), (6, 1), (6, 11)]
    assert "level 5 of node 'B' is outside the input levels [3, 4]" in found[0][2]
    assert "no output for level(s) P3" in found[1][2]
    assert "output level 5 is outside" in found[2][2]


def test_missing_output_level(write):
    line, col, msg = only(write, GOOD.replace("outputs: {3: B, 4: A}", "outputs: {3: B}"))
    assert (line, col) == (6, 1) and "P4" in msg


def test_missing_outputs_entirely(write):
    line, col, msg = only(write, GOOD.replace("outputs: {3: B, 4: A}\n", ""))
    assert line == 1 and "P3, P4" in msg


def test_same_node_as_two_outputs(write):
    text = GOOD.replace("outputs: {3: B, 4: A}", "outputs: {3: B, 4: A2}").replace(
        "  - {id: B,", "  - {id: A2, level: 4, inputs: [P4_in, B]}\n  - {id: B,"
    )
    load_graph(write(text))  # sanity: that one is valid
    text = GOOD.replace("outputs: {3: B, 4: A}", "outputs: {3: B, 4: B}")
    found = problems(write, text)
    assert any("at level 3" in m or "already the output" in m for _, _, m in found)
    assert all(line == 6 for line, _, _ in found)


def test_output_at_wrong_level(write):
    found = problems(write, GOOD.replace("outputs: {3: B, 4: A}", "outputs: {3: A, 4: B}"))
    assert [(line, col) for line, col, _ in found] == [(6, 14), (6, 20)]
    assert "output P3 is node 'A', which is at level 4" in found[0][2]


def test_wrong_types(write):
    found = problems(write, GOOD.replace("level: 4,", "level: four,").replace("levels: [3, 4]", "levels: [3, 4]\nrepeat: '2'"))
    assert {(3, 9), (5, 20)} == {(l, c) for l, c, _ in found}
    assert any("integer" in m for _, _, m in found)


def test_unknown_fusion_name(write):
    line, col, msg = only(write, GOOD.replace("{id: A, level: 4,", "{id: A, level: 4, fusion: fast_normalised,"))
    assert (line, col) == (4, 31) and "did you mean 'fast_normalized'" in msg


def test_empty_file(write):
    assert only(write, "")[:2] == (1, 1)
    assert "empty" in only(write, "\n  \n")[2]


def test_comment_only_file(write):
    assert "no YAML document" in only(write, "# just a comment\n")[2]


@pytest.mark.parametrize("text,kind", [("- a\n- b\n", "a list"), ("hello\n", "a string"), ("42\n", "int")])
def test_not_a_mapping(write, text, kind):
    assert kind in only(write, text)[2]


def test_yaml_syntax_error(write):
    line, col, msg = only(write, GOOD.replace("[P3_in, A]}", "[P3_in, A}"))
    assert line == 5 and "not valid YAML" in msg


def test_multiple_documents(write):
    assert "not valid YAML" in only(write, GOOD + "---\n" + GOOD)[2]


def test_file_too_large(write):
    text = GOOD + "#" * (MAX_FILE_BYTES + 10) + "\n"
    assert "limit" in only(write, text)[2]


def test_too_many_nodes(write):
    lines = ["name: big", "levels: [3, 4]", "nodes:"]
    lines += [f"  - {{id: n{i}, level: 3, inputs: [P3_in]}}" for i in range(MAX_NODES + 1)]
    lines += ["outputs: {3: n0, 4: n1}"]
    line, col, msg = only(write, "\n".join(lines) + "\n")
    assert (line, col) == (4, 3) and str(MAX_NODES) in msg


def test_alias_bomb_is_cut_off(write):
    bomb = ['name: bomb', 'a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        bomb.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 10) + "]")
    line, col, msg = only(write, "\n".join(bomb) + "\n")
    assert "alias bomb" in msg


def test_python_tags_are_refused(write):
    line, col, msg = problems(write, "name: !!python/object/apply:os.system ['echo hi']\n")[0]
    assert (line, col) == (1, 7) and "tag" in msg and "python" in msg


def test_all_problems_are_reported_together(write):
    text = """\
name: bad
levels: [3, 4]
nodes:
  - {id: A, level: 3, inputs: [P3_in, B], fusoin: sum}
  - {id: B, level: 4, inputs: [P4_in, A, P5_inn]}
outputs: {3: A, 4: B}
"""
    found = problems(write, text)
    assert [(l, c) for l, c, _ in found] == [(4, 39), (4, 43), (5, 42)]
    assert "cycle" in found[0][2] and "fusoin" in found[1][2] and "P5_inn" in found[2][2]


def test_missing_file():
    with pytest.raises(SpecError, match="no such file"):
        load_graph("does/not/exist.yaml")


def test_fusion_arity(write):
    line, col, msg = only(write, GOOD.replace("{id: B, level: 3,", "{id: B, level: 3, fusion: gp,").replace("[P3_in, A]", "[P3_in, A, P4_in]"))
    assert (line, col) == (5, 10) and "takes exactly 2 inputs, got 3" in msg


def test_tagged_keys_and_values_are_refused(write):
    # found by the corruption fuzzer: a YAML tag on a mapping key
    found = problems(write, GOOD.replace("levels:", "!lev levels:"))
    assert any((line, col) == (2, 1) and "bad key" in msg for line, col, msg in found)
    found = problems(write, GOOD.replace("name: tiny", "name: !custom tiny"))
    assert any((line, col) == (1, 7) and "bad value" in msg for line, col, msg in found)
