"""Transfer progress for pushes and pulls: bytes and rate on a terminal, silent otherwise."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

log = logging.getLogger("prodml.stores")

#: transfers smaller than this finish before a progress line would be worth reading
MIN_BYTES = 4 << 20
MB = 1 << 20


class TransferProgress:
    """Thread-safe byte counter that redraws one status line at most 5 times a second.

    Shown only when ``stream`` is a TTY and the transfer is at least :data:`MIN_BYTES`, so
    logs, CI output and pipelines stay clean. A summary is logged at INFO either way.
    """

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last_draw = 0.0
        isatty = getattr(self._stream, "isatty", None)
        self.visible = bool(isatty and isatty()) and total >= MIN_BYTES

    def add(self, n: int) -> None:
        """Count ``n`` more bytes transferred."""
        with self._lock:
            self.done += n
            if not self.visible:
                return
            now = time.monotonic()
            if now - self._last_draw < 0.2 and self.done < self.total:
                return
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-6)
        rate = self.done / elapsed / MB
        pct = 100 * self.done / self.total if self.total else 100
        self._stream.write(
            f"\r{self.label}  {self.done / MB:,.1f}/{self.total / MB:,.1f} MB  {pct:5.1f}%  {rate:,.1f} MB/s "
        )
        self._stream.flush()

    def close(self, *, ok: bool = True) -> None:
        """Finish the status line and log a summary."""
        elapsed = max(time.monotonic() - self._start, 1e-6)
        if self.visible:
            with self._lock:
                self._draw(time.monotonic())
                self._stream.write("\n" if ok else "  (interrupted)\n")
                self._stream.flush()
        if ok:
            log.info(
                "%s: %.1f MB in %.2f s (%.1f MB/s)",
                self.label,
                self.done / MB,
                elapsed,
                self.done / MB / elapsed,
            )

    def __enter__(self) -> TransferProgress:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(ok=exc_type is None)
