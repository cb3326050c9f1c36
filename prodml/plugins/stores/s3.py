"""The ``s3`` store backend."""

from __future__ import annotations

from typing import Literal

from prodml import hookimpl
from prodml.core.config import PluginConfig
from prodml.core.interfaces import ModelStore
from prodml.core.plugins import Backend


class S3StoreConfig(PluginConfig):
    """Config of the ``s3`` store."""

    type: Literal["s3"]


class S3Store(ModelStore):
    """S3, MinIO or any S3-compatible store."""


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "store",
            "s3",
            S3StoreConfig,
            S3Store,
            requires=("boto3",),
            extra="s3",
            description="S3, MinIO or any S3-compatible store",
            aliases=("minio", "aws", "seaweedfs"),
        )
    ]
