"""The ``kfp-local`` and ``kfp`` runners."""

from __future__ import annotations

from typing import Literal

from prodml import hookimpl
from prodml.core.config import PluginConfig
from prodml.core.interfaces import Runner
from prodml.core.plugins import Backend


class KfpLocalRunnerConfig(PluginConfig):
    """Config of the ``kfp-local`` runner."""

    type: Literal["kfp-local"]


class KfpRunnerConfig(PluginConfig):
    """Config of the ``kfp`` runner."""

    type: Literal["kfp"]


class KfpLocalRunner(Runner):
    """The pipeline executed by kfp.local."""


class KfpRunner(Runner):
    """The pipeline submitted to a Kubeflow Pipelines cluster."""


@hookimpl
def prodml_backends() -> list[Backend]:
    return [
        Backend(
            "runner",
            "kfp-local",
            KfpLocalRunnerConfig,
            KfpLocalRunner,
            requires=("kfp",),
            extra="kfp",
            description="the KFP pipeline, run by kfp.local",
        ),
        Backend(
            "runner",
            "kfp",
            KfpRunnerConfig,
            KfpRunner,
            requires=("kfp",),
            extra="kfp",
            description="the KFP pipeline on a Kubeflow cluster",
        ),
    ]
