"""``prodml ui -c FILE``: serve the dashboard of one project until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ui`` command's options (``-c`` is added by the CLI)."""
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0: any)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; the dashboard can move latest)",
    )
    parser.add_argument("--open", action="store_true", help="open the dashboard in a web browser")


def ui_command(args: argparse.Namespace) -> int:
    """Load the config, build the app and serve it in the foreground."""
    from prodml.core.errors import ConfigError, MissingDependencyError

    try:
        import uvicorn

        from prodml.ui.app import create_app
    except ImportError as exc:  # starlette, jinja2 and uvicorn: the ui extra (kserve brings them too)
        raise MissingDependencyError("ui", "dashboard", exc.name or "starlette", "ui") from None
    from prodml.core.config import load_config
    from prodml.ui.data import Project

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: not a port number (0-65535)")
    config = load_config(args.config)
    project = Project(config)
    app = create_app(project, host=args.host)
    if args.host not in LOOPBACK:
        print(
            f"warning: listening on {args.host}: anyone who can reach it sees this project's runs "
            "and models (promote/rollback still need the page's token)",
            file=sys.stderr,
        )
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=port, log_level="warning", access_log=False)
    )
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown_host}:{port}/"
    print(f"prodml dashboard of {config.project} at {url}  (Ctrl-C stops)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    server.run(sockets=[sock])
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a taken port is a clear error, not a log line."""
    import socket

    from prodml.core.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="pick another port with --port (0: any free one)",
        ) from None
    sock.listen(128)
    return sock
