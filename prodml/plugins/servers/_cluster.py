"""``mode: cluster``: apply the InferenceService (and storage Secret) to a Kubernetes cluster.

The Kubernetes client is built for wherever this runs (:func:`api_client`): inside a pod
(a pipeline's serve step) from the pod's service account, on a laptop from the kubeconfig
(``server.kube_context`` or the current context). The InferenceService is handled through
the API server's custom-objects endpoints with that client: KServeClient would build its
own client from a fixed in-pod path and process-wide defaults.

There is no Kubernetes cluster on prodml's development machines: the tests cover the plan,
the refusals, the rendered manifests against the pinned releases' schemas, and the requests
the client sends (to a loopback HTTPS endpoint standing in for the API server); a real
cluster's answers are not exercised.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from prodml.core.errors import ConfigError, ProdmlError, ServingError
from prodml.core.interfaces import DataSource, Endpoint, ModelRef, ModelStore, ServerStatus
from prodml.plugins.servers import _k8s

log = logging.getLogger("prodml.server")

#: where Kubernetes mounts a pod's service-account token and CA certificate
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
GROUP, API_VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
POLL_SECONDS = 3.0


# -- the plan ----------------------------------------------------------------------------------


def _store_description(store: ModelStore) -> str:
    describe = getattr(store, "describe", None)
    if callable(describe):
        try:
            return str(describe())
        except ProdmlError:
            pass
    return f"{getattr(store.config, 'type', type(store).__name__)} store"


def _reachable(store: ModelStore) -> bool:
    try:
        return bool(store.reachable_from_cluster())
    except NotImplementedError:
        return True  # the store cannot tell; the cluster will


def _plan(
    config: Any,
    ref: ModelRef,
    store: ModelStore,
    name: str,
    *,
    bundle: Path | None,
    with_values: bool = False,
    placeholder: bool = False,
) -> _k8s.ClusterPlan:
    from prodml.core.bundle import BundleMetadata

    try:
        storage = store.kserve_storage(ref, endpoint=config.storage_endpoint, with_values=with_values)
    except NotImplementedError:
        raise ConfigError(
            f"the {_store_description(store)} cannot say how KServe reads a model from it "
            f"({type(store).__name__} has no kserve_storage)",
            field="store",
            hint="use a store that supports mode: cluster (see `prodml plugins`), or implement "
            "ModelStore.kserve_storage in it (docs/writing-a-plugin.md)",
        ) from None
    storage = storage.model_copy(update={"storage_uri": _k8s.storage_uri_for(config, storage.storage_uri)})
    has_saved_model = tf_version = None
    if bundle is not None:
        has_saved_model = (Path(bundle) / "saved_model" / "1" / "saved_model.pb").is_file()
        try:
            tf_version = BundleMetadata.read(Path(bundle)).versions.get("tensorflow")
        except ProdmlError:
            tf_version = None
    return _k8s.ClusterPlan(
        model_name=name,
        version=ref.version,
        digest=ref.digest,
        storage=storage,
        store_description=_store_description(store),
        reachable=_reachable(store),
        has_saved_model=has_saved_model,
        tensorflow_version=tf_version,
        feature_lookup=config.feature_lookup,
        placeholder=placeholder,
    )


def plan_for(
    config: Any,
    ref: ModelRef,
    store: ModelStore,
    name: str,
    bundle: Path | None = None,
    *,
    with_values: bool = False,
) -> _k8s.ClusterPlan:
    """What to deploy, checked: refuses impossible combinations before any cluster call.

    ``bundle`` is a local verified copy of ``ref`` (pulled into a temporary folder when not
    given), read to know whether the version has the ``saved_model/`` that runtime
    tensorflow needs and which TensorFlow wrote it.
    """
    # what can be refused without the bundle is refused before downloading it
    _k8s.check_cluster_plan(config, _plan(config, ref, store, name, bundle=None))
    if bundle is None:
        with tempfile.TemporaryDirectory(prefix="prodml-plan-") as tmp:
            pulled = store.pull(ref, Path(tmp) / "bundle")
            plan = _plan(config, ref, store, name, bundle=pulled, with_values=with_values)
    else:
        plan = _plan(config, ref, store, name, bundle=bundle, with_values=with_values)
    _k8s.check_cluster_plan(config, plan)
    return plan


def offline_plan(
    config: Any, store: ModelStore, stored_name: str, name: str, version: str | None
) -> _k8s.ClusterPlan:
    """A plan made without reaching the store: ``version`` as given, else a placeholder.

    The bundle is not looked at, so the checks that need it (saved_model/, TensorFlow
    version) are skipped; everything else is checked as for a deploy.
    """
    shown = version or _k8s.PLACEHOLDER_STAND_IN
    ref = ModelRef(
        model_name=stored_name, version=shown, store_type=str(getattr(store.config, "type", "")), uri=""
    )
    plan = _plan(config, ref, store, name, bundle=None, placeholder=version is None)
    _k8s.check_cluster_plan(config, plan)
    return plan


def manifests(
    config: Any,
    store: ModelStore,
    stored_name: str,
    name: str,
    *,
    version: str | None = None,
    offline: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects a deploy of ``stored_name`` (served as ``name``) would apply, and notes.

    With ``version`` the store is not asked (the bundle is not checked). Otherwise the
    configured version is resolved and checked; when the store cannot be reached (or with
    ``offline``) the manifests carry a placeholder version, and a note says so.
    """
    from prodml.core.errors import StoreError

    notes: list[str] = []
    if version is not None:
        plan = offline_plan(config, store, stored_name, name, version)
        notes.append(f"version {version} was not looked up in the store: its bundle is not checked")
    elif offline:
        plan = offline_plan(config, store, stored_name, name, None)
        notes.append(f"the store was not asked: {_k8s.PLACEHOLDER_VERSION} stands for the version id")
    else:
        try:
            ref = store.resolve(stored_name, config.version)
        except StoreError as exc:
            plan = offline_plan(config, store, stored_name, name, None)
            reason = exc.message.splitlines()[0]
            notes.append(
                f"the store could not be asked for version {config.version!r} ({reason}); the "
                f"manifests show {_k8s.PLACEHOLDER_VERSION} in place of a version id"
            )
        else:
            plan = plan_for(config, ref, store, name)
    docs = _k8s.render(config, plan)
    return (_k8s.with_placeholder(docs) if plan.placeholder else docs), notes


