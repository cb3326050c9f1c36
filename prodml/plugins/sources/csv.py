"""The ``csv`` data source: features and label from a local CSV file."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prodml import hookimpl
from prodml.core.config import ConfigPath, PluginConfig
from prodml.core.interfaces import DataSource
from prodml.core.plugins import Backend


class CsvSourceConfig(PluginConfig):
    """Read training data from a CSV file."""

    type: Literal["csv"]
    path: ConfigPath = Field(description="CSV file (relative to the config file)")
    label: str = Field(description="label column")
    features: list[str] | None = Field(None, description="feature columns (default: all but label and drop)")
    drop: list[str] = Field(default_factory=list, description="columns to ignore (ids, timestamps)")


class CsvSource(DataSource):
    """Features and label from a local CSV file."""

    config: CsvSourceConfig


@hookimpl
def prodml_backends() -> list[Backend]:
    return [Backend("source", "csv", CsvSourceConfig, CsvSource, description="local CSV file")]
