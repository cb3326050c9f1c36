"""Kubernetes manifests for ``mode: cluster``: an InferenceService and its storage access.

Built with the kserve SDK's model classes (``V1beta1InferenceService`` ...) and the
kubernetes client's (``V1Secret``, ``V1ServiceAccount``), serialised the way the API server
expects them (camelCase, no nulls). Secret values are never rendered: the Secret carries
``${NAME}`` placeholders for ``envsubst``, and the real values are resolved by the store
(:meth:`~prodml.core.interfaces.ModelStore.kserve_storage` with ``with_values=True``) only
when prodml itself applies the manifests.

What the predictor needs from the store (storageUri, Secret keys and annotations, whether
pods can reach it at all) is asked of the store, never decided by its type, so a
third-party store gets the same manifests as a built-in one.

Combinations that cannot work are refused here, before any cluster call
(:func:`check_cluster_plan`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prodml.core.errors import ConfigError, ServingError
from prodml.core.interfaces import KServeStorage
from prodml.core.versions import KSERVE_DEPLOYMENT_MODE, TF_SERVING_VERSION

MANAGED_BY = {"app.kubernetes.io/managed-by": "prodml"}
SERVING_PORT = 8080
#: the annotation KServe's webhook reads to allow ``spec.canary`` (Standard mode only)
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
#: shown in place of a version when the store could not be asked for one
PLACEHOLDER_VERSION = "VERSION"
#: a well-formed version id no store holds (stores check ids before building a URI),
#: rendered and then replaced by PLACEHOLDER_VERSION
PLACEHOLDER_STAND_IN = "00000000T000000Z-00000000"


def with_placeholder(value: Any) -> Any:
    """``value`` (rendered manifests) with the stand-in version id shown as the placeholder."""
    if isinstance(value, str):
        return value.replace(PLACEHOLDER_STAND_IN, PLACEHOLDER_VERSION)
    if isinstance(value, list):
        return [with_placeholder(v) for v in value]
    if isinstance(value, dict):
        return {k: with_placeholder(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class StorageAccess:
    """How KServe's storage initializer reads the model: a Secret and a ServiceAccount.

    Attributes:
        secret_name: name of the Secret.
        service_account: name of the ServiceAccount that lists the Secret.
        annotations: KServe's storage annotations on the Secret (S3 endpoint, region, ...).
        keys: the Secret's keys, each with the environment variable its placeholder names.
        account_annotations: annotations on the ServiceAccount (workload identity).
    """

    secret_name: str
    service_account: str
    annotations: Mapping[str, str] = field(default_factory=dict)
    keys: Mapping[str, str] = field(default_factory=dict)
    account_annotations: Mapping[str, str] = field(default_factory=dict)


def storage_access(server: Any, storage: KServeStorage, model_name: str) -> StorageAccess | None:
    """The Secret/ServiceAccount a predictor needs to read ``storage`` (None: none needed)."""
    if not (storage.secret_keys or storage.secret_annotations or storage.service_account_annotations):
        return None
    return StorageAccess(
        secret_name=server.secret_name or f"{model_name}-storage",
        service_account=server.service_account or f"{model_name}-storage",
        annotations=dict(storage.secret_annotations),
        keys=dict(storage.secret_keys),
        account_annotations=dict(storage.service_account_annotations),
    )


@dataclass(frozen=True)
class ClusterPlan:
    """Everything the manifests are rendered from.

    Attributes:
        storage: what the store says a predictor needs to read the version.
        store_description: the store, for messages (what its describe() says).
        reachable: whether pods can reach the store as configured.
        has_saved_model: the version has ``saved_model/`` (None: not known, e.g. offline).
        tensorflow_version: the TensorFlow that wrote the bundle (None: not known).
        placeholder: the version is a placeholder (the store was not asked).
        canary: the version to route ``canary_percent`` of the traffic to, beside ``version``.
    """

    model_name: str
    version: str
    digest: str
    storage: KServeStorage
    store_description: str = ""
    reachable: bool = True
    has_saved_model: bool | None = None
    tensorflow_version: str | None = None
    feature_lookup: bool = False
    placeholder: bool = False
    canary: ClusterPlan | None = None
    canary_percent: int | None = None

    @property
    def storage_uri(self) -> str:
        return self.storage.storage_uri

    def with_canary(self, new: ClusterPlan, percent: int) -> ClusterPlan:
        """This (stable) plan with ``new`` receiving ``percent`` % of the traffic."""
        return replace(self, canary=new, canary_percent=percent)


def _release(version: str) -> tuple[int, int]:
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in version.split(".")[:2]]
    major, minor = [*parts, 0, 0][:2]
    return major, minor


def check_cluster_plan(server: Any, plan: ClusterPlan) -> None:
    """Refuse combinations that cannot work, before touching the cluster.

    Raises:
        ConfigError: naming the conflicting settings and the one to change.
    """
    from prodml.plugins.stores._cluster_access import is_loopback

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
        trained = plan.tensorflow_version
        if trained and _release(trained) > _release(TF_SERVING_VERSION):
            raise ConfigError(
                f"version {plan.version} of {plan.model_name!r} was written by TensorFlow {trained}; "
                f"TF-Serving {TF_SERVING_VERSION} (the runtimeVersion prodml pins) may not load a "
                "SavedModel from a newer TensorFlow",
                field="server.runtime",
                hint="use runtime: prodml (serves model.keras with the TensorFlow it was trained with), "
                f"or train with TensorFlow <= {'.'.join(map(str, _release(TF_SERVING_VERSION)))}",
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
    if server.storage_endpoint:
        if is_loopback(server.storage_endpoint):
            raise ConfigError(
                f"{server.storage_endpoint} is a loopback address, which pods cannot reach",
                field="server.storage_endpoint",
                hint="set storage_endpoint to the storage's address as seen from inside the cluster",
            )
    elif not plan.reachable:
        raise ConfigError(
            f"the {plan.store_description or 'store'} cannot be reached from a cluster's pods "
            "(a folder on this machine, or a loopback address)",
            field="store",
            hint="use a store the cluster's pods can reach (object storage in or reachable from the "
            "cluster), or set server.storage_endpoint to the store's address as seen from inside it",
        )


def storage_uri_for(server: Any, version_uri: str) -> str:
    """The storageUri of the predictor: TF-Serving reads ``saved_model/``, prodml the bundle."""
    base = version_uri.rstrip("/")
    return f"{base}/saved_model" if server.runtime == "tensorflow" else base


def render(server: Any, plan: ClusterPlan) -> list[dict[str, Any]]:
    """The manifests (Secret, ServiceAccount, InferenceService) as plain dicts, in apply order."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    docs: list[dict[str, Any]] = []
    access = storage_access(server, plan.storage, plan.model_name)
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
            name=access.service_account,
            namespace=server.namespace,
            labels=dict(MANAGED_BY),
            annotations=dict(access.account_annotations) or None,
        ),
        secrets=[V1ObjectReference(name=access.secret_name)],
    )
    return [secret, account]


