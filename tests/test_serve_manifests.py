"""Cluster mode: the InferenceService and storage manifests, rendered from the config.

There is no Kubernetes cluster here: these tests check everything up to the apply call -
the refusals, the manifests against the kserve SDK's models, against the pinned KServe
release's InferenceService CRD and Kubernetes' own schemas (prodml.core.cluster_check), and
against expected YAML - and that no credential is ever rendered. The requests the client
sends are tested in tests/test_k8s_client.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from prodml.core import cluster_check, versions
from prodml.core.bundle import BundleMetadata, FeatureInfo
from prodml.core.errors import ConfigError, ServingError
from prodml.core.interfaces import ModelRef
from prodml.plugins.servers import _cluster, _k8s
from prodml.plugins.servers.kserve import KServeClusterConfig, KServeServerConfig

DATA = Path(__file__).parent / "data" / "serve"
VERSION = "20261129T173000Z-0123abcd"
NEWER = "20261130T090000Z-89abcdef"
SECRET_KEY = "s3cr3t-value-never-rendered"
AZURE_KEY = "YXp1cmUta2V5LW5ldmVyLXJlbmRlcmVk"


def server_config(**fields: Any) -> KServeClusterConfig:
    config = KServeServerConfig.model_validate({"type": "kserve", "mode": "cluster", **fields})
    assert isinstance(config, KServeClusterConfig)
    return config


def s3_store(endpoint: str = "http://127.0.0.1:9000") -> Any:
    from prodml.plugins.stores.s3 import S3Store, S3StoreConfig

    return S3Store(
        S3StoreConfig(
            type="s3",
            bucket="models",
            prefix="team",
            endpoint_url=endpoint,
            region="eu-west-1",
            access_key_id="AKIAEXAMPLE",
            secret_access_key=SECRET_KEY,
        )
    )


def azure_store() -> Any:
    from prodml.plugins.stores.azure_blob import AzureBlobStore, AzureBlobStoreConfig

    return AzureBlobStore(
        AzureBlobStoreConfig(
            type="azure_blob",
            container="models",
            account_url="https://acct.blob.core.windows.net",
            credential=AZURE_KEY,
        )
    )


def local_store(tmp_path: Path) -> Any:
    from prodml.plugins.stores.local import LocalStore, LocalStoreConfig

    return LocalStore(LocalStoreConfig(type="local", root=tmp_path / "store"))


def ref_for(store: Any, version: str = VERSION) -> ModelRef:
    return ModelRef(
        model_name="houses", version=version, store_type=store.config.type, uri="", digest="ab" * 32
    )


def write_bundle(root: Path, *, tensorflow: str = "2.19.0", saved_model: bool = True) -> Path:
    """The bundle as far as the plan looks at it: saved_model/ and prodml.json's TF version."""
    root.mkdir(parents=True)
    if saved_model:
        (root / "saved_model" / "1").mkdir(parents=True)
        (root / "saved_model" / "1" / "saved_model.pb").write_bytes(b"pb")
    BundleMetadata(
        name="houses",
        features=[FeatureInfo(name="x", dtype="float32")],
        label="y",
        versions={"tensorflow": tensorflow},
    ).write(root)
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "bundle")


def render(
    config: KServeClusterConfig, store: Any, bundle: Path, version: str = VERSION
) -> list[dict[str, Any]]:
    plan = _cluster.plan_for(config, ref_for(store, version), store, "houses", bundle=bundle)
    return _k8s.render(config, plan)


def accepted_by_the_cluster(docs: list[dict[str, Any]]) -> None:
    """Every object passes the pinned KServe CRD / Kubernetes schemas."""
    assert cluster_check.check_objects(docs) == []


