"""Where local model servers are recorded, and how to list, check and stop them.

Every ``mode: local`` server has a small JSON record, keyed by the config's project folder
*and* the model name, so two projects that share a ``project:`` name (two ``prodml init``
folders, a test suite beside a user's demo) never find, replace or stop each other's
server::

    $PRODML_STATE_HOME/serving/            the default serving root (server.state_dir overrides it)
        servers/<model>-<key>.json         one record per running server
        logs/<model>-<key>.log             its output (the last lines go into every error)
        models/<model>/<version>/          verified bundles pulled from the store

``$PRODML_STATE_HOME`` defaults to ``$XDG_CACHE_HOME/prodml`` or ``~/.cache/prodml``. A
serving root set with ``server.state_dir`` is remembered in ``$PRODML_STATE_HOME/serving-roots``
so that :func:`list_servers` (``prodml status``, the dashboard) finds its servers too.

Only the standard library is imported here: ``prodml status`` must answer at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATE_HOME_ENV = "PRODML_STATE_HOME"
#: the module every local server process runs; a pid whose command line lacks it is not ours
ENTRY_MODULE = "prodml.plugins.servers._main"
ROOTS_FILE = "serving-roots"


def state_home() -> Path:
    """``$PRODML_STATE_HOME``, else ``$XDG_CACHE_HOME/prodml``, else ``~/.cache/prodml``."""
    explicit = os.environ.get(STATE_HOME_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prodml"


def default_root() -> Path:
    """The serving root used when the config sets no ``server.state_dir``."""
    return state_home() / "serving"


def server_key(project_dir: Path | str, model: str) -> str:
    """The file name stem of a server's record and log: ``<model>-<10 hex of the folder>``."""
    import hashlib  # here, not at import: `prodml --help` imports this module (status, stop)

    digest = hashlib.sha256(str(Path(project_dir)).encode()).hexdigest()[:10]
    return f"{model}-{digest}"


def record_path(root: Path, project_dir: Path | str, model: str) -> Path:
    """Where the record of ``model`` served for ``project_dir`` lives under ``root``."""
    return Path(root) / "servers" / f"{server_key(project_dir, model)}.json"


def log_path(root: Path, project_dir: Path | str, model: str) -> Path:
    """The log file of ``model`` served for ``project_dir``."""
    return Path(root) / "logs" / f"{server_key(project_dir, model)}.log"


def remember_root(root: Path) -> None:
    """Record a non-default serving root so that :func:`list_servers` looks there too."""
    root = Path(root).resolve()
    if root == default_root().resolve():
        return
    if root in _known_roots():
        return
    listing = state_home() / ROOTS_FILE
    listing.parent.mkdir(parents=True, exist_ok=True)
    with open(listing, "a", encoding="utf-8") as out:  # one short append: no lock needed
        out.write(f"{root}\n")


