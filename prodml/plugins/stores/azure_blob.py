"""The ``azure_blob`` store backend."""

from __future__ import annotations

from typing import Literal

from prodml import hookimpl
from prodml.core.config import PluginConfig
from prodml.core.interfaces import ModelStore
from prodml.core.plugins import Backend


class AzureBlobStoreConfig(PluginConfig):
    """Config of the ``azure_blob`` store."""

    type: Literal["azure_blob"]


class AzureBlobStore(ModelStore):
    """Azure Blob Storage."""


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "store",
            "azure_blob",
            AzureBlobStoreConfig,
            AzureBlobStore,
            requires=("azure.storage.blob",),
            extra="azure",
            description="Azure Blob Storage",
            aliases=("azure", "blob", "azurite", "abfs"),
        )
    ]
