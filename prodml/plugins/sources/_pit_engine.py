"""Point-in-time joins computed by DuckDB over Parquet feature files.

The job of this module is one thing: given an entity frame (join keys and a timestamp per
row) and a plain description of feature tables (:class:`ViewQuery`), return the feature
values each row would have seen at its timestamp. It knows nothing of Feast; the feast
source translates its registry into :class:`ViewQuery` values (``_feast_plan.py``).

The rule (the same as Feast's DuckDB offline store, made deterministic):

    candidates = rows of the feature table with the entity row's join key values and
                 ts - ttl <= feature_ts <= ts          (both ends inclusive; no ttl: no lower end)
                 and created <= ts                      (only with ``filter_by_created``)
    value      = the candidate with the greatest (feature_ts, created, file, row in the file);
                 a null ``created`` loses every tie; no candidate: null.

How it is computed without comparing every entity row with every feature row: a row becomes
*available* at ``max(feature_ts, created)`` (at ``feature_ts`` when created times are not
filtered). Sorted by availability, a running maximum of the ordering key (a window
aggregate) gives, at every point in time, the best row available so far; one ASOF join per
view then finds, for each entity row, the last availability point at or before its
timestamp. The TTL needs no search of its own: the best row has the newest feature_ts of
all available rows, so when it is older than the TTL allows, every available row is.

Timestamps are compared as integer nanoseconds since the epoch (naive timestamps are UTC),
so nanosecond entity timestamps are exact on the TTL edge. DuckDB runs under a memory
limit and spills to a private temporary folder, so frames larger than memory complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodml.core.errors import DataError

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

log = logging.getLogger(__name__)

#: share of the machine's memory DuckDB may use when no memory_limit is configured: the
#: Python side holds the entity frame and the result beside it
DEFAULT_MEMORY_SHARE = 0.5
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|b|kb|mb|gb|tb|kib|mib|gib|tib)?\s*$", re.IGNORECASE)
_UNITS = {
    None: 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_ROW = "__prodml_row"
_TS = "__prodml_ts"
_MIN_NS = -(2**63)
#: rows per Arrow batch streamed out of DuckDB: large enough to amortize, small next to memory
_BATCH_ROWS = 1 << 17


@dataclass(frozen=True)
class ViewQuery:
    """One feature table to join: where it is and which of its columns mean what.

    Attributes:
        name: the view's name (in messages and logs).
        paths: Parquet files, folders (all ``*.parquet`` below them) or glob patterns.
        join_keys: ``(column in the files, column in the entity frame)`` pairs.
        timestamp_field: the event time column in the files.
        created_column: the column holding when a row was written, or None.
        features: ``(column in the files, column in the result)`` pairs.
        ttl: how old a value may be at the entity row's time; None: any age.
    """

    name: str
    paths: tuple[str, ...]
    join_keys: tuple[tuple[str, str], ...]
    timestamp_field: str
    created_column: str | None
    features: tuple[tuple[str, str], ...]
    ttl: timedelta | None


def parse_memory_limit(value: str | int | None) -> int:
    """Bytes DuckDB may use: ``"2GB"``, ``"512MiB"``, ``"40%"`` (of the machine) or bytes.

    None gives the default, :data:`DEFAULT_MEMORY_SHARE` of the machine's memory (or of the
    container's limit, when a cgroup sets one).

    Raises:
        ValueError: the value is not a size (config validation reports it on the field).
    """
    if value is None:
        return int(machine_memory() * DEFAULT_MEMORY_SHARE)
    if isinstance(value, int):
        amount, unit = float(value), None
    else:
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"memory_limit {value!r} is not a size; write e.g. 2GB, 512MiB or 40%")
        amount, unit = float(match.group(1)), (match.group(2) or "").lower() or None
    if unit == "%":
        if not 0 < amount <= 100:
            raise ValueError(f"memory_limit {value!r} must be between 0% and 100%")
        return int(machine_memory() * amount / 100)
    limit = int(amount * _UNITS[unit])
    if limit < 16 * 2**20:
        raise ValueError(f"memory_limit {value!r} is below 16 MiB, too little for DuckDB to run a join")
    return limit


def machine_memory() -> int:
    """Physical memory in bytes, or the cgroup (container) limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _parquet_files(view: ViewQuery) -> list[str]:
    """The view's paths as DuckDB ``read_parquet`` arguments (folders become globs)."""
    out = []
    for path in view.paths:
        local = path.removeprefix("file://")
        if Path(local).is_dir():
            out.append(str(Path(local) / "**" / "*.parquet"))
        elif any(ch in local for ch in "*?[") or Path(local).is_file():
            out.append(local)
        else:
            raise DataError(
                f"feature view {view.name!r}: its source file {local} does not exist",
                hint="check the FileSource path in the Feast definitions (relative paths are read "
                "against the repository folder)",
            )
    return out


