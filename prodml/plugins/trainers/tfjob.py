"""Multi-worker training on a cluster: a Kubeflow Training Operator TFJob.

Why a TFJob (``kubeflow.org/v1``, Training Operator v1.9) and not Kubeflow Trainer v2's
TrainJob: TensorFlow's MultiWorkerMirroredStrategy needs ``TF_CONFIG`` (every worker's address
and its own index) in each pod. The TFJob controller writes exactly that; Trainer v2 has no
TensorFlow policy (its runtimes set up torchrun, MPI or nothing), so prodml would have to
rebuild the worker addresses itself. The Training Operator v1 is maintained on its
release-1.9 branch and installs beside Kubeflow Pipelines (docs/kind.md).

How the train step of a cluster pipeline runs it (``trainer.distributed.workers > 1``):

1. It renders the TFJob: ``workers`` pods of the pipeline image, each running
   ``python -m prodml.plugins.trainers._worker --cluster`` with the project config (secret
   free) and the fingerprint of the fetched dataset in its environment, and the store's
   credentials from the same Kubernetes Secret the pipeline steps use (names only).
2. Each worker fetches the training frame itself from the same config and refuses to train
   when its fingerprint differs from the fetch step's (the data must be the data the
   pipeline fetched); the chief (worker 0) pushes the bundle to the store without moving
   ``latest`` (export and its gate decide that), tagging it with the job's name.
3. The step creates the TFJob, follows its conditions (Created, Running, Succeeded, Failed)
   and logs each change, then pulls the version the chief pushed into its Model artifact,
   verified — from there export runs exactly as after single-process training.

Imports: ``kubernetes`` only when a job is created; nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodml.core.errors import ConfigError, TrainingError
from prodml.core.interfaces import TrainResult, TrainSpec

if TYPE_CHECKING:
    import pandas as pd

    from prodml.core.config import ProdmlConfig
    from prodml.core.interfaces import ModelStore
    from prodml.plugins.trainers.keras import KerasTrainerConfig

log = logging.getLogger("prodml.trainer")

API_VERSION = "kubeflow.org/v1"
KIND = "TFJob"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"
#: The container name the TFJob controller looks for (it adds the TF_CONFIG env and port to it).
CONTAINER = "tensorflow"
#: Environment of a cluster worker: the project config (secret free), the fetched dataset's
#: sha256, and the TFJob's name (recorded in prodml.json as the bundle's lineage).
CONFIG_ENV = "PRODML_CONFIG_JSON"
DATASET_ENV = "PRODML_DATASET_SHA256"
JOB_ENV = "PRODML_TRAIN_JOB"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
POLL_SECONDS = 5.0


def job_name(model_name: str, token: str | None = None) -> str:
    """A DNS-1123 name for one training job of ``model_name`` (unique per call)."""
    base = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")[:40] or "model"
    return f"{base}-train-{token or secrets.token_hex(4)}"


def render(
    project: ProdmlConfig,
    *,
    name: str,
    namespace: str,
    dataset_sha256: str,
    store: ModelStore | None = None,
    config_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The TFJob that trains ``project``'s model with ``trainer.distributed.workers`` workers.

    Args:
        project: the loaded config (its runner gives the image, the Secret and the service
            account; its store, the credentials the chief needs to push).
        name: the TFJob's name.
        namespace: where it runs (the pipeline's namespace).
        dataset_sha256: fingerprint of the dataset the fetch step wrote; workers check theirs.
        store: the built store (its ``pod_environment`` names the Secret keys); built from
            the config when not given.
        config_data: the config as the workers get it (default: ``project.public_dict()``,
            which in a pipeline step already has the image's paths).

    Raises:
        ConfigError: no image, or a store the cluster's pods cannot reach.
    """
    dist = project.trainer.distributed  # type: ignore[union-attr]
    runner = project.runner
    image = getattr(runner, "image", None)
    if not image:
        raise ConfigError(
            "distributed training on a cluster needs the pipeline image: set runner.image",
            field="runner.image",
        )
    if store is None:
        from prodml.core.plugins import default_registry

        store = default_registry().create("store", project.store)  # type: ignore[arg-type]
    check_store_reachable(project, store)
    env: list[dict[str, Any]] = [
        {
            "name": CONFIG_ENV,
            "value": json.dumps(config_data or project.public_dict(), sort_keys=True, default=str),
        },
        {"name": DATASET_ENV, "value": dataset_sha256},
        {"name": JOB_ENV, "value": name},
        {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"},
    ]
    secret_name = getattr(runner, "credentials_secret", None)
    if secret_name:
        env += [
            {"name": e.env, "valueFrom": {"secretKeyRef": {"name": e.secret_name, "key": e.secret_key}}}
            for e in store.pod_environment(secret_name)
        ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": ["python", "-m", "prodml.plugins.trainers._worker", "--cluster"],
        "env": env,
    }
    if dist.resources:
        container["resources"] = dist.resources
    pod_spec: dict[str, Any] = {"containers": [container]}
    service_account = getattr(runner, "service_account", None)
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    labels = {"app.kubernetes.io/managed-by": "prodml", "prodml.io/model": _label(project.model_name)}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "runPolicy": {
                # a synchronous job cannot lose a worker: one failure fails the job (no restarts)
                "backoffLimit": 0,
                "activeDeadlineSeconds": int(dist.job_timeout),
                "cleanPodPolicy": "Running",
            },
            "tfReplicaSpecs": {
                "Worker": {
                    "replicas": dist.workers,
                    "restartPolicy": "Never",
                    "template": {"metadata": {"labels": labels}, "spec": pod_spec},
                }
            },
        },
    }