# -- the Kubernetes client ------------------------------------------------------------------


def api_client(config: Any, *, service_account_dir: Path | None = None) -> Any:
    """A ``kubernetes.client.ApiClient`` for the cluster this runs in, or the kubeconfig's.

    Inside a pod (``KUBERNETES_SERVICE_HOST`` set and a service-account token mounted) the
    pod's service account is used, whatever ``server.kube_context`` says: the config was
    written on a laptop, the serve step runs in the cluster. Elsewhere the kubeconfig
    (``$KUBECONFIG`` or ~/.kube/config) with ``server.kube_context`` or its current context.

    Raises:
        ServingError: neither worked; names each way tried and why it failed.
    """
    from kubernetes import client as k8s
    from kubernetes.config import ConfigException
    from kubernetes.config.incluster_config import InClusterConfigLoader
    from kubernetes.config.kube_config import load_kube_config

    folder = Path(service_account_dir or SERVICE_ACCOUNT_DIR)
    tried: list[str] = []
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = k8s.Configuration()
        try:
            InClusterConfigLoader(
                token_filename=str(folder / "token"), cert_filename=str(folder / "ca.crt")
            ).load_and_set(configuration)
            return k8s.ApiClient(configuration)
        except ConfigException as exc:
            tried.append(f"the pod's service account ({folder}: {exc})")
    configuration = k8s.Configuration()
    kubeconfig = os.environ.get("KUBECONFIG") or "~/.kube/config"
    context = config.kube_context
    try:
        # the client reads $KUBECONFIG once, at import: read it now
        load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration, persist_config=False
        )
        return k8s.ApiClient(configuration)
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        tried.append(f"kubeconfig {kubeconfig} (context {context or 'current'}: {reason})")
    raise ServingError(
        "cannot build a Kubernetes client: tried " + "; then ".join(tried),
        hint="on a laptop: check `kubectl config current-context` (or set server.kube_context); "
        "in a pod: the service account token must be mounted (automountServiceAccountToken)",
    )


def _apis(config: Any) -> tuple[Any, Any]:
    from kubernetes import client as k8s

    api = api_client(config)
    return k8s.CustomObjectsApi(api), k8s.CoreV1Api(api)


