"""What the dashboard shows, read from what prodml keeps; no web framework here.

Sources, all through the same code the CLI uses:

- run folders (``<runner.work_dir>/runs/<run-id>/run.json``, :mod:`prodml.runner._runs`);
- the model store, through the :class:`~prodml.core.interfaces.ModelStore` interface
  (``versions``, ``resolve``) and each version's ``prodml.json``, checked against the
  version's manifest before it is believed;
- the history of ``latest`` and the promote/rollback writes, through
  :mod:`prodml.lifecycle` (the module ``prodml models promote|rollback`` calls);
- the running local servers (:mod:`prodml.plugins.servers._state`, ``prodml status``).

Stored versions are immutable, so their metadata is read once per process and kept.
Everything returned is plain data with secrets already left out; :meth:`Project.scrub`
is a last line of defence the web layer applies to every page it sends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodml.core.bundle import MANIFEST, METADATA, BundleMetadata, parse_manifest
from prodml.core.errors import BundleError, ProdmlError, StoreError

if TYPE_CHECKING:
    from prodml.core.config import ProdmlConfig
    from prodml.core.interfaces import ModelStore
    from prodml.core.plugins import Registry

#: run and version ids sort by time (``20261129T173000Z-3fa2b1``, ``...Z-1a2b3c4d``)
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]+$")
VERSION_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
RUNS_PER_PAGE = 50
VERSIONS_PER_PAGE = 25
HINT_MARK = "\n  hint: "
MASK = "***"


class NotFound(LookupError):
    """An unknown run or version id (the web layer answers 404)."""


@dataclass(frozen=True)
class Page:
    """One page of a newest-first listing."""

    items: list[Any]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_previous(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


# -- runs ------------------------------------------------------------------------------


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


# -- models ----------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionView:
    """A stored version with what its prodml.json says (``metadata`` None if unreadable)."""

    version: str
    created_at: datetime
    size_bytes: int
    latest: bool
    metadata: BundleMetadata | None = None
    problem: str = ""

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.metadata.metrics) if self.metadata else {}

    @property
    def history(self) -> dict[str, list[float]]:
        """Per-epoch curves (``loss``, ``val_loss``, ...) when the bundle recorded them."""
        return epoch_history(self.metadata) if self.metadata else {}

    @property
    def evaluation(self) -> dict[str, Any]:
        """The evaluation block (metrics, rows, fingerprint); empty for older bundles."""
        return _evaluation(self.metadata) if self.metadata else {}


@dataclass(frozen=True)
class MoveView:
    """One move of ``latest`` (promote, rollback, export)."""

    at: datetime | None
    from_version: str | None
    to_version: str
    reason: str
    run_id: str | None = None


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


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def split_hint(text: str | None) -> tuple[str | None, str | None]:
    """A recorded error's message and its hint (ProdmlError writes them on two lines)."""
    if not text:
        return text, None
    message, sep, hint = text.partition(HINT_MARK)
    return message, (hint.strip() if sep else None)


