"""The azure_blob store against Microsoft's Azurite emulator on loopback."""

from __future__ import annotations

import urllib.parse

import pytest
from pydantic import ValidationError

from prodml.core.errors import StoreError
from prodml.core.interfaces import ModelRef
from prodml.plugins.stores.azure_blob import AzureBlobStore, AzureBlobStoreConfig, account_name_from_url
from prodml.testing.services import Azurite
from prodml.testing.stores import MODEL, ModelStoreConformance, RawAccess, make_bundle

pytestmark = [pytest.mark.azure, pytest.mark.slow]


class AzureRaw(RawAccess):
    """Writes blobs with a plain azure-storage-blob client, behind the store's back."""

    def __init__(self, server: Azurite, container: str, prefix: str) -> None:
        self.container = server.service_client().get_container_client(container)
        self.prefix = prefix

    def _name(self, ref: ModelRef, relpath: str) -> str:
        return f"{self.prefix}/{ref.model_name}/versions/{ref.version}/{relpath}"

    def write(self, ref: ModelRef, relpath: str, data: bytes) -> None:
        self.container.upload_blob(self._name(ref, relpath), data, overwrite=True)

    def delete(self, ref: ModelRef, relpath: str) -> None:
        self.container.delete_blob(self._name(ref, relpath))


class TestAzureBlobStore(ModelStoreConformance):
    """Authenticated with a connection string."""

    uri_scheme = "http://127.0.0.1:"  # Azurite's account URL; https://<account>.blob... on Azure

    @pytest.fixture
    def backend_config(self, azurite_server: Azurite) -> dict:
        # small blocks so that the big-file test really stages blocks in parallel
        return azurite_server.store_config(single_put_mb=4, block_size_mb=4, max_concurrency=4)

    @pytest.fixture
    def raw(self, azurite_server: Azurite, backend_config: dict) -> RawAccess:
        return AzureRaw(azurite_server, backend_config["container"], backend_config["prefix"])

    def test_uri_is_the_blob_url_a_predictor_reads(
        self, store, bundles, azurite_server, backend_config
    ) -> None:
        ref = store.push(bundles(), MODEL)
        prefix = backend_config["prefix"]
        assert ref.uri == (
            f"{azurite_server.account_url}/{backend_config['container']}/{prefix}/{MODEL}/versions/{ref.version}"
        )

    def test_big_files_are_committed_blocks(self, store, bundles, azurite_server, backend_config) -> None:
        ref = store.push(bundles(big_bytes=10 << 20), MODEL)
        name = f"{backend_config['prefix']}/{MODEL}/versions/{ref.version}/saved_model/1/variables/"
        blob = azurite_server.service_client().get_blob_client(
            backend_config["container"], name + "variables.data-00000-of-00001"
        )
        committed, uncommitted = blob.get_block_list("all")
        assert len(committed) == 3 and not uncommitted  # 10 MiB in 4 MiB blocks

    def test_the_service_refuses_overwriting_a_stored_blob(self, store, bundles, backend_config) -> None:
        from prodml.plugins.stores._base import VersionExists

        ref = store.push(bundles(), MODEL)
        key = f"{backend_config['prefix']}/{MODEL}/versions/{ref.version}/model.keras"
        with pytest.raises(VersionExists):
            store._write(key, b"replacement", overwrite=False)


class TestAzureBlobStoreWithSAS(TestAzureBlobStore):
    """Authenticated with account_url + a container SAS token."""

    @pytest.fixture
    def backend_config(self, azurite_server: Azurite) -> dict:
        return azurite_server.store_config(auth="sas", single_put_mb=4, block_size_mb=4, max_concurrency=4)

    def test_the_sas_never_appears_in_uris(self, store, bundles, backend_config) -> None:
        ref = store.push(bundles(), MODEL)
        sig = urllib.parse.parse_qs(backend_config["credential"])["sig"][0]
        assert "?" not in ref.uri and sig not in ref.uri and "sig=" not in ref.uri


def test_account_key_auth(azurite_server: Azurite, tmp_path) -> None:
    section = azurite_server.store_config(auth="key")
    store = AzureBlobStore(AzureBlobStoreConfig.model_validate(section))
    ref = store.push(make_bundle(tmp_path / "b"), MODEL)
    assert store.resolve(MODEL) == ref


def test_config_takes_at_most_one_way_to_connect() -> None:
    # neither: $AZURE_STORAGE_CONNECTION_STRING at run time; "" (an unset ${env:X:-}) is neither
    config = AzureBlobStoreConfig.model_validate(
        {"type": "azure_blob", "container": "models", "connection_string": ""}
    )
    assert config.connection_string is None
    with pytest.raises(ValidationError, match="not both"):
        AzureBlobStoreConfig.model_validate(
            {
                "type": "azure_blob",
                "container": "models",
                "connection_string": "x",
                "account_url": "https://a",
            }
        )


def test_account_name_from_url() -> None:
    assert account_name_from_url("https://myacct.blob.core.windows.net") == "myacct"
    assert account_name_from_url("http://127.0.0.1:10000/devstoreaccount1") == "devstoreaccount1"
    assert account_name_from_url("http://localhost:10000/devstoreaccount1/") == "devstoreaccount1"


def test_missing_container_says_how_to_fix_it(azurite_server: Azurite, tmp_path) -> None:
    section = {**azurite_server.store_config(), "container": "prodml-no-such-container"}
    with pytest.raises(StoreError, match="does not exist") as info:
        AzureBlobStore(AzureBlobStoreConfig.model_validate(section)).push(make_bundle(tmp_path / "b"), MODEL)
    assert "create_container" in str(info.value)


def test_create_container(azurite_server: Azurite, tmp_path) -> None:
    section = {**azurite_server.store_config(), "container": "prodml-created", "create_container": True}
    ref = AzureBlobStore(AzureBlobStoreConfig.model_validate(section)).push(
        make_bundle(tmp_path / "b"), MODEL
    )
    assert "/prodml-created/" in ref.uri


def test_connection_string_from_the_environment(azurite_server: Azurite, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_server.connection_string)
    section = {k: v for k, v in azurite_server.store_config().items() if k != "connection_string"}
    store = AzureBlobStore(AzureBlobStoreConfig.model_validate(section))
    assert store.resolve(MODEL, store.push(make_bundle(tmp_path / "b"), MODEL).version)
