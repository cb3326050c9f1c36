"""``prodml status`` and ``prodml stop``: the local model servers of this user.

Both read the server records of :mod:`prodml.plugins.servers._state` (no config needed to
list them); only the standard library is imported, so they answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prodml.core.errors import ConfigError, ServingError
from prodml.plugins.servers import _state


def add_arguments(sub: Any) -> None:
    """Add ``status`` and ``stop`` to the CLI's subcommands."""
    p = sub.add_parser(
        "status",
        help="list the running local model servers of this user",
        description="List every running local model server of this user (any project), and "
        "remove the records of servers whose process is gone.",
    )
    p.add_argument("--json", action="store_true", help="print the servers as JSON")
    p = sub.add_parser(
        "stop",
        help="stop a local model server",
        description="Stop a local model server cleanly: SIGTERM, wait, then SIGKILL its process group.",
    )
    p.add_argument("model", nargs="?", metavar="MODEL", help="model name (with --all: every server of it)")
    p.add_argument("-c", "--config", metavar="FILE", help="stop the server of this config's project")
    p.add_argument("--all", action="store_true", help="stop every server of MODEL (or every server)")
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="wait this long before SIGKILL (default 10)",
    )


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _where(record: _state.ServerRecord) -> str:
    return record.config_file or (f"{record.project_dir}/" if record.project_dir else "?")


def status_command(args: argparse.Namespace) -> int:
    """``prodml status``: every running local server, oldest first."""
    servers = _state.list_servers(prune=True)
    if getattr(args, "json", False):
        rows = [
            {
                "model": r.model,
                "version": r.version,
                "url": r.url,
                "pid": r.pid,
                "started_at": r.started_at.isoformat() if r.started_at else None,
                "uptime_seconds": r.uptime_seconds,
                "ready": r.ready,
                "config_file": r.config_file,
                "project_dir": r.project_dir,
                "foreground": r.foreground,
                "log": r.log,
            }
            for r in servers
        ]
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if not servers:
        print("no local model servers are running")
        return 0
    header = ("MODEL", "VERSION", "URL", "PID", "UPTIME", "READY", "CONFIG")
    rows = [
        (
            r.model,
            r.version,
            r.url,
            str(r.pid) + (" (fg)" if r.foreground else ""),
            _uptime(r.uptime_seconds),
            "yes" if r.ready else "no",
            _where(r),
        )
        for r in servers
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return 0


def _stop(record: _state.ServerRecord, grace: float) -> None:
    killed = _state.stop(record, grace=grace)
    how = "killed after the grace period" if killed else "stopped"
    print(f"{how}: {record.model} {record.version} (pid {record.pid}, {record.url}) of {_where(record)}")


def stop_command(args: argparse.Namespace) -> int:
    """``prodml stop -c FILE``, ``prodml stop MODEL [--all]``, ``prodml stop --all``."""
    if args.config and (args.model or args.all):
        raise ConfigError("give either -c FILE or MODEL [--all], not both", hint="prodml stop -c prodml.yaml")
    if args.config:
        return _stop_config(args)
    if not args.model and not args.all:
        raise ConfigError(
            "say which server to stop",
            hint="prodml stop -c FILE (this project's server), prodml stop MODEL --all, or prodml stop --all",
        )
    servers = [
        r for r in _state.list_servers(prune=True, probe=False) if not args.model or r.model == args.model
    ]
    if not servers:
        what = f"of {args.model!r} " if args.model else ""
        print(f"no local model server {what}is running")
        return 0
    if len(servers) > 1 and not args.all:
        listing = "\n".join(f"  {r.model} pid {r.pid} {r.url}  {_where(r)}" for r in servers)
        raise ServingError(
            f"{len(servers)} servers of {args.model!r} run (one per project folder):\n{listing}",
            hint=f"stop one with prodml stop -c FILE, or all of them with prodml stop {args.model} --all",
        )
    for record in servers:
        _stop(record, args.grace)
    return 0


def _stop_config(args: argparse.Namespace) -> int:
    from prodml.core.config import load_config
    from prodml.core.plugins import default_registry

    config = load_config(args.config)
    if config.server is None:
        raise ConfigError("no `server:` section: no server to stop", file=args.config)
    server_config = config.server
    server = default_registry().create("server", server_config)
    name = server.model_name(config.model_name) if hasattr(server, "model_name") else config.model_name
    if hasattr(server_config, "resolved_state_dir") and getattr(server_config, "mode", "local") == "local":
        from prodml.plugins.servers import _local

        path = _local._record_path(server_config, name)
        data = _state.read_record(path)
        alive = data is not None and _state.process_alive(
            int(data.get("pid") or 0), entry_point=not data.get("foreground")
        )
        if not alive:
            if data is not None:
                _state.remove_record(path)
            print(f"no local server of {name!r} is running for {Path(args.config).resolve()}")
            return 0
        _stop(_state.ServerRecord.from_record(data, path, running=True, ready=False), args.grace)
        return 0
    server.undeploy(name)  # another backend, or a cluster: its own way of stopping
    print(f"undeployed {name!r} ({server_config.type})")
    return 0
