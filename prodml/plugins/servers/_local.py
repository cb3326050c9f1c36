"""``mode: local``: a detached KServe ModelServer process per project and model, found again by its record.

Layout under the serving root (``server.state_dir``, default ``$PRODML_STATE_HOME/serving``;
see :mod:`._state`)::

    models/<name>/<version>/      bundles pulled from the store (verified before use)
    servers/<name>-<key>.json     pid, URL, version, log, project folder of the running server
    logs/<name>-<key>.log         the server process's output

``<key>`` is a hash of the config's project folder: two projects with the same ``project:``
have a server each. Deploying again, and :func:`update` after ``latest`` moved, hand the
port over to a new process without a failed request (:mod:`._handover`).

Only the standard library is imported here: the server process itself imports kserve and
TensorFlow (``_main.py``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prodml.core.errors import BundleError, ServingError
from prodml.core.interfaces import DataSource, Endpoint, ModelRef, ModelStore, ServerStatus
from prodml.plugins.servers import _state
from prodml.plugins.servers._state import ENTRY_MODULE, log_tail, probe_ready, process_alive

log = logging.getLogger("prodml.server")

#: seconds the old server keeps running once new connections go to the new one, so that the
#: connections in its accept queue are answered and its keep-alive clients move before it stops
DRAIN_SECONDS = 1.0

__all__ = [
    "ENTRY_MODULE",
    "deploy",
    "log_tail",
    "probe_ready",
    "process_alive",
    "pull_to_cache",
    "read_state",
    "status",
    "undeploy",
    "update",
]


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


# -- records ------------------------------------------------------------------------------


def project_dir(config: Any) -> Path:
    """The project folder a server of ``config`` belongs to."""
    return Path(getattr(config, "project_dir", None) or Path.cwd()).resolve()


def _record_path(config: Any, name: str) -> Path:
    return _state.record_path(config.resolved_state_dir(), project_dir(config), name)


def _log_path(config: Any, name: str) -> Path:
    return _state.log_path(config.resolved_state_dir(), project_dir(config), name)


def read_state(config: Any, name: str) -> dict[str, Any] | None:
    """The recorded server of ``name`` for this config's project, or None."""
    return _state.read_record(_record_path(config, name))


def _write_state(config: Any, name: str, state: dict[str, Any]) -> None:
    _state.remember_root(config.resolved_state_dir())
    _state.write_record(_record_path(config, name), state)


def _remove_state(config: Any, name: str, pid: int | None = None) -> None:
    _state.remove_record(_record_path(config, name), pid)


def _live_state(config: Any, name: str) -> dict[str, Any] | None:
    """The record of this project's server of ``name`` if it still runs (a stale one is removed)."""
    state = read_state(config, name)
    if state is None:
        return None
    pid = int(state.get("pid") or 0)
    if process_alive(pid, entry_point=not state.get("foreground")):
        return state
    _remove_state(config, name, pid)
    return None


