"""``mode: local``: a detached KServe ModelServer process per model name, found again by a state file.

Layout under the server's state folder::

    models/<name>/<version>/   bundles pulled from the store (verified before use)
    <name>.json                pid, URL, version and log of the running server
    logs/<name>.log            the server process's output

Only the standard library is imported here: the server process itself imports kserve and
TensorFlow (``_main.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prodml.core.errors import BundleError, ServingError
from prodml.core.interfaces import DataSource, Endpoint, ModelRef, ModelStore, ServerStatus

log = logging.getLogger("prodml.server")
ENTRY_MODULE = "prodml.plugins.servers._main"


# -- the bundle cache -----------------------------------------------------------------


def pull_to_cache(config: Any, ref: ModelRef, store: ModelStore, name: str) -> Path:
    """A verified local copy of ``ref`` (pulled once, re-pulled when it no longer verifies)."""
    from prodml.core.bundle import verify_bundle

    root = config.resolved_state_dir() / "models" / name
    final = root / ref.version
    if final.is_dir():
        try:
            verify_bundle(final)
            return final
        except BundleError as exc:
            log.warning("cached copy of %s %s is damaged, pulling it again: %s", name, ref.version, exc)
            shutil.rmtree(final, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{ref.version}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        pulled = Path(store.pull(ref, staging))  # pull verifies every file (ModelStore contract)
        try:
            pulled.rename(final)
        except OSError:
            if not final.is_dir():  # another process may have won the race with the same content
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


# -- state files ----------------------------------------------------------------------


def _state_path(config: Any, name: str) -> Path:
    return config.resolved_state_dir() / f"{name}.json"


def read_state(config: Any, name: str) -> dict[str, Any] | None:
    """The recorded server of ``name``, or None."""
    try:
        return json.loads(_state_path(config, name).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_state(config: Any, name: str, state: dict[str, Any]) -> None:
    path = _state_path(config, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _remove_state(config: Any, name: str, pid: int | None = None) -> None:
    state = read_state(config, name)
    if state is not None and (pid is None or state.get("pid") == pid):
        with contextlib.suppress(FileNotFoundError):
            _state_path(config, name).unlink()


def process_alive(pid: int, *, entry_point: bool = True) -> bool:
    """True when ``pid`` runs (not a zombie) and, with ``entry_point``, is prodml's server process.

    The command-line check keeps a pid that the system reused for something else from
    being taken for (or signalled as) the server.
    """
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            if ") Z" in (proc / "stat").read_text():
                return False
            return not entry_point or ENTRY_MODULE.encode() in (proc / "cmdline").read_bytes()
        except OSError:
            return False
    return True


# -- HTTP checks ----------------------------------------------------------------------


def client_host(host: str) -> str:
    """The address a client on this machine uses to reach a server listening on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def probe_ready(url: str, name: str, timeout: float = 2.0) -> tuple[bool | None, str]:
    """(ready, reason) from ``/v2/models/<name>/ready``; ready None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{url}/v2/models/{name}/ready", timeout=timeout) as resp:
            return resp.status == 200, ""
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read() or b"{}").get("error", "")
        except ValueError:
            reason = ""
        return False, reason or f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return None, str(getattr(exc, "reason", exc))


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return sock.getsockname()[1]


# -- deploy / status / undeploy -------------------------------------------------------


def serving_spec(
    config: Any, ref: ModelRef, bundle: Path, name: str, source: DataSource | None, port: int
) -> tuple[dict[str, Any], list[str]]:
    """The JSON spec the server process reads, and the secrets it carries."""
    from prodml.plugins.servers.kserve import source_description

    described, secrets = source_description(source) if config.feature_lookup else (None, [])
    if config.feature_lookup and described is None:
        raise ServingError(
            "server.feature_lookup is true but the pipeline has no data source to look features up in",
            hint="add a `source:` section (type feast), or set server.feature_lookup: false",
        )
    spec = {
        "model_name": name,
        "bundle_dir": str(bundle),
        "version": ref.version,
        "host": config.host,
        "port": port,
        "workers": config.workers,
        "max_request_bytes": config.max_request_bytes,
        "max_rows": config.max_rows,
        "access_log": config.access_log,
        "trust_model_code": config.trust_model_code,
        "feature_lookup": config.feature_lookup,
        "source": described,
        "secrets": secrets,
    }
    return spec, secrets


def deploy(config: Any, ref: ModelRef, store: ModelStore, source: DataSource | None, name: str) -> Endpoint:
    """Start (or restart) the server of ``name`` on ``ref`` and wait until it is ready."""
    bundle = pull_to_cache(config, ref, store, name)
    if read_state(config, name) is not None:
        undeploy(config, name)  # deploying again replaces the running version
    port = config.port or free_port(config.host)
    spec, _ = serving_spec(config, ref, bundle, name, source, port)
    state_dir = config.resolved_state_dir()
    log_path = state_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", ENTRY_MODULE, "--spec", "-"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(state_dir),
            env=env,
            start_new_session=True,  # its own process group: outlives the caller, stopped as a group
        )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    url = f"http://{client_host(config.host)}:{port}"
    state = {
        "model_name": name,
        "version": ref.version,
        "pid": proc.pid,
        "url": url,
        "host": config.host,
        "port": port,
        "workers": config.workers,
        "log": str(log_path),
        "bundle_dir": str(bundle),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_state(config, name, state)
    log.info(
        "starting model server for %s %s on %s (pid %d, log %s)", name, ref.version, url, proc.pid, log_path
    )
    _wait_ready(config, name, url, proc, log_path)
    return Endpoint(
        url=url,
        protocol="v1+v2",
        model_name=name,
        version=ref.version,
        details={
            "v1": f"{url}/v1/models/{name}:predict",
            "v2": f"{url}/v2/models/{name}/infer",
            "pid": str(proc.pid),
            "log": str(log_path),
        },
    )


def _wait_ready(config: Any, name: str, url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + config.start_timeout
    delay = 0.1
    while True:
        code = proc.poll()
        if code is not None:
            _remove_state(config, name, proc.pid)
            raise ServingError(
                f"the model server for {name!r} exited (code {code}) before it was ready:\n"
                f"{log_tail(log_path)}",
                hint=f"full log: {log_path}",
            )
        ready, reason = probe_ready(url, name)
        if ready:
            return
        if ready is False and reason.startswith(f"Model with name {name} is not ready. Loading failed"):
            undeploy(config, name)
            raise ServingError(
                f"the model server for {name!r} could not load the model: "
                f"{reason.split('Loading failed: ', 1)[-1]}",
                hint=f"full log: {log_path}",
            )
        if time.monotonic() > deadline:
            undeploy(config, name)
            raise ServingError(
                f"the model server for {name!r} was not ready after {config.start_timeout:.0f} s "
                f"({reason or 'no answer'}):\n{log_tail(log_path)}",
                hint="raise server.start_timeout if the model is large or the machine busy",
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("  | " + line for line in text.splitlines()[-lines:])


def status(config: Any, name: str) -> ServerStatus:
    state = read_state(config, name)
    if state is None:
        return ServerStatus(model_name=name, ready=False, reason="not deployed")
    url = state.get("url")
    if not process_alive(int(state.get("pid", 0)), entry_point=not state.get("foreground")):
        return ServerStatus(model_name=name, ready=False, url=url, reason="the server process has exited")
    ready, reason = probe_ready(url, name)
    if ready:
        return ServerStatus(model_name=name, ready=True, url=url, reason=f"version {state.get('version')}")
    return ServerStatus(model_name=name, ready=False, url=url, reason=reason or "not answering")


def undeploy(config: Any, name: str, *, grace: float = 10.0) -> None:
    state = read_state(config, name)
    if state is None:
        log.info("%s is not deployed locally: nothing to stop", name)
        return
    pid = int(state.get("pid", 0))
    foreground = bool(state.get("foreground"))

    def alive() -> bool:
        return process_alive(pid, entry_point=not foreground)

    def signal_server(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if foreground:  # `prodml serve` runs in the user's process group: signal it alone
                os.kill(pid, sig)
            else:  # a detached server leads its own group, workers included
                os.killpg(pid, sig)

    if pid > 0 and alive():
        signal_server(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive():
            signal_server(signal.SIGKILL)
            deadline = time.monotonic() + 5
            while alive() and time.monotonic() < deadline:
                time.sleep(0.05)
    _remove_state(config, name, pid)
    log.info("stopped the model server of %s", name)


def serve_foreground(
    config: Any, ref: ModelRef, store: ModelStore, source: DataSource | None, name: str
) -> None:
    """``prodml serve``: the server in this process until Ctrl-C (state recorded meanwhile)."""
    from prodml.plugins.servers import _main

    bundle = pull_to_cache(config, ref, store, name)
    previous = read_state(config, name)
    if previous is not None and process_alive(int(previous.get("pid", 0))):
        raise ServingError(
            f"{name!r} is already served by process {previous['pid']} at {previous.get('url')}",
            hint="stop it first (prodml run ... without --keep-serving, or kill that process)",
        )
    port = config.port or free_port(config.host)
    spec, _ = serving_spec(config, ref, bundle, name, source, port)
    url = f"http://{client_host(config.host)}:{port}"
    _write_state(
        config,
        name,
        {
            "model_name": name,
            "version": ref.version,
            "pid": os.getpid(),
            "url": url,
            "host": config.host,
            "port": port,
            "workers": config.workers,
            "log": "",
            "bundle_dir": str(bundle),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "foreground": True,
        },
    )
    print(
        f"serving {name} {ref.version} at {url}  (V1 {url}/v1/models/{name}:predict, "
        f"V2 {url}/v2/models/{name}/infer); Ctrl-C stops",
        flush=True,
    )
    try:
        _main.run_spec(spec)
    finally:
        _remove_state(config, name, os.getpid())
