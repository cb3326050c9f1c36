"""The Kubernetes client of ``mode: cluster``, built in a pod and on a laptop (issue 11, break 1).

No cluster runs here. These are unit tests of client construction and request building: the
requests go over TLS to a loopback HTTPS endpoint standing in for the API server, which
records them and answers as the API server would for the few calls prodml makes. That the
real API server accepts the objects is covered by the schema checks, not here.
"""

from __future__ import annotations

import datetime
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from prodml.core.errors import ServingError
from prodml.plugins.servers import _cluster, _k8s
from prodml.plugins.servers.kserve import KServeServerConfig

pytest.importorskip("kubernetes")

ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A CA-flagged certificate for 127.0.0.1 and its key (the pod's ca.crt and the server's)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "server.crt", folder / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


class FakeApiServer:
    """Records each request; keeps objects by path; answers GET/POST/PUT/DELETE like the API server."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.requests: list[dict[str, Any]] = []
        self.objects: dict[str, dict[str, Any]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> dict[str, Any] | None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": self.path.split("?")[0],
                        "authorization": self.headers.get("Authorization"),
                        "body": body,
                    }
                )
                return body

            def do_GET(self) -> None:
                self._record()
                found = outer.objects.get(self.path.split("?")[0])
                if found is None:
                    self._answer(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                    return
                ready = {
                    "url": "http://houses.ml.example",
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
                self._answer(200, {**found, "status": ready} if "inferenceservices" in self.path else found)

            def do_POST(self) -> None:
                body = self._record() or {}
                path = f"{self.path.split('?')[0]}/{body['metadata']['name']}"
                if path in outer.objects:
                    self._answer(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
                    return
                outer.objects[path] = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
                self._answer(201, outer.objects[path])

            def do_PUT(self) -> None:
                body = self._record() or {}
                outer.objects[self.path.split("?")[0]] = body
                self._answer(200, body)

            def do_DELETE(self) -> None:
                self._record()
                gone = outer.objects.pop(self.path.split("?")[0], None)
                self._answer(200 if gone else 404, {"kind": "Status"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[tuple[FakeApiServer, Path]]:
    cert, key = self_signed(tmp_path)
    server = FakeApiServer(cert, key)
    try:
        yield server, cert
    finally:
        server.stop()


def cluster_config(**fields: Any) -> Any:
    return KServeServerConfig.model_validate(
        {
            "type": "kserve",
            "mode": "cluster",
            "namespace": "ml",
            "image": "registry.example/prodml:1",
            **fields,
        }
    )


def service_account_folder(root: Path, cert: Path, token: str) -> Path:
    folder = root / "serviceaccount"
    folder.mkdir()
    (folder / "token").write_text(token)
    (folder / "ca.crt").write_bytes(cert.read_bytes())
    (folder / "namespace").write_text("kubeflow")
    return folder


def test_in_a_pod_the_service_account_is_used(
    api_server: tuple[FakeApiServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serve step's pod has no kubeconfig (load_kube_config raised there); it has a token."""
    server, cert = api_server
    folder = service_account_folder(tmp_path, cert, "pod-token-123")
    monkeypatch.setattr(_cluster, "SERVICE_ACCOUNT_DIR", folder)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig-in-a-pod"))
    server.objects[f"{ISVC_PATH}/houses"] = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
    }

    # kube_context is a laptop setting: in the pod the service account wins
    status = _cluster.status(cluster_config(kube_context="kind-prodml"), "houses")

    assert status.ready and status.url == "http://houses.ml.example"
    [request] = server.requests
    assert request["method"] == "GET" and request["path"] == f"{ISVC_PATH}/houses"
    assert request["authorization"] == "bearer pod-token-123"


