"""The public API is small, explicit and importable."""

import importlib

import pytest

import efficientdet_graph as edg
from efficientdet_graph import EdgError, PassError, RegistryError, SpecError

EXPECTED = {
    "CompileOptions", "compile_graph", "infer_shapes", "output_shapes",
    "scale", "create_model", "load_model", "save_model", "profile_model",
    "neck", "convert_effdet", "export_onnx", "prune_model", "train", "TrainConfig", "evaluate", "predict",
    "make_synthetic", "CheckpointError", "DataError", "TrainingDiverged",
    "EdgError", "GraphSpec", "PASSES", "PassError", "PassReport", "Problem", "RegistryError", "SpecError",
    "__version__", "add_same_level_skips", "build_graph", "canonical_hash", "describe_difference", "generate",
    "graph_to_spec", "graph_to_yaml", "load_graph", "load_spec", "load_spec_text", "prune_single_input",
    "register_pass", "remove_dead_nodes", "repeat", "run_passes", "same_structure", "unroll",
}


def test_public_api_is_exactly_what_all_lists():
    assert set(edg.__all__) == EXPECTED
    for name in edg.__all__:
        assert hasattr(edg, name), name


@pytest.mark.parametrize("module", ["spec", "graph", "passes", "ops", "compile", "scale", "model", "profile", "train", "cli"])
def test_stage_modules_declare_all(module):
    mod = importlib.import_module(f"efficientdet_graph.{module}")
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_train_is_the_function_whichever_import_came_first():
    import subprocess
    import sys

    for first in ("import efficientdet_graph.train.loop", "pass"):
        code = (f"{first}\nimport efficientdet_graph as e, inspect\n"
                "print(callable(e.train), e.TrainConfig.__name__, callable(e.predict))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
        assert out.stdout.split() == ["True", "TrainConfig", "True"]


def test_exception_hierarchy():
    for name in ("CheckpointError", "DataError", "TrainingDiverged"):
        assert issubclass(getattr(edg, name), EdgError), name
    assert issubclass(SpecError, EdgError) and issubclass(SpecError, ValueError)
    assert issubclass(RegistryError, EdgError) and issubclass(RegistryError, LookupError)
    assert issubclass(PassError, EdgError)


def test_registry_error_lists_names_and_a_close_match():
    with pytest.raises(RegistryError) as e:
        edg.generate("bifpm")
    msg = str(e.value)
    assert "did you mean 'bifpn'" in msg and "fpn" in msg and "qufpn" in msg


def test_stages_import_only_earlier_stages():
    """Data flows one way: spec <- graph <- passes <- viz/cli."""
    import ast
    from pathlib import Path

    order = ["errors", "spec", "graph", "passes", "ops", "compile", "scale", "model", "profile", "prune", "train",
             "viz", "cli"]
    root = Path(edg.__file__).parent
    for i, stage in enumerate(order):
        files = [root / f"{stage}.py"] if (root / f"{stage}.py").exists() else list((root / stage).glob("*.py"))
        later = set(order[i + 1:])
        for f in files:
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level >= 1 and node.module:
                    top = node.module.split(".")[0]
                    if node.level == 2 or (node.level == 1 and f.parent == root):
                        assert top not in later, f"{f.name} ({stage}) imports later stage {top}"


def test_spec_and_graph_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, efficientdet_graph as e; e.load_graph('bifpn'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
