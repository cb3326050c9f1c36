"""The ``parquet`` data source: features and label from a local Parquet file."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from prodml.plugin import Backend, ConfigPath, DataError, DataSource, PluginConfig, hookimpl

if TYPE_CHECKING:
    import pandas as pd


class ParquetSourceConfig(PluginConfig):
    """Read training data from a Parquet file."""

    type: Literal["parquet"]
    path: ConfigPath = Field(description="Parquet file (relative to the config file)")
    label: str = Field(description="label column")
    features: list[str] | None = Field(
        None, description="feature columns, in model input order (default: all but label and drop)"
    )
    drop: list[str] = Field(default_factory=list, description="columns to ignore (ids, timestamps)")


class ParquetSource(DataSource):
    """Features and label from a local Parquet file."""

    config: ParquetSourceConfig

    @cached_property
    def _columns(self) -> list[str]:
        import pyarrow.parquet as pq

        path = self.config.path
        if not path.is_file():
            raise DataError(f"Parquet file not found: {path}", hint="check source.path in your config")
        try:
            return list(pq.read_schema(path).names)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DataError(f"{path} is not a readable Parquet file: {exc}") from None

    @property
    def label(self) -> str:
        return self.config.label

    @cached_property
    def feature_names(self) -> list[str]:
        columns = self._columns
        path = self.config.path
        if self.label not in columns:
            raise DataError(f"{path}: label column {self.label!r} not found; columns: {', '.join(columns)}")
        if self.config.features is not None:
            missing = [c for c in self.config.features if c not in columns]
            if missing:
                listing = ", ".join(columns)
                raise DataError(f"{path}: feature column(s) {missing} not found; columns: {listing}")
            return list(self.config.features)
        skip = {self.label, *self.config.drop}
        return [c for c in columns if c not in skip]

    def training_frame(self) -> pd.DataFrame:
        import pandas as pd
        from pandas.api.types import is_bool_dtype, is_numeric_dtype

        columns = [*self.feature_names, self.label]
        frame = pd.read_parquet(self.config.path, columns=columns).reset_index(drop=True)
        path = self.config.path
        if frame.empty:
            raise DataError(f"{path} has no rows")
        bad = [c for c in columns if not (is_numeric_dtype(frame[c]) or is_bool_dtype(frame[c]))]
        if bad:
            raise DataError(f"{path}: column(s) {bad} are not numeric; drop them or encode them first")
        nan_rows = frame.isna().any(axis=1)
        if nan_rows.any():
            cols = [c for c in columns if frame[c].isna().any()]
            raise DataError(f"{path}: {int(nan_rows.sum())} row(s) have missing values in {cols}")
        return frame


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "source",
            "parquet",
            ParquetSourceConfig,
            ParquetSource,
            requires=("pyarrow",),
            description="local Parquet file (example plugin)",
        )
    ]
