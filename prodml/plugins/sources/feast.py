"""The ``feast`` data source: point-in-time correct training frames and online features.

For each row of the entity frame (join keys, ``event_timestamp``, label), each feature takes
the newest value whose timestamp is not after the row's timestamp and not older than the
feature view's TTL (``event_ts - ttl <= feature_ts <= event_ts``, both ends inclusive, as
Feast defines it; ties broken by the created timestamp, then by the later stored row). By
default values *written* after the row's timestamp (``created`` later than
``event_timestamp``) are excluded too, so back-filled data cannot leak into training.

Who computes it is ``engine``: prodml's DuckDB queries over the views' Parquet files
(``_feast_plan.py`` reads the registry, ``_pit_engine.py`` joins), or Feast's own
``get_historical_features``; ``auto`` picks DuckDB when it can read every requested view.
docs/feast.md states the rule and where Feast's stores differ from it.

The repository works from a fresh clone: on first use the source imports the repository's
definition files and applies them (what ``feast apply`` does), creating the registry and the
online store where feature_store.yaml says. After building the frame it materializes the
used feature views into the online store, so :meth:`FeastSource.online_features` (used by
the model server with the refs recorded in the bundle) serves the same features.
"""

from __future__ import annotations

import logging
import time
import zoneinfo
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from prodml import hookimpl
from prodml.core.config import ConfigPath, PluginConfig
from prodml.core.errors import ConfigError, DataError
from prodml.core.interfaces import DataSource
from prodml.core.plugins import Backend
from prodml.plugins.sources._checks import check_numeric, suggest

if TYPE_CHECKING:
    import pandas as pd
    from feast import FeatureStore

log = logging.getLogger(__name__)

ROW_ID = "__prodml_row__"
#: materialize from here: Feast's own default start (now - TTL) would skip historical data
MATERIALIZE_FROM = datetime(1970, 1, 1, tzinfo=UTC)


class FeastSourceConfig(PluginConfig):
    """Training data from a Feast feature repository (point-in-time joins, online store)."""

    type: Literal["feast"]
    repo_path: ConfigPath = Field(description="Feast feature repository: the folder with feature_store.yaml")
    feature_store_yaml: str = Field(
        "feature_store.yaml",
        description="file name of the Feast config inside repo_path (e.g. feature_store.duckdb.yaml)",
    )
    features: list[str] | None = Field(
        None, description="feature refs `view:feature`, in the order the model receives them"
    )
    feature_service: str | None = Field(None, description="a Feast feature service (instead of `features`)")
    entity_df: ConfigPath = Field(
        description="CSV or Parquet file of training events: join keys, timestamp column and label"
    )
    label: str = Field(description="label column of entity_df")
    timestamp_column: str = Field("event_timestamp", description="event time column of entity_df")
    timezone: str = Field(
        "UTC", description="time zone of entity_df timestamps written without one (IANA name: Europe/Paris)"
    )
    full_feature_names: bool = Field(
        False, description="name feature columns `view__feature` (needed when two views share a feature name)"
    )
    filter_by_created_timestamp: bool = Field(
        True,
        description="ignore feature values created (written) after the event timestamp; "
        "applies to views whose source has a created_timestamp_column",
    )
    drop_incomplete: bool = Field(
        False,
        description="drop entity rows lacking a feature value (outside the TTL) instead of failing",
    )
    engine: Literal["auto", "duckdb", "feast"] = Field(
        "auto",
        description="who computes training frames: `duckdb` (prodml's DuckDB queries over the views' "
        "Parquet files), `feast` (the repository's offline store), or `auto` (duckdb when every "
        "requested view reads Parquet files, feast otherwise)",
    )
    memory_limit: str | None = Field(
        None,
        description="memory the duckdb engine may use before spilling to disk: 2GB, 512MiB or 40% "
        "(default: half of the machine's memory)",
    )
    spill_dir: ConfigPath | None = Field(
        None, description="folder the duckdb engine spills to (default: the system's temp folder)"
    )
    apply: bool = Field(
        True, description="apply the repository's definitions before use (what `feast apply` does)"
    )
    materialize: bool = Field(True, description="bring the online store up to date after fetching")

    @model_validator(mode="after")
    def _one_selection(self) -> FeastSourceConfig:
        if (self.features is None) == (self.feature_service is None):
            raise ValueError("give either `features` (a list of view:feature refs) or `feature_service`")
        if self.features is not None:
            if not self.features:
                raise ValueError("features is empty; list at least one view:feature ref")
            for ref in self.features:
                view, sep, name = ref.partition(":")
                if not sep or not view or not name or ":" in name:
                    raise ValueError(f"feature ref {ref!r} must look like 'view:feature'")
            if len(set(self.features)) != len(self.features):
                raise ValueError("features lists a ref twice")
        if self.label == self.timestamp_column:
            raise ValueError("label and timestamp_column name the same column")
        return self

    @field_validator("memory_limit")
    @classmethod
    def _a_size(cls, value: str | None) -> str | None:
        from prodml.plugins.sources._pit_engine import parse_memory_limit

        if value is not None:
            parse_memory_limit(value)  # its ValueError names the bad value and the forms accepted
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name: UTC, Europe/Paris") from None
        return value


