"""The ``local`` runner backend."""

from __future__ import annotations

from typing import Literal

from prodml import hookimpl
from prodml.core.config import PluginConfig
from prodml.core.interfaces import Runner
from prodml.core.plugins import Backend


class LocalRunnerConfig(PluginConfig):
    """Config of the ``local`` runner."""

    type: Literal["local"]


class LocalRunner(Runner):
    """in-process, stage by stage."""


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "runner",
            "local",
            LocalRunnerConfig,
            LocalRunner,
            requires=(),
            extra=None,
            description="in-process, stage by stage",
        )
    ]
