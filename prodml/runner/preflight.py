"""Pre-flight: check what the stages about to run need before any of them runs.

``prodml run`` used to find a missing credential after sixteen seconds of training, and a
taken port after fetch, train and export. Each backend knows what it needs
(:meth:`~prodml.core.interfaces.Preflight.preflight`); this module asks the backends of the
stages about to run, and turns the answers into one error that lists every problem.

Only the standard library is imported here; the backends import an SDK only when a check
needs it (and network checks run only when not ``offline``).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prodml.core.errors import ProdmlError

#: the roles whose backends a stage uses (the serve stage reads the model from the store)
STAGE_ROLES: dict[str, tuple[str, ...]] = {
    "fetch": ("source",),
    "train": ("trainer",),
    "export": ("store",),
    "serve": ("store", "server"),
}


class PreflightError(ProdmlError):
    """What the stages about to run need is not there (files, credentials, a store, a port)."""

    exit_code = 2

    def __init__(self, problems: Sequence[str], *, file: str | None = None) -> None:
        self.problems = list(problems)
        where = f" ({file})" if file else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"pre-flight found {len(self.problems)} problem(s){where}; nothing was run:\n{lines}",
            hint="fix them, or check again with `prodml validate -c FILE` "
            "(--offline skips the network checks)",
        )


def roles_for(config: Any, stages: Iterable[str]) -> list[str]:
    """The roles whose backends ``stages`` use, in pipeline order, once each."""
    roles: list[str] = []
    for stage in stages:
        for role in STAGE_ROLES.get(stage, ()):
            if role not in roles:
                roles.append(role)
    server = config.section("server")
    if "serve" in stages and getattr(server, "feature_lookup", False) and "source" not in roles:
        roles.insert(0, "source")  # the server looks features up in the source's online store
    return roles


def problems(
    config: Any,
    stages: Iterable[str] | None = None,
    *,
    offline: bool = False,
    registry: Any = None,
    include_runner: bool = True,
) -> list[str]:
    """Every problem the backends of ``stages`` (default: all configured) report, each naming its role.

    Backends whose optional dependency is missing are skipped: ``prodml validate`` and
    the plugin registry already say which extra to install.
    """
    from prodml.core.plugins import default_registry

    registry = registry or default_registry()
    stages = list(config.stages if stages is None else stages)
    roles = roles_for(config, stages)
    backends: dict[str, Any] = {}
    runner_section = config.section("runner")
    if (
        runner_section is not None
        and registry.get("runner", runner_section.type).missing_dependency() is None
    ):
        backends["runner"] = registry.create("runner", runner_section)
        if not getattr(backends["runner"], "stages_run_here", True):
            # pods run the stages: this machine's credentials, stores and ports are not theirs
            roles = [r for r in roles if r in ("source", "trainer")]
            offline = True
    if include_runner and runner_section is not None:
        roles.append("runner")
    found: list[str] = []
    for role in roles:
        section = config.section(role)
        if section is None:
            continue
        if registry.get(role, section.type).missing_dependency() is not None:
            continue
        backend = backends.get(role) or registry.create(role, section)
        for problem in backend.preflight(offline=offline) or ():
            found.append(f"{role} ({section.type}): {problem}")
    return found


def check(
    config: Any,
    stages: Iterable[str] | None = None,
    *,
    offline: bool = False,
    file: str | None = None,
    registry: Any = None,
    include_runner: bool = True,
) -> None:
    """Raise :class:`PreflightError` listing every problem, or return when there is none."""
    found = problems(config, stages, offline=offline, registry=registry, include_runner=include_runner)
    if found:
        raise PreflightError(found, file=file)


# -- helpers the built-in backends share ------------------------------------------------------


def missing_file(path: str | os.PathLike[str] | None, what: str, *, field: str) -> str | None:
    """A problem when ``path`` is not a readable file (None: nothing configured, no problem)."""
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        return None if os.access(p, os.R_OK) else f"{what} {p} is not readable ({field})"
    if p.is_dir():
        return f"{what} {p} is a folder, not a file ({field})"
    return f"{what} {p} does not exist ({field})"


def missing_dir(path: str | os.PathLike[str] | None, what: str, *, field: str) -> str | None:
    """A problem when ``path`` is not an existing folder."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        return None
    return (
        f"{what} {p} is a file, not a folder ({field})"
        if p.exists()
        else f"{what} {p} does not exist ({field})"
    )


def unwritable_dir(path: str | os.PathLike[str], what: str, *, field: str) -> str | None:
    """A problem when ``path`` cannot be created or written (checks the nearest existing folder)."""
    p = Path(path).absolute()
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{what} {p} cannot be created: {probe} is a file ({field})"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{what} {p} is not writable: no write permission on {probe} ({field})"
    return None


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (None when it can; port 0 always can).

    Binds and closes at once, with SO_REUSEADDR like the servers themselves, so a socket
    in TIME_WAIT does not count as taken.
    """
    if port == 0:
        return None
    bind_host = "127.0.0.1" if host == "" else host
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "in use"
            return exc.strerror or str(exc)
    return None