def check_with_kserve_sdk(isvc: dict[str, Any]) -> None:
    """Every key of the rendered InferenceService is a field of the kserve SDK's models.

    Walks the SDK's OpenAPI type tables (kserve models, and the Kubernetes models they
    embed) from ``V1beta1InferenceService`` down, so a misspelt or misplaced field fails.
    """
    import kserve.models
    import kubernetes.client.models

    primitives = {"str", "int", "bool", "float", "object", "datetime", "date"}

    def check(value: Any, type_name: str, where: str) -> None:
        if type_name.startswith("list["):
            assert isinstance(value, list), where
            for i, item in enumerate(value):
                check(item, type_name[5:-1], f"{where}[{i}]")
        elif type_name.startswith("dict("):
            inner = type_name[5:-1].split(",", 1)[1].strip()
            for key, item in value.items():
                check(item, inner, f"{where}.{key}")
        elif type_name not in primitives:
            cls = getattr(kserve.models, type_name, None) or getattr(kubernetes.client.models, type_name)
            fields = {json_name: attr for attr, json_name in cls.attribute_map.items()}
            assert isinstance(value, dict), where
            for key, item in value.items():
                assert key in fields, f"{where}: {type_name} has no field {key!r}"
                check(item, cls.openapi_types[fields[key]], f"{where}.{key}")

    check(isvc, "V1beta1InferenceService", "InferenceService")


