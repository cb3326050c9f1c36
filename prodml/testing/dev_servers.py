"""``make s3`` / ``make azure``: the tests' S3 and Azure emulators, for trying the configs by hand.

``config/minio.yaml`` and ``config/azure.yaml`` need a server. This starts the same real
servers the tests use — SeaweedFS (S3) and Azurite (Azure Blob) — in the foreground on
loopback, with the credentials those configs read from the environment, prints the
``export`` line to paste into another shell, and stops the server on Ctrl-C::

    python -m prodml.testing.dev_servers s3      # http://127.0.0.1:9000
    python -m prodml.testing.dev_servers azure   # http://127.0.0.1:10000/devstoreaccount1

The credentials are development-only: SeaweedFS gets a fixed local key pair (or
``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY`` when set), Azurite has Microsoft's
published development account key. Neither server listens beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any

#: the local S3 key pair when the environment names none (the emulator accepts only it)
DEV_ACCESS_KEY_ID = "prodml-dev"
DEV_SECRET_ACCESS_KEY = "prodml-dev-secret"
DEFAULTS = {"s3": 9000, "azure": 10000}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m prodml.testing.dev_servers",
        description="Run the S3 (SeaweedFS) or Azure Blob (Azurite) emulator on loopback until Ctrl-C.",
    )
    p.add_argument("kind", choices=sorted(DEFAULTS), help="which emulator")
    p.add_argument("--port", type=int, help="port to listen on (default: s3 9000, azure 10000)")
    p.add_argument(
        "--data",
        type=Path,
        help="folder for the stored data (default: .prodml/<kind>-data, kept between runs)",
    )
    return p


def _start(kind: str, port: int, data: Path) -> tuple[Any, dict[str, str], str]:
    """Start the emulator; return it, the environment the config reads, and the config file."""
    import os

    from prodml.testing import services

    if kind == "s3":
        server = services.SeaweedFS(
            data,
            access_key_id=os.environ.get("AWS_ACCESS_KEY_ID") or DEV_ACCESS_KEY_ID,
            secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or DEV_SECRET_ACCESS_KEY,
            s3_port=port,
        )
        server.start()
        env = {
            "AWS_ACCESS_KEY_ID": server.access_key_id,
            "AWS_SECRET_ACCESS_KEY": server.secret_access_key,
            "S3_ENDPOINT_URL": server.endpoint_url,
        }
        return server, env, "config/minio.yaml"
    server = services.Azurite(data, port=port)
    server.start()
    return server, {"AZURE_STORAGE_CONNECTION_STRING": server.connection_string}, "config/azure.yaml"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from prodml.runner.preflight import port_taken
    from prodml.testing.services import ServiceUnavailable

    port = args.port or DEFAULTS[args.kind]
    data = (args.data or Path(".prodml") / f"{args.kind}-data").absolute()
    why = port_taken("127.0.0.1", port)
    if why is not None:
        print(f"error: port {port} on 127.0.0.1 is {why}; stop what uses it, or pass --port", file=sys.stderr)
        return 1
    name = "SeaweedFS (S3)" if args.kind == "s3" else "Azurite (Azure Blob)"
    print(f"starting {name} on 127.0.0.1:{port}, data in {data} ...", flush=True)
    try:
        server, env, config = _start(args.kind, port, data)
    except ServiceUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    print(
        f"{name} is ready; Ctrl-C stops it. In another shell:\n"
        f"  export {exports}\n"
        f"  .venv/bin/prodml run -c {config}",
        flush=True,
    )
    try:
        while not stop.is_set() and server.running:
            stop.wait(0.5)
    finally:
        crashed = not server.running
        server.stop()
    if crashed:
        print(f"error: {name} exited:\n{server.log_tail()}", file=sys.stderr)
        return 1
    print(f"{name} stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
