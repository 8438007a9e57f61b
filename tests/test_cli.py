"""The edg command line, used as a person would."""

import json

import pytest

from efficientdet_graph import load_graph, same_structure
from efficientdet_graph.graph import is_input
from efficientdet_graph.spec.builtin import builtin_dir


def test_validate_all_builtin_files(edg):
    paths = sorted(builtin_dir("graphs").glob("*.yaml"))
    code, out, _ = edg("validate", *paths)
    assert code == 0 and out.count("ok ") == len(paths)


def test_validate_tells_spaces_and_run_files_by_their_keys(edg, tmp_path):
    spaces = sorted(builtin_dir("search").glob("*.yaml"))
    code, out, err = edg("validate", *spaces)
    assert code == 0 and out.count("search space") == len(spaces), err
    run = tmp_path / "run.yaml"
    run.write_text("model: micro\nepochs: 3\nbatch_size: 4\n")
    code, out, _ = edg("validate", run)
    assert code == 0 and "training run file" in out
    run.write_text("model: micro\nepochs: 3\nbatch_sise: 4\n")
    code, _, err = edg("validate", run)
    assert code == 2 and f"{run}:3:1:" in err and "batch_size" in err
    space = tmp_path / "space.yaml"
    space.write_text(spaces[0].read_text().replace("kind: edges", "kind: edgez"))
    code, _, err = edg("validate", space)
    assert code == 2 and f"{space}:" in err and "edges" in err


def test_derive_then_compare_is_bifpn(edg, tmp_path):
    out_file = tmp_path / "d.yaml"
    code, _, err = edg("derive", "panet", "--pass", "prune_single_input", "--pass", "add_same_level_skips", "-o", out_file)
    assert code == 0 and "removed T7" in err and "added edge P4_in -> B4" in err
    code, out, _ = edg("compare", out_file, "bifpn")
    assert code == 0 and out.startswith("same structure")


def test_derive_to_stdout_loads_back(edg, tmp_path):
    code, out, _ = edg("derive", "bifpn", "--pass", "repeat:n=2", "--name", "bifpn_x2")
    assert code == 0
    path = tmp_path / "x2.yaml"
    path.write_text(out)
    g = load_graph(path)
    assert g.graph["name"] == "bifpn_x2" and sum(1 for v in g if not is_input(g, v)) == 16


def test_compare_different_graphs_exits_1_with_a_diff(edg):
    code, out, _ = edg("compare", "fpn", "bifpn")
    assert code == 1
    assert "different structure" in out and "nodes: fpn 5, bifpn 8" in out and "only in bifpn" in out


def test_compare_ops(edg, tmp_path):
    code, out, _ = edg("compare", "--ops", "panet", "panet")
    assert code == 0
    d = tmp_path / "d.yaml"
    edg("derive", "panet", "--pass", "prune_single_input", "--pass", "add_same_level_skips", "-o", d)
    code, out, _ = edg("compare", "--ops", d, "bifpn")
    assert code == 1 and "sum/sep_conv/swish" in out and "fast_normalized/sep_conv/swish" in out


@pytest.mark.parametrize("levels,nodes,edges", [("3-8", 10, 24), ("2-7", 10, 24), ("3-7", 8, 19)])
def test_new_bifpn_levels(edg, tmp_path, levels, nodes, edges):
    path = tmp_path / "b.yaml"
    assert edg("new", "bifpn", "--levels", levels, "-o", path)[0] == 0
    g = load_graph(path)
    assert (sum(1 for v in g if not is_input(g, v)), g.number_of_edges()) == (nodes, edges)


def test_new_derive_compare_for_other_levels(edg, tmp_path):
    for levels in ("3-8", "2-7"):
        edg("new", "panet", "--levels", levels, "-o", tmp_path / "p.yaml")
        edg("new", "bifpn", "--levels", levels, "-o", tmp_path / "b.yaml")
        edg("derive", tmp_path / "p.yaml", "--pass", "prune_single_input", "--pass", "add_same_level_skips",
            "-o", tmp_path / "d.yaml")
        assert edg("compare", tmp_path / "d.yaml", tmp_path / "b.yaml")[0] == 0


def test_new_bad_levels(edg):
    code, _, err = edg("new", "bifpn", "--levels", "7-3")
    assert code == 2 and "MIN < MAX" in err
    code, _, err = edg("new", "nasfpn", "--levels", "3-8")
    assert code == 2 and "5-level" in err


