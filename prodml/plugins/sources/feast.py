"""The ``feast`` source backend."""

from __future__ import annotations

from typing import Literal

from prodml import hookimpl
from prodml.core.config import PluginConfig
from prodml.core.interfaces import DataSource
from prodml.core.plugins import Backend


class FeastSourceConfig(PluginConfig):
    """Config of the ``feast`` source."""

    type: Literal["feast"]


class FeastSource(DataSource):
    """Feast feature store (point-in-time joins, online store)."""


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