class FeastSource(DataSource):
    """Point-in-time correct training frames and online features from a Feast repository."""

    config: FeastSourceConfig

    def __init__(self, config: FeastSourceConfig) -> None:
        super().__init__(config)
        self._store: FeatureStore | None = None
        self._refs: list[str] | None = None
        self._keys: list[str] | None = None
        self._views: list[str] = []
        self._online_ready = False
        self._engine: str | None = None
        self._plan: list[Any] = []

    def preflight(self, *, offline: bool) -> list[str]:
        """The repository, its Feast config and the entity file exist (Feast is not imported)."""
        from prodml.runner.preflight import missing_dir, missing_file

        c = self.config
        problem = missing_dir(c.repo_path, "the Feast repository", field="source.repo_path")
        if problem is None:
            problem = missing_file(
                Path(c.repo_path) / c.feature_store_yaml,
                "the Feast config",
                field="source.repo_path / source.feature_store_yaml",
            )
        found = [problem] if problem else []
        entity_problem = missing_file(c.entity_df, "the entity file", field="source.entity_df")
        return [*found, entity_problem] if entity_problem else found

    # -- the store ---------------------------------------------------------------------

    @property
    def store(self) -> FeatureStore:
        """The Feast FeatureStore of the repository, definitions applied on first use."""
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def _open_store(self) -> FeatureStore:
        from feast import FeatureStore
        from feast.repo_config import load_repo_config

        repo = Path(self.config.repo_path)
        yaml_file = repo / self.config.feature_store_yaml
        if not repo.is_dir():
            raise ConfigError(
                f"Feast repository {repo} does not exist",
                field="source.repo_path",
                hint="point repo_path at the folder holding feature_store.yaml (relative to the config file)",
            )
        if not yaml_file.is_file():
            present = sorted(p.name for p in repo.glob("feature_store*.yaml"))
            raise ConfigError(
                f"{repo} is not a Feast repository: {self.config.feature_store_yaml} is missing"
                + (f" (found: {', '.join(present)})" if present else ""),
                field="source.repo_path",
            )
        try:
            repo_config = load_repo_config(repo, yaml_file)
        except Exception as exc:  # FeastConfigError, YAML errors: the file is the user's
            message = f"{yaml_file} is not a valid Feast config: {exc}"
            raise ConfigError(message, field="source.repo_path") from exc
        _make_state_dirs(repo, repo_config)
        # repo_path as well: Feast resolves a relative registry path against it, not the config
        store = FeatureStore(repo_path=str(repo), config=repo_config)
        if self.config.apply:
            self._apply(store, repo)
        return store

    def _apply(self, store: FeatureStore, repo: Path) -> None:
        from prodml.plugins.sources._feast_repo import load_definitions

        objects = load_definitions(repo)
        if not objects:
            raise ConfigError(
                f"the Feast repository {repo} defines no entities or feature views",
                field="source.repo_path",
                hint="add a Python file with Entity / FeatureView definitions",
            )
        started = time.perf_counter()
        try:
            store.apply(objects, partial=True)
        except Exception as exc:  # Feast validates the definitions here; name the repository
            raise ConfigError(
                f"applying the Feast repository {repo} failed: {type(exc).__name__}: {exc}",
                field="source.repo_path",
            ) from exc
        seconds = time.perf_counter() - started
        log.info("applied %d Feast objects from %s in %.2fs", len(objects), repo, seconds)

    # -- features ----------------------------------------------------------------------

    @property
    def label(self) -> str:
        return self.config.label

    @property
    def feature_refs(self) -> list[str]:
        if self._refs is None:
            self._resolve()
        assert self._refs is not None
        return list(self._refs)

    @property
    def entity_keys(self) -> list[str]:
        if self._keys is None:
            self._resolve()
        assert self._keys is not None
        return list(self._keys)

    @property
    def feature_names(self) -> list[str]:
        if self.config.full_feature_names:
            return [ref.replace(":", "__", 1) for ref in self.feature_refs]
        return [ref.partition(":")[2] for ref in self.feature_refs]

    def _resolve(self) -> None:
        """Check the configured refs against the registry; find the views and join keys."""
        store = self.store
        views = {fv.name: fv for fv in store.list_feature_views()}
        on_demand = {fv.name: fv for fv in store.list_on_demand_feature_views()}
        if self.config.feature_service is not None:
            refs = self._service_refs(store)
        else:
            refs = list(self.config.features or ())
            for index, ref in enumerate(refs):
                view_name, _, feature = ref.partition(":")
                view = views.get(view_name) or on_demand.get(view_name)
                if view is None:
                    known = sorted([*views, *on_demand])
                    guess = suggest(view_name, known)
                    raise ConfigError(
                        f"unknown feature view {view_name!r} in {ref!r}; the repository has: "
                        + (", ".join(known) or "none")
                        + (f" — did you mean {guess!r}?" if guess else ""),
                        field=f"source.features[{index}]",
                    )
                names = [f.name for f in view.features]
                if feature not in names:
                    guess = suggest(feature, names)
                    raise ConfigError(
                        f"feature view {view_name!r} has no feature {feature!r}; its features: "
                        + ", ".join(names)
                        + (f" — did you mean {guess!r}?" if guess else ""),
                        field=f"source.features[{index}]",
                    )
        used = list(dict.fromkeys(ref.partition(":")[0] for ref in refs))
        keys: list[str] = []
        for name in used:
            view = views.get(name)
            if view is not None:
                keys += [k for k in view.join_keys if k not in keys]
        self._refs, self._keys = refs, keys
        self._views = [name for name in used if name in views]
        short = [ref.partition(":")[2] for ref in refs]
        if not self.config.full_feature_names and len(set(short)) != len(short):
            twice = sorted({s for s in short if short.count(s) > 1})
            raise ConfigError(
                f"feature name(s) {', '.join(twice)} appear in more than one feature view",
                field="source.full_feature_names",
                hint="set full_feature_names: true to name columns view__feature",
            )
        clash = {self.label, self.config.timestamp_column, *keys} & set(self.feature_names)
        if clash:
            raise ConfigError(
                f"feature column(s) {', '.join(sorted(clash))} clash with the label, timestamp or join keys",
                field="source.label",
            )

    def _service_refs(self, store: FeatureStore) -> list[str]:
        name = self.config.feature_service
        services = {s.name: s for s in store.list_feature_services()}
        service = services.get(name or "")
        if service is None:
            guess = suggest(name or "", list(services))
            raise ConfigError(
                f"unknown feature service {name!r}; the repository has: "
                + (", ".join(sorted(services)) or "none")
                + (f" — did you mean {guess!r}?" if guess else ""),
                field="source.feature_service",
            )
        return [
            f"{projection.name_to_use()}:{feature.name}"
            for projection in service.feature_view_projections
            for feature in projection.features
        ]

    # -- training frame ----------------------------------------------------------------

    def read_entity_df(self, path: str | Path | None = None, *, with_label: bool = True) -> pd.DataFrame:
        """The entity frame with its timestamps as UTC datetimes (checked, not yet joined).

        Args:
            path: the CSV or Parquet file (default: ``entity_df`` of the config).
            with_label: the training case: require the label and keep only the join keys,
                timestamp and label. Without it (batch scoring) the label is not needed and
                every column of the file is kept.
        """
        import pandas as pd

        keys = self.entity_keys  # the repository's problems first: they explain the others
        path = Path(path if path is not None else self.config.entity_df)
        if not path.is_file():
            raise DataError(
                f"feast source: entity_df {path} not found",
                hint="point source.entity_df at a CSV or Parquet file (relative to the config file)",
            )
        try:
            if path.suffix.lower() in (".parquet", ".pq"):
                frame = pd.read_parquet(path)
            elif path.suffix.lower() in (".csv", ".txt"):
                frame = pd.read_csv(path)
            else:
                raise DataError(f"feast source: entity_df {path} must be a .csv or .parquet file")
        except DataError:
            raise
        except Exception as exc:  # pandas/pyarrow parse errors: name the file
            raise DataError(f"feast source: cannot read entity_df {path}: {exc}") from exc
        ts = self.config.timestamp_column
        columns = list(frame.columns)
        need = [*keys, ts, self.label] if with_label else [*keys, ts]
        for name in need:
            if name not in columns:
                what = "join key" if name in keys else "timestamp" if name == ts else "label"
                guess = suggest(name, [str(c) for c in columns])
                raise DataError(
                    f"feast source: entity_df {path} has no {what} column {name!r}; it has: "
                    + ", ".join(map(str, columns))
                    + (f" — did you mean {guess!r}?" if guess else ""),
                    hint=f"entity_df needs the join keys ({', '.join(self.entity_keys)}), "
                    f"{ts!r} and the label {self.label!r}",
                )
        if frame.empty:
            raise DataError(f"feast source: entity_df {path} has no rows")
        frame = (frame[need] if with_label else frame).reset_index(drop=True)
        frame[ts] = self._utc_timestamps(frame[ts], path)
        missing_keys = frame[self.entity_keys].isna().any(axis=1)
        if missing_keys.any():
            raise DataError(
                f"feast source: entity_df {path}: {int(missing_keys.sum())} row(s) lack a join key value, "
                f"first at row {int(missing_keys.to_numpy().argmax()) + 1}"
            )
        return frame

    def _utc_timestamps(self, column: pd.Series, path: Path) -> pd.Series:
        """Timestamps as ``datetime64[ns, UTC]``; naive ones are read in ``config.timezone``."""
        import pandas as pd
        from pandas.api.types import is_datetime64_any_dtype

        name = self.config.timestamp_column
        parsed = column
        if not is_datetime64_any_dtype(column):
            try:
                parsed = pd.to_datetime(column, format="ISO8601")
            except (ValueError, TypeError):
                try:  # mixed UTC offsets are only parseable straight into UTC
                    parsed = pd.to_datetime(column, format="ISO8601", utc=True)
                except (ValueError, TypeError) as exc:
                    raise DataError(
                        f"feast source: entity_df {path}: column {name!r} holds values that are not "
                        f"timestamps: {exc}",
                        hint="write ISO 8601 timestamps, e.g. 2024-03-01T12:00:00Z",
                    ) from None
        if parsed.isna().any():
            raise DataError(
                f"feast source: entity_df {path}: {int(parsed.isna().sum())} row(s) have no {name!r}, "
                f"first at row {int(parsed.isna().to_numpy().argmax()) + 1}"
            )
        if parsed.dt.tz is None:
            log.info(
                "entity_df %s: %r has no time zone; reading it as %s (source.timezone)",
                path,
                name,
                self.config.timezone,
            )
            try:
                parsed = parsed.dt.tz_localize(self.config.timezone, ambiguous="raise", nonexistent="raise")
            except Exception as exc:  # DST gaps/overlaps make a local time ambiguous
                raise DataError(
                    f"feast source: entity_df {path}: {name!r} cannot be read in time zone "
                    f"{self.config.timezone}: {exc}",
                    hint="write timestamps with an offset (…Z or …+01:00), or set source.timezone: UTC",
                ) from None
        return parsed.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")

    @property
    def engine(self) -> str:
        """The engine that computes training frames: ``duckdb`` or ``feast`` (``auto`` resolved)."""
        if self._engine is None:
            self._engine, self._plan = self._choose_engine()
        return self._engine

    def _choose_engine(self) -> tuple[str, list[Any]]:
        from prodml.plugins.sources._feast_plan import duckdb_plan, select_views

        wanted = self.config.engine
        if wanted == "feast":
            log.info("feast source: training frames from Feast's offline store (engine: feast)")
            return "feast", []
        selection = select_views(self.store, self.feature_refs, self.config.feature_service)
        plan, reason = duckdb_plan(
            selection, Path(self.config.repo_path), full_feature_names=self.config.full_feature_names
        )
        if reason is None:
            log.info(
                "feast source: training frames from DuckDB queries over %d view(s) (engine: %s)",
                len(plan),
                wanted,
            )
            return "duckdb", plan
        if wanted == "duckdb":
            raise ConfigError(
                f"engine duckdb cannot compute these features: {reason}",
                field="source.engine",
                hint="set source.engine: auto (or feast) to let Feast's offline store join them",
            )
        log.info("feast source: engine auto chose feast: %s", reason)
        return "feast", []

    def historical_features(self, entities: pd.DataFrame) -> pd.DataFrame:
        """Point-in-time feature values for ``entities``, computed by :attr:`engine`.

        Args:
            entities: the join keys and ``timestamp_column`` (UTC), as
                :meth:`read_entity_df` returns them; rows may repeat.

        Returns:
            The :attr:`feature_names` columns, one row per entity row in order (index
            0..n-1), NaN where a row has no value within the view's TTL.
        """
        if self.engine == "duckdb":
            from prodml.plugins.sources._pit_engine import PointInTimeJoin, parse_memory_limit

            join = PointInTimeJoin(
                parse_memory_limit(self.config.memory_limit),
                spill_dir=str(self.config.spill_dir) if self.config.spill_dir else None,
            )
            joined = join.join(
                entities,
                self.config.timestamp_column,
                self._plan,
                filter_by_created=self.config.filter_by_created_timestamp,
            )
            return joined[self.feature_names]
        return self._feast_features(entities)

    def _feast_features(self, entities: pd.DataFrame) -> pd.DataFrame:
        lookup = [*self.entity_keys, self.config.timestamp_column]
        # Feast is asked once per distinct (join keys, timestamp): its file offline store
        # merges entity rows that repeat such a pair, and every repeat gets the same values.
        group = entities.groupby(lookup, sort=False).ngroup().to_numpy()
        request = entities[lookup].drop_duplicates().reset_index(drop=True)
        request[ROW_ID] = range(len(request))
        if self.config.timestamp_column != "event_timestamp":
            request = request.rename(columns={self.config.timestamp_column: "event_timestamp"})
        joined = self._historical(request)
        if joined[ROW_ID].duplicated().any():
            raise DataError(f"feast returned {len(joined)} rows for {len(request)} distinct entity rows")
        # The file store also drops entity rows whose candidates are all outside the TTL
        # instead of returning nulls: reindexing brings them back as NaN, in entity_df order.
        joined = joined.set_index(ROW_ID).reindex(range(len(request)))
        return joined[self.feature_names].iloc[group].reset_index(drop=True)

    def training_frame(self) -> pd.DataFrame:
        entities = self.read_entity_df()
        features, label = self.feature_names, self.label
        frame = self.historical_features(entities)
        frame[label] = entities[label].to_numpy()
        incomplete = frame[features].isna().any(axis=1)
        if incomplete.any():
            frame = self._incomplete(frame, entities, incomplete)
        if frame.empty:
            raise DataError("feast source: the training frame is empty: no entity row has its features")
        check_numeric(frame, [*features, label], f"feast source (entity_df {self.config.entity_df})")
        if self.config.materialize:
            self.materialize()
        return frame

    def _historical(self, request: pd.DataFrame) -> pd.DataFrame:
        store = self.store
        selection: Any = self.feature_refs
        if self.config.feature_service is not None:
            selection = store.get_feature_service(self.config.feature_service)
        started = time.perf_counter()
        try:
            job = store.get_historical_features(
                entity_df=request,
                features=selection,
                full_feature_names=self.config.full_feature_names,
                filter_by_created_timestamp=self.config.filter_by_created_timestamp,
            )
            joined = job.to_df()
        except Exception as exc:  # Feast/dask/duckdb errors: say which call, keep the cause
            raise DataError(
                f"feast source: get_historical_features failed: {type(exc).__name__}: {exc}"
            ) from exc
        log.info(
            "feast: %d rows x %d features in %.2fs",
            len(joined),
            len(self.feature_names),
            time.perf_counter() - started,
        )
        return joined

    def _incomplete(self, frame: pd.DataFrame, entities: pd.DataFrame, incomplete: pd.Series) -> pd.DataFrame:
        count = int(incomplete.sum())
        per_feature = frame[self.feature_names].isna().sum()
        detail = ", ".join(
            f"{ref} ({int(n)})" for ref, n in zip(self.feature_refs, per_feature, strict=True) if n
        )
        if self.config.drop_incomplete:
            log.warning(
                "feast source: dropping %d of %d entity rows without a feature value: %s",
                count,
                len(frame),
                detail,
            )
            return frame[~incomplete].reset_index(drop=True)
        first = int(incomplete.to_numpy().argmax())
        row = entities.iloc[first]
        where = ", ".join(f"{k}={row[k]}" for k in [*self.entity_keys, self.config.timestamp_column])
        raise DataError(
            f"feast source: {count} of {len(frame)} entity rows have no value (none at or before their "
            f"timestamp within the view's TTL) for: {detail}; first at entity_df row {first + 1} ({where})",
            hint="check the entity rows' timestamps against the feature data and TTLs, "
            "or set source.drop_incomplete: true to train without those rows",
        )

    # -- online store ------------------------------------------------------------------

    def materialize(self, end: datetime | None = None) -> None:
        """Load the latest values of the used feature views into the online store."""
        if not self._views:
            self._resolve()
        if not self._views:
            return
        end = end or datetime.now(UTC)
        started = time.perf_counter()
        from prodml.core.logs import hold_output

        try:
            # Feast prints `Materializing ...` with colour codes even into a pipe: -v shows it
            with hold_output("feast materialize"):
                self.store.materialize(start_date=MATERIALIZE_FROM, end_date=end, feature_views=self._views)
        except Exception as exc:  # the online store is the user's infrastructure
            raise DataError(f"feast source: materialize failed: {type(exc).__name__}: {exc}") from exc
        self._online_ready = True
        log.info("feast: materialized %s up to %s in %.2fs", self._views, end, time.perf_counter() - started)

    def _ensure_online(self) -> None:
        """Materialize once when the online store was never filled (a fresh clone)."""
        if self._online_ready:
            return
        if not self._views:
            self._resolve()
        registry_views = {fv.name: fv for fv in self.store.list_feature_views()}
        never = [v for v in self._views if not registry_views[v].materialization_intervals]
        if never and self.config.materialize:
            log.info("feast: online store has never been filled for %s; materializing", never)
            self.materialize()
        self._online_ready = True

    def online_features(self, entity_rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        """Latest feature values for ``entity_rows`` (dicts of join keys) from the online store.

        Returns the join keys and :attr:`feature_names`, one row per entity row, in order.

        Raises:
            DataError: a row lacks a join key, or the online store has no value for a row.
        """
        import pandas as pd

        keys, features = self.entity_keys, self.feature_names
        self._ensure_online()
        rows = []
        for index, row in enumerate(entity_rows):
            missing = [k for k in keys if k not in row]
            if missing:
                raise DataError(
                    f"entity row {index} lacks join key(s) {', '.join(missing)}; "
                    f"each row needs: {', '.join(keys)}"
                )
            rows.append({k: row[k] for k in keys})
        if not rows:
            raise DataError("online_features needs at least one entity row")
        response = self.store.get_online_features(
            features=self.feature_refs,
            entity_rows=rows,
            full_feature_names=self.config.full_feature_names,
        )
        # Checked and ordered as plain lists, then one DataFrame: the same work as Feast's
        # own to_df(), so serving through prodml costs (almost) nothing over raw Feast.
        values = response.to_dict()
        columns = {name: values[name] for name in [*keys, *features]}
        gaps: dict[str, list[int]] = {}
        for name in features:
            column = columns[name]
            if any(v is None or v != v for v in column):  # v != v: NaN
                gaps[name] = [i for i, v in enumerate(column) if v is None or v != v]
        if gaps:
            name, absent = next(iter(gaps.items()))
            error = DataError(
                f"the online store has no {name!r} for {len(absent)} of {len(rows)} entity row(s), "
                f"first {rows[absent[0]]}",
                hint="unknown entity, or its features were never materialized (run the fetch stage)",
            )
            # which row lacks which feature: the model server answers an unknown entity (no
            # feature at all) with 404 and an entity missing only some features with 422
            error.missing_values = gaps  # type: ignore[attr-defined]
            raise error
        return pd.DataFrame(columns)


def _make_state_dirs(repo: Path, repo_config: Any) -> None:
    """Create the folders of a local registry and SQLite online store (Feast makes one level only)."""
    paths = []
    registry = getattr(repo_config, "registry", None)
    registry_path = getattr(registry, "path", None) if registry is not None else None
    if isinstance(registry_path, str) and "://" not in registry_path:
        paths.append(registry_path)
    online = getattr(repo_config, "online_store", None)
    if getattr(online, "type", None) == "sqlite" and getattr(online, "path", None):
        paths.append(online.path)
    for value in paths:
        path = Path(value)
        if not path.is_absolute():
            path = repo / path
        path.parent.mkdir(parents=True, exist_ok=True)


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "source",
            "feast",
            FeastSourceConfig,
            FeastSource,
            requires=("feast",),
            extra="feast",
            description="Feast feature store (point-in-time joins, online store)",
        )
    ]
