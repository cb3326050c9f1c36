"""Kubernetes manifests for ``mode: cluster``: an InferenceService and its storage access.

Built with the kserve SDK's model classes (``V1beta1InferenceService`` ...) and the
kubernetes client's (``V1Secret``, ``V1ServiceAccount``), serialised the way the API server
expects them (camelCase, no nulls). Secret values are never rendered: the Secret carries
``${NAME}`` placeholders for ``envsubst``, and :func:`secret_values` reads the real values
from the environment (or the store config) only when prodml itself applies the manifests.

Combinations that cannot work are refused here, before any cluster call
(:func:`check_cluster_plan`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from prodml.core.errors import ConfigError, ServingError

MANAGED_BY = {"app.kubernetes.io/managed-by": "prodml"}
SERVING_PORT = 8080
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


@dataclass(frozen=True)
class StorageAccess:
    """How KServe's storage initializer reads the model: a Secret and a ServiceAccount.

    Attributes:
        secret_name: name of the Secret (and, with ``-sa``, of its ServiceAccount).
        annotations: KServe's storage annotations on the Secret (S3 endpoint, region, ...).
        keys: the Secret's keys, each with the environment variable its value comes from.
    """

    secret_name: str
    service_account: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    keys: Mapping[str, str] = field(default_factory=dict)


def storage_access(server: Any, store: Any, model_name: str) -> StorageAccess | None:
    """The Secret/ServiceAccount a predictor needs to read ``store`` (None: none needed)."""
    store_type = getattr(store, "type", None)
    secret = server.secret_name or f"{model_name}-storage"
    account = server.service_account or f"{model_name}-storage"
    if store_type == "s3":
        endpoint = server.storage_endpoint or getattr(store, "endpoint_url", None)
        annotations: dict[str, str] = {
            "serving.kserve.io/s3-region": getattr(store, "region", None) or "us-east-1"
        }
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
            annotations["serving.kserve.io/s3-endpoint"] = parsed.netloc
            https = parsed.scheme == "https"
            annotations["serving.kserve.io/s3-usehttps"] = "1" if https else "0"
            annotations["serving.kserve.io/s3-verifyssl"] = "1" if https else "0"
        return StorageAccess(
            secret_name=secret,
            service_account=account,
            annotations=annotations,
            keys={"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
        )
    if store_type == "azure_blob":
        # KServe's storage initializer authenticates to Blob storage with the account key,
        # or with a service principal (AZ_CLIENT_ID, ...); prodml renders the key form.
        return StorageAccess(
            secret_name=secret,
            service_account=account,
            keys={"AZURE_STORAGE_ACCESS_KEY": "AZURE_STORAGE_ACCESS_KEY"},
        )
    return None


@dataclass(frozen=True)
class ClusterPlan:
    """Everything the manifests are rendered from."""

    model_name: str
    version: str
    digest: str
    storage_uri: str
    store_type: str
    has_saved_model: bool | None = None
    feature_lookup: bool = False


def check_cluster_plan(server: Any, plan: ClusterPlan, store: Any) -> None:
    """Refuse combinations that cannot work, before touching the cluster.

    Raises:
        ConfigError: naming the conflicting settings and the one to change.
    """
    runtime, protocol = server.runtime, server.protocol
    if runtime == "tensorflow":
        if protocol == "v2":
            raise ConfigError(
                "protocol v2 with runtime tensorflow cannot work: KServe's TF-Serving runtime speaks V1 only",
                field="server.protocol",
                hint="use protocol: v1, or runtime: prodml (serves V1 and V2 from the project's image)",
            )
        if plan.feature_lookup:
            raise ConfigError(
                "feature_lookup needs runtime prodml: TF-Serving cannot read a feature store",
                field="server.runtime",
                hint="set runtime: prodml and image: <the image built from deploy/Dockerfile>",
            )
        if plan.has_saved_model is False:
            raise ConfigError(
                f"version {plan.version} of {plan.model_name!r} has no saved_model/ folder, which "
                "runtime tensorflow serves",
                field="server.runtime",
                hint="use runtime: prodml (it serves model.keras), or retrain with the keras trainer",
            )
    if runtime == "prodml":
        if not server.image:
            raise ConfigError(
                "runtime prodml needs the serving image",
                field="server.image",
                hint="build deploy/Dockerfile, push it, and set image: registry/prodml:tag",
            )
        if plan.feature_lookup and not server.image_config_path:
            raise ConfigError(
                "feature_lookup on a cluster needs the path of this config inside the image",
                field="server.image_config_path",
                hint="set image_config_path: /app/config/feast.yaml (where the Dockerfile copies it)",
            )
    scheme = urlparse(plan.storage_uri).scheme
    if scheme in ("", "file"):
        raise ConfigError(
            f"store type {plan.store_type!r} keeps models on this machine ({plan.storage_uri}), "
            "which a cluster cannot read",
            field="store.type",
            hint="use store type s3 (MinIO, AWS) or azure_blob for mode: cluster",
        )
    host = urlparse(plan.storage_uri).hostname or ""
    endpoint = server.storage_endpoint or getattr(store, "endpoint_url", None) or ""
    endpoint_host = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}").hostname or ""
    for candidate in (host, endpoint_host):
        if candidate in LOOPBACK_HOSTS:
            raise ConfigError(
                f"the model storage is at {candidate}, a loopback address that pods cannot reach",
                field="server.storage_endpoint",
                hint="set storage_endpoint to the storage's address as seen from inside the cluster",
            )


def storage_uri_for(server: Any, version_uri: str) -> str:
    """The storageUri of the predictor: TF-Serving reads ``saved_model/``, prodml the bundle."""
    base = version_uri.rstrip("/")
    return f"{base}/saved_model" if server.runtime == "tensorflow" else base


def render(server: Any, plan: ClusterPlan, store: Any) -> list[dict[str, Any]]:
    """The manifests (Secret, ServiceAccount, InferenceService) as plain dicts, in apply order."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    docs: list[dict[str, Any]] = []
    access = storage_access(server, store, plan.model_name)
    if access is not None:
        docs += [api.sanitize_for_serialization(obj) for obj in storage_objects(server, access)]
    docs.append(api.sanitize_for_serialization(inference_service(server, plan, access)))
    return docs


