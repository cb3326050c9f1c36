"""Moving the model to MinIO or Azure is one edit of the `store:` block; `prodml models`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prodml.cli import main
from prodml.core.config import load_config
from prodml.core.plugins import default_registry
from prodml.testing.stores import make_bundle

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.mark.parametrize("name", ["minio.yaml", "azure.yaml"])
def test_store_configs_differ_from_local_only_in_the_store(name: str) -> None:
    local = yaml.safe_load((CONFIG / "local.yaml").read_text())
    other = yaml.safe_load((CONFIG / name).read_text())
    assert {k: v for k, v in other.items() if k != "store"} == {
        k: v for k, v in local.items() if k != "store"
    }
    assert other["store"]["type"] in ("s3", "azure_blob")


def test_credentials_in_the_store_configs_come_from_the_environment() -> None:
    for name in ("minio.yaml", "azure.yaml"):
        store = yaml.safe_load((CONFIG / name).read_text())["store"]
        for key in ("access_key_id", "secret_access_key", "connection_string", "credential"):
            if key in store:
                assert str(store[key]).startswith("${env:"), (
                    f"{name}: store.{key} must come from ${{env:...}}"
                )


def test_minio_config_validates_with_masked_secrets(monkeypatch, capsys) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAVALIDATE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-for-validate")
    # --offline: no MinIO needs to run for the config to check out
    assert main(["validate", "--offline", "-c", str(CONFIG / "minio.yaml")]) == 0
    out = capsys.readouterr().out
    assert "store    s3" in out and "secret-for-validate" not in out and "AKIAVALIDATE" not in out


def test_missing_credentials_name_the_variable(monkeypatch, capsys) -> None:
    """The shipped config is valid without secrets; the pre-flight and the store say what to export."""
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    assert main(["validate", "--offline", "-c", str(CONFIG / "azure.yaml")]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{CONFIG / 'azure.yaml'}: valid config; pre-flight found 1 problem(s)")
    assert "no Azure credentials" in captured.err and "AZURE_STORAGE_CONNECTION_STRING" in captured.err
    assert main(["models", "-c", str(CONFIG / "azure.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no Azure credentials") and "AZURE_STORAGE_CONNECTION_STRING" in err


def _store_config(tmp_path: Path, store: dict) -> Path:
    path = tmp_path / "prodml.yaml"
    path.write_text(yaml.safe_dump({"project": "demo", "stages": ["export"], "store": store}))
    return path


def _push_two(config_path: Path, tmp_path: Path):
    config = load_config(config_path)
    store = default_registry().create("store", config.store)
    first = store.push(make_bundle(tmp_path / "one", seed=1), config.model_name)
    import time

    time.sleep(1.1)  # version ids have one-second resolution
    second = store.push(make_bundle(tmp_path / "two", seed=2), config.model_name)
    return first, second


def _check_listing(out: str, first, second) -> None:
    lines = out.strip().splitlines()
    assert lines[0].split() == ["VERSION", "CREATED", "(UTC)", "SIZE", "LATEST"]
    assert lines[1].startswith(second.version) and lines[1].rstrip().endswith("*")
    assert lines[2].startswith(first.version) and not lines[2].rstrip().endswith("*")


def test_models_lists_local_versions_and_latest(tmp_path: Path, capsys) -> None:
    config = _store_config(tmp_path, {"type": "local", "root": "models"})
    assert main(["models", "-c", str(config)]) == 0
    assert "no versions of 'demo'" in capsys.readouterr().out
    first, second = _push_two(config, tmp_path)
    assert main(["models", "-c", str(config)]) == 0
    _check_listing(capsys.readouterr().out, first, second)


@pytest.mark.s3
@pytest.mark.slow
def test_minio_config_against_a_real_s3_server(s3_server, tmp_path: Path, monkeypatch, capsys) -> None:
    """config/minio.yaml as shipped, pointed at SeaweedFS through its environment variables."""
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    data = yaml.safe_load((CONFIG / "minio.yaml").read_text())
    data["project"] = "cli-" + tmp_path.name[-20:].lower().replace("_", "-").strip("-")
    config = tmp_path / "minio.yaml"
    config.write_text(yaml.safe_dump({**data, "stages": ["export"]}))
    first, second = _push_two(config, tmp_path)
    assert main(["models", "-c", str(config)]) == 0
    _check_listing(capsys.readouterr().out, first, second)


@pytest.mark.azure
@pytest.mark.slow
def test_azure_config_against_azurite(azurite_server, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_server.connection_string)
    data = yaml.safe_load((CONFIG / "azure.yaml").read_text())
    data["project"] = "cli-" + tmp_path.name[-20:].lower().replace("_", "-").strip("-")
    config = tmp_path / "azure.yaml"
    config.write_text(yaml.safe_dump({**data, "stages": ["export"]}))
    first, second = _push_two(config, tmp_path)
    assert main(["models", "-c", str(config)]) == 0
    _check_listing(capsys.readouterr().out, first, second)