def _predictor(server: Any, plan: ClusterPlan, access: StorageAccess | None, *, canary: bool = False) -> Any:
    """The predictor spec serving ``plan``'s version (a canary has fixed replicas and a name)."""
    from kserve import V1beta1ModelFormat, V1beta1ModelSpec, V1beta1PredictorSpec
    from kubernetes.client import V1Container, V1ContainerPort, V1EnvVar, V1ResourceRequirements

    resources = V1ResourceRequirements(
        requests=dict(server.resources.get("requests", {})) or None,
        limits=dict(server.resources.get("limits", {})) or None,
    )
    predictor: dict[str, Any] = {
        "service_account_name": access.service_account if access else server.service_account,
    }
    if canary:
        # KServe refuses maxReplicas on a canary and minReplicas above the stable one's
        predictor["name"] = f"{plan.model_name}-canary"
        stable_min = server.autoscaling.min_replicas if server.autoscaling else server.min_replicas
        predictor["min_replicas"] = min(1, stable_min)
    elif server.autoscaling is not None:
        scaling = server.autoscaling
        predictor["min_replicas"] = scaling.min_replicas
        predictor["max_replicas"] = scaling.max_replicas
        predictor["scale_metric"] = scaling.metric
        predictor["scale_target"] = scaling.target
    else:
        predictor["min_replicas"] = server.min_replicas
        predictor["max_replicas"] = server.max_replicas
    if server.runtime == "tensorflow":
        predictor["model"] = V1beta1ModelSpec(
            name="kserve-container",
            model_format=V1beta1ModelFormat(name="tensorflow"),
            protocol_version=server.protocol,
            # KServe's default TF-Serving (2.6.2) cannot load SavedModels of TF 2.18+
            runtime_version=TF_SERVING_VERSION,
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
    return V1beta1PredictorSpec(**predictor)


def inference_service(server: Any, plan: ClusterPlan, access: StorageAccess | None) -> Any:
    """The ``serving.kserve.io/v1beta1`` InferenceService, as a kserve SDK object.

    With ``plan.canary``, the stable predictor keeps serving ``plan``'s version and
    ``spec.canary`` runs the new one with ``canary_percent`` of the traffic: in KServe's
    Standard mode (the one prodml installs) that list is how a canary is rolled out;
    ``predictor.canaryTrafficPercent`` is read only in Knative mode.
    """
    from kserve import V1beta1CanarySpec, V1beta1InferenceService, V1beta1InferenceServiceSpec
    from kserve.constants import constants
    from kubernetes.client import V1ObjectMeta

    annotations = {"prodml.io/version": plan.version, DEPLOYMENT_MODE_ANNOTATION: KSERVE_DEPLOYMENT_MODE}
    if plan.digest:
        annotations["prodml.io/bundle-digest"] = plan.digest
    spec: dict[str, Any] = {"predictor": _predictor(server, plan, access)}
    if plan.canary is not None and plan.canary_percent is not None:
        annotations["prodml.io/canary-version"] = plan.canary.version
        spec["canary"] = [
            V1beta1CanarySpec(
                predictor=_predictor(server, plan.canary, access, canary=True),
                traffic_percent=plan.canary_percent,
            )
        ]
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=plan.model_name,
            namespace=server.namespace,
            labels=dict(MANAGED_BY),
            annotations=annotations,
        ),
        spec=V1beta1InferenceServiceSpec(**spec),
    )


def to_yaml(docs: Sequence[Mapping[str, Any]]) -> str:
    """Multi-document YAML, in apply order."""
    import yaml

    return "---\n".join(yaml.safe_dump(dict(d), sort_keys=False) for d in docs)


def secret_values(access: StorageAccess, storage: KServeStorage) -> dict[str, str]:
    """The Secret's real values, as the store resolved them (``kserve_storage(with_values=True)``).

    Raises:
        ServingError: a value the Secret needs was found nowhere (names the key, never a value).
    """
    found = storage.secret_values or {}
    values = {}
    for key, env in access.keys.items():
        value = found.get(key)
        if value is None or not value.get_secret_value():
            raise ServingError(
                f"the storage Secret {access.secret_name!r} needs {key}, which neither the store "
                f"config nor the environment (${env}) provides",
                hint=f"export {env}=... before deploying (in a pipeline: a key of runner.credentials_secret)",
            )
        values[key] = value.get_secret_value()
    return values
