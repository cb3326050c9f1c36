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
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from prodml.core import cluster_check
from prodml.core.bundle import BundleMetadata, verify_bundle
from prodml.core.config import load_config
from prodml.core.errors import ConfigError, StoreError
from prodml.plugins.trainers import tfjob
from prodml.plugins.trainers.distributed import free_ports, tf_config
from prodml.runner import stages

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


# -- the stand-in cluster ------------------------------------------------------------------


class StandInCluster:
    """A loopback HTTP server answering the TFJob part of the Kubernetes API, and running pods.

    On ``POST .../tfjobs`` it keeps the object and starts one local process per worker
    replica: the container's command (``python`` is this interpreter), its environment with
    ``secretKeyRef`` values looked up in ``secrets``, and the ``TF_CONFIG`` the Training
    Operator would set. ``GET .../tfjobs/NAME`` reports conditions from those processes.
    """

    def __init__(self, secrets: dict[str, dict[str, str]], workdir: Path) -> None:
        self.secrets, self.workdir = secrets, workdir
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, list[subprocess.Popen]] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> StandInCluster:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        for procs in self.pods.values():
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()

    def start_pods(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        spec = job["spec"]["tfReplicaSpecs"]["Worker"]
        container = spec["template"]["spec"]["containers"][0]
        addresses = [f"127.0.0.1:{p}" for p in free_ports(spec["replicas"])]
        procs = []
        for index in range(spec["replicas"]):
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            for item in container["env"]:
                if "value" in item:
                    env[item["name"]] = item["value"]
                else:
                    ref = item["valueFrom"]["secretKeyRef"]
                    env[item["name"]] = self.secrets[ref["name"]][ref["key"]]
            env["TF_CONFIG"] = tf_config(addresses, index)
            command = [sys.executable if c == "python" else c for c in container["command"]]
            log = open(self.workdir / f"{name}-worker-{index}.log", "wb")  # noqa: SIM115
            procs.append(
                subprocess.Popen(command, env=env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
            )
        self.pods[name] = procs

    def status(self, name: str) -> dict[str, Any]:
        procs = self.pods[name]
        codes = [p.poll() for p in procs]
        conditions = [{"type": "Created", "status": "True"}]
        if any(c not in (None, 0) for c in codes):
            conditions.append({"type": "Failed", "status": "True", "message": f"worker exit codes {codes}"})
        elif all(c == 0 for c in codes):
            conditions.append({"type": "Succeeded", "status": "True"})
        else:
            conditions.append({"type": "Running", "status": "True"})
        return {"conditions": conditions}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        cluster = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                tfjobs = self.path.startswith("/apis/kubeflow.org/v1/namespaces/")
                if not tfjobs or body.get("kind") != "TFJob":
                    return self._send(404, {"kind": "Status", "code": 404})
                cluster.jobs[body["metadata"]["name"]] = body
                cluster.start_pods(body)
                self._send(201, body)

            def do_GET(self) -> None:
                name = self.path.rstrip("/").rsplit("/", 1)[-1]
                if name not in cluster.jobs:
                    return self._send(404, {"kind": "Status", "code": 404})
                self._send(200, {**cluster.jobs[name], "status": cluster.status(name)})

        return Handler


@pytest.mark.s3
def test_the_train_step_runs_a_tfjob_and_hands_the_chiefs_bundle_on(
    tmp_path: Path, s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prodml.plugins.stores.s3 import S3Store

    bucket = "tfjob-" + os.urandom(3).hex()
    store = (
        f"{{type: s3, bucket: {bucket}, endpoint_url: '{s3_server.endpoint_url}', region: us-east-1, "
        "create_bucket: true}"
    )
    config = load_config(write_config(tmp_path, store, backend="tfjob", communication_timeout=60))
    # the stand-in cluster's pods run on this machine: a loopback endpoint is reachable from them
    monkeypatch.setattr(S3Store, "reachable_from_cluster", lambda self: True)
    credentials = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_access_key,
    }
    for key, value in credentials.items():  # the train step's own pod env, from the same Secret
        monkeypatch.setenv(key, value)
    pods = tmp_path / "pods"
    pods.mkdir()
    with StandInCluster({"prodml-s3": credentials}, pods) as cluster:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "standin", "cluster": {"server": cluster.url}}],
                    "users": [{"name": "u", "user": {"token": "standin"}}],
                    "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "u"}}],
                    "current-context": "standin",
                }
            )
        )
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setattr(tfjob, "POLL_SECONDS", 0.5)
        schema = stages.fetch(config, tmp_path / "dataset")
        result = stages.train(config, tmp_path / "dataset", tmp_path / "bundle")

    ((name, job),) = cluster.jobs.items()
    assert cluster_check.check_custom_resource(job) == []
    env = {
        e["name"]: e.get("value")
        for e in job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env[tfjob.DATASET_ENV] == schema.sha256
    assert s3_server.secret_access_key not in json.dumps(job)
    verify_bundle(tmp_path / "bundle")
    meta = BundleMetadata.read(tmp_path / "bundle")
    assert meta.extra["distributed"] == {"workers": 2, "strategy": "multi_worker_mirrored", "job": name}
    assert result.metrics == meta.metrics and result.epochs == 2
    assert "worker 1 done" in (pods / f"{name}-worker-1.log").read_text()
    # the chief stored the version without moving `latest`: export and its gate decide that
    s3 = load_config(write_config(tmp_path, store)).store
    from prodml.core.plugins import default_registry

    built = default_registry().create("store", s3)
    assert [v.version for v in built.versions("tfjob-demo")]
    with pytest.raises(StoreError):
        built.resolve("tfjob-demo", "latest")