def _api_error(action: str, exc: Any) -> ServingError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or str(exc).splitlines()[0][:200]
    hint = None
    if status in (401, 403):
        hint = (
            "the service account (in a pipeline: runner.service_account) needs RBAC on "
            "inferenceservices.serving.kserve.io, secrets and serviceaccounts (docs/kind.md, step 4)"
        )
    elif status == 404 and "inferenceservice" in action.lower():
        hint = "is KServe installed? (kubectl get crd inferenceservices.serving.kserve.io)"
    return ServingError(f"cannot {action}: {status or ''} {reason}".replace("  ", " "), hint=hint)


def _get_isvc(custom: Any, namespace: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return custom.get_namespaced_custom_object(GROUP, API_VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise _api_error(f"read InferenceService {namespace}/{name}", exc) from None


def _apply_isvc(custom: Any, namespace: str, body: dict[str, Any]) -> None:
    """Create the InferenceService, or replace the existing one (keeping its resourceVersion)."""
    from kubernetes.client.exceptions import ApiException

    name = body["metadata"]["name"]
    try:
        custom.create_namespaced_custom_object(GROUP, API_VERSION, namespace, PLURAL, body)
        return
    except ApiException as exc:
        if exc.status != 409:
            raise _api_error(f"create InferenceService {namespace}/{name}", exc) from None
    current = _get_isvc(custom, namespace, name) or {}
    body = {
        **body,
        "metadata": {
            **body["metadata"],
            "resourceVersion": current.get("metadata", {}).get("resourceVersion"),
        },
    }
    try:
        custom.replace_namespaced_custom_object(GROUP, API_VERSION, namespace, PLURAL, name, body)
    except ApiException as exc:
        raise _api_error(f"replace InferenceService {namespace}/{name}", exc) from None


def _apply_storage(core: Any, config: Any, access: _k8s.StorageAccess, values: dict[str, str]) -> None:
    from kubernetes.client.exceptions import ApiException

    secret, account = _k8s.storage_objects(config, access, values)
    for create, replace, obj in (
        (core.create_namespaced_secret, core.replace_namespaced_secret, secret),
        (core.create_namespaced_service_account, core.replace_namespaced_service_account, account),
    ):
        try:
            create(config.namespace, obj)
        except ApiException as exc:
            if exc.status != 409:
                raise _api_error(f"create {obj.kind} {config.namespace}/{obj.metadata.name}", exc) from None
            try:
                replace(obj.metadata.name, config.namespace, obj)
            except ApiException as again:
                raise _api_error(
                    f"replace {obj.kind} {config.namespace}/{obj.metadata.name}", again
                ) from None


def _ready(current: dict[str, Any]) -> tuple[bool, str]:
    conditions = (current.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    reasons = [c.get("message", "") for c in conditions if c.get("status") != "True" and c.get("message")]
    return ready, "; ".join(reasons)


def _wait_ready(custom: Any, config: Any, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + float(config.ready_timeout)
    reason = "no status yet"
    while True:
        current = _get_isvc(custom, config.namespace, name)
        if current is not None:
            ready, reason = _ready(current)
            if ready:
                return current
        if time.monotonic() > deadline:
            raise ServingError(
                f"InferenceService {config.namespace}/{name} did not become ready in "
                f"{config.ready_timeout:.0f}s: {reason or 'no reason given'}",
                hint=f"kubectl -n {config.namespace} describe inferenceservice {name}",
            )
        time.sleep(POLL_SECONDS)


def _endpoint(config: Any, name: str, plan: _k8s.ClusterPlan, current: dict[str, Any]) -> Endpoint:
    details = {"namespace": config.namespace, "runtime": config.runtime, "storage_uri": plan.storage_uri}
    if plan.canary is not None:
        details["canary_version"] = plan.canary.version
        details["canary_percent"] = str(plan.canary_percent)
    return Endpoint(
        url=(current.get("status") or {}).get("url") or "",
        protocol=config.protocol if config.runtime == "tensorflow" else "v1+v2",
        model_name=name,
        version=plan.version,
        details=details,
    )


def _apply(config: Any, plan: _k8s.ClusterPlan, name: str) -> Endpoint:
    """Apply ``plan`` (storage first, values resolved by the store) and wait until Ready."""
    access = _k8s.storage_access(config, plan.storage, name)
    values = _k8s.secret_values(access, plan.storage) if access else {}  # before touching the cluster
    custom, core = _apis(config)
    if access is not None:
        _apply_storage(core, config, access, values)
    from kubernetes.client import ApiClient

    body = ApiClient().sanitize_for_serialization(_k8s.inference_service(config, plan, access))
    _apply_isvc(custom, config.namespace, body)
    current = _wait_ready(custom, config, name)
    return _endpoint(config, name, plan, current)


# -- the ModelServer operations ---------------------------------------------------------------


def deploy(config: Any, ref: ModelRef, store: ModelStore, source: DataSource | None, name: str) -> Endpoint:
    """Apply the Secret, ServiceAccount and InferenceService; wait until Ready; return its URL."""
    plan = plan_for(config, ref, store, name, with_values=True)
    return _apply(config, plan, name)


def update_plan(
    config: Any,
    current: dict[str, Any],
    new: _k8s.ClusterPlan,
    store: ModelStore,
    stored_name: str,
    *,
    canary_percent: int | None,
) -> _k8s.ClusterPlan:
    """The plan that moves the running InferenceService ``current`` to ``new``.

    Without ``canary_percent`` (or with 100) the predictor serves ``new`` and any canary is
    removed: a full promote, a second promote after a canary, and a rollback alike. With
    ``canary_percent`` N in 1..99 the stable predictor keeps the version it serves now and
    ``new`` gets N % of the traffic.
    """
    if canary_percent is None or canary_percent >= 100:
        return new
    if not 1 <= canary_percent <= 99:
        raise ConfigError(
            f"canary percent {canary_percent} is not between 1 and 100", hint="e.g. --canary 10"
        )
    annotations = (current.get("metadata") or {}).get("annotations") or {}
    stable_version = annotations.get("prodml.io/version")
    if not stable_version:
        raise ServingError(
            f"InferenceService {config.namespace}/{new.model_name} was not deployed by prodml "
            "(no prodml.io/version annotation): cannot tell which version to keep as stable",
            hint="promote without --canary first",
        )
    stable_ref = ModelRef(
        model_name=stored_name,
        version=stable_version,
        store_type=str(getattr(store.config, "type", "")),
        uri="",
        digest=annotations.get("prodml.io/bundle-digest", ""),
    )
    stable = _plan(
        config,
        stable_ref,
        store,
        new.model_name,
        bundle=None,
        with_values=new.storage.secret_values is not None,
    )
    return stable.with_canary(new, canary_percent)


def update(
    config: Any,
    ref: ModelRef,
    store: ModelStore,
    source: DataSource | None,
    name: str,
    *,
    canary_percent: int | None = None,
) -> Endpoint | None:
    """Move the running InferenceService ``name`` to ``ref`` (None when none is deployed).

    ``canary_percent`` N routes N % of the traffic to ``ref`` beside the version served now
    (KServe's ``spec.canary``, Standard mode); a later update without it makes ``ref`` the
    only version (100 %); an update to the previous version is a rollback.
    """
    new = plan_for(config, ref, store, name, with_values=True)
    custom, _ = _apis(config)
    current = _get_isvc(custom, config.namespace, name)
    if current is None:
        return None
    plan = update_plan(config, current, new, store, ref.model_name, canary_percent=canary_percent)
    return _apply(config, plan, name)


def status(config: Any, name: str) -> ServerStatus:
    """Whether the InferenceService exists and is Ready (with the controller's reasons)."""
    custom, _ = _apis(config)
    current = _get_isvc(custom, config.namespace, name)
    if current is None:
        return ServerStatus(
            model_name=name, ready=False, reason=f"InferenceService {config.namespace}/{name} not found"
        )
    ready, reason = _ready(current)
    return ServerStatus(
        model_name=name, ready=ready, url=(current.get("status") or {}).get("url"), reason=reason
    )


def undeploy(config: Any, name: str) -> None:
    """Delete the InferenceService (nothing to do when it does not exist)."""
    from kubernetes.client.exceptions import ApiException

    custom, _ = _apis(config)
    try:
        custom.delete_namespaced_custom_object(GROUP, API_VERSION, config.namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status != 404:
            raise _api_error(f"delete InferenceService {config.namespace}/{name}", exc) from None
