"""The ``kserve`` server backend."""

from __future__ import annotations

from typing import Literal

from prodml import hookimpl
from prodml.core.config import PluginConfig
from prodml.core.interfaces import ModelServer
from prodml.core.plugins import Backend


class KServeServerConfig(PluginConfig):
    """Config of the ``kserve`` server."""

    type: Literal["kserve"]


class KServeServer(ModelServer):
    """KServe ModelServer (local process) or InferenceService."""


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "server",
            "kserve",
            KServeServerConfig,
            KServeServer,
            requires=("kserve",),
            extra="kserve",
            description="KServe ModelServer (local process) or InferenceService",
        )
    ]
