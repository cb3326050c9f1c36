"""Run folders as the dashboard shows them: each run's stages, outputs and log.

Read from what the runners write (:mod:`prodml.runner._runs`): ``run.json``, ``run.log`` and
each stage's output in the run folder.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HINT_MARK = "\n  hint: "


def parse_time(value: Any) -> datetime | None:
    """A timezone-aware time from a record (ISO text, epoch seconds or a datetime)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


@dataclass(frozen=True)
class StageView:
    """One stage of a run, as run.json records it."""

    name: str
    status: str
    seconds: float | None = None
    attempts: int | None = None
    started_at: str | None = None
    error: str | None = None
    hint: str | None = None
    output: str | None = None
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """One line about the stage's result (what the CLI's progress line says)."""
        r = self.result
        if not r:
            return ""
        if self.name == "fetch":
            width = len(r.get("feature_names") or [])
            return f"{r.get('rows')} rows × {width} features, label {r.get('label')!r}"
        if self.name == "train":
            metrics = r.get("metrics") or {}
            shown = ", ".join(
                f"{k} {v:.4g}" for k, v in list(metrics.items())[:4] if isinstance(v, float | int)
            )
            return f"{r.get('epochs')} epochs" + (f", {shown}" if shown else "")
        if self.name == "export":
            return f"version {r.get('version')}"
        if self.name == "serve":
            return f"{r.get('url')} ({r.get('protocol')})"
        return ""


@dataclass(frozen=True)
class RunView:
    """A run folder's record."""

    run_id: str
    runner: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    stages: list[StageView]
    failed_stage: str | None = None
    config_digest: str = ""
    config_file: str = ""
    resumed: list[dict[str, Any]] = field(default_factory=list)
    server_stopped: bool = False
    root: str = ""

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def seconds(self) -> float | None:
        """Wall time: start to finish, or to now while the run is running."""
        if self.started_at is None:
            return None
        end = self.finished_at or (datetime.now(UTC) if self.running else None)
        return None if end is None else max(0.0, (end - self.started_at).total_seconds())


@dataclass(frozen=True)
class OutputView:
    """What one stage left in the run folder."""

    stage: str
    path: str
    exists: bool
    summary: str = ""
    files: list[tuple[str, int]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def split_hint(text: str | None) -> tuple[str | None, str | None]:
    """A recorded error's message and its hint (ProdmlError writes them on two lines)."""
    if not text:
        return text, None
    message, sep, hint = text.partition(HINT_MARK)
    return message, (hint.strip() if sep else None)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; empty when missing or unreadable (a stage still writing)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def list_files(folder: Path, limit: int = 200) -> list[tuple[str, int]]:
    """(relative path, bytes) of the files under ``folder``, sorted, at most ``limit``."""
    out = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            out.append((path.relative_to(folder).as_posix(), path.stat().st_size))
            if len(out) >= limit:
                break
    return out
