"""The public API is small, explicit and importable."""

import importlib

import pytest

import efficientdet_graph as edg
from efficientdet_graph import (
    CheckpointError,
    ConfigError,
    DataError,
    EdgError,
    PassError,
    RegistryError,
    ShapeError,
    SpecError,
    TrainingDiverged,
)

EXPECTED = {
    "CheckpointError", "ConfigError", "DataError", "SearchError", "ShapeError", "TrainingDiverged", "search",
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
    assert len(edg.__all__) == len(set(edg.__all__)), [n for n in edg.__all__ if edg.__all__.count(n) > 1]
    for name in edg.__all__:
        assert hasattr(edg, name), name


@pytest.mark.parametrize("module", ["spec", "graph", "passes", "ops", "compile", "scale", "model", "profile", "train", "search", "cli"])
def test_stage_modules_declare_all(module):
    mod = importlib.import_module(f"efficientdet_graph.{module}")
    assert len(mod.__all__) == len(set(mod.__all__)), f"{module}.__all__ lists a name twice"
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
    for cls in (PassError, ConfigError, ShapeError, CheckpointError, DataError, TrainingDiverged):
        assert issubclass(cls, EdgError), cls
        assert cls.__module__ == "efficientdet_graph.errors", f"{cls.__name__} is defined outside errors.py"
    assert issubclass(ConfigError, ValueError) and issubclass(ShapeError, ValueError)  # as they were


def test_every_exception_class_lives_in_errors_py():
    """One tree: no module defines an EdgError subclass of its own (the CLI's private
    argument error aside), and the old import paths give the same classes."""
    import ast
    from pathlib import Path

    from efficientdet_graph.compile import ShapeError as S
    from efficientdet_graph.model import CheckpointError as C
    from efficientdet_graph.train import DataError as D, TrainingDiverged as T

    assert (S, C, D, T) == (ShapeError, CheckpointError, DataError, TrainingDiverged)
    root = Path(edg.__file__).parent
    for f in root.rglob("*.py"):
        if f.name == "errors.py" or f.parent.name == "cli":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert not bases & {"Exception", "ValueError", "EdgError", "LookupError", "RuntimeError"}, (
                    f"{f.relative_to(root)} defines exception {node.name}; put it in errors.py")


def test_errors_docstring_draws_the_whole_tree():
    import efficientdet_graph.errors as errors

    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, EdgError) and obj is not EdgError:
            assert f"── {name}" in errors.__doc__, name
            assert name in edg.__all__, name


@pytest.mark.parametrize("cls,code", [(SpecError, 2), (RegistryError, 2), (PassError, 2), (ConfigError, 2),
                                      (ShapeError, 2), (CheckpointError, 2), (DataError, 2),
                                      (TrainingDiverged, 1)])
def test_cli_maps_each_error_to_its_exit_code(cls, code, monkeypatch, capsys):
    """main() turns each class into its exit code and a message, no traceback."""
    from efficientdet_graph.cli import graph_commands, main
    from efficientdet_graph.errors import Problem

    error = cls([Problem("x.yaml", 1, 2, "it went wrong")]) if cls is SpecError else (
        cls("op", "it went wrong", ["sep_conv"]) if cls is RegistryError else cls("it went wrong"))

    def failing(args):
        raise error

    monkeypatch.setattr(graph_commands, "cmd_schema", failing)  # bound when main() builds its parser
    assert main(["schema"]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "it went wrong" in err


def test_registry_error_lists_names_and_a_close_match():
    with pytest.raises(RegistryError) as e:
        edg.generate("bifpm")
    msg = str(e.value)
    assert "did you mean 'bifpn'" in msg and "fpn" in msg and "qufpn" in msg


STAGE_ORDER = ["errors", "spec", "graph", "passes", "ops", "compile", "scale", "model", "profile", "prune", "train",
               "search", "viz", "cli"]


def _imported_modules(path, root):
    """Every efficientdet_graph module ``path`` imports, as dotted names, whatever the form:
    ``import efficientdet_graph.x``, ``from efficientdet_graph.x import y``, ``from .. import x``,
    ``from . import x``, ``from .x import y``, inside functions too."""
    import ast

    rel = path.relative_to(root.parent).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == root.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != root.name:
                continue
            # `from pkg import x` may import the submodule x: count both
            found.append(mod)
            found += [f"{mod}.{a.name}" for a in node.names]
    return found


def test_stages_import_only_earlier_stages():
    """Data flows one way (the stage order of DESIGN: spec -> graph -> ... -> cli); every import
    form counts. A stage not in this branch yet (a directory that does not exist) is skipped."""
    from pathlib import Path

    root = Path(edg.__file__).parent
    seen = 0
    for i, stage in enumerate(STAGE_ORDER):
        files = [root / f"{stage}.py"] if (root / f"{stage}.py").exists() else sorted((root / stage).rglob("*.py"))
        later = set(STAGE_ORDER[i + 1:])
        for f in files:
            for mod in _imported_modules(f, root):
                parts = mod.split(".")
                if len(parts) > 1 and parts[1] in later:
                    raise AssertionError(f"{f.relative_to(root)} ({stage}) imports {mod}, a later stage")
                seen += 1
    assert seen > 50  # the walk did find the package's imports


@pytest.mark.parametrize("line,expected", [
    ("import efficientdet_graph.model", "efficientdet_graph.model"),
    ("from efficientdet_graph.train import loop", "efficientdet_graph.train"),
    ("from .. import model", "efficientdet_graph.model"),
    ("from . import model", "efficientdet_graph.model"),
    ("from ..model.build import x", "efficientdet_graph.model.build"),
    ("def f():\n    from ..viz import draw", "efficientdet_graph.viz"),
])
def test_import_guard_sees_every_import_form(tmp_path, line, expected):
    """The guard above must be able to fail: each import form is resolved to the module it names."""
    root = tmp_path / "efficientdet_graph"
    sub = root / "graph"
    sub.mkdir(parents=True)
    f = (root if line.startswith("from . import") else sub) / "probe.py"
    f.write_text(line + "\n")
    assert expected in _imported_modules(f, root)


def test_spec_and_graph_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, efficientdet_graph as e; e.load_graph('bifpn'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
