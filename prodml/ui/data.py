"""The project as the dashboard reads it (:class:`Project`); no web framework here.

Sources, all through the same code the CLI uses:

- run folders (``<runner.work_dir>/runs/<run-id>/run.json``, :mod:`prodml.runner._runs`);
- the model store, through the :class:`~prodml.core.interfaces.ModelStore` interface
  (``versions``, ``resolve``) and each version's ``prodml.json``, checked against the
  version's manifest before it is believed;
- the history of ``latest`` and the promote/rollback writes, through
  :mod:`prodml.lifecycle` (the module ``prodml models promote|rollback`` calls);
- the running local servers (:func:`prodml.plugins.servers._state.list_servers`, as
  ``prodml status`` lists them).

:mod:`prodml.ui.runs`, :mod:`prodml.ui.models` and :mod:`prodml.ui.endpoints` hold what
each page shows; :class:`Project` finds it. Stored versions are immutable, so their metadata
is read once per process and kept. Everything returned is plain data with secrets already
left out; :meth:`Project.scrub` is a last line of defence the web layer applies to every
page it sends.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodml.core.bundle import METADATA, BundleMetadata
from prodml.core.errors import BundleError, ProdmlError, StoreError
from prodml.ui.endpoints import ServerView, record_field, server_view
from prodml.ui.models import (
    MoveView,
    VersionView,
    epoch_history,
    lineage,
    lineage_rows,
    move_view,
    read_version_file,
)
from prodml.ui.runs import (
    HINT_MARK,
    OutputView,
    RunView,
    StageView,
    list_files,
    parse_time,
    read_json,
    split_hint,
)

if TYPE_CHECKING:
    from prodml.core.config import ProdmlConfig
    from prodml.core.interfaces import ModelStore
    from prodml.core.plugins import Registry

#: run and version ids sort by time (``20261129T173000Z-3fa2b1``, ``...Z-1a2b3c4d``)
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]+$")
VERSION_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
RUNS_PER_PAGE = 50
VERSIONS_PER_PAGE = 25
MASK = "***"

__all__ = ["NotFound", "Page", "Project", "epoch_history", "lineage", "read_version_file"]


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
            started_at=parse_time(record.get("started_at")),
            finished_at=parse_time(record.get("finished_at")),
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
        """What each stage of ``run`` left (in its folder, or where the run recorded it)."""
        from prodml.runner._runs import RunFolder

        root, record = self._run_record(run.run_id)
        folder = RunFolder(root, record)
        views = []
        for stage in run.stages:
            if stage.name not in ("fetch", "train", "export", "serve"):
                continue
            # a kfp-local run keeps outputs in its pipeline's artifact folders; run.json says where
            path = folder.produced(stage.name)
            views.append(self._output(stage.name, path))
        return views

    def _output(self, stage: str, path: Path) -> OutputView:
        if not path.exists():
            return OutputView(stage, str(path), False)
        if stage == "fetch":
            data = read_json(path / "schema.json")
            rows, features = data.get("rows"), data.get("feature_names") or []
            summary = f"{rows} rows × {len(features)} features, label {data.get('label')!r}"
            files = list_files(path)
            return OutputView(stage, str(path), True, summary, files, data)
        if stage == "train":
            files = list_files(path)
            total = sum(size for _, size in files)
            summary = f"{len(files)} files, {_human_bytes(total)}"
            return OutputView(stage, str(path), True, summary, files, read_json(path / METADATA))
        data = read_json(path)
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
        views = [move_view(m) for m in moves]
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
        return {"a": left, "b": right, "metrics": rows, "lineage": lineage_rows(left, right)}

    # -- endpoints ----------------------------------------------------------------------

    def served_name(self) -> str:
        """The name the model answers to (``server.model_name`` or the project)."""
        section = self.config.section("server")
        return getattr(section, "model_name", None) or self.model_name

    def servers(self) -> list[ServerView]:
        """The running local servers of this project's model (``prodml status``'s records)."""
        if self.config.section("server") is None:
            return []
        from prodml.plugins.servers._state import list_servers

        name = self.served_name()
        return [server_view(r) for r in list_servers(prune=True) if self._ours(r, name)]

    def _ours(self, record: Any, name: str) -> bool:
        if record_field(record, "model", "model_name") != name:
            return False
        project_dir = record_field(record, "project_dir")
        if project_dir:  # servers are keyed by project folder: server.project_dir or the config's
            ours = getattr(self.config.section("server"), "project_dir", None) or self.config.base_dir
            return Path(project_dir).resolve() == Path(ours).resolve()
        config_file = record_field(record, "config_file")
        if config_file and self.config.source_file is not None:
            return Path(config_file).resolve() == self.config.source_file.resolve()
        return True

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


def _suppress(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except ProdmlError:
        return None


def _field(record: Any, *names: str) -> Any:
    for name in names:
        if isinstance(record, dict) and name in record:
            return record[name]
        if hasattr(record, name):
            return getattr(record, name)
    return None
