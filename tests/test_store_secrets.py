"""Credentials never show up in logs, errors or refs, even with DEBUG wire logging on."""

from __future__ import annotations

import logging
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from prodml.core.errors import StoreError
from prodml.core.plugins import Registry
from prodml.testing.services import Azurite, SeaweedFS
from prodml.testing.stores import MODEL, make_bundle

pytestmark = pytest.mark.slow

LOGGERS = ("prodml", "boto3", "botocore", "s3transfer", "urllib3", "azure")


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def build(section: dict):
    registry = Registry(autoload=False)
    return registry.create(
        "store", registry.get("store", section["type"]).backend.config.model_validate(section)
    )


def exercise(section: dict, wrong: dict, tmp_path: Path) -> list[str]:
    """Push, resolve, list, pull, then fail on a wrong credential; return the error texts."""
    store = build(section)
    ref = store.push(make_bundle(tmp_path / "bundle"), MODEL)
    store.resolve(MODEL)
    store.versions(MODEL)
    store.pull(ref, tmp_path / "pulled")
    with pytest.raises(StoreError) as info:
        build(wrong).push(make_bundle(tmp_path / "bundle2", seed=2), MODEL)
    return [str(info.value), ref.to_json()]


def assert_clean(texts: list[str], secrets: list[str]) -> None:
    joined = "\n".join(texts)
    for secret in secrets:
        assert secret not in joined, f"a credential leaked ({len(secret)} chars, starts {secret[:3]!r})"


def all_output(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture) -> list[str]:
    out, err = capfd.readouterr()
    return [caplog.text, *(r.getMessage() for r in caplog.records), out, err]


@pytest.mark.s3
def test_s3_credentials_stay_out_of_debug_logs(s3_server: SeaweedFS, debug_logs, capfd, tmp_path) -> None:
    section = s3_server.store_config()
    wrong = {**section, "secret_access_key": "wrong-secret-" + "x" * 20}
    errors = exercise(section, wrong, tmp_path)
    texts = all_output(debug_logs, capfd) + errors
    # the wire trace really was logged (else this test would prove nothing) ...
    assert "Authorization" in debug_logs.text and "Sending http request" in debug_logs.text
    # ... with the credentials masked
    assert_clean(texts, [s3_server.access_key_id, s3_server.secret_access_key, wrong["secret_access_key"]])


@pytest.mark.azure
@pytest.mark.parametrize("auth", ["connection_string", "key", "sas"])
def test_azure_credentials_stay_out_of_debug_logs(
    azurite_server: Azurite, auth: str, debug_logs, capfd, tmp_path
) -> None:
    section = azurite_server.store_config(auth=auth)
    secrets = [azurite_server.account_key, azurite_server.connection_string]
    if auth == "sas":
        sig = urllib.parse.parse_qs(section["credential"])["sig"][0]
        secrets += [section["credential"], sig, urllib.parse.quote(sig, safe="")]
        wrong = {**section, "credential": section["credential"].replace("sig=", "sig=AAAA")}
    elif auth == "key":
        wrong = {**section, "credential": "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5"}
        secrets.append(wrong["credential"])
    else:
        wrong = {
            **section,
            "connection_string": section["connection_string"].replace(
                azurite_server.account_key, "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5"
            ),
        }
        secrets.append("V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5")
    errors = exercise(section, wrong, tmp_path)
    texts = all_output(debug_logs, capfd) + errors
    assert "Request URL" in debug_logs.text  # azure-core's request log was on
    assert_clean(texts, secrets)


@pytest.mark.s3
def test_cli_with_debug_logging_prints_no_credentials(s3_server: SeaweedFS, tmp_path: Path) -> None:
    import os

    import yaml

    section = s3_server.store_config()
    build(section).push(make_bundle(tmp_path / "b"), "demo")
    section["access_key_id"] = "${env:TEST_S3_KEY}"
    section["secret_access_key"] = "${env:TEST_S3_SECRET}"
    config = tmp_path / "prodml.yaml"
    config.write_text(yaml.safe_dump({"project": "demo", "stages": ["export"], "store": section}))
    env = {
        **os.environ,
        "TEST_S3_KEY": s3_server.access_key_id,
        "TEST_S3_SECRET": s3_server.secret_access_key,
    }
    results = {}
    for command in ("models", "validate"):
        result = subprocess.run(
            [sys.executable, "-m", "prodml.cli", "-vv", command, "-c", str(config)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert_clean([result.stdout, result.stderr], [s3_server.access_key_id, s3_server.secret_access_key])
        results[command] = result
    assert "Authorization" in results["models"].stderr  # the wire trace was logged, masked
    assert "LATEST" in results["models"].stdout