def test_s3_with_the_tensorflow_runtime(bundle: Path) -> None:
    config = server_config(
        runtime="tensorflow", storage_endpoint="http://minio.minio.svc:9000", namespace="ml"
    )
    docs = render(config, s3_store(), bundle)
    assert [d["kind"] for d in docs] == ["Secret", "ServiceAccount", "InferenceService"]
    secret, account, isvc = docs
    assert secret["metadata"]["annotations"] == {
        "serving.kserve.io/s3-region": "eu-west-1",
        "serving.kserve.io/s3-endpoint": "minio.minio.svc:9000",
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-verifyssl": "0",
    }
    assert secret["stringData"] == {
        "AWS_ACCESS_KEY_ID": "${AWS_ACCESS_KEY_ID}",
        "AWS_SECRET_ACCESS_KEY": "${AWS_SECRET_ACCESS_KEY}",
    }
    assert account["secrets"] == [{"name": "houses-storage"}]
    predictor = isvc["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "houses-storage"
    assert predictor["model"]["modelFormat"] == {"name": "tensorflow"}
    assert predictor["model"]["protocolVersion"] == "v1"
    assert predictor["model"]["storageUri"] == f"s3://models/team/houses/versions/{VERSION}/saved_model"
    check_with_kserve_sdk(isvc)
    accepted_by_the_cluster(docs)
    text = _k8s.to_yaml(docs)
    assert SECRET_KEY not in text and "AKIAEXAMPLE" not in text
    assert text == (DATA / "s3_tensorflow.yaml").read_text()


def test_tf_serving_runtime_version_is_pinned_and_not_older_than_the_bundles_tf(tmp_path: Path) -> None:
    """KServe's default TF-Serving (2.6.2) cannot load a SavedModel of TF 2.18+ (kserve#997)."""
    config = server_config(runtime="tensorflow", storage_endpoint="http://minio:9000")
    old_enough = write_bundle(tmp_path / "b1", tensorflow=versions.TF_SERVING_VERSION)
    isvc = render(config, s3_store(), old_enough)[-1]
    runtime_version = isvc["spec"]["predictor"]["model"]["runtimeVersion"]
    assert runtime_version == versions.TF_SERVING_VERSION
    release = tuple(int(p) for p in runtime_version.split(".")[:2])
    assert release >= (2, 18)  # the oldest TensorFlow prodml trains with (pyproject: tensorflow>=2.18)
    major, minor = (int(p) for p in versions.TF_SERVING_VERSION.split(".")[:2])
    too_new = write_bundle(tmp_path / "b2", tensorflow=f"{major}.{minor + 1}.0")
    with pytest.raises(ConfigError) as caught:
        render(config, s3_store(), too_new)
    assert caught.value.field == "server.runtime" and "runtime: prodml" in (caught.value.hint or "")
    # the default runtime serves model.keras with the TensorFlow it was trained with
    assert server_config().runtime == "prodml"
    render(server_config(storage_endpoint="http://minio:9000", image="i"), s3_store(), too_new)


def test_azure_with_the_prodml_runtime_speaks_v2(bundle: Path) -> None:
    config = server_config(runtime="prodml", protocol="v2", image="registry.example/prodml:1.0", workers=2)
    docs = render(config, azure_store(), bundle)
    secret, _account, isvc = docs
    assert secret["stringData"] == {"AZURE_STORAGE_ACCESS_KEY": "${AZURE_STORAGE_ACCESS_KEY}"}
    container = isvc["spec"]["predictor"]["containers"][0]
    assert container["image"] == "registry.example/prodml:1.0"
    assert container["command"] == ["python", "-m", "prodml.plugins.servers._main"]
    assert container["env"] == [
        {
            "name": "STORAGE_URI",
            "value": f"https://acct.blob.core.windows.net/models/houses/versions/{VERSION}",
        }
    ]
    args = container["args"]
    assert args[args.index("--bundle") + 1] == "/mnt/models"
    assert args[args.index("--workers") + 1] == "2"
    check_with_kserve_sdk(isvc)
    accepted_by_the_cluster(docs)
    text = _k8s.to_yaml(docs)
    assert AZURE_KEY not in text
    assert text == (DATA / "azure_prodml.yaml").read_text()


def test_apply_reads_secret_values_from_the_config_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = server_config()
    store = s3_store()
    storage = store.kserve_storage(ref_for(store), with_values=True)
    access = _k8s.storage_access(config, storage, "houses")
    assert access is not None
    assert _k8s.secret_values(access, storage)["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY
    # a pipeline step's config carries no credential: the values come from its environment
    from prodml.plugins.stores.s3 import S3Store, S3StoreConfig

    bare = S3Store(S3StoreConfig(type="s3", bucket="models", endpoint_url="http://minio:9000"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    storage = bare.kserve_storage(ref_for(bare), with_values=True)
    assert _k8s.secret_values(access, storage) == {
        "AWS_ACCESS_KEY_ID": "from-env-id",
        "AWS_SECRET_ACCESS_KEY": "from-env",
    }
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ServingError, match=r"needs AWS_SECRET_ACCESS_KEY") as caught:
        _k8s.secret_values(access, bare.kserve_storage(ref_for(bare), with_values=True))
    assert "from-env-id" not in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "store_kind", "field", "says"),
    [
        ({"runtime": "tensorflow", "protocol": "v2"}, "s3", "server.protocol", "V1 only"),
        ({"runtime": "tensorflow", "feature_lookup": True}, "s3", "server.runtime", "feature store"),
        ({"runtime": "prodml"}, "s3", "server.image", "serving image"),
        (
            {"runtime": "prodml", "image": "x", "feature_lookup": True},
            "s3",
            "server.image_config_path",
            "inside",
        ),
        (
            {"image": "x", "storage_endpoint": "http://127.0.0.1:9000"},
            "s3",
            "server.storage_endpoint",
            "loopback",
        ),
        ({"image": "x"}, "s3-loopback", "store", "cannot be reached"),
        ({"image": "x"}, "local", "store", "cannot be reached"),
    ],
)
def test_impossible_combinations_are_refused_before_any_cluster_call(
    fields: dict, store_kind: str, field: str, says: str, bundle: Path, tmp_path: Path
) -> None:
    store = local_store(tmp_path) if store_kind == "local" else s3_store()
    if store_kind == "s3" and "storage_endpoint" not in fields:
        fields = {"storage_endpoint": "http://minio.minio.svc:9000", **fields}
    with pytest.raises(ConfigError) as caught:
        render(server_config(**fields), store, bundle)
    assert caught.value.field == field
    assert says in caught.value.message


def test_tensorflow_runtime_needs_a_saved_model(tmp_path: Path) -> None:
    keras_only = write_bundle(tmp_path / "bundle", saved_model=False)
    with pytest.raises(ConfigError, match="no saved_model"):
        render(
            server_config(runtime="tensorflow", storage_endpoint="http://minio:9000"), s3_store(), keras_only
        )
    # the prodml runtime serves model.keras, so the same bundle is fine there
    render(server_config(storage_endpoint="http://minio:9000", image="i"), s3_store(), keras_only)


def test_canary_promote_keeps_the_stable_version_and_routes_a_share_to_the_new_one(bundle: Path) -> None:
    """KServe v0.20 Standard mode: a canary is an entry of spec.canary, checked against the CRD."""
    config = server_config(
        storage_endpoint="http://minio.minio.svc:9000",
        image="registry.example/prodml:1",
        min_replicas=2,
        max_replicas=4,
    )
    store = s3_store()
    running = render(config, store, bundle)[-1]  # what the cluster serves now: VERSION
    new = _cluster.plan_for(config, ref_for(store, NEWER), store, "houses", bundle=bundle)

    canary = _k8s.render(
        config, _cluster.update_plan(config, running, new, store, "houses", canary_percent=10)
    )
    isvc = canary[-1]
    stable_env = isvc["spec"]["predictor"]["containers"][0]["env"]
    assert stable_env == [{"name": "STORAGE_URI", "value": f"s3://models/team/houses/versions/{VERSION}"}]
    [entry] = isvc["spec"]["canary"]
    assert entry["trafficPercent"] == 10
    assert entry["predictor"]["name"] == "houses-canary"
    assert (
        entry["predictor"]["containers"][0]["env"][0]["value"] == f"s3://models/team/houses/versions/{NEWER}"
    )
    assert "maxReplicas" not in entry["predictor"]  # KServe refuses it on a canary
    assert entry["predictor"]["minReplicas"] <= isvc["spec"]["predictor"]["minReplicas"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["metadata"]["annotations"]["prodml.io/canary-version"] == NEWER
    check_with_kserve_sdk(isvc)
    accepted_by_the_cluster(canary)

    # a second promote (no canary) makes the new version the only one: 100 %
    full = _k8s.render(config, _cluster.update_plan(config, isvc, new, store, "houses", canary_percent=None))[
        -1
    ]
    assert "canary" not in full["spec"]
    assert full["spec"]["predictor"]["containers"][0]["env"][0]["value"].endswith(NEWER)
    # a rollback is an update to the previous version: its storageUri comes back
    previous = _cluster.plan_for(config, ref_for(store, VERSION), store, "houses", bundle=bundle)
    back = _k8s.render(
        config, _cluster.update_plan(config, full, previous, store, "houses", canary_percent=None)
    )[-1]
    assert back["spec"]["predictor"] == running["spec"]["predictor"]
    accepted_by_the_cluster([full, back])
    with pytest.raises(ConfigError, match="between 1 and 100"):
        _cluster.update_plan(config, running, new, store, "houses", canary_percent=0)


def test_each_validator_rejects_a_wrong_object(bundle: Path) -> None:
    config = server_config(runtime="tensorflow", storage_endpoint="http://minio:9000")
    secret, account, isvc = render(config, s3_store(), bundle)
    # InferenceService (KServe CRD): an unknown field, a wrong type
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    isvc["spec"]["predictor"]["minReplicas"] = "one"
    problems = [str(p) for p in cluster_check.check_objects([isvc])]
    assert any("spec.predictor.model" in p and "'storageURI' was unexpected" in p for p in problems), problems
    assert any("spec.predictor.minReplicas" in p and "'one' is not of type 'integer'" in p for p in problems)
    # core objects (kubernetes-validate): an unknown field, a wrong type
    secret["stringdata"] = secret.pop("stringData")
    account["secrets"] = "houses-storage"
    assert "'stringdata' was unexpected" in str(cluster_check.check_objects([secret])[0])
    assert "secrets" in cluster_check.check_objects([account])[0].path
    with pytest.raises(cluster_check.ClusterCheckError, match="would be rejected"):
        cluster_check.raise_for(cluster_check.check_objects([secret]), "the manifests")


@pytest.mark.slow
@pytest.mark.s3
def test_cli_renders_and_checks_manifests_from_a_stored_version(s3_server: Any, tmp_path: Path) -> None:
    from prodml.plugins.stores.s3 import S3Store, S3StoreConfig
    from prodml.testing.servers import train_tiny_bundle

    section = s3_server.store_config()
    store = S3Store(S3StoreConfig.model_validate(section))
    store.push(train_tiny_bundle(tmp_path / "trained" / "bundle", model_name="houses"), "houses")
    config = tmp_path / "prodml.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "project": "houses",
                "stages": ["serve"],
                "store": section,
                "server": {
                    "type": "kserve",
                    "mode": "cluster",
                    "image": "registry.example/prodml:1",
                    "storage_endpoint": "http://seaweedfs.storage.svc:8333",
                },
            }
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "prodml", "k8s", "manifests", "-c", str(config), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert [d["kind"] for d in docs] == ["Secret", "ServiceAccount", "InferenceService"]
    [env] = docs[2]["spec"]["predictor"]["containers"][0]["env"]
    uri = env["value"]
    assert uri.startswith(f"s3://{section['bucket']}/{section['prefix']}/houses/versions/")
    assert store.resolve("houses").version in uri
    assert section["secret_access_key"] not in out.stdout + out.stderr
    assert "envsubst" in out.stderr
    assert f"KServe {versions.KSERVE_VERSION}" in out.stderr and "accepted" in out.stderr


def manifests_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``prodml k8s manifests`` run in this process (the CLI's own entry point)."""
    import contextlib
    import io

    from prodml.cli import main
    from prodml.core.plugins import reset_default_registry

    reset_default_registry()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["k8s", "manifests", "-c", str(config), *args])
    return subprocess.CompletedProcess(["prodml"], code, out.getvalue(), err.getvalue())


def test_cli_renders_without_the_store_with_a_placeholder_or_a_given_version(tmp_path: Path) -> None:
    """Nothing exported yet (or the store out of reach): the manifests can still be looked at."""
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on: the store is unreachable
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    config = tmp_path / "prodml.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "project": "houses",
                "stages": ["serve"],
                "store": {
                    "type": "s3",
                    "bucket": "models",
                    "endpoint_url": f"http://127.0.0.1:{closed}",
                    "access_key_id": "AKIAEXAMPLE",
                    "secret_access_key": SECRET_KEY,
                    "max_attempts": 1,
                    "connect_timeout": 2,
                },
                "server": {
                    "type": "kserve",
                    "mode": "cluster",
                    "image": "registry.example/prodml:1",
                    "storage_endpoint": "http://minio.minio.svc:9000",
                },
            }
        )
    )
    out = manifests_cli(config, "--check")
    assert out.returncode == 0, out.stderr
    isvc = list(yaml.safe_load_all(out.stdout))[-1]
    assert (
        isvc["spec"]["predictor"]["containers"][0]["env"][0]["value"] == "s3://models/houses/versions/VERSION"
    )
    assert "could not be asked" in out.stderr and "VERSION in place of a version id" in out.stderr
    assert SECRET_KEY not in out.stdout + out.stderr

    given = manifests_cli(config, "--version", VERSION)
    assert given.returncode == 0, given.stderr
    isvc = list(yaml.safe_load_all(given.stdout))[-1]
    assert isvc["metadata"]["annotations"]["prodml.io/version"] == VERSION
    assert isvc["spec"]["predictor"]["containers"][0]["env"][0]["value"].endswith(f"/versions/{VERSION}")
    assert f"version {VERSION} was not looked up in the store" in given.stderr


def test_cli_refuses_a_local_store_for_a_cluster(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    config = tmp_path / "prodml.yaml"
    config.write_text(
        f"project: houses\nstages: [serve]\nstore: {{type: local, root: {store.root}}}\n"
        "server: {type: kserve, mode: cluster, image: registry.example/prodml:1}\n"
    )
    out = manifests_cli(config)
    assert out.returncode == 2
    assert "store:" in out.stderr and "cannot be reached" in out.stderr and "Traceback" not in out.stderr