def _new_record(config: Any, name: str, ref: ModelRef, bundle: Path, pid: int, port: int) -> dict[str, Any]:
    return {
        "model_name": name,
        "version": ref.version,
        "pid": pid,
        "url": f"http://{client_host(config.host)}:{port}",
        "host": config.host,
        "port": port,
        "workers": config.workers,
        "reuse_port": True,
        "drain_signal": True,  # SIGUSR1 drains it (_handover.DrainGate)
        "log": str(_log_path(config, name)),
        "bundle_dir": str(bundle),
        "project_dir": str(project_dir(config)),
        "config_file": getattr(config, "config_file", None),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _endpoint(state: dict[str, Any]) -> Endpoint:
    url, name = state["url"], state["model_name"]
    return Endpoint(
        url=url,
        protocol="v1+v2",
        model_name=name,
        version=state["version"],
        details={
            "v1": f"{url}/v1/models/{name}:predict",
            "v2": f"{url}/v2/models/{name}/infer",
            "pid": str(state["pid"]),
            "log": str(state.get("log", "")),
        },
    )


# -- HTTP and ports -----------------------------------------------------------------------


def client_host(host: str) -> str:
    """The address a client on this machine uses to reach a server listening on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", 0))
        return sock.getsockname()[1]


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


def check_port(config: Any, name: str, port: int) -> None:
    """Refuse a port another project's server (or another program) listens on, naming the holder.

    Detached servers share their port with SO_REUSEPORT (for handovers), so the kernel
    would not refuse a second project's server on it: it would split the traffic.
    """
    mine = _record_path(config, name)
    for other in _state.list_servers(prune=True, probe=False):
        if other.port != port or Path(other.record_file) == mine:
            continue
        stop_hint = (
            f"prodml stop -c {other.config_file}" if other.config_file else f"prodml stop {other.model} --all"
        )
        raise ServingError(
            f"port {port} is taken by the model server of {other.model!r} for the project in "
            f"{other.project_dir or '(unknown folder)'} (pid {other.pid}, {other.url})",
            hint=f"stop that server ({stop_hint}), or give this project another server.port "
            "(0 picks a free one)",
        )
    host = config.host if config.host not in ("",) else "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ServingError(
                f"port {port} on {config.host} is in use by another program (not a prodml model server "
                "this user started)",
                hint="stop that program, or set server.port to another port (0 picks a free one)",
            ) from None


# -- deploy / update / status / undeploy ---------------------------------------------------


def _start_process(config: Any, spec: dict[str, Any], log_file: Path) -> subprocess.Popen:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", ENTRY_MODULE, "--spec", "-"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(config.resolved_state_dir()),
            env=env,
            start_new_session=True,  # its own process group: outlives the caller, stopped as a group
        )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    return proc


def _discard(proc: subprocess.Popen) -> None:
    """Stop a server process this call started and no one else knows about."""
    _state.stop_process(proc.pid, grace=5.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def deploy(config: Any, ref: ModelRef, store: ModelStore, source: DataSource | None, name: str) -> Endpoint:
    """Serve ``ref``; return once it answers.

    A server of this project's ``name`` that already runs on the same address is replaced
    by a handover (the new version loads beside it, then it drains and stops), so
    deploying again drops no request.
    """
    bundle = pull_to_cache(config, ref, store, name)
    current = _live_state(config, name)
    if current is not None and _can_hand_over(config, current):
        return _hand_over(config, ref, bundle, source, name, current)
    if current is not None:
        undeploy(config, name)  # another address, or a server that cannot share its port
    return _start(config, ref, bundle, source, name)


def update(
    config: Any,
    ref: ModelRef,
    store: ModelStore,
    source: DataSource | None,
    name: str,
    *,
    canary_percent: int | None = None,
) -> Endpoint | None:
    """Move this project's running server of ``name`` to ``ref`` with no failed request.

    Returns:
        The endpoint, or None when no server of ``name`` runs for this project (or it runs
        in the foreground, which ``prodml serve`` owns: it is left as it is).
    """
    if canary_percent is not None:
        raise ServingError(
            f"a canary ({canary_percent}% of requests) needs server.mode: cluster; a local server "
            "moves all requests to the new version at once",
            hint="drop --canary, or serve with mode: cluster (KServe canaryTrafficPercent)",
        )
    current = _live_state(config, name)
    if current is None:
        log.info("no local server of %s runs for %s: nothing to update", name, project_dir(config))
        return None
    if current.get("foreground"):
        log.warning(
            "%s is served in the foreground by `prodml serve` (pid %s); it keeps version %s: "
            "restart it to serve %s",
            name,
            current["pid"],
            current.get("version"),
            ref.version,
        )
        return None
    if current.get("version") == ref.version:
        return _endpoint(current)
    bundle = pull_to_cache(config, ref, store, name)
    if not _can_hand_over(config, current):
        undeploy(config, name)
        return _start(config, ref, bundle, source, name)
    return _hand_over(config, ref, bundle, source, name, current)


def _can_hand_over(config: Any, current: dict[str, Any]) -> bool:
    if current.get("foreground") or not current.get("reuse_port"):
        return False  # started by `prodml serve`, or by a prodml that bound the port exclusively
    return current.get("host") == config.host and config.port in (0, current.get("port"))


def _start(config: Any, ref: ModelRef, bundle: Path, source: DataSource | None, name: str) -> Endpoint:
    """Start a new server of ``name`` (none runs for this project) and wait until it is ready."""
    port = config.port or free_port(config.host)
    if config.port:
        check_port(config, name, port)
    spec, _ = serving_spec(config, ref, bundle, name, source, port)
    spec["reuse_port"] = True
    loaded_file = None
    if config.workers > 1:
        # readiness answers from whichever worker the kernel picks: each reports its own load
        loaded_file = _record_path(config, name).with_suffix(f".loaded-{os.getpid()}")
        loaded_file.parent.mkdir(parents=True, exist_ok=True)
        loaded_file.unlink(missing_ok=True)
        spec["loaded_file"] = str(loaded_file)
    log_file = _log_path(config, name)
    proc = _start_process(config, spec, log_file)
    state = _new_record(config, name, ref, bundle, proc.pid, port)
    _write_state(config, name, state)
    log.info(
        "starting model server for %s %s on %s (pid %d, log %s)",
        name,
        ref.version,
        state["url"],
        proc.pid,
        log_file,
    )
    try:
        _wait_ready(config, name, state["url"], proc, log_file)
        if loaded_file is not None:
            _wait_all_loaded(config, name, proc, loaded_file, log_file)
    except BaseException as exc:  # failed, timed out or interrupted: leave nothing running
        _discard(proc)
        _remove_state(config, name, proc.pid)
        if isinstance(exc, KeyboardInterrupt):
            log.warning(
                "interrupted: stopped the model server of %s that was starting (pid %d)", name, proc.pid
            )
        raise
    finally:
        if loaded_file is not None:
            loaded_file.unlink(missing_ok=True)
    return _endpoint(state)


def _wait_all_loaded(config: Any, name: str, proc: subprocess.Popen, loaded_file: Path, log: Path) -> None:
    """Wait until each of ``config.workers`` processes has loaded the model (each appends its pid)."""
    _wait_reported(
        config,
        proc,
        loaded_file,
        exited=lambda code: (
            f"the model server for {name!r} exited (code {code}) before all "
            f"{config.workers} workers were ready. Its log ends with:\n{log_tail(log)}"
        ),
        timed_out=f"not all {config.workers} workers of the model server for {name!r} were ready after "
        f"{config.start_timeout:.0f} s",
        log=log,
    )


def _wait_reported(
    config: Any,
    proc: subprocess.Popen,
    report_file: Path,
    *,
    exited: Callable[[int], str],
    timed_out: str,
    log: Path,
) -> None:
    """Wait until ``config.workers`` pids are in ``report_file``; raise when ``proc`` exits or time is up."""
    deadline = time.monotonic() + config.start_timeout
    delay = 0.05
    while True:
        code = proc.poll()  # a process that exited is not a ready server, whatever it reported
        if code is not None:
            raise ServingError(exited(code), hint=f"full log: {log}")
        with contextlib.suppress(OSError):
            if len(report_file.read_text(encoding="utf-8").split()) >= config.workers:
                return
        if time.monotonic() > deadline:
            raise ServingError(
                f"{timed_out}. Its log ends with:\n{log_tail(log)}",
                hint="raise server.start_timeout if the model is large or the machine busy",
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _hand_over(
    config: Any, ref: ModelRef, bundle: Path, source: DataSource | None, name: str, current: dict[str, Any]
) -> Endpoint:
    """Start ``ref`` beside the running server on its port, then drain and stop the old one."""
    port, old_pid = int(current["port"]), int(current["pid"])
    log_file = _log_path(config, name)
    next_log = log_file.with_name(log_file.stem + ".next.log")
    ready_file = _record_path(config, name).with_suffix(f".handover-{os.getpid()}")
    ready_file.parent.mkdir(parents=True, exist_ok=True)
    ready_file.unlink(missing_ok=True)
    spec, _ = serving_spec(config, ref, bundle, name, source, port)
    spec["reuse_port"] = True
    spec["handover"] = {
        "old_pid": old_pid,
        "old_sockets": int(current.get("workers") or 1),
        "new_sockets": config.workers,
        "ready_file": str(ready_file),
    }
    log.info(
        "handing %s over from version %s (pid %d) to %s on port %d",
        name,
        current.get("version"),
        old_pid,
        ref.version,
        port,
    )
    proc = _start_process(config, spec, next_log)
    try:
        _wait_listening(config, name, proc, ready_file, next_log, current)
    except BaseException as exc:  # the old server never stopped taking requests: it keeps serving
        _discard(proc)
        if isinstance(exc, KeyboardInterrupt):
            log.warning(
                "interrupted: stopped the new server of %s; version %s keeps serving",
                name,
                current.get("version"),
            )
        raise
    finally:
        ready_file.unlink(missing_ok=True)
    # new connections now reach only the new process: the old one answers what it has queued
    # and tells its keep-alive clients to reconnect (to the new one) before it is stopped
    if current.get("drain_signal"):
        _state.signal_server(old_pid, signal.SIGUSR1, foreground=False)
    time.sleep(DRAIN_SECONDS)
    _state.stop_process(old_pid, foreground=False, grace=config.start_timeout)
    with contextlib.suppress(OSError):
        if log_file.exists():
            os.replace(log_file, log_file.with_name(log_file.stem + ".previous.log"))
        os.replace(next_log, log_file)
    state = _new_record(config, name, ref, bundle, proc.pid, port)
    _write_state(config, name, state)
    log.info("%s now serves version %s on %s (pid %d)", name, ref.version, state["url"], proc.pid)
    return _endpoint(state)


def _wait_listening(
    config: Any,
    name: str,
    proc: subprocess.Popen,
    ready_file: Path,
    log_file: Path,
    current: dict[str, Any],
) -> None:
    """Wait until every new worker has loaded the model and listens (each appends its pid)."""
    keeps = f"version {current.get('version')} keeps serving"
    _wait_reported(
        config,
        proc,
        ready_file,
        exited=lambda code: (
            f"the new model server for {name!r} exited (code {code}) before it was "
            f"ready; {keeps}. Its log ends with:\n{log_tail(log_file)}"
        ),
        timed_out=f"the new model server for {name!r} was not ready after {config.start_timeout:.0f} s; "
        f"{keeps}",
        log=log_file,
    )


def _wait_ready(config: Any, name: str, url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + config.start_timeout
    delay = 0.1
    while True:
        code = proc.poll()
        if code is not None:
            raise ServingError(
                f"the model server for {name!r} exited (code {code}) before it was ready. "
                f"Its log ends with:\n{log_tail(log_path)}",
                hint=f"full log: {log_path}",
            )
        ready, reason = probe_ready(url, name)
        if ready:
            return
        if ready is False and reason.startswith(f"Model with name {name} is not ready. Loading failed"):
            raise ServingError(
                f"the model server for {name!r} could not load the model: "
                f"{reason.split('Loading failed: ', 1)[-1]}",
                hint=f"full log: {log_path}",
            )
        if time.monotonic() > deadline:
            raise ServingError(
                f"the model server for {name!r} was not ready after {config.start_timeout:.0f} s "
                f"({reason or 'no answer'}). Its log ends with:\n{log_tail(log_path)}",
                hint="raise server.start_timeout if the model is large or the machine busy",
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


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
    """Stop this project's server of ``name`` (SIGTERM, then SIGKILL of its group) and drop its record."""
    state = read_state(config, name)
    if state is None:
        log.info("%s is not deployed locally for %s: nothing to stop", name, project_dir(config))
        return
    pid = int(state.get("pid", 0))
    _state.stop_process(pid, foreground=bool(state.get("foreground")), grace=grace)
    _remove_state(config, name, pid)
    log.info("stopped the model server of %s", name)


def announce_when_up(url: str, name: str, version: str, *, out: Any = None) -> threading.Thread:
    """Print ``serving ... at URL`` once the port answers, then a line when the model is ready.

    ``prodml serve`` binds and loads in the same process; this watcher asks the server over
    HTTP, so the banner is never printed for a server that could not bind, and the user
    learns when the model (loaded in the background) starts answering predictions.
    """

    def say(text: str) -> None:
        print(text, file=out or sys.stdout, flush=True)

    def watch() -> None:
        listening = False
        delay = 0.05
        while True:
            ready, reason = probe_ready(url, name, timeout=2.0)
            if ready is not None and not listening:
                listening = True
                say(f"serving {name} {version} at {url}; Ctrl-C stops")
                say(f"  V1 {url}/v1/models/{name}:predict   V2 {url}/v2/models/{name}/infer")
            if ready:
                say(f"ready: {name} {version} answers predictions")
                return
            if ready is False and "Loading failed" in reason:
                say(f"error: {name} {version} could not be loaded: {reason.split('Loading failed: ', 1)[-1]}")
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    thread = threading.Thread(target=watch, name="prodml-serve-banner", daemon=True)
    thread.start()
    return thread


def serve_foreground(
    config: Any, ref: ModelRef, store: ModelStore, source: DataSource | None, name: str
) -> None:
    """``prodml serve``: the server in this process until Ctrl-C (state recorded meanwhile)."""
    from prodml.plugins.servers import _main

    bundle = pull_to_cache(config, ref, store, name)
    previous = _live_state(config, name)
    if previous is not None:
        shown = getattr(config, "config_file", None)
        raise ServingError(
            f"{name!r} of this project is already served by process {previous['pid']} "
            f"at {previous.get('url')}",
            hint=f"stop it first: prodml stop -c {shown or 'FILE'}",
        )
    port = config.port or free_port(config.host)
    if config.port:
        check_port(config, name, port)
    spec, _ = serving_spec(config, ref, bundle, name, source, port)
    state = _new_record(config, name, ref, bundle, os.getpid(), port)
    state.update(log="", foreground=True, reuse_port=False)
    _write_state(config, name, state)
    url = state["url"]
    announce_when_up(url, name, ref.version)
    try:
        _main.run_spec(spec)
    finally:
        _remove_state(config, name, os.getpid())
