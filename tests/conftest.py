import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from efficientdet_graph.cli import main


@pytest.fixture
def write(tmp_path):
    """Write a dedented spec to a file and return its path."""

    def _write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write


@pytest.fixture
def edg(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""

    def _run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return _run


@pytest.fixture
def edg_exe():
    """Run the installed ``edg`` console script in a subprocess."""
    exe = Path(sys.executable).parent / "edg"
    if not exe.exists():
        exe = shutil.which("edg")
    assert exe, "the edg console script is not installed"

    def _run(*args: str, cwd=None):
        return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)

    return _run


def pytest_report_header(config):
    import efficientdet_graph

    return f"efficientdet_graph from {Path(efficientdet_graph.__file__).parent}"


# CI runs the property tests with a fixed seed (reproducible failures); locally they
# explore new examples on every run.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, print_blob=True)
if __import__("os").environ.get("CI"):
    settings.load_profile("ci")
