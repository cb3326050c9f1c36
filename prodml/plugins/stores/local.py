"""The ``local`` store backend."""

from __future__ import annotations

from typing import Literal

from prodml import hookimpl
from prodml.core.config import PluginConfig
from prodml.core.interfaces import ModelStore
from prodml.core.plugins import Backend


class LocalStoreConfig(PluginConfig):
    """Config of the ``local`` store."""

    type: Literal["local"]


class LocalStore(ModelStore):
    """local filesystem folder."""


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "store",
            "local",
            LocalStoreConfig,
            LocalStore,
            requires=(),
            extra=None,
            description="local filesystem folder",
        )
    ]
