"""`make s3` / `make azure`: the emulators a user starts by hand serve the shipped configs."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from prodml.testing.services import free_port

REPO = Path(__file__).parent.parent

pytestmark = pytest.mark.slow


def start(kind: str, port: int, data: Path) -> tuple[subprocess.Popen, dict[str, str], list[str]]:
    """Start the dev server; return it, the exported variables and the lines it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "prodml.testing.dev_servers", kind, "--port", str(port), "--data", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].lstrip().startswith("export "):
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=30)
            pytest.fail(f"{kind} dev server ended early: {lines} {proc.stderr.read() if proc.stderr else ''}")
        lines.append(line)
    exported = dict(item.split("=", 1) for item in shlex.split(lines[-1].strip().removeprefix("export ")))
    return proc, exported, lines


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return out


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        pytest.param("s3", "config/minio.yaml", marks=pytest.mark.s3),
        pytest.param("azure", "config/azure.yaml", marks=pytest.mark.azure),
    ],
)
def test_dev_server_serves_the_shipped_config_until_ctrl_c(kind: str, config: str, tmp_path: Path) -> None:
    if (
        kind == "azure"
        and not os.environ.get("AZURITE_BLOB")
        and not (REPO / "tools/node_modules/.bin/azurite-blob").exists()
    ):
        from prodml.testing.services import unavailable

        unavailable(RuntimeError("Azurite is not installed (make test installs it into tools/)"))
    port = free_port(grpc_offset=10000)
    proc, exported, lines = start(kind, port, tmp_path / "data")
    try:
        assert f"127.0.0.1:{port}" in lines[0]
        assert lines[-2].endswith("Ctrl-C stops it. In another shell:\n")
        assert lines[-1].startswith("  export ")
        # the printed variables are exactly what the shipped config reads: the online
        # pre-flight (credentials, and the store answers) passes with them
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AZURE_"))}
        done = subprocess.run(
            [sys.executable, "-m", "prodml", "validate", "-c", config],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**env, **exported},
        )
        assert done.returncode == 0 or "cannot listen on 127.0.0.1:8080" in done.stderr, done.stderr
        assert "store (" not in done.stderr, done.stderr
    finally:
        out = stop(proc)
    assert proc.returncode == 0
    assert out.strip().endswith("stopped")


def test_makefile_targets_start_the_dev_servers() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^s3: .*\n\t\$\(BIN\)/python -m prodml.testing.dev_servers s3$", makefile, re.M)
    assert re.search(r"^azure: .*\n\t\$\(BIN\)/python -m prodml.testing.dev_servers azure$", makefile, re.M)


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "prodml.testing.dev_servers", "s3", "--port", str(port)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
    assert done.returncode == 1
    assert done.stderr == f"error: port {port} on 127.0.0.1 is in use; stop what uses it, or pass --port\n"


def test_first_install_says_what_it_installs_and_how_long() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("$(STAMP): pyproject.toml\n", 1)[1].split("\n\n", 1)[0]
    first, pip = recipe.index("@echo"), recipe.index("pip install --quiet -e")
    assert first < pip, "the message comes before the silent install"
    assert "minutes" in recipe[first:pip] and "TensorFlow" in recipe[first:pip]