def storage_objects(server: Any, access: StorageAccess, values: Mapping[str, str] | None = None) -> list[Any]:
    """The Secret (placeholders unless ``values``) and the ServiceAccount that uses it."""
    from kubernetes.client import V1ObjectMeta, V1ObjectReference, V1Secret, V1ServiceAccount

    data = {key: (values or {}).get(key, f"${{{env}}}") for key, env in access.keys.items()}
    secret = V1Secret(
        api_version="v1",
        kind="Secret",
        metadata=V1ObjectMeta(
            name=access.secret_name,
            namespace=server.namespace,
            labels=dict(MANAGED_BY),
            annotations=dict(access.annotations) or None,
        ),
        type="Opaque",
        string_data=data,
    )
    account = V1ServiceAccount(
        api_version="v1",
        kind="ServiceAccount",
        metadata=V1ObjectMeta(
            name=access.service_account, namespace=server.namespace, labels=dict(MANAGED_BY)
        ),
        secrets=[V1ObjectReference(name=access.secret_name)],
    )
    return [secret, account]


def inference_service(server: Any, plan: ClusterPlan, access: StorageAccess | None) -> Any:
    """The ``serving.kserve.io/v1beta1`` InferenceService, as a kserve SDK object."""
    from kserve import (
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        V1beta1ModelFormat,
        V1beta1ModelSpec,
        V1beta1PredictorSpec,
    )
    from kserve.constants import constants
    from kubernetes.client import V1Container, V1ContainerPort, V1EnvVar, V1ObjectMeta, V1ResourceRequirements

    resources = V1ResourceRequirements(
        requests=dict(server.resources.get("requests", {})) or None,
        limits=dict(server.resources.get("limits", {})) or None,
    )
    predictor: dict[str, Any] = {
        "min_replicas": server.min_replicas,
        "max_replicas": server.max_replicas,
        "service_account_name": access.service_account if access else server.service_account,
    }
    if server.runtime == "tensorflow":
        predictor["model"] = V1beta1ModelSpec(
            name="kserve-container",
            model_format=V1beta1ModelFormat(name="tensorflow"),
            protocol_version=server.protocol,
            storage_uri=plan.storage_uri,
            resources=resources,
        )
    else:
        args = [
            "--bundle", "/mnt/models",
            "--model-name", plan.model_name,
            "--model-version", plan.version,
            "--host", "0.0.0.0",
            "--port", str(SERVING_PORT),
            "--workers", str(server.workers),
            "--max-request-bytes", str(server.max_request_bytes),
        ]  # fmt: skip
        if server.trust_model_code:
            args.append("--trust-model-code")
        if plan.feature_lookup:
            args += ["--feature-lookup", "--config", str(server.image_config_path)]
        predictor["containers"] = [
            V1Container(
                name="kserve-container",
                image=server.image,
                command=["python", "-m", "prodml.plugins.servers._main"],
                args=args,
                # STORAGE_URI makes KServe's storage initializer download the bundle to /mnt/models
                env=[V1EnvVar(name="STORAGE_URI", value=plan.storage_uri)],
                ports=[V1ContainerPort(container_port=SERVING_PORT, protocol="TCP")],
                resources=resources,
            )
        ]
    annotations = {"prodml.io/version": plan.version}
    if plan.digest:
        annotations["prodml.io/bundle-digest"] = plan.digest
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=plan.model_name,
            namespace=server.namespace,
            labels=dict(MANAGED_BY),
            annotations=annotations,
        ),
        spec=V1beta1InferenceServiceSpec(predictor=V1beta1PredictorSpec(**predictor)),
    )


def to_yaml(docs: Sequence[Mapping[str, Any]]) -> str:
    """Multi-document YAML, in apply order."""
    import yaml

    return "---\n".join(yaml.safe_dump(dict(d), sort_keys=False) for d in docs)


def secret_values(access: StorageAccess, store: Any) -> dict[str, str]:
    """The Secret's real values: from the environment, else from the store config.

    Raises:
        ServingError: a value is in neither place (names the variable, never a value).
    """
    from_config: dict[str, str] = {}
    for key, attr in (
        ("AWS_ACCESS_KEY_ID", "access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
        ("AZURE_STORAGE_ACCESS_KEY", "credential"),
    ):
        value = getattr(store, attr, None)
        if value is not None:
            from_config[key] = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    conn = getattr(store, "connection_string", None)
    if conn is not None:
        text = conn.get_secret_value() if hasattr(conn, "get_secret_value") else str(conn)
        for part in text.split(";"):
            name, _, value = part.partition("=")
            if name.strip().lower() == "accountkey" and value:
                from_config["AZURE_STORAGE_ACCESS_KEY"] = value
    values = {}
    for key, env in access.keys.items():
        value = os.environ.get(env) or from_config.get(key)
        if not value:
            raise ServingError(
                f"the storage Secret {access.secret_name!r} needs {key}, which is neither in the "
                f"environment (${env}) nor in the store config",
                hint=f"export {env}=... before deploying",
            )
        values[key] = value
    return values
