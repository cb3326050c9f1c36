"""Cluster mode: the InferenceService and storage manifests, rendered from the config.

There is no Kubernetes cluster here: these tests check everything up to the apply call -
the refusals, the manifests against the kserve SDK's models and against expected YAML, and
that no credential is ever rendered. KServeClient's apply path is not exercised.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from prodml.core.errors import ConfigError
from prodml.core.interfaces import ModelRef
from prodml.plugins.servers import _cluster, _k8s
from prodml.plugins.servers.kserve import KServeServerConfig

DATA = Path(__file__).parent / "data" / "serve"
VERSION = "20261129T173000Z-0123abcd"
SECRET_KEY = "s3cr3t-value-never-rendered"
AZURE_KEY = "YXp1cmUta2V5LW5ldmVyLXJlbmRlcmVk"


def server_config(**fields: Any) -> KServeServerConfig:
    return KServeServerConfig.model_validate({"type": "kserve", "mode": "cluster", **fields})


def s3_store() -> Any:
    from prodml.plugins.stores.s3 import S3Store, S3StoreConfig

    return S3Store(
        S3StoreConfig(
            type="s3",
            bucket="models",
            prefix="team",
            endpoint_url="http://127.0.0.1:9000",
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


def ref_for(store: Any) -> ModelRef:
    return ModelRef(
        model_name="houses", version=VERSION, store_type=store.config.type, uri="", digest="ab" * 32
    )


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """The bundle layout as far as the plan looks at it (it only checks for saved_model/)."""
    root = tmp_path / "bundle"
    (root / "saved_model" / "1").mkdir(parents=True)
    (root / "saved_model" / "1" / "saved_model.pb").write_bytes(b"pb")
    return root


def render(config: KServeServerConfig, store: Any, bundle: Path) -> list[dict[str, Any]]:
    ref = ref_for(store)
    plan = _cluster.plan_for(config, ref, store, "houses", bundle=bundle)
    return _k8s.render(config, plan, store.config)


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
    config = server_config(storage_endpoint="http://minio.minio.svc:9000", namespace="ml")
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
    text = _k8s.to_yaml(docs)
    assert SECRET_KEY not in text and "AKIAEXAMPLE" not in text
    assert text == (DATA / "s3_tensorflow.yaml").read_text()


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
    text = _k8s.to_yaml(docs)
    assert AZURE_KEY not in text
    assert text == (DATA / "azure_prodml.yaml").read_text()


def test_apply_reads_secret_values_from_the_environment_first(monkeypatch: pytest.MonkeyPatch) -> None:
    store = s3_store()
    access = _k8s.storage_access(server_config(), store.config, "houses")
    assert access is not None
    assert _k8s.secret_values(access, store.config)["AWS_SECRET_ACCESS_KEY"] == SECRET_KEY
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env")
    assert _k8s.secret_values(access, store.config)["AWS_SECRET_ACCESS_KEY"] == "from-env"


@pytest.mark.parametrize(
    ("fields", "store_kind", "field", "says"),
    [
        ({"protocol": "v2"}, "s3", "server.protocol", "V1 only"),
        ({"feature_lookup": True}, "s3", "server.runtime", "feature store"),
        ({"runtime": "prodml"}, "s3", "server.image", "serving image"),
        (
            {"runtime": "prodml", "image": "x", "feature_lookup": True},
            "s3",
            "server.image_config_path",
            "inside",
        ),
        ({}, "s3-loopback", "server.storage_endpoint", "loopback"),
        ({}, "local", "store.type", "cannot read"),
    ],
)
def test_impossible_combinations_are_refused_before_any_cluster_call(
    fields: dict, store_kind: str, field: str, says: str, bundle: Path, tmp_path: Path
) -> None:
    store = local_store(tmp_path) if store_kind == "local" else s3_store()
    if store_kind == "s3":
        fields = {"storage_endpoint": "http://minio.minio.svc:9000", **fields}
    with pytest.raises(ConfigError) as caught:
        render(server_config(**fields), store, bundle)
    assert caught.value.field == field
    assert says in caught.value.message


def test_tensorflow_runtime_needs_a_saved_model(tmp_path: Path) -> None:
    keras_only = tmp_path / "bundle"
    keras_only.mkdir()
    (keras_only / "model.keras").write_bytes(b"k")
    with pytest.raises(ConfigError, match="no saved_model"):
        render(server_config(storage_endpoint="http://minio:9000"), s3_store(), keras_only)
    # the prodml runtime serves model.keras, so the same bundle is fine there
    render(
        server_config(storage_endpoint="http://minio:9000", runtime="prodml", image="i"),
        s3_store(),
        keras_only,
    )


@pytest.mark.slow
@pytest.mark.s3
def test_cli_renders_manifests_from_a_stored_version(s3_server: Any, tmp_path: Path) -> None:
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
                    "storage_endpoint": "http://seaweedfs.storage.svc:8333",
                    "state_dir": str(tmp_path / "state"),
                },
            }
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "prodml", "k8s", "manifests", "-c", str(config)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert [d["kind"] for d in docs] == ["Secret", "ServiceAccount", "InferenceService"]
    uri = docs[2]["spec"]["predictor"]["model"]["storageUri"]
    assert uri.startswith(f"s3://{section['bucket']}/{section['prefix']}/houses/versions/") and uri.endswith(
        "/saved_model"
    )
    assert section["secret_access_key"] not in out.stdout + out.stderr
    assert "envsubst" in out.stderr


def test_cli_refuses_a_local_store_for_a_cluster(tmp_path: Path) -> None:
    from prodml.testing.servers import train_tiny_bundle

    store = local_store(tmp_path)
    store.push(train_tiny_bundle(tmp_path / "trained" / "bundle", model_name="houses"), "houses")
    config = tmp_path / "prodml.yaml"
    config.write_text(
        f"project: houses\nstages: [serve]\nstore: {{type: local, root: {store.root}}}\n"
        f"server: {{type: kserve, mode: cluster, state_dir: {tmp_path / 'state'}}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "prodml", "k8s", "manifests", "-c", str(config)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "store.type" in out.stderr and "cannot read" in out.stderr and "Traceback" not in out.stderr