#: What stands for the dataset fingerprint in a job rendered before any data was fetched.
DATASET_PLACEHOLDER = "<sha256 of the fetched dataset>"


def render_offline(project: ProdmlConfig) -> dict[str, Any]:
    """The TFJob as the train step would create it, before any data exists (for checks).

    The config in it is the pipeline's (paths as in the step image), as the step will see it.
    """
    from prodml.runner._pipeline import pipeline_config

    return render(
        project,
        name=job_name(project.model_name, "0000abcd"),
        namespace=getattr(project.server, "namespace", None) or "default",
        dataset_sha256=DATASET_PLACEHOLDER,
        config_data=pipeline_config(project, for_cluster=True),
    )


def _label(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.") or "model"


def check_store_reachable(project: ProdmlConfig, store: ModelStore) -> None:
    """Refuse a store that the training pods cannot reach (the chief pushes the bundle there)."""
    try:
        reachable = store.reachable_from_cluster()
    except NotImplementedError:
        return  # a store that cannot say: let the cluster tell
    if not reachable:
        raise ConfigError(
            f"distributed training on a cluster hands the bundle over through the store, but the "
            f"{project.store.type} store as configured is not reachable from the cluster's pods",  # type: ignore[union-attr]
            field="store",
            hint="use a store the pods can reach (s3 with an in-cluster endpoint_url, azure_blob), or "
            "train with trainer.distributed.backend: processes",
        )


def current_namespace(project: ProdmlConfig) -> str:
    """The pipeline pod's own namespace, else the server's, else ``default``."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
    except OSError:
        return getattr(project.server, "namespace", None) or "default"


# -- the train step's side ------------------------------------------------------------------


def train_in_cluster(
    config: KerasTrainerConfig, frame: pd.DataFrame, spec: TrainSpec, out_dir: Path
) -> TrainResult:
    """Create the TFJob, follow it to the end, pull the chief's bundle into ``out_dir``."""
    from prodml.core.config import load_config_dict
    from prodml.core.plugins import default_registry

    if not spec.project:
        raise TrainingError(
            "distributed training on a cluster needs the project config in the train spec",
            hint="run the train stage through prodml's stages (a pipeline step does)",
        )
    project = load_config_dict(dict(spec.project), base_dir=Path.cwd(), interpolate_env=False)
    store = default_registry().create("store", project.store)  # type: ignore[arg-type]
    name = job_name(project.model_name)
    namespace = current_namespace(project)
    body = render(project, name=name, namespace=namespace, dataset_sha256=spec.schema_.sha256, store=store)
    api = _custom_objects(project)
    log.info("creating TFJob %s/%s with %d workers", namespace, name, config.distributed.workers)  # type: ignore[union-attr]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except Exception as exc:
        raise _api_error(f"create TFJob {namespace}/{name}", exc) from exc
    wait(api, namespace, name, timeout=config.distributed.job_timeout + 300)  # type: ignore[union-attr]
    ref = find_version(store, project.model_name, name)
    store.pull(ref, out_dir)
    from prodml.core.bundle import BundleMetadata

    meta = BundleMetadata.read(out_dir)
    return TrainResult(bundle_dir=out_dir, metrics=meta.metrics, epochs=int(meta.extra.get("epochs", 0)))


def _custom_objects(project: ProdmlConfig) -> Any:
    from kubernetes import client as k8s

    from prodml.plugins.servers._cluster import api_client

    settings = type("KubeSettings", (), {"kube_context": getattr(project.server, "kube_context", None)})()
    return k8s.CustomObjectsApi(api_client(settings))


def _api_error(action: str, exc: Any) -> TrainingError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or str(exc).splitlines()[0][:200]
    hint = None
    if status in (401, 403):
        hint = "the pipeline's service account needs RBAC on tfjobs.kubeflow.org (docs/kind.md)"
    elif status == 404:
        hint = "is the Kubeflow Training Operator installed? (kubectl get crd tfjobs.kubeflow.org)"
    return TrainingError(f"cannot {action}: {status or ''} {reason}".replace("  ", " ").strip(), hint=hint)


def job_state(job: dict[str, Any]) -> tuple[str, str]:
    """The TFJob's latest true condition (type, message); ``Pending`` before the first."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    if not conditions:
        return "Pending", ""
    last = conditions[-1]
    return str(last.get("type")), str(last.get("message") or last.get("reason") or "")


def wait(api: Any, namespace: str, name: str, *, timeout: float, poll: float = POLL_SECONDS) -> None:
    """Follow the TFJob until it succeeds; log each new state; raise when it fails."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        try:
            job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except Exception as exc:
            raise _api_error(f"read TFJob {namespace}/{name}", exc) from exc
        state, message = job_state(job)
        if state != seen:
            replicas = (job.get("status") or {}).get("replicaStatuses") or {}
            log.info("TFJob %s: %s %s %s", name, state, message, json.dumps(replicas, sort_keys=True))
            seen = state
        if state == "Succeeded":
            return
        if state == "Failed":
            raise TrainingError(
                f"TFJob {namespace}/{name} failed: {message or 'no reason given'}",
                hint=f"kubectl -n {namespace} logs -l training.kubeflow.org/job-name={name} --prefix",
            )
        if time.monotonic() > deadline:
            raise TrainingError(
                f"TFJob {namespace}/{name} did not finish within {timeout:g} s (last state: {state})",
                hint="raise trainer.distributed.job_timeout, or look at the job with kubectl",
            )
        time.sleep(poll)


def find_version(store: ModelStore, model_name: str, job: str) -> Any:
    """The version the chief of ``job`` pushed (its prodml.json names the job)."""
    from prodml.core.bundle import METADATA, BundleMetadata

    for version in sorted(store.versions(model_name), key=lambda v: v.version, reverse=True)[:20]:
        ref = store.resolve(model_name, version.version)
        meta = BundleMetadata.model_validate_json(store.read_file(ref, METADATA))
        if (meta.extra.get("distributed") or {}).get("job") == job:
            return ref
    raise TrainingError(
        f"TFJob {job} succeeded, but no version of {model_name!r} in the store was pushed by it",
        hint="read the chief's log (worker 0): it pushes the bundle when training ends",
    )


# -- a worker pod's side --------------------------------------------------------------------


def cluster_worker_inputs(workdir: Path) -> tuple[ProdmlConfig, Path]:
    """In a TFJob pod: fetch the frame from the project config; check it is the pipeline's.

    Returns the project config and the folder :mod:`._worker` reads (frame, spec, config).
    """
    from prodml.core.config import load_config_dict
    from prodml.plugins.trainers import distributed as d
    from prodml.runner import stages

    project = load_config_dict(json.loads(os.environ[CONFIG_ENV]), base_dir=Path.cwd(), interpolate_env=False)
    schema = stages.fetch(project, workdir / "dataset")
    expected = os.environ.get(DATASET_ENV, "")
    if expected and schema.sha256 != expected:
        raise TrainingError(
            f"this worker fetched different training data (sha256 {schema.sha256[:12]}) than the "
            f"pipeline's fetch step ({expected[:12]}): the workers must train on the same rows",
            hint="make the source deterministic (a fixed file or entity_df, not a moving 'now')",
        )
    frame, _ = stages.read_dataset(workdir / "dataset")
    spec = TrainSpec(model_name=project.model_name, schema=schema, config_digest=project.model_digest())
    d.write_inputs(workdir, project.trainer, frame, spec)  # type: ignore[arg-type]
    return project, workdir
