"""prodml's model-server process for tests: start it on a bundle, wait, talk raw HTTP, stop it.

The server runs as ``python -m prodml.plugins.servers._main --spec -`` (the entry point
``deploy`` and the cluster container use) on a free loopback port, in its own process
group, with its log in a file the caller names::

    proc, url = start_server(bundle, tmp_path / "server.log", "tiny", max_request_bytes=65536)
    try:
        wait_ready(url, "tiny", proc, tmp_path / "server.log")
        status, headers, body = send(url, "/v1/models/tiny:predict", '{"instances": [[1, 2, 3]]}')
    finally:
        stop_server(proc)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    bundle: Path, log: Path, model_name: str, *, fast: bool = True, **spec: Any
) -> tuple[subprocess.Popen, str]:
    """Start a model server on ``bundle``; ``fast=False`` lets KServe's app answer inference.

    ``spec`` adds serving-spec keys (``max_request_bytes``, ``max_rows``, ``workers``...).
    Returns the process and its base URL.
    """
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PRODML_SERVER_FAST_PATH": "1" if fast else "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prodml.plugins.servers._main", "--spec", "-"],
        stdin=subprocess.PIPE,
        stdout=open(log, "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )
    assert proc.stdin is not None
    full = {"model_name": model_name, "bundle_dir": str(bundle), "port": port, **spec}
    proc.stdin.write(json.dumps(full).encode())
    proc.stdin.close()
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(url: str, model_name: str, proc: subprocess.Popen, log: Path, limit: float = 240) -> None:
    """Wait until the model answers ready; fail with the server's log if it dies or times out."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if send(url, f"/v2/models/{model_name}/ready")[0] == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"the server was not ready within {limit} s: {log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its workers too); SIGKILL after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def send(
    url: str, path: str, body: bytes | str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One request (POST with a body, else GET): status, lower-cased headers, JSON or raw bytes."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request("POST" if data is not None else "GET", path, body=data, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    answer_headers = {k.lower(): v for k, v in resp.getheaders()}
    try:
        return resp.status, answer_headers, json.loads(raw)
    except ValueError:
        return resp.status, answer_headers, raw