def write_kubeconfig(path: Path, cert: Path, contexts: dict[str, tuple[str, str]]) -> Path:
    """A kubeconfig with one cluster+user per context: {context: (server URL, token)}."""
    import base64

    ca = base64.b64encode(cert.read_bytes()).decode()
    data = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": next(iter(contexts)),
        "clusters": [
            {"name": name, "cluster": {"server": url, "certificate-authority-data": ca}}
            for name, (url, _) in contexts.items()
        ],
        "users": [{"name": name, "user": {"token": token}} for name, (_, token) in contexts.items()],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}} for name in contexts],
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_on_a_laptop_the_kubeconfig_context_from_the_config_is_used(
    api_server: tuple[FakeApiServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, cert = api_server
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = write_kubeconfig(
        tmp_path / "kubeconfig",
        cert,
        {
            "elsewhere": ("https://127.0.0.1:9", "wrong-token"),  # the current context
            "kind-prodml": (f"https://127.0.0.1:{server.port}", "laptop-token"),
        },
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    status = _cluster.status(cluster_config(kube_context="kind-prodml"), "houses")
    assert not status.ready and "not found" in status.reason
    [request] = server.requests
    assert request["authorization"] == "Bearer laptop-token"


def test_no_way_to_a_cluster_names_each_way_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "serviceaccount"
    empty.mkdir()
    monkeypatch.setattr(_cluster, "SERVICE_ACCOUNT_DIR", empty)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    missing = tmp_path / "missing-kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    with pytest.raises(ServingError) as caught:
        _cluster.api_client(cluster_config())
    message = str(caught.value)
    assert f"the pod's service account ({empty}" in message and "token file does not exist" in message
    assert f"kubeconfig {missing}" in message and "context current" in message
    assert "automountServiceAccountToken" in (caught.value.hint or "")


def test_apply_sends_secret_account_and_inference_service(
    api_server: tuple[FakeApiServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy's requests: the storage Secret with real values (only here), its ServiceAccount,
    the InferenceService; a second apply replaces each (409 -> PUT with resourceVersion)."""
    from test_serve_manifests import ref_for, s3_store, write_bundle

    server, cert = api_server
    folder = service_account_folder(tmp_path, cert, "pod-token")
    monkeypatch.setattr(_cluster, "SERVICE_ACCOUNT_DIR", folder)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    config = cluster_config(storage_endpoint="http://minio.minio.svc:9000")
    store = s3_store()
    bundle = write_bundle(tmp_path / "bundle")
    plan = _cluster.plan_for(config, ref_for(store), store, "houses", bundle=bundle, with_values=True)

    endpoint = _cluster._apply(config, plan, "houses")
    assert endpoint.url == "http://houses.ml.example" and endpoint.version == plan.version
    sent = [(r["method"], r["path"]) for r in server.requests]
    assert sent[:3] == [
        ("POST", "/api/v1/namespaces/ml/secrets"),
        ("POST", "/api/v1/namespaces/ml/serviceaccounts"),
        ("POST", ISVC_PATH),
    ]
    secret = server.requests[0]["body"]
    assert secret["stringData"]["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE"  # values only on apply
    isvc = server.requests[2]["body"]
    assert isvc == _k8s.render(config, plan)[-1]

    server.requests.clear()
    _cluster._apply(config, plan, "houses")
    methods = [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in server.requests]
    assert ("PUT", "houses-storage") in methods and ("PUT", "houses") in methods
    replaced = next(r for r in server.requests if r["method"] == "PUT" and r["path"] == f"{ISVC_PATH}/houses")
    assert replaced["body"]["metadata"]["resourceVersion"] == "1"


@pytest.mark.s3
def test_update_canary_promote_and_rollback_requests(
    api_server: tuple[FakeApiServer, Path], s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_cluster.update against a real S3 store (SeaweedFS) and the stand-in API server: a canary
    keeps the served version stable, a second promote serves the new one alone, an update back
    is the rollback; with no InferenceService there is nothing to update."""
    from test_serve_manifests import write_bundle

    from prodml.core.bundle import write_manifest
    from prodml.plugins.stores.s3 import S3Store, S3StoreConfig

    server, cert = api_server
    folder = service_account_folder(tmp_path, cert, "pod-token")
    monkeypatch.setattr(_cluster, "SERVICE_ACCOUNT_DIR", folder)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    store = S3Store(S3StoreConfig.model_validate(s3_server.store_config()))
    refs = []
    for i in range(2):
        bundle = write_bundle(tmp_path / f"bundle{i}")
        (bundle / "weights.bin").write_bytes(bytes([i]) * 16)  # two different versions
        write_manifest(bundle)
        refs.append(store.push(bundle, "houses"))
    old, new = refs
    config = cluster_config(storage_endpoint="http://seaweedfs.storage.svc:8333")
    monkeypatch.setattr(_cluster, "POLL_SECONDS", 0.01)

    assert _cluster.update(config, new, store, None, "houses", canary_percent=10) is None  # nothing deployed
    _cluster.deploy(config, old, store, None, "houses")

    def last_isvc_put() -> dict:
        return [r for r in server.requests if r["method"] == "PUT" and r["path"] == f"{ISVC_PATH}/houses"][
            -1
        ]["body"]

    def served(predictor: dict) -> str:
        return predictor["containers"][0]["env"][0]["value"]

    endpoint = _cluster.update(config, new, store, None, "houses", canary_percent=10)
    assert endpoint is not None and endpoint.details["canary_percent"] == "10"
    body = last_isvc_put()
    assert served(body["spec"]["predictor"]).endswith(old.version)
    [canary] = body["spec"]["canary"]
    assert canary["trafficPercent"] == 10 and served(canary["predictor"]).endswith(new.version)
    from prodml.core import cluster_check

    assert cluster_check.check_objects([body]) == []

    _cluster.update(config, new, store, None, "houses")  # the second promote: 100 %
    body = last_isvc_put()
    assert "canary" not in body["spec"] and served(body["spec"]["predictor"]).endswith(new.version)

    _cluster.update(config, old, store, None, "houses")  # rollback: the previous storageUri
    body = last_isvc_put()
    assert served(body["spec"]["predictor"]) == store.uri(old)
    assert all(r["authorization"] == "bearer pod-token" for r in server.requests)
