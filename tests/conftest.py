import os
import shutil
import socket
import subprocess
import sys
import tempfile
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on a temporary directory and a free loopback port; always stopped."""
    tools = {name: shutil.which(name) for name in ("initdb", "pg_ctl", "createdb")}
    if not all(tools.values()):
        missing = ", ".join(n for n, p in tools.items() if not p)
        message = f"PostgreSQL server tools not found on PATH ({missing}): the PostgreSQL worker test cannot run"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="edg-pg-", dir="/tmp"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and there is no 'postgres' user to run the PostgreSQL server as")
        os.chown(base, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()

    def sh(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}{done.stderr}"

    sh(tools["initdb"], "-D", str(data), "-U", "postgres", "--auth=trust")
    started = False
    try:
        sh(tools["pg_ctl"], "-D", str(data), "-l", str(base / "log"), "-w", "-t", "120",
           "-o", f"-k {base} -p {port} -c listen_addresses=127.0.0.1", "start")
        started = True
        sh(tools["createdb"], "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "edg")
        yield f"postgresql://postgres@127.0.0.1:{port}/edg"
    finally:
        if started or (data / "postmaster.pid").exists():
            subprocess.run([*as_user, tools["pg_ctl"], "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)