def _epoch_ns(column: str, column_type: str) -> str:
    """An expression giving ``column`` as nanoseconds since the epoch (naive values are UTC)."""
    quoted = _quote(column)
    kind = column_type.upper()
    if kind.startswith("TIMESTAMP") and ("_NS" in kind):
        return f"epoch_ns({quoted})"  # exact: no cast through microseconds
    # other timestamp widths, dates and ISO strings; the session's time zone is UTC
    return f"epoch_ns(CAST({quoted} AS TIMESTAMPTZ))"


class _Column:
    """One output column filled batch by batch at given row numbers (nulls tracked apart)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.values: Any = None
        self.nulls: Any = None

    def put(self, rows: Any, chunk: Any) -> None:
        import numpy as np
        import pyarrow as pa

        if self.values is None:
            kind = chunk.type
            numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
            dtype = kind.to_pandas_dtype() if numeric else object
            self.values = (
                np.zeros(self.length, dtype=dtype) if numeric else np.full(self.length, None, object)
            )
            self.nulls = np.zeros(self.length, dtype=bool)
        if chunk.null_count:
            self.nulls[rows] = chunk.is_null().to_numpy(zero_copy_only=False)
            chunk = (
                chunk.fill_null(False if self.values.dtype == bool else 0)
                if self.values.dtype != object
                else chunk
            )
        self.values[rows] = chunk.to_numpy(zero_copy_only=False)

    def finish(self) -> Any:
        """The column as pandas would hold it: ints and bools with nulls become float64 / object."""
        import numpy as np

        if self.values is None:  # no rows at all
            return np.zeros(0)
        if not self.nulls.any():
            return self.values
        if self.values.dtype == object:
            return self.values
        if self.values.dtype == bool:
            out = self.values.astype(object)
            out[self.nulls] = None
            return out
        out = self.values.astype("float64") if self.values.dtype.kind in "iu" else self.values
        out[self.nulls] = np.nan
        return out


class PointInTimeJoin:
    """A DuckDB session that answers point-in-time joins under a memory limit.

    Args:
        memory_limit: bytes DuckDB may hold before it spills to disk.
        spill_dir: where the private spill folder is made (default: the system's temp dir).
        progress: show DuckDB's progress bar (default: when stderr is a terminal).
    """

    def __init__(
        self, memory_limit: int, *, spill_dir: str | None = None, progress: bool | None = None
    ) -> None:
        self.memory_limit = memory_limit
        self.spill_dir = spill_dir
        self.progress = sys.stderr.isatty() if progress is None else progress

    def _connect(self, spill: str) -> duckdb.DuckDBPyConnection:
        import duckdb

        con = duckdb.connect(config={"threads": os.cpu_count() or 1})
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET memory_limit = '{max(self.memory_limit // 2**20, 16)}MiB'")
        con.execute(f"SET temp_directory = {_literal(spill)}")
        # order is restored explicitly at the end; not keeping it lets operators stream
        con.execute("SET preserve_insertion_order = false")
        con.execute(f"SET enable_progress_bar = {'true' if self.progress else 'false'}")
        if self.progress:
            con.execute("SET enable_progress_bar_print = true")
        return con

    def join(
        self,
        entities: pd.DataFrame,
        timestamp_column: str,
        views: Sequence[ViewQuery],
        *,
        filter_by_created: bool,
    ) -> pd.DataFrame:
        """The features of every entity row as of its timestamp, in entity order.

        Args:
            entities: join key columns and ``timestamp_column`` (``datetime64[*, UTC]``);
                other columns are ignored. Duplicate rows each get their answer.
            timestamp_column: the entity frame's event time column.
            views: the feature tables to join.
            filter_by_created: ignore rows written (``created``) after the entity row's time.

        Returns:
            One column per feature (the views' output names, in order), one row per entity
            row (index 0..n-1); null where a row has no value.

        Raises:
            DataError: a file is missing, lacks a column, or DuckDB fails on the data.
        """
        os.makedirs(self.spill_dir or tempfile.gettempdir(), exist_ok=True)
        spill = tempfile.mkdtemp(prefix="prodml-duckdb-", dir=self.spill_dir)
        started = time.perf_counter()
        try:
            con = self._connect(spill)
            try:
                frame = self._run(con, entities, timestamp_column, views, filter_by_created)
            finally:
                con.close()
        except DataError:
            raise
        except Exception as exc:  # DuckDB's errors name the column or file at fault
            if type(exc).__name__ == "OutOfMemoryException":
                raise DataError(
                    f"the point-in-time join ran out of memory under memory_limit "
                    f"{self.memory_limit / 2**30:.2f} GiB (spilling to {spill}): {exc}",
                    hint="raise source.memory_limit, or free space in the spill folder",
                ) from exc
            raise DataError(f"point-in-time join failed: {type(exc).__name__}: {exc}") from exc
        finally:
            shutil.rmtree(spill, ignore_errors=True)
        log.info(
            "duckdb engine: %d rows x %d features from %d view(s) in %.2fs (memory_limit %.2f GiB)",
            len(frame),
            frame.shape[1],
            len(views),
            time.perf_counter() - started,
            self.memory_limit / 2**30,
        )
        return frame

    def _run(
        self,
        con: duckdb.DuckDBPyConnection,
        entities: pd.DataFrame,
        timestamp_column: str,
        views: Sequence[ViewQuery],
        filter_by_created: bool,
    ) -> pd.DataFrame:
        import numpy as np
        import pandas as pd

        entity_keys = list(dict.fromkeys(e for v in views for _, e in v.join_keys))
        times = pd.DatetimeIndex(entities[timestamp_column])
        request = pd.DataFrame({name: entities[name].to_numpy() for name in entity_keys})
        request[_TS] = times.as_unit("ns").asi8
        request[_ROW] = np.arange(len(request), dtype="int64")
        con.register("__prodml_entities", request)

        columns: dict[str, _Column] = {}
        for index, view in enumerate(views):
            table = f"__prodml_best_{index}"
            self._best_table(con, table, view, filter_by_created)
            on = [f"e.{_quote(entity)} = b.k{n}" for n, (_, entity) in enumerate(view.join_keys)]
            fresh = "TRUE"
            if view.ttl:
                ttl_ns = int(view.ttl / timedelta(microseconds=1)) * 1000
                # Feast's DuckDB store keeps a row while feature_ts + ttl >= ts: inclusive
                fresh = f"b.best.ts >= e.{_TS} - {ttl_ns}"
            values = [f"CASE WHEN {fresh} THEN b.best.f{n} END" for n in range(len(view.features))]
            # One query per view, streamed: its rows arrive in any order and are scattered into
            # place by row number, so neither a sort by row nor a join of the views is needed.
            query = (
                f"SELECT e.{_ROW}, {', '.join(values)} FROM __prodml_entities e "
                f"ASOF LEFT JOIN {table} b ON {' AND '.join(on)} AND e.{_TS} >= b.avail"
            )
            seen = 0
            for batch in con.sql(query).to_arrow_reader(_BATCH_ROWS):
                rows = batch.column(0).to_numpy()
                seen += len(rows)
                for n, (_, output) in enumerate(view.features):
                    columns.setdefault(output, _Column(len(request))).put(rows, batch.column(n + 1))
            if seen != len(request):  # the ASOF LEFT JOIN keeps every row; a bug if not
                raise DataError(
                    f"the point-in-time join returned {seen} rows for {len(request)} entity rows "
                    f"({view.name})"
                )
            con.execute(f"DROP TABLE {table}")
        con.unregister("__prodml_entities")
        outputs = [output for view in views for _, output in view.features]
        return pd.DataFrame({name: columns[name].finish() for name in outputs}, copy=False)

    def _best_table(
        self, con: duckdb.DuckDBPyConnection, table: str, view: ViewQuery, filter_by_created: bool
    ) -> None:
        """Create ``table``: per join key and availability time, the best row available by then."""
        files = _parquet_files(view)
        source = f"read_parquet([{', '.join(map(_literal, files))}])"
        try:
            described = con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()
        except Exception as exc:  # unreadable file: name the view
            raise DataError(f"feature view {view.name!r}: cannot read {', '.join(files)}: {exc}") from exc
        types = {row[0]: str(row[1]) for row in described}
        needed = [
            *(src for src, _ in view.join_keys),
            view.timestamp_field,
            *([view.created_column] if view.created_column else []),
            *(src for src, _ in view.features),
        ]
        missing = [name for name in dict.fromkeys(needed) if name not in types]
        if missing:
            shown = list(types)
            raise DataError(
                f"feature view {view.name!r}: {', '.join(files)} lack column(s) {', '.join(missing)}; "
                f"they have: {', '.join(shown)}",
                hint="check the view's schema, timestamp_field, created_timestamp_column and "
                "field_mapping against the files",
            )
        ts = _epoch_ns(view.timestamp_field, types[view.timestamp_field])
        created = (
            _epoch_ns(view.created_column, types[view.created_column]) if view.created_column else "NULL"
        )
        keys = [f"{_quote(src)} AS k{n}" for n, (src, _) in enumerate(view.join_keys)]
        values = [f"{_quote(src)} AS f{n}" for n, (src, _) in enumerate(view.features)]
        rows = (
            f"SELECT {', '.join(keys)}, {ts} AS ts, CAST({created} AS BIGINT) AS created, "
            # where the row is stored, one number: DuckDB's virtual columns (files in name order)
            f"file_index * {1 << 40} + file_row_number AS stored, {', '.join(values)} FROM {source}"
        )
        if filter_by_created and view.created_column:
            # Feast compares created <= ts, so a row without a created time is never joined
            avail = "CASE WHEN created IS NULL THEN NULL ELSE greatest(ts, created) END"
        else:
            avail = "ts"
        key_cols = ", ".join(f"k{n}" for n in range(len(view.join_keys)))
        not_null = " AND ".join(f"k{n} IS NOT NULL" for n in range(len(view.join_keys)))
        # the struct compares field by field: ts, then created (null loses), then where the row
        # is stored (later file, later row); the feature values ride along, never deciding
        best = (
            "{'ts': ts, 'created': coalesce(created, "
            + str(_MIN_NS)
            + "), 'stored': stored, "
            + ", ".join(f"'f{n}': f{n}" for n in range(len(view.features)))
            + "}"
        )
        con.execute(
            f"CREATE TEMP TABLE {table} AS "
            f"SELECT {key_cols}, avail, max({best}) OVER (PARTITION BY {key_cols} ORDER BY avail "
            f"RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS best "
            f"FROM (SELECT *, {avail} AS avail FROM ({rows})) "
            f"WHERE avail IS NOT NULL AND {not_null}"
        )
