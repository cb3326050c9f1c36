"""The cluster software versions prodml supports: the one place they are pinned.

docs/kind.md and docs/aks.md install exactly these (a test compares them), and the schema
checks (:mod:`prodml.core.cluster_check`) validate every object prodml renders or compiles
against these releases' own schemas. Each number was read from the upstream release itself;
the reason for each choice is next to it. Changing one means re-deriving the schema data in
``prodml/core/cluster_schemas/`` from the new release (its README says how).
"""

from __future__ import annotations

#: Kubeflow Pipelines backend (standalone install, ``manifests/kustomize/...?ref=``).
#: kfp / kfp-kubernetes 2.17 emit ``SecretAsEnv.optional`` (added to the backend's
#: kubernetes_executor_config.proto in 2.15.0) and ``secretNameParameter``; older drivers
#: reject those fields as unknown, and ``retryPolicy`` is honoured only from 2.17.
KFP_BACKEND_VERSION = "2.17.0"

#: KServe release (helm charts ``kserve-crd``, ``kserve-resources`` and
#: ``kserve-runtime-configs`` from oci://ghcr.io/kserve/charts). The newest release whose
#: InferenceService CRD could be read from upstream; the kserve Python SDK (0.21) speaks the
#: same ``serving.kserve.io/v1beta1`` API.
KSERVE_VERSION = "v0.20.0"

#: The KServe controller's deployment mode: ``Standard`` (plain Deployments, no Knative).
#: ``RawDeployment`` is the deprecated alias of it since KServe 0.17.
KSERVE_DEPLOYMENT_MODE = "Standard"

#: ``runtimeVersion`` (the tensorflow/serving image tag) of InferenceServices with
#: ``runtime: tensorflow``. KServe's own default is 2.6.2, which cannot load SavedModels
#: written by TF 2.18+; 2.20.0 is the newest TF-Serving release. Bundles trained with a
#: newer TensorFlow are refused for this runtime (use ``runtime: prodml``).
TF_SERVING_VERSION = "2.20.0"

#: cert-manager, which KServe's webhooks need; the version KServe v0.20.0's own install
#: scripts use.
CERT_MANAGER_VERSION = "v1.17.0"

#: MinIO server image for the kind quickstart. ``latest`` is frozen since MinIO stopped
#: publishing images; this is the last server release on quay.io.
MINIO_IMAGE = "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"

#: Kubernetes version whose core-object schemas (PyPI ``kubernetes-validate``) the rendered
#: Secret and ServiceAccount are checked against: kind v0.30's default node image.
KUBERNETES_SCHEMA_VERSION = "1.34.0"

#: Kubeflow Training Operator, whose TFJob (``kubeflow.org/v1``) runs distributed training
#: (``trainer.distributed``) on a cluster: it writes each worker's ``TF_CONFIG``, which
#: MultiWorkerMirroredStrategy needs and Kubeflow Trainer v2 does not provide. v1.9.0 is the
#: newest release tag; the project maintains v1 on its release-1.9 branch.
TRAINING_OPERATOR_VERSION = "v1.9.0"

#: Every pinned version by name, for docs and ``prodml k8s manifests --check`` output.
PINNED: dict[str, str] = {
    "kfp_backend": KFP_BACKEND_VERSION,
    "kserve": KSERVE_VERSION,
    "kserve_deployment_mode": KSERVE_DEPLOYMENT_MODE,
    "tf_serving": TF_SERVING_VERSION,
    "cert_manager": CERT_MANAGER_VERSION,
    "minio_image": MINIO_IMAGE,
    "kubernetes_schema": KUBERNETES_SCHEMA_VERSION,
    "training_operator": TRAINING_OPERATOR_VERSION,
}
