"""The settings every runner config shares.

All three runners (``local``, ``kfp-local``, ``kfp``) accept the same keys, so that switching
between them is one word in ``runner.type``. Keys that only matter for a cluster (``host``,
``image``, ...) are accepted and ignored by the runners that do not use them.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from pydantic import Field, SecretStr, field_validator

from prodml.core.config import STAGES, ConfigPath, PluginConfig
from prodml.core.interfaces import Runner

#: KFP caching per stage unless configured: fetch reads data that lives outside the pipeline
#: (a CSV that changed, a feature store that was materialised again), so a cached fetch would
#: silently train on stale data; serve has a side effect (a running server) that a cache hit
#: would skip.
DEFAULT_CACHING: dict[str, bool] = {"fetch": False, "train": True, "export": True, "serve": False}
DEFAULT_IMAGE = "ghcr.io/prodml/prodml:0.1.0"


def _per_stage(value: object, what: str) -> object:
    """Accept one value for every stage, or a mapping ``{stage: value}``."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(STAGES))
        if unknown:
            raise ValueError(f"{what} names unknown stage(s) {unknown}; stages are {list(STAGES)}")
        return dict(value)
    if value is None:
        return {}
    return dict.fromkeys(STAGES, value)


class RunnerSettings(PluginConfig):
    """Settings shared by every runner; the ``type`` picks how the stages are executed."""

    work_dir: ConfigPath = Field(
        Path(".prodml"),
        description="folder for run folders (`<work_dir>/runs/<run-id>/`), relative to the config file",
        validate_default=True,
    )
    retries: dict[str, int] = Field(
        default_factory=dict,
        description="retries per stage after a failure, e.g. `{train: 2}`, or one number for all stages",
    )
    enable_caching: dict[str, bool] = Field(
        default_factory=lambda: dict(DEFAULT_CACHING),
        description="KFP caching per stage (`{train: true}`) or one switch for all; "
        "default: on for train and export, off for fetch and serve",
    )
    image: str = Field(
        DEFAULT_IMAGE, description="container image of the pipeline steps (built from deploy/Dockerfile)"
    )
    project_dir: ConfigPath | None = Field(
        None,
        description="kfp: the project folder copied into `image` (default: the current directory); "
        "config paths inside it are rewritten to `image_workdir`",
    )
    image_workdir: str = Field("/app", description="kfp: where the image holds the project folder")
    credentials_secret: str | None = Field(
        None,
        description="kfp: Kubernetes Secret holding the store's credentials, set as environment "
        "variables of the steps that use the store (the config's secrets never enter the pipeline)",
    )
    secret_env: dict[str, str] | None = Field(
        None,
        description="kfp: {secret key: environment variable} set in every step from credentials_secret; "
        "default: the variables the store asks for (its pod_environment, e.g. AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY for S3)",
    )
    host: str | None = Field(
        None, description="kfp: Kubeflow Pipelines API URL (default: $KF_PIPELINES_ENDPOINT)"
    )
    namespace: str | None = Field(None, description="kfp: namespace of a multi-user Kubeflow deployment")
    experiment: str | None = Field(None, description="kfp: experiment to file runs under (default: project)")
    run_name: str | None = Field(None, description="kfp: name of the run (default: project and time)")
    service_account: str | None = Field(
        None, description="kfp: service account of the steps (it must be allowed to apply InferenceServices)"
    )
    token: SecretStr | None = Field(None, description="kfp: bearer token for the KFP API")
    timeout: float = Field(3600, gt=0, description="kfp --wait: seconds to follow the run before giving up")

    @field_validator("retries", mode="before")
    @classmethod
    def _retries(cls, value: object) -> object:
        return _per_stage(value, "runner.retries")

    @field_validator("enable_caching", mode="before")
    @classmethod
    def _caching(cls, value: object) -> object:
        if isinstance(value, Mapping):
            value = {**DEFAULT_CACHING, **_per_stage(value, "runner.enable_caching")}  # type: ignore[dict-item]
        return _per_stage(value, "runner.enable_caching")

    @field_validator("retries")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        for stage, n in value.items():
            if n < 0:
                raise ValueError(f"runner.retries.{stage} must be 0 or more, not {n}")
        return value

    def retries_of(self, stage: str) -> int:
        """How often ``stage`` is retried after failing."""
        return self.retries.get(stage, 0)

    def caching_of(self, stage: str) -> bool:
        """Whether KFP may reuse a cached result of ``stage``."""
        return self.enable_caching.get(stage, DEFAULT_CACHING[stage])


class PrintingRunner(Runner):
    """A runner that reports progress as lines on a stream (stdout unless a test passes one)."""

    def __init__(self, config: RunnerSettings, *, stream: TextIO | None = None) -> None:
        super().__init__(config)
        self.stream = stream

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stdout
