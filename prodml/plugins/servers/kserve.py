"""The ``kserve`` server backend: KServe's ModelServer on this machine, or an InferenceService.

``mode: local`` pulls the model version from the store into a local cache (verified against
its manifest), starts KServe's Python ModelServer for it in a detached process (it outlives
the caller, e.g. a kfp.local step) and returns once the model answers; a small state file
per model name lets ``status``/``undeploy`` work from any process. ``mode: cluster`` renders
and applies a ``serving.kserve.io/v1beta1`` InferenceService with KServeClient.

This module imports only the standard library and pydantic: kserve, TensorFlow and the
Kubernetes client are imported by the code paths that use them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from prodml import hookimpl
from prodml.core.config import ConfigPath, VariantConfig, config_base_dir
from prodml.core.interfaces import DataSource, Endpoint, ModelRef, ModelServer, ModelStore, ServerStatus
from prodml.core.plugins import Backend
from prodml.core.versions import KSERVE_DEPLOYMENT_MODE, KSERVE_VERSION, TF_SERVING_VERSION

log = logging.getLogger("prodml.server")

DEFAULT_MAX_REQUEST_BYTES = 4 << 20


class KServeServerConfig(VariantConfig):
    """Serve the model with KServe: its Python ModelServer here (`mode: local`), or an
    InferenceService on a cluster (`mode: cluster`); each mode has its own keys."""

    default_variant: ClassVar[str | None] = "local"

    type: Literal["kserve"]
    mode: Literal["local", "cluster"] = Field(
        "local",
        description="`local`: KServe's ModelServer in a process on this machine; "
        "`cluster`: a KServe InferenceService applied with KServeClient",
    )
    model_name: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="name the model answers to in URLs (default: the config's `project`)",
    )
    version: str = Field("latest", description="model version to serve: `latest` or a version id")
    workers: int = Field(
        1, ge=1, le=64, description="server processes sharing the port (each loads the model once)"
    )
    max_request_bytes: int = Field(
        DEFAULT_MAX_REQUEST_BYTES,
        ge=1024,
        description="larger request bodies are refused with 413 before they are read",
    )
    max_rows: int = Field(100_000, ge=1, description="most rows (instances) one request may carry")
    feature_lookup: bool = Field(
        False,
        description="accept requests carrying only entity keys and fetch the model's features "
        "from the source's online store (Feast) with the feature refs recorded at training",
    )
    trust_model_code: bool = Field(
        False,
        description="load models that need arbitrary Python code (Lambda/custom layers); "
        "only for code you trust",
    )

    @field_validator("version")
    @classmethod
    def _version_text(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"{value!r} is not a version: use `latest` or an id from `prodml models`")
        return value


class KServeLocalConfig(KServeServerConfig):
    """`mode: local`: KServe's Python ModelServer in a process on this machine."""

    mode: Literal["local"] = Field("local", description="`local`: a ModelServer process on this machine")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port (0: any free port)")
    access_log: bool = Field(False, description="log one line per request")
    start_timeout: float = Field(
        180, gt=0, description="seconds to wait for the model to become ready before giving up"
    )
    state_dir: ConfigPath | None = Field(
        None,
        description="folder for model caches, server logs and server records "
        "(default: $PRODML_STATE_HOME/serving; PRODML_STATE_HOME defaults to "
        "$XDG_CACHE_HOME/prodml or ~/.cache/prodml)",
    )
    project_dir: ConfigPath | None = Field(
        None,
        description="the project folder a running server belongs to; with the model name it "
        "keys the server's record, so projects sharing a `project:` name never touch each "
        "other's server (default: the config file's folder)",
    )
    _config_file: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _project_folder(self, info: ValidationInfo) -> KServeLocalConfig:
        # filled in (not left None) so that it travels with the config into pipeline steps
        if self.project_dir is None and self.mode == "local":
            object.__setattr__(self, "project_dir", config_base_dir(info).resolve())
        source_file = (info.context or {}).get("source_file")
        self._config_file = str(source_file) if source_file else None
        return self

    def resolved_state_dir(self) -> Path:
        """Where local-mode state lives (the same for every process using this config)."""
        if self.state_dir is not None:
            return Path(self.state_dir)
        from prodml.plugins.servers._state import default_root

        return default_root()

    @property
    def config_file(self) -> str | None:
        """The YAML file this config was read from (None when built in code or in a pipeline step)."""
        return self._config_file


#: Metrics KServe's Knative autoscaler scales on, which its Standard (raw deployment) mode,
#: scaling with a HorizontalPodAutoscaler, does not have.
KNATIVE_ONLY_METRICS = ("concurrency", "rps")


