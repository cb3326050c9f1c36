"""The new server's side of a zero-downtime handover on one port (Linux SO_REUSEPORT).

A handover starts a second server process for the new version on the port the running
one listens on. Requests must never meet a server that is not ready, nor be lost in the
old server's accept queue when it closes its socket, so the new process:

1. loads and verifies the model *before* it binds the port (it never answers 503);
2. binds with SO_REUSEPORT, joining the old server's group of listening sockets;
3. attaches a tiny classic-BPF program to the group that sends every new connection to
   the new sockets (the old ones sit at the front of the group, the new ones after them),
   so the old server's accept queue empties while it still runs;
4. writes its pid to the ready file the deploying process waits on;
5. once the old process has exited, detaches the program so the kernel spreads
   connections over all of the new sockets again.

The deploying process (:func:`prodml.plugins.servers._local.update`) then sends the old
server SIGUSR1 (:class:`DrainGate`: its keep-alive clients are told to reconnect), waits a
moment, and stops it; it finishes the requests it has accepted (uvicorn's graceful shutdown).
Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("prodml.server")

SO_ATTACH_REUSEPORT_CBPF = 51  # Linux 4.5
SO_DETACH_REUSEPORT_BPF = 68  # Linux 5.3
_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF  # ancillary load: a random u32


class _Insn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_Insn))]


def steer_to_new(sock: socket.socket, old_sockets: int, new_sockets: int) -> bool:
    """Make the kernel pick socket ``old_sockets + random % new_sockets`` of the group.

    An index past the group's end (a new worker not bound yet) falls back to the
    kernel's hash over all members, all of which serve a loaded model. Returns False
    where the kernel refuses (then the old server's queue is drained by waiting).
    """
    program = (_Insn * 4)(
        _Insn(0x20, 0, 0, _SKF_AD_RANDOM),  # ld  rand
        _Insn(0x94, 0, 0, max(1, new_sockets)),  # mod #new
        _Insn(0x04, 0, 0, max(0, old_sockets)),  # add #old
        _Insn(0x16, 0, 0, 0),  # ret a
    )
    fprog = _Prog(len(program), ctypes.cast(program, ctypes.POINTER(_Insn)))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, bytes(fprog))
    except OSError as exc:
        log.warning("cannot steer new connections to the new server (%s); relying on the drain wait", exc)
        return False
    return True


def release_when_gone(sock: socket.socket, pid: int, *, poll: float = 0.2) -> threading.Thread:
    """Detach the steering program once process ``pid`` (the old server) has exited."""

    def gone() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        return ") Z" in stat

    def watch() -> None:
        while not gone():
            time.sleep(poll)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
        log.info("previous server (pid %d) has stopped: connections spread over every worker again", pid)

    thread = threading.Thread(target=watch, name="prodml-handover", daemon=True)
    thread.start()
    return thread


class DrainGate:
    """ASGI wrapper: after SIGUSR1, every response carries ``Connection: close``.

    A handover sends the old server SIGUSR1 once new connections go to the new one, so
    each keep-alive client ends its connection after its next answer and reconnects (to the
    new server) instead of meeting the old one's shutdown closing an idle connection under a
    request it is sending.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.draining = False
        if threading.current_thread() is threading.main_thread():  # only there can it be caught
            signal.signal(signal.SIGUSR1, self._drain)

    def _drain(self, _signum: int, _frame: Any) -> None:
        if not self.draining:
            self.draining = True
            log.info("draining: answering with Connection: close until stopped")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if not self.draining or scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: dict) -> None:
            if message.get("type") == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


def load_first(model: Any) -> None:
    """Load the model before the port is bound; a failure ends the process (the old one keeps serving)."""
    if not model.load():
        from prodml.core.errors import ServingError

        raise ServingError(f"model {model.name!r} failed to load: {model.failure}")


def after_bind(sock: socket.socket, handover: dict[str, Any], *, primary: bool) -> None:
    """Steer connections to the new sockets (primary only), then report this process as listening."""
    if primary:
        steer_to_new(sock, int(handover.get("old_sockets", 1)), int(handover.get("new_sockets", 1)))
        if handover.get("old_pid"):
            release_when_gone(sock, int(handover["old_pid"]))
    ready_file = handover.get("ready_file")
    if ready_file:
        report_pid(ready_file)


def report_pid(path: str) -> None:
    """Append this process's pid to ``path``: how each worker tells deploy it is ready."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(f"{os.getpid()}\n")
