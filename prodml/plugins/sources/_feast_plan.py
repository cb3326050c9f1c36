"""Translate an applied Feast registry into the DuckDB engine's plain view descriptions.

Everything comes from the registry, as Feast's own offline stores read it: each view's
batch source (file paths), ``timestamp_field`` and ``created_timestamp_column`` (named as in
the files), ``field_mapping`` (file column -> feature or join key name), ``ttl`` (zero or
none: no limit), its entities' join keys, and — through a feature service — the projection's
alias, feature subset and ``join_key_map`` (join key -> entity frame column).

:func:`duckdb_plan` says why not when a view cannot be read by DuckDB here (an on-demand
view, a warehouse or stream source, a Delta table, a remote path), so ``engine: auto`` can
fall back to Feast and say which view made it do so. Imported only after feast itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prodml.plugins.sources._pit_engine import ViewQuery


@dataclass(frozen=True)
class Selection:
    """The views a request reads, each with the projection that shapes it."""

    views: list[tuple[Any, Any]]  # (FeatureView or OnDemandFeatureView, FeatureViewProjection)


def select_views(store: Any, feature_refs: list[str], feature_service: str | None) -> Selection:
    """The registry views behind ``feature_refs`` (or the service), in request order."""
    if feature_service is not None:
        service = store.get_feature_service(feature_service)
        pairs = []
        for projection in service.feature_view_projections:
            pairs.append((_registry_view(store, projection.name), projection))
        return Selection(pairs)
    wanted: dict[str, list[str]] = {}
    for ref in feature_refs:
        view, _, feature = ref.partition(":")
        wanted.setdefault(view, []).append(feature)
    pairs = []
    for name, features in wanted.items():
        view = _registry_view(store, name)
        projection = view.projection
        by_name = {f.name: f for f in view.features}
        projection = _subset(projection, [by_name[f] for f in features if f in by_name])
        pairs.append((view, projection))
    return Selection(pairs)


def _registry_view(store: Any, name: str) -> Any:
    views = {v.name: v for v in store.list_feature_views()}
    if name in views:
        return views[name]
    return {v.name: v for v in store.list_on_demand_feature_views()}[name]


def _subset(projection: Any, fields: list[Any]) -> Any:
    import copy

    out = copy.copy(projection)
    out.features = fields
    return out


def duckdb_plan(
    selection: Selection, repo: Path, *, full_feature_names: bool
) -> tuple[list[ViewQuery], str | None]:
    """The views as :class:`ViewQuery` values, or ``([], reason)`` when DuckDB cannot read one.

    Relative file paths are read against ``repo``, as Feast's file offline store reads them.
    """
    from feast import FileSource
    from feast.data_format import ParquetFormat
    from feast.feature_view import FeatureView

    plans = []
    for view, projection in selection.views:
        if not isinstance(view, FeatureView):
            return [], f"{view.name!r} is an on-demand feature view (its transformation runs in Feast)"
        source = view.batch_source
        if not isinstance(source, FileSource):
            kind = type(source).__name__
            return [], f"view {view.name!r} reads a {kind}, not a file (the join runs in that store)"
        fmt = source.file_format
        path = source.path or ""
        if not (isinstance(fmt, ParquetFormat) or (fmt is None and path.endswith(".parquet"))):
            what = type(fmt).__name__ if fmt is not None else f"file {path}"
            return [], f"view {view.name!r} reads {what}, not Parquet"
        if "://" in path and not path.startswith("file://"):
            return [], f"view {view.name!r} reads a remote path {path}"
        local = path.removeprefix("file://")
        if not Path(local).is_absolute():
            local = str(repo / local)
        plans.append(_view_query(view, projection, local, full_feature_names=full_feature_names))
    return plans, None


def _view_query(view: Any, projection: Any, path: str, *, full_feature_names: bool) -> ViewQuery:
    source = view.batch_source
    # field_mapping maps file columns to the names the view uses; read it backwards
    to_file = {used: column for column, used in (source.field_mapping or {}).items()}
    key_map = projection.join_key_map or {}
    join_keys = tuple((to_file.get(key, key), key_map.get(key, key)) for key in view.join_keys)
    prefix = projection.name_alias or projection.name
    features = tuple(
        (to_file.get(f.name, f.name), f"{prefix}__{f.name}" if full_feature_names else f.name)
        for f in projection.features
    )
    ttl = view.ttl if view.ttl and view.ttl.total_seconds() > 0 else None
    return ViewQuery(
        name=projection.name_to_use(),
        paths=(path,),
        join_keys=join_keys,
        timestamp_field=source.timestamp_field,
        created_column=source.created_timestamp_column or None,
        features=features,
        ttl=ttl,
    )