def test_schema_is_json_schema(edg):
    code, out, _ = edg("schema")
    schema = json.loads(out)
    assert code == 0 and schema["title"] == "GraphSpec"
    assert {"name", "levels", "nodes", "outputs", "repeat", "derive", "edges", "defaults"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


def test_show_text(edg):
    code, out, _ = edg("show", "bifpn")
    assert code == 0
    assert "8 nodes, 19 edges" in out and "P4_out  P4  <- P4_in, P4_td, P3_out" in out
    assert "fan-in: 2 inputs x5, 3 inputs x3" in out


def test_show_formats(edg):
    code, out, _ = edg("show", "fpn", "--format", "mermaid")
    assert code == 0 and out.startswith("flowchart LR") and out.count("-->") == 9
    code, out, _ = edg("show", "fpn", "--format", "dot")
    assert code == 0 and out.startswith('digraph "fpn"') and out.count("->") == 9
    code, out, _ = edg("show", "fpn", "--format", "yaml")
    assert code == 0 and "name: fpn" in out


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_show_draws(edg, tmp_path, suffix, magic):
    path = tmp_path / f"fig{suffix}"
    assert edg("show", "bifpn", "-o", path)[0] == 0
    assert path.read_bytes().startswith(magic) and path.stat().st_size > 5000


def test_tour(edg, tmp_path):
    code, out, _ = edg("tour", "--out", tmp_path, "--train-epochs", "1")  # training is tested in test_train
    assert code == 0
    assert "the same as the hand-written bifpn" in out and "DIFFERENT" not in out
    assert (tmp_path / "bifpn.png").exists()


def test_unknown_name_exits_2(edg):
    code, _, err = edg("show", "bifpm")
    assert code == 2 and "did you mean 'bifpn'" in err


def test_acceptance_three_errors_no_traceback(edg_exe, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\n"
        "levels: [3, 4]\n"
        "nodes:\n"
        "  - {id: A, level: 3, inputs: [P3_in, B], fusoin: sum}\n"
        "  - {id: B, level: 4, inputs: [P4_in, A, P5_inn]}\n"
        "outputs: {3: A, 4: B}\n"
    )
    r = edg_exe("validate", bad)
    assert r.returncode == 2
    located = [line for line in r.stderr.splitlines() if line.startswith(f"{bad}:")]
    assert len(located) == 3
    assert "Traceback" not in r.stderr + r.stdout
    r = edg_exe("--debug", "validate", bad)
    assert r.returncode == 2  # validate reports, it does not raise
    r = edg_exe("--debug", "show", bad)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_acceptance_commands(edg_exe, tmp_path):
    files = sorted(str(p) for p in builtin_dir("graphs").glob("*.yaml"))
    assert edg_exe("validate", *files).returncode == 0
    r = edg_exe("derive", "panet", "--pass", "prune_single_input", "--pass", "add_same_level_skips", "-o", "d.yaml",
                cwd=tmp_path)
    assert r.returncode == 0
    assert edg_exe("compare", "d.yaml", "bifpn", cwd=tmp_path).returncode == 0
    assert edg_exe("compare", "fpn", "bifpn").returncode == 1
    assert same_structure(load_graph(tmp_path / "d.yaml"), load_graph("bifpn"))


def test_compile_print_code(edg):
    code, out, err = edg("compile", "bifpn", "--channels", "64", "--print-code")
    assert code == 0
    assert out.startswith("def forward(self, P3_in, P4_in, P5_in, P6_in, P7_in):")
    assert "P7_out = self.P7_out.op(P7_out_fused)" in out and "return (P3_out, P4_out, P5_out, P6_out, P7_out)" in out
    assert "parameters" in err


def test_compile_input_size_prints_five_outputs(edg):
    code, out, _ = edg("compile", "nasfpn", "--channels", "64", "--input-size", "256")
    assert code == 0
    outputs = [line.strip() for line in out.split("outputs (C, H, W):")[1].strip().splitlines()]
    assert outputs == ["P3: (64, 32, 32)", "P4: (64, 16, 16)", "P5: (64, 8, 8)", "P6: (64, 4, 4)", "P7: (64, 2, 2)"]


def test_compile_bad_in_channels(edg):
    code, _, err = edg("compile", "bifpn", "--in-channels", "40,x")
    assert code == 2 and "integers" in err
    code, _, err = edg("compile", "bifpn", "--in-channels", "1,2,3,4,5,6")
    assert code == 2 and "outside" in err


def test_profile_family_json(edg):
    code, out, _ = edg("profile", "--family", "efficientdet", "--json")
    data = json.loads(out)
    assert code == 0 and "multiply-adds" in data["flops_convention"] and len(data["rows"]) == 9
    for r in data["rows"]:
        assert abs(r["params_diff_pct"]) < 1 and abs(r["flops_diff_pct"]) < 1


def test_profile_one_model(edg):
    code, out, _ = edg("profile", "efficientdet-d0", "--image-size", "256")
    assert code == 0 and "3,877,763 parameters" in out and "L3_P7_out" in out and "multiply-adds" in out