def _known_roots() -> list[Path]:
    try:
        lines = (state_home() / ROOTS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return list(dict.fromkeys(Path(line) for line in lines if line.strip()))


def _forget_missing_roots(roots: list[Path]) -> None:
    kept = [r for r in roots if r.is_dir()]
    if len(kept) == len(roots):
        return
    listing = state_home() / ROOTS_FILE
    tmp = listing.with_name(f"{listing.name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        tmp.write_text("".join(f"{r}\n" for r in kept), encoding="utf-8")
        tmp.replace(listing)


# -- records -------------------------------------------------------------------------------


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path`` (None when missing or half-written)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write a record atomically (readers never see half of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def remove_record(path: Path, pid: int | None = None) -> None:
    """Delete the record at ``path`` (only if it still names ``pid``, when given)."""
    record = read_record(path)
    if record is not None and (pid is None or record.get("pid") == pid):
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()


@dataclass(frozen=True)
class ServerRecord:
    """One local model server, as :func:`list_servers` reports it."""

    model: str
    version: str
    url: str
    pid: int
    started_at: datetime | None
    ready: bool
    running: bool
    config_file: str | None
    project_dir: str | None
    host: str = "127.0.0.1"
    port: int = 0
    workers: int = 1
    log: str = ""
    foreground: bool = False
    record_file: str = ""

    @property
    def uptime_seconds(self) -> float | None:
        """Seconds since the server started (None when unknown)."""
        if self.started_at is None:
            return None
        return max(0.0, (datetime.now(UTC) - self.started_at).total_seconds())

    @classmethod
    def from_record(cls, data: dict[str, Any], path: Path, *, running: bool, ready: bool) -> ServerRecord:
        """Build from a record file's JSON."""
        started = None
        with contextlib.suppress(TypeError, ValueError):
            started = datetime.fromisoformat(str(data.get("started_at")))
        return cls(
            model=str(data.get("model_name", "")),
            version=str(data.get("version", "")),
            url=str(data.get("url", "")),
            pid=int(data.get("pid") or 0),
            started_at=started,
            ready=ready,
            running=running,
            config_file=data.get("config_file"),
            project_dir=data.get("project_dir"),
            host=str(data.get("host", "127.0.0.1")),
            port=int(data.get("port") or 0),
            workers=int(data.get("workers") or 1),
            log=str(data.get("log", "")),
            foreground=bool(data.get("foreground")),
            record_file=str(path),
        )


def _record_files(roots: list[Path]) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        files += sorted((root / "servers").glob("*.json"))
        # records written before servers were keyed by project folder: <root>/<model>.json
        files += sorted(p for p in root.glob("*.json") if p.is_file())
    return files


def list_servers(
    prune: bool = True, *, probe: bool = True, roots: list[Path] | None = None
) -> list[ServerRecord]:
    """Every local model server of this user, found through its record.

    Args:
        prune: drop (and delete) the records of servers whose process is gone; with False
            they are listed with ``running=False``.
        probe: ask each running server whether its model is ready (a short HTTP request);
            with False ``ready`` is False for all.
        roots: serving roots to look in (default: the default root and every remembered
            ``server.state_dir``).

    Returns:
        The servers, oldest first.
    """
    if roots is None:
        known = _known_roots()
        if prune:
            _forget_missing_roots(known)
        roots = list(dict.fromkeys([default_root(), *known]))
    found: list[ServerRecord] = []
    for path in _record_files([Path(r) for r in roots]):
        data = read_record(path)
        if data is None or "pid" not in data:
            continue
        pid = int(data.get("pid") or 0)
        running = pid > 0 and process_alive(pid, entry_point=not data.get("foreground"))
        if not running and prune:
            remove_record(path, pid)
            continue
        ready = False
        if running and probe and data.get("url"):
            ready = bool(probe_ready(str(data["url"]), str(data.get("model_name", "")), timeout=1.0)[0])
        found.append(ServerRecord.from_record(data, path, running=running, ready=ready))
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(found, key=lambda r: r.started_at or epoch)


# -- processes and HTTP ----------------------------------------------------------------------


def process_alive(pid: int, *, entry_point: bool = True) -> bool:
    """True when ``pid`` runs (not a zombie) and, with ``entry_point``, is prodml's server process.

    The command-line check keeps a pid that the system reused for something else from
    being taken for (or signalled as) the server.
    """
    if pid <= 0:
        return False
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


def probe_ready(url: str, name: str, timeout: float = 2.0) -> tuple[bool | None, str]:
    """(ready, reason) from ``/v2/models/<name>/ready``; ready None when nothing answers."""
    import urllib.error  # here, not at import: urllib.request costs more than `prodml --help`
    import urllib.request

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


def signal_server(pid: int, sig: int, *, foreground: bool) -> None:
    """Send ``sig`` to a server: a detached one leads its own process group (workers included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if foreground:  # `prodml serve` runs in the user's process group: signal it alone
            os.kill(pid, sig)
        else:
            os.killpg(pid, sig)


def stop_process(pid: int, *, foreground: bool = False, grace: float = 10.0) -> bool:
    """SIGTERM the server, wait up to ``grace`` seconds, then SIGKILL its process group.

    Returns:
        True when it had to be killed.
    """

    def alive() -> bool:
        return process_alive(pid, entry_point=not foreground)

    if not alive():
        return False
    signal_server(pid, signal.SIGTERM, foreground=foreground)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not alive():
        if not foreground:  # workers of a group whose leader exited first
            signal_server(pid, signal.SIGKILL, foreground=False)
            _wait_group_gone(pid)
        return False
    signal_server(pid, signal.SIGKILL, foreground=foreground)
    deadline = time.monotonic() + 5
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not foreground:
        _wait_group_gone(pid)
    return True


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Wait until no live process of the group is left: SIGKILL is delivered asynchronously,
    and a caller that returns at once would still see the workers (and their port)."""
    deadline = time.monotonic() + timeout
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, read from /proc (empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            state_and_rest = entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command name: state, ppid, pgrp, ...
        if len(state_and_rest) > 2 and state_and_rest[0] != "Z" and int(state_and_rest[2]) == pgid:
            found.append(int(entry.name))
    return found


def stop(record: ServerRecord, *, grace: float = 10.0) -> bool:
    """Stop the server of ``record`` cleanly and delete its record; True when it was killed."""
    killed = stop_process(record.pid, foreground=record.foreground, grace=grace)
    if record.record_file:
        remove_record(Path(record.record_file), record.pid)
    return killed


def log_tail(path: Path | str, lines: int = 15) -> str:
    """The last ``lines`` lines of a server log, indented, for error messages."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"  | (no log at {path})"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    if not tail:
        return f"  | (the log {path} is empty: the process wrote nothing before it exited)"
    return "\n".join("  | " + line for line in tail)