def epoch_history(metadata: BundleMetadata) -> dict[str, list[float]]:
    """``{metric: [value per epoch]}`` from prodml.json.

    The agreed place is a top-level ``history`` (issue 12); until every bundle has it, the
    same shape under ``extra.history`` is read too. Bundles without either have no curves.
    """
    raw = getattr(metadata, "history", None) or metadata.extra.get("history") or {}
    if isinstance(raw, list):  # one record per epoch: [{"loss": .., "val_loss": ..}, ...]
        merged: dict[str, list[float]] = {}
        for record in raw:
            if isinstance(record, dict):
                for key, value in record.items():
                    if key != "epoch" and isinstance(value, int | float):
                        merged.setdefault(key, []).append(float(value))
        raw = merged
    if not isinstance(raw, dict):
        return {}
    curves = {}
    for key, values in raw.items():
        if isinstance(values, list) and all(isinstance(v, int | float) for v in values):
            curves[str(key)] = [float(v) for v in values]
    return curves


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class Project:
    """One prodml project (a loaded config) as the dashboard reads it.

    Args:
        config: the loaded config (``prodml ui -c FILE``).
        registry: where plugins come from (default: the process-wide registry).
    """

    def __init__(self, config: ProdmlConfig, *, registry: Registry | None = None) -> None:
        from prodml.core.plugins import default_registry

        self.config = config
        self.registry = registry or default_registry()
        self._store: ModelStore | None = None
        self._source: Any = None
        self._metadata: dict[str, BundleMetadata] = {}
        self._lock = threading.Lock()
        self._secrets = sorted({s for s in config.secret_values() if len(s) >= 4}, key=len, reverse=True)

    # -- the project ----------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.config.model_name

    @property
    def work_dir(self) -> Path:
        runner = self.config.section("runner")
        work = getattr(runner, "work_dir", None)
        return Path(work) if work is not None else self.config.base_dir / ".prodml"

    @property
    def runs_dir(self) -> Path:
        return self.work_dir / "runs"

    def scrub(self, text: str) -> str:
        """``text`` with every secret value of the config replaced by ``***``."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def config_summary(self) -> dict[str, Any]:
        """The validated config as plain data, every secret masked (as ``prodml validate``)."""
        from prodml.core.config import masked_summary

        return masked_summary(self.config)

    # -- runs -------------------------------------------------------------------------

    def run_ids(self) -> list[str]:
        """Ids of every run folder, newest first (ids sort by start time).

        Names are matched, not stat'ed: 500 runs cost one directory read; a folder whose
        run.json is missing is skipped when its page is read.
        """
        try:
            names = os.listdir(self.runs_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted((name for name in names if RUN_ID.match(name)), reverse=True)

    def runs(self, page: int = 1, per_page: int = RUNS_PER_PAGE) -> Page:
        """A page of runs, newest first; only that page's records are read."""
        ids = self.run_ids()
        page = max(1, page)
        chosen = ids[(page - 1) * per_page : page * per_page]
        items = []
        for run_id in chosen:
            with contextlib.suppress(NotFound):  # removed or half-written meanwhile
                items.append(self.run(run_id))
        return Page(items, page, per_page, len(ids))

    def _run_record(self, run_id: str) -> tuple[Path, dict[str, Any]]:
        if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
            raise NotFound(f"no run {run_id!r}")
        root = self.runs_dir / run_id
        try:
            record = json.loads((root / "run.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            raise NotFound(f"no run {run_id!r} in {self.runs_dir}") from None
        return root, record

    def run(self, run_id: str) -> RunView:
        """One run's record.

        Raises:
            NotFound: there is no run ``run_id``.
        """
        root, record = self._run_record(run_id)
        stages = []
        for name, entry in (record.get("stages") or {}).items():
            error, hint = split_hint(entry.get("error"))
            stages.append(
                StageView(
                    name=name,
                    status=str(entry.get("status", "pending")),
                    seconds=entry.get("seconds"),
                    attempts=entry.get("attempts"),
                    started_at=entry.get("started_at"),
                    error=error,
                    hint=hint,
                    output=entry.get("output"),
                    result=entry.get("result") or {},
                )
            )
        return RunView(
            run_id=root.name,
            runner=str(record.get("runner", "?")),
            status=str(record.get("status", "?")),
            started_at=_time(record.get("started_at")),
            finished_at=_time(record.get("finished_at")),
            stages=stages,
            failed_stage=record.get("failed_stage") or record.get("interrupted_stage"),
            config_digest=str(record.get("config_digest", "")),
            config_file=str(record.get("config_file", "")),
            resumed=list(record.get("resumed") or []),
            server_stopped=bool(record.get("server_stopped")),
            root=str(root),
        )

    def resume_command(self, run: RunView) -> str | None:
        """The command that resumes a failed or interrupted run at the stage that failed."""
        if run.status in ("ok", "running"):
            return None
        stage = run.failed_stage or next((s.name for s in run.stages if s.status != "ok"), None)
        if stage is None:
            return None
        from prodml.runner.local import resume_command

        command = resume_command(self.config, stage)
        latest = self.runs_dir / "latest"
        with contextlib.suppress(OSError):
            if latest.read_text(encoding="utf-8").strip() == run.run_id:
                return command
        return f"{command} --run-id {run.run_id}"

    def config_matches(self, run: RunView) -> bool:
        """Whether the run used the config the dashboard shows (same secret-free digest)."""
        return bool(run.config_digest) and run.config_digest == self.config.digest()

    def outputs(self, run: RunView) -> list[OutputView]:
        """What each stage of ``run`` left in its folder."""
        from prodml.runner._runs import RunFolder

        folder = RunFolder(Path(run.root), {})
        views = []
        for stage in run.stages:
            if stage.name not in ("fetch", "train", "export", "serve"):
                continue
            path = folder.output_of(stage.name)
            views.append(self._output(stage.name, path))
        return views

    def _output(self, stage: str, path: Path) -> OutputView:
        if not path.exists():
            return OutputView(stage, str(path), False)
        if stage == "fetch":
            data = _read_json(path / "schema.json")
            rows, features = data.get("rows"), data.get("feature_names") or []
            summary = f"{rows} rows × {len(features)} features, label {data.get('label')!r}"
            files = _files(path)
            return OutputView(stage, str(path), True, summary, files, data)
        if stage == "train":
            files = _files(path)
            total = sum(size for _, size in files)
            summary = f"{len(files)} files, {_human_bytes(total)}"
            return OutputView(stage, str(path), True, summary, files, _read_json(path / METADATA))
        data = _read_json(path)
        if stage == "export":
            summary = f"{data.get('model_name')} version {data.get('version')}"
        else:
            summary = f"{data.get('model_name')} at {data.get('url')}"
        return OutputView(stage, str(path), True, summary, [], data)

    def run_log(self, run: RunView, limit: int = 200_000) -> str | None:
        """The run's log (``run.log`` in its folder), its last ``limit`` characters."""
        path = Path(run.root) / "run.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        return self.scrub(text[-limit:])

    # -- the store ----------------------------------------------------------------------

    @property
    def has_store(self) -> bool:
        return self.config.section("store") is not None

    @property
    def store(self) -> ModelStore:
        if self._store is None:
            section = self.config.section("store")
            if section is None:
                raise StoreError("the config has no `store:` section: there are no versions to show")
            self._store = self.registry.create("store", section)
        return self._store

    def versions(self, page: int = 1, per_page: int = VERSIONS_PER_PAGE) -> Page:
        """A page of stored versions, newest first, with each one's prodml.json."""
        listed = self.store.versions(self.model_name)
        page = max(1, page)
        chosen = listed[(page - 1) * per_page : page * per_page]
        return Page(self._with_metadata(chosen), page, per_page, len(listed))

    def version(self, version: str) -> VersionView:
        """One stored version (``latest`` resolves to its id), without listing every version.

        Raises:
            NotFound: the store has no complete version ``version``.
        """
        from prodml.core.interfaces import ModelVersion

        latest = self.latest_version()
        if version == "latest":
            if latest is None:
                raise NotFound(f"no version of {self.model_name!r} is stored yet")
            version = latest
        if not VERSION_ID.match(version):
            raise NotFound(f"{version!r} is not a version id")
        try:
            self.store.resolve(self.model_name, version)
        except StoreError as exc:
            raise NotFound(str(exc).split(HINT_MARK)[0]) from None
        size = self._version_size(version)
        if size is None:  # a store without prodml's object layout: find it in the listing
            for entry in self.store.versions(self.model_name):
                if entry.version == version:
                    return self._with_metadata([entry])[0]
            raise NotFound(f"no version {version!r} of {self.model_name!r}")
        created = datetime.strptime(version[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        entry = ModelVersion(version=version, created_at=created, size_bytes=size, latest=version == latest)
        return self._with_metadata([entry])[0]

    def _version_size(self, version: str) -> int | None:
        """Bytes of one version from a listing of its folder alone (None: store cannot say)."""
        lister, keyer = getattr(self.store, "_list", None), getattr(self.store, "version_key", None)
        if lister is None or keyer is None:
            return None
        return sum(info.size for info in lister(keyer(self.model_name, version) + "/"))

    def latest_version(self) -> str | None:
        try:
            return self.store.resolve(self.model_name).version
        except StoreError:
            return None

    def _with_metadata(self, entries: Sequence[Any]) -> list[VersionView]:
        def one(entry: Any) -> VersionView:
            try:
                meta, problem = self.metadata(entry.version), ""
            except ProdmlError as exc:
                meta, problem = None, str(exc).split(HINT_MARK)[0]
            return VersionView(
                entry.version, entry.created_at, entry.size_bytes, entry.latest, meta, self.scrub(problem)
            )

        missing = [e for e in entries if e.version not in self._metadata]
        if len(missing) > 1:  # remote stores: one round trip per version, so in parallel
            with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                list(pool.map(lambda e: _suppress(lambda: self.metadata(e.version)), missing))
        return [one(e) for e in entries]

    def metadata(self, version: str) -> BundleMetadata:
        """prodml.json of a stored version, checked against the version's manifest.

        Raises:
            BundleError: the file does not match the manifest (the version was tampered with).
            StoreError: the version is missing or the store cannot be read.
        """
        with self._lock:
            cached = self._metadata.get(version)
        if cached is not None:
            return cached
        data = read_version_file(self.store, self.model_name, version, METADATA)
        try:
            meta = BundleMetadata.model_validate_json(data)
        except ValueError as exc:
            raise BundleError(f"prodml.json of {self.model_name} {version} is not valid: {exc}") from None
        with self._lock:
            self._metadata[version] = meta
        return meta

    # -- lifecycle ----------------------------------------------------------------------

    def lifecycle(self) -> Any:
        """:mod:`prodml.lifecycle` (promote, rollback, history), or None before it exists."""
        try:
            from prodml import lifecycle
        except ImportError:
            return None
        return lifecycle

    @property
    def can_move_latest(self) -> bool:
        """Whether promote/rollback can be offered (the CLI's lifecycle code is installed)."""
        module = self.lifecycle()
        return module is not None and hasattr(module, "promote") and hasattr(module, "rollback")

    def history(self) -> list[MoveView] | None:
        """Every move of ``latest``, newest first; None when this prodml keeps no history."""
        module = self.lifecycle()
        if module is not None and hasattr(module, "history"):
            moves = module.history(self.config)
        elif hasattr(self.store, "latest_history"):
            moves = self.store.latest_history(self.model_name)
        else:
            return None
        views = [_move(m) for m in moves]
        return list(reversed(views))

    def promote(self, version: str) -> str:
        """Make ``version`` latest with the CLI's code; returns what happened, for the page."""
        module = self._require_lifecycle("promote")
        result = module.promote(self.config, version)
        return self._moved("promoted", result)

    def rollback(self) -> str:
        """Move ``latest`` back to the version before it, with the CLI's code."""
        module = self._require_lifecycle("rollback")
        result = module.rollback(self.config)
        return self._moved("rolled back", result)

    def _moved(self, what: str, result: Any) -> str:
        latest = self.latest_version()
        previous = getattr(result, "previous", None)
        text = f"{what}: latest is now {latest}" + (f" (was {previous})" if previous else "")
        endpoint = getattr(result, "endpoint", None)
        if endpoint is not None:
            text += f"; the server at {endpoint.url} serves it"
        return text

    def _require_lifecycle(self, action: str) -> Any:
        module = self.lifecycle()
        if module is None or not hasattr(module, action):
            raise StoreError(
                f"{action} is not available in this prodml (prodml.lifecycle is missing)",
                hint=f"use `prodml models {action} -c FILE` from a prodml that has it",
            )
        return module

    def compare(self, a: str, b: str) -> dict[str, Any]:
        """Two versions side by side: metrics, lineage, size.

        Raises:
            NotFound: either version is unknown.
        """
        left, right = self.version(a), self.version(b)
        rows = []
        metrics = sorted(set(left.metrics) | set(right.metrics))
        for name in metrics:
            x, y = left.metrics.get(name), right.metrics.get(name)
            delta = None if x is None or y is None else y - x
            rows.append((name, x, y, delta))
        return {"a": left, "b": right, "metrics": rows, "lineage": _lineage_rows(left, right)}

    # -- endpoints ----------------------------------------------------------------------

    def served_name(self) -> str:
        """The name the model answers to (``server.model_name`` or the project)."""
        section = self.config.section("server")
        return getattr(section, "model_name", None) or self.model_name

    def servers(self) -> list[ServerView]:
        """The running local servers of this project's model (ready probed now)."""
        section = self.config.section("server")
        if section is None:
            return []
        name = self.served_name()
        with contextlib.suppress(ImportError):
            from prodml.plugins.servers._state import list_servers  # issue 12's shared registry

            return [_server_view(r) for r in list_servers(prune=True) if self._ours(r, name)]
        return self._servers_from_state_file(section, name)

    def _ours(self, record: Any, name: str) -> bool:
        model = _field(record, "model", "model_name")
        if model != name:
            return False
        project_dir = _field(record, "project_dir")
        if project_dir:  # servers are keyed by project folder: server.project_dir or the config's
            ours = getattr(self.config.section("server"), "project_dir", None) or self.config.base_dir
            return Path(project_dir).resolve() == Path(ours).resolve()
        config_file = _field(record, "config_file")
        if config_file and self.config.source_file is not None:
            return Path(config_file).resolve() == self.config.source_file.resolve()
        return True

    def _servers_from_state_file(self, section: Any, name: str) -> list[ServerView]:
        if not hasattr(section, "resolved_state_dir"):
            return []
        from prodml.plugins.servers import _local

        state = _local.read_state(section, name)
        if state is None:
            return []
        pid = int(state.get("pid", 0))
        if not _local.process_alive(pid, entry_point=not state.get("foreground")):
            return []
        ready, reason = _local.probe_ready(state["url"], name, timeout=1.0)
        return [
            ServerView(
                model_name=name,
                version=str(state.get("version", "")),
                url=str(state["url"]),
                ready=ready,
                reason=reason,
                pid=pid,
                started_at=_time(state.get("started_at")),
                config_file=str(self.config.source_file or ""),
            )
        ]

    def server(self, model_name: str) -> ServerView:
        for server in self.servers():
            if server.model_name == model_name:
                return server
        raise NotFound(f"no running server for {model_name!r}")

    def example_row(self, feature_names: Sequence[str]) -> dict[str, Any]:
        """A row to prefill the try-it form: the first row of the newest fetched dataset."""
        import pandas as pd

        for run_id in self.run_ids()[:20]:
            data = self.runs_dir / run_id / "dataset" / "dataset.parquet"
            if data.is_file():
                try:
                    frame = pd.read_parquet(data).head(1)
                except (OSError, ValueError):
                    continue
                if set(feature_names) <= set(frame.columns) and len(frame):
                    return {name: frame[name].iloc[0].item() for name in frame.columns}
        return {}

    def try_it(
        self, server: ServerView, rows: list[Any], protocol: str = "v1", timeout: float = 30
    ) -> dict[str, Any]:
        """Send ``rows`` to ``server`` (a real request); the answer and the round-trip time."""
        from prodml.plugins.servers.client import predict, predictions

        started = time.perf_counter()
        answer = predict(server.url, server.model_name, rows, protocol=protocol, timeout=timeout)
        elapsed = time.perf_counter() - started
        return {"answer": answer, "predictions": predictions(answer), "ms": elapsed * 1000}

    # -- features (a feature-store source) -----------------------------------------------

    @property
    def source(self) -> Any:
        if self._source is None:
            section = self.config.section("source")
            if section is None:
                return None
            self._source = self.registry.create("source", section)
        return self._source

    def has_feature_store(self) -> bool:
        """Whether the source is a feature store (it has feature views to show)."""
        section = self.config.section("source")
        if section is None:
            return False
        from prodml.core.interfaces import DataSource

        cls = self.registry.get("source", section.type).backend.implementation  # type: ignore[attr-defined]
        # a capability, not a type name: the source serves online features of an entity
        return getattr(cls, "online_features", None) is not DataSource.online_features

    def feature_views(self) -> list[dict[str, Any]]:
        """The source's feature views: name, entities, TTL, features, which ones the model uses."""
        source = self.source
        if hasattr(source, "feature_views"):
            return list(source.feature_views())
        store = getattr(source, "store", None)  # Feast's FeatureStore, definitions applied
        if store is None or not hasattr(store, "list_feature_views"):
            return []
        used = set(source.feature_refs)
        views = []
        for view in sorted(store.list_feature_views(), key=lambda v: v.name):
            ttl = view.ttl.total_seconds() if view.ttl else None
            features = [
                {"name": f.name, "dtype": str(f.dtype), "used": f"{view.name}:{f.name}" in used}
                for f in view.features
            ]
            views.append(
                {
                    "name": view.name,
                    "entities": list(view.join_keys),
                    "ttl_seconds": ttl,
                    "features": features,
                }
            )
        return views

    def online_values(self, entity: dict[str, Any]) -> dict[str, Any]:
        """The online store's current feature values of one entity."""
        frame = self.source.online_features([entity])
        return {name: frame[name].iloc[0].item() for name in frame.columns}


# -- helpers ---------------------------------------------------------------------------


def read_version_file(store: Any, model_name: str, version: str, name: str) -> bytes:
    """One file of a stored version, checked against the version's manifest.

    Stores built on prodml's object layout read the two objects directly (the dashboard
    needs prodml.json of 25 versions per page, not 25 whole bundles); any other store is
    asked for the whole version through ``pull``, which verifies everything.
    """
    reader = getattr(store, "_read", None)
    keyer = getattr(store, "version_key", None)
    if reader is None or keyer is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="prodml-ui-") as tmp:
            ref = store.resolve(model_name, version)
            folder = store.pull(ref, Path(tmp) / "bundle")  # pull verifies every file
            return (Path(folder) / name).read_bytes()
    from prodml.plugins.stores._base import join_key

    vkey = keyer(model_name, version)
    manifest = reader(join_key(vkey, MANIFEST))
    if manifest is None:
        raise StoreError(f"version {version} of {model_name!r} is missing or incomplete")
    entries = parse_manifest(manifest.decode("utf-8"), source=f"{model_name} {version}/{MANIFEST}")
    data = reader(join_key(vkey, name))
    if data is None or name not in entries or hashlib.sha256(data).hexdigest() != entries[name]:
        raise BundleError(
            f"{name} of {model_name} {version} does not match the version's {MANIFEST}; refusing it",
            hint="the stored version was modified; push the model again",
        )
    return data


def _suppress(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ProdmlError:
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _files(folder: Path, limit: int = 200) -> list[tuple[str, int]]:
    out = []
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            out.append((path.relative_to(folder).as_posix(), path.stat().st_size))
            if len(out) >= limit:
                break
    return out


def _field(record: Any, *names: str) -> Any:
    for name in names:
        if isinstance(record, dict) and name in record:
            return record[name]
        if hasattr(record, name):
            return getattr(record, name)
    return None


def _move(move: Any) -> MoveView:
    return MoveView(
        at=_time(_field(move, "at")),
        from_version=_field(move, "from_version"),
        to_version=str(_field(move, "to_version") or ""),
        reason=str(_field(move, "reason") or ""),
        run_id=_field(move, "run_id"),
    )


def _server_view(record: Any) -> ServerView:
    ready = _field(record, "ready")
    return ServerView(
        model_name=str(_field(record, "model", "model_name") or ""),
        version=str(_field(record, "version") or ""),
        url=str(_field(record, "url") or ""),
        ready=ready if isinstance(ready, bool) else None,
        reason=str(_field(record, "reason") or ""),
        pid=_field(record, "pid"),
        started_at=_time(_field(record, "started_at")),
        config_file=str(_field(record, "config_file") or ""),
    )


def _lineage(view: VersionView) -> dict[str, str]:
    meta = view.metadata
    if meta is None:
        return {}
    data = meta.training_data or {}
    evaluation = _evaluation(meta)
    return {
        "training rows": str(data.get("rows", "")),
        "training data sha256": str(data.get("sha256", "")),
        "evaluation rows": str(evaluation.get("rows", "")),
        "evaluation rows sha256": str(evaluation.get("fingerprint", "")),
        "features": ", ".join(meta.feature_names),
        "feature refs": ", ".join(meta.feature_refs),
        "label": meta.label,
        "config digest": meta.config_digest,
        "framework": meta.framework,
        **{f"{k} version": v for k, v in sorted(meta.versions.items())},
    }


def _evaluation(meta: BundleMetadata) -> dict[str, Any]:
    evaluation = getattr(meta, "evaluation", None) or meta.extra.get("evaluation") or {}
    if hasattr(evaluation, "model_dump"):
        evaluation = evaluation.model_dump(mode="json")
    return evaluation if isinstance(evaluation, dict) else {}


def lineage(view: VersionView) -> dict[str, str]:
    """Where a version came from: its data fingerprint, features, config digest, versions."""
    return {k: v for k, v in _lineage(view).items() if v}


def _lineage_rows(a: VersionView, b: VersionView) -> list[tuple[str, str, str, bool]]:
    left, right = _lineage(a), _lineage(b)
    keys = list(dict.fromkeys([*left, *right]))
    return [(k, left.get(k, ""), right.get(k, ""), left.get(k, "") == right.get(k, "")) for k in keys]