class Autoscaling(BaseModel):
    """How KServe scales the predictor: replica bounds, the metric and its target per replica."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    min_replicas: int = Field(1, ge=0, description="fewest predictor replicas")
    max_replicas: int = Field(ge=1, description="most predictor replicas")
    metric: str = Field(
        "cpu",
        description="what KServe scales on (its scaleMetric): `cpu` or `memory` in the Standard "
        "deployment mode prodml installs; `concurrency` or `rps` need KServe's Serverless (Knative) mode",
    )
    target: int = Field(
        80,
        ge=1,
        description="the metric's target per replica (scaleTarget): % utilization for cpu/memory, "
        "in-flight requests for concurrency, requests/s for rps",
    )

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        # the choices are the released InferenceService CRD's, not a list of our own
        from prodml.core import cluster_check

        schema = cluster_check.crd_schema("serving.kserve.io/v1beta1", "InferenceService") or {}
        choices = (
            (schema.get("properties", {}).get("spec", {}).get("properties", {}).get("predictor", {}))
            .get("properties", {})
            .get("scaleMetric", {})
            .get("enum", [])
        )
        if choices and value not in choices:
            raise ValueError(
                f"{value!r} is not a metric KServe {KSERVE_VERSION} scales on (its CRD's "
                f"spec.predictor.scaleMetric): {', '.join(choices)}"
            )
        if value in KNATIVE_ONLY_METRICS and KSERVE_DEPLOYMENT_MODE == "Standard":
            raise ValueError(
                f"{value!r} needs KServe's Serverless (Knative) mode; prodml installs the "
                f"{KSERVE_DEPLOYMENT_MODE} mode, whose HorizontalPodAutoscaler scales on cpu or memory"
            )
        return value

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}")
        return self


class KServeClusterConfig(KServeServerConfig):
    """`mode: cluster`: a `serving.kserve.io/v1beta1` InferenceService on a Kubernetes cluster."""

    mode: Literal["cluster"] = Field(description="`cluster`: a KServe InferenceService")
    runtime: Literal["prodml", "tensorflow"] = Field(
        "prodml",
        description="`prodml` (default) runs this predictor from `image`: model.keras with the "
        "TensorFlow it was trained with, V1+V2, validation, feature lookup; `tensorflow` serves "
        "saved_model/ with KServe's TF-Serving runtime at runtimeVersion "
        f"{TF_SERVING_VERSION} (V1 only; bundles from a newer TensorFlow are refused)",
    )
    protocol: Literal["v1", "v2"] = Field("v1", description="the InferenceService's protocol")
    image: str | None = Field(
        None, description="runtime prodml: the serving image built from deploy/Dockerfile"
    )
    image_config_path: str | None = Field(
        None, description="feature lookup: path of this config file inside the image"
    )
    namespace: str = Field("default", description="Kubernetes namespace")
    service_account: str | None = Field(
        None,
        description="ServiceAccount of the predictor (default: <model>-storage when the store "
        "needs credentials)",
    )
    secret_name: str | None = Field(None, description="name of the storage Secret (default: <model>-storage)")
    storage_endpoint: str | None = Field(
        None,
        description="the store's endpoint as pods reach it (default: the store's own, e.g. "
        "store.endpoint_url)",
    )
    resources: dict[Literal["requests", "limits"], dict[str, str]] = Field(
        default_factory=lambda: {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        description="container resources, e.g. {requests: {cpu: 500m, memory: 1Gi}}",
    )
    min_replicas: int = Field(1, ge=0, description="fewest predictor replicas")
    max_replicas: int = Field(1, ge=1, description="most predictor replicas")
    kube_context: str | None = Field(
        None,
        description="kubeconfig context (default: the current one; inside a pod the in-cluster "
        "service account is used)",
    )
    ready_timeout: float = Field(600, gt=0, description="seconds to wait for Ready")

    autoscaling: Autoscaling | None = Field(
        None,
        description="scale the predictor on a metric between replica bounds "
        "({min_replicas, max_replicas, metric: cpu|memory, target}); replaces min/max_replicas",
    )

    @model_validator(mode="after")
    def _replicas(self) -> KServeClusterConfig:
        both = {"min_replicas", "max_replicas"} & self.model_fields_set
        if self.autoscaling is not None and both:
            raise ValueError(
                f"set the replica bounds in server.autoscaling only ({', '.join(sorted(both))} "
                "is also set beside it)"
            )
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}")
        return self


KServeServerConfig.variants = {"local": KServeLocalConfig, "cluster": KServeClusterConfig}


class KServeServer(ModelServer):
    """KServe ModelServer (local process) or InferenceService (cluster)."""

    config: KServeServerConfig

    def model_name(self, ref_or_name: ModelRef | str) -> str:
        """The name the model is served under."""
        if self.config.model_name:
            return self.config.model_name
        return ref_or_name.model_name if isinstance(ref_or_name, ModelRef) else ref_or_name

    def preflight(self, *, offline: bool) -> list[str]:
        """Local mode: the port is free, or held by this project's own server (deploy replaces it)."""
        if self.config.mode != "local":
            return []
        from prodml.plugins.servers import _state
        from prodml.runner.preflight import port_taken

        c = self.config
        why = port_taken(c.host, c.port)
        if why is None:
            return []
        listed = _state.list_servers(prune=False, probe=False)  # a pre-flight changes nothing
        holders = [r for r in listed if r.running and r.port == c.port]
        mine = str(c.project_dir) if c.project_dir else None
        if why == "in use" and holders and all(str(r.project_dir) == mine for r in holders):
            return []  # this project's server (a run with --keep-serving): deploying replaces it
        if holders:
            other = holders[0]
            why = f"taken by the model server of {other.model!r} for {other.project_dir} (pid {other.pid})"
        return [
            f"cannot listen on {c.host}:{c.port}: {why} (server.port); stop what uses it, "
            "or set server.port to another port (0 picks a free one)"
        ]

    def deploy(self, ref: ModelRef, store: ModelStore, source: DataSource | None = None) -> Endpoint:
        """Serve ``ref``; return once it answers (local) or the InferenceService is Ready."""
        if self.config.mode == "cluster":
            from prodml.plugins.servers import _cluster

            return _cluster.deploy(self.config, ref, store, source, self.model_name(ref))
        from prodml.plugins.servers import _local

        return _local.deploy(self.config, ref, store, source, self.model_name(ref))

    def status(self, model_name: str) -> ServerStatus:
        """Whether ``model_name`` is deployed and ready."""
        if self.config.mode == "cluster":
            from prodml.plugins.servers import _cluster

            return _cluster.status(self.config, self.model_name(model_name))
        from prodml.plugins.servers import _local

        return _local.status(self.config, self.model_name(model_name))

    def undeploy(self, model_name: str) -> None:
        """Stop serving ``model_name`` (nothing to do when it is not deployed)."""
        if self.config.mode == "cluster":
            from prodml.plugins.servers import _cluster

            _cluster.undeploy(self.config, self.model_name(model_name))
            return
        from prodml.plugins.servers import _local

        _local.undeploy(self.config, self.model_name(model_name))

    def update(
        self,
        ref: ModelRef,
        store: ModelStore,
        source: DataSource | None = None,
        *,
        canary_percent: int | None = None,
    ) -> Endpoint | None:
        """Move the running server of this project's model to ``ref`` without a failed request."""
        if self.config.mode == "cluster":
            from prodml.plugins.servers import _cluster

            return _cluster.update(
                self.config, ref, store, source, self.model_name(ref), canary_percent=canary_percent
            )
        from prodml.plugins.servers import _local

        return _local.update(
            self.config, ref, store, source, self.model_name(ref), canary_percent=canary_percent
        )

    def predict(self, endpoint: Endpoint, rows: Sequence[Sequence[float]]) -> list[Any]:
        """One V1 request with ``rows`` as instances; the predictions."""
        from prodml.plugins.servers.client import predict, predictions

        return predictions(predict(endpoint.url, endpoint.model_name, [list(r) for r in rows], protocol="v1"))

    def serve_foreground(self, ref: ModelRef, store: ModelStore, source: DataSource | None = None) -> None:
        """Local mode: KServe's ModelServer in this process until Ctrl-C."""
        if self.config.mode == "cluster":
            raise NotImplementedError(
                f"{type(self).__name__} does not support serve_foreground in cluster mode"
            )
        from prodml.plugins.servers import _local

        _local.serve_foreground(self.config, ref, store, source, self.model_name(ref))

    def manifests(
        self, store: ModelStore, model_name: str, *, version: str | None = None, offline: bool = False
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The Secret, ServiceAccount and InferenceService a cluster deploy applies (cluster mode)."""
        if self.config.mode != "cluster":
            raise NotImplementedError("kserve mode local applies no Kubernetes objects")
        from prodml.plugins.servers import _cluster

        return _cluster.manifests(
            self.config, store, model_name, self.model_name(model_name), version=version, offline=offline
        )


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
            description="KServe ModelServer (local process, V1+V2) or InferenceService (cluster)",
        )
    ]


def source_description(source: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """How the server process rebuilds ``source``, and the secret values in it.

    The description names the source's classes and holds its config with secrets revealed,
    so it travels to the server process on stdin only (never argv or disk); the secrets
    are returned too, for the server process to mask them in its logs.
    """
    if source is None:
        return None, []
    config = getattr(source, "config", None)
    if config is None or not hasattr(config, "model_dump"):
        return None, []
    from pydantic import BaseModel, SecretStr

    secrets: list[str] = []

    def reveal(value: Any) -> Any:
        if isinstance(value, SecretStr):
            secrets.append(value.get_secret_value())
            return value.get_secret_value()
        if isinstance(value, BaseModel):
            return {name: reveal(getattr(value, name)) for name in type(value).model_fields}
        if isinstance(value, dict):
            return {k: reveal(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [reveal(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return {
        "implementation": f"{type(source).__module__}:{type(source).__qualname__}",
        "config_class": f"{type(config).__module__}:{type(config).__qualname__}",
        "config": reveal(config),
    }, [s for s in secrets if s]
