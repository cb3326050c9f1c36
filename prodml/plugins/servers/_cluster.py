"""``mode: cluster``: apply the InferenceService (and storage Secret) with KServeClient.

There is no Kubernetes cluster on prodml's development machines, so the apply path
(:func:`deploy`, :func:`status`, :func:`undeploy`) is exercised only against real clusters;
the tests cover everything before it: the plan, the refusals and the rendered manifests.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prodml.core.errors import ServingError
from prodml.core.interfaces import DataSource, Endpoint, ModelRef, ModelStore, ServerStatus
from prodml.plugins.servers import _k8s

log = logging.getLogger("prodml.server")


def plan_for(
    config: Any, ref: ModelRef, store: ModelStore, name: str, bundle: Path | None = None
) -> _k8s.ClusterPlan:
    """What to deploy, checked: refuses impossible combinations before any cluster call.

    ``bundle`` is a local verified copy of ``ref`` (pulled when not given), read to know
    whether the version has the ``saved_model/`` that runtime tensorflow needs.
    """
    if bundle is None:
        from prodml.plugins.servers._local import pull_to_cache

        bundle = pull_to_cache(config, ref, store, name)
    has_saved_model = (Path(bundle) / "saved_model" / "1" / "saved_model.pb").is_file()
    plan = _k8s.ClusterPlan(
        model_name=name,
        version=ref.version,
        digest=ref.digest,
        storage_uri=_k8s.storage_uri_for(config, store.uri(ref)),
        store_type=ref.store_type,
        has_saved_model=has_saved_model,
        feature_lookup=config.feature_lookup,
    )
    _k8s.check_cluster_plan(config, plan, getattr(store, "config", None))
    return plan


def _clients(config: Any) -> tuple[Any, Any]:
    try:
        from kserve import KServeClient
        from kubernetes import client as k8s
        from kubernetes import config as kubeconfig

        kubeconfig.load_kube_config(context=config.kube_context)
        return KServeClient(context=config.kube_context), k8s.CoreV1Api()
    except Exception as exc:
        raise ServingError(
            f"cannot reach a Kubernetes cluster: {exc}",
            hint="check `kubectl config current-context` (or set server.kube_context)",
        ) from None


def deploy(config: Any, ref: ModelRef, store: ModelStore, source: DataSource | None, name: str) -> Endpoint:
    """Apply the Secret, ServiceAccount and InferenceService; wait until Ready; return its URL."""
    plan = plan_for(config, ref, store, name)
    store_config = getattr(store, "config", None)
    access = _k8s.storage_access(config, store_config, name)
    values = _k8s.secret_values(access, store_config) if access else None  # before touching the cluster
    isvc_client, core = _clients(config)
    from kubernetes.client.exceptions import ApiException

    if access is not None:
        secret, account = _k8s.storage_objects(config, access, values)
        for create, replace, obj in (
            (core.create_namespaced_secret, core.replace_namespaced_secret, secret),
            (core.create_namespaced_service_account, core.replace_namespaced_service_account, account),
        ):
            try:
                create(config.namespace, obj)
            except ApiException as exc:
                if exc.status != 409:
                    raise ServingError(
                        f"cannot create {obj.kind} {obj.metadata.name}: {exc.reason}"
                    ) from None
                replace(obj.metadata.name, config.namespace, obj)
    isvc = _k8s.inference_service(config, plan, access)
    try:
        try:
            isvc_client.create(isvc, namespace=config.namespace)
        except RuntimeError as exc:
            if "409" not in str(exc) and "AlreadyExists" not in str(exc):
                raise
            current = isvc_client.get(name, namespace=config.namespace)
            isvc.metadata.resource_version = current["metadata"]["resourceVersion"]
            isvc_client.replace(name, isvc, namespace=config.namespace)
        isvc_client.wait_isvc_ready(
            name, namespace=config.namespace, timeout_seconds=int(config.ready_timeout)
        )
        current = isvc_client.get(name, namespace=config.namespace)
    except RuntimeError as exc:
        raise ServingError(
            f"InferenceService {config.namespace}/{name} did not become ready: {exc}"
        ) from None
    url = (current.get("status") or {}).get("url") or ""
    return Endpoint(
        url=url,
        protocol=config.protocol if config.runtime == "tensorflow" else "v1+v2",
        model_name=name,
        version=ref.version,
        details={"namespace": config.namespace, "runtime": config.runtime, "storage_uri": plan.storage_uri},
    )


def status(config: Any, name: str) -> ServerStatus:
    isvc_client, _ = _clients(config)
    try:
        current = isvc_client.get(name, namespace=config.namespace)
    except RuntimeError as exc:
        return ServerStatus(model_name=name, ready=False, reason=f"not found: {exc}")
    conditions = (current.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    reasons = [c.get("message", "") for c in conditions if c.get("status") != "True" and c.get("message")]
    return ServerStatus(
        model_name=name,
        ready=ready,
        url=(current.get("status") or {}).get("url"),
        reason="; ".join(reasons),
    )


def undeploy(config: Any, name: str) -> None:
    isvc_client, _ = _clients(config)
    try:
        isvc_client.delete(name, namespace=config.namespace)
    except RuntimeError as exc:
        if "404" not in str(exc) and "NotFound" not in str(exc):
            raise ServingError(f"cannot delete InferenceService {config.namespace}/{name}: {exc}") from None
