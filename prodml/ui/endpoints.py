"""Running model servers as the dashboard shows them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prodml.ui.runs import parse_time


@dataclass(frozen=True)
class ServerView:
    """A running local model server of this project."""

    model_name: str
    version: str
    url: str
    ready: bool | None
    reason: str = ""
    pid: int | None = None
    started_at: datetime | None = None
    config_file: str = ""

    @property
    def uptime(self) -> float | None:
        if self.started_at is None:
            return None
        return max(0.0, (datetime.now(UTC) - self.started_at).total_seconds())


def server_view(record: Any) -> ServerView:
    """A server record (``list_servers``' ServerRecord, or a state dict) as shown."""
    ready = record_field(record, "ready")
    return ServerView(
        model_name=str(record_field(record, "model", "model_name") or ""),
        version=str(record_field(record, "version") or ""),
        url=str(record_field(record, "url") or ""),
        ready=ready if isinstance(ready, bool) else None,
        reason=str(record_field(record, "reason") or ""),
        pid=record_field(record, "pid"),
        started_at=parse_time(record_field(record, "started_at")),
        config_file=str(record_field(record, "config_file") or ""),
    )


def record_field(record: Any, *names: str) -> Any:
    """The first of ``names`` a server record (a dict or an object) has, else None."""
    for name in names:
        if isinstance(record, dict) and name in record:
            return record[name]
        if hasattr(record, name):
            return getattr(record, name)
    return None
