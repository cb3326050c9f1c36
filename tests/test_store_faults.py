"""Faults no store may lose a published model to: a killed push, a stopped server, 503s,
wrong credentials. Real servers (SeaweedFS, Azurite); faults injected by killing processes
and by an HTTP proxy in front of the server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prodml.core.errors import StoreError
from prodml.core.plugins import Registry
from prodml.testing.services import Azurite, FaultProxy, SeaweedFS, free_port
from prodml.testing.stores import MODEL, make_bundle, tree

pytestmark = pytest.mark.slow

# The pushing child process: builds the store from the config in $PRODML_TEST_STORE (not argv,
# so credentials do not show in `ps`) and pushes the bundle named on the command line.
PUSH_CHILD = """
import json, os, sys
from pathlib import Path
from prodml.core.plugins import Registry
registry = Registry(autoload=False)
section = json.loads(os.environ["PRODML_TEST_STORE"])
config = registry.get("store", section["type"]).backend.config.model_validate(section)
registry.create("store", config).push(Path(sys.argv[1]), sys.argv[2])
print("pushed", flush=True)
"""


def build(section: dict):
    registry = Registry(autoload=False)
    config = registry.get("store", section["type"]).backend.config.model_validate(section)
    return registry.create("store", config)


def through(proxy: FaultProxy, section: dict) -> dict:
    """The same store section, reaching the server through ``proxy``."""
    section = dict(section)
    if section["type"] == "s3":
        section["endpoint_url"] = proxy.url
    elif "connection_string" in section:
        section["connection_string"] = section["connection_string"].replace(
            section["connection_string"].split("BlobEndpoint=")[1].split("/devstoreaccount1")[0], proxy.url
        )
    else:
        section["account_url"] = f"{proxy.url}/devstoreaccount1"
    return section


def kill_mid_push(section: dict, bundle: Path, proxy: FaultProxy, part_marker: str, parts: int = 3) -> None:
    """Push ``bundle`` in a child process and SIGKILL it once ``parts`` parts are stored."""
    env = {**os.environ, "PRODML_TEST_STORE": json.dumps(through(proxy, section))}
    child = subprocess.Popen(
        [sys.executable, "-c", PUSH_CHILD, str(bundle), MODEL],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while proxy.count("PUT", part_marker) < parts:
            if child.poll() is not None:
                out, err = child.communicate()
                pytest.fail(f"the push ended before it could be killed: {out!r} {err.decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the push made no progress")
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


@pytest.mark.s3
def test_s3_push_killed_after_several_parts(s3_server: SeaweedFS, tmp_path: Path) -> None:
    section = s3_server.store_config(
        multipart_threshold_mb=5, part_size_mb=5, max_concurrency=2, stale_upload_seconds=0
    )
    store = build(section)
    first_dir = make_bundle(tmp_path / "first", seed=1)
    first = store.push(first_dir, MODEL)
    with FaultProxy(s3_server.s3_port) as proxy:
        proxy.delay = 0.2  # slow enough to kill it between parts
        kill_mid_push(
            section, make_bundle(tmp_path / "big", seed=2, big_bytes=60 << 20), proxy, "partNumber="
        )

    # the published model is untouched and still pulls
    assert store.resolve(MODEL) == first
    assert [v.version for v in store.versions(MODEL)] == [first.version]
    assert tree(store.pull(first, tmp_path / "pulled")) == tree(first_dir)
    # the killed push left an unfinished multipart upload behind ...
    client = s3_server.client()
    prefix = f"{section['prefix']}/{MODEL}/"
    assert client.list_multipart_uploads(Bucket=section["bucket"], Prefix=prefix).get("Uploads")

    # ... which the next push aborts, along with the files of the version it never finished
    third = store.push(make_bundle(tmp_path / "third", seed=3), MODEL)
    assert not client.list_multipart_uploads(Bucket=section["bucket"], Prefix=prefix).get("Uploads")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=section["bucket"], Prefix=prefix)["Contents"]]
    stored_versions = {k[len(prefix) :].split("/")[1] for k in keys if "/versions/" in k}
    assert stored_versions == {first.version, third.version}
    assert store.resolve(MODEL) == third


@pytest.mark.azure
def test_azure_push_killed_after_several_blocks(azurite_server: Azurite, tmp_path: Path) -> None:
    section = azurite_server.store_config(
        single_put_mb=4, block_size_mb=4, max_concurrency=2, stale_upload_seconds=0
    )
    store = build(section)
    first_dir = make_bundle(tmp_path / "first", seed=1)
    first = store.push(first_dir, MODEL)
    with FaultProxy(azurite_server.port) as proxy:
        proxy.delay = 0.2
        kill_mid_push(section, make_bundle(tmp_path / "big", seed=2, big_bytes=48 << 20), proxy, "comp=block")

    assert store.resolve(MODEL) == first
    assert [v.version for v in store.versions(MODEL)] == [first.version]
    assert tree(store.pull(first, tmp_path / "pulled")) == tree(first_dir)
    third = store.push(make_bundle(tmp_path / "third", seed=3), MODEL)
    container = azurite_server.service_client().get_container_client(section["container"])
    names = [b.name for b in container.list_blobs(name_starts_with=f"{section['prefix']}/{MODEL}/versions/")]
    assert {n.split("/")[3] for n in names} == {first.version, third.version}


@pytest.mark.parametrize(
    "backend", [pytest.param("s3", marks=pytest.mark.s3), pytest.param("azure", marks=pytest.mark.azure)]
)
def test_transient_503s_are_retried(backend: str, request, tmp_path: Path) -> None:
    server = request.getfixturevalue("s3_server" if backend == "s3" else "azurite_server")
    port = server.s3_port if backend == "s3" else server.port
    with FaultProxy(port) as proxy:
        store = build(through(proxy, server.store_config()))
        bundle = make_bundle(tmp_path / "b")
        proxy.fail_next = 2
        ref = store.push(bundle, MODEL)
        assert proxy.failed == 2
        proxy.fail_next = 2
        assert tree(store.pull(ref, tmp_path / "pulled")) == tree(bundle)
        assert proxy.failed == 4


@pytest.mark.parametrize(
    "backend", [pytest.param("s3", marks=pytest.mark.s3), pytest.param("azure", marks=pytest.mark.azure)]
)
def test_persistent_503s_end_in_one_clear_error(backend: str, request, tmp_path: Path) -> None:
    server = request.getfixturevalue("s3_server" if backend == "s3" else "azurite_server")
    port = server.s3_port if backend == "s3" else server.port
    with FaultProxy(port) as proxy:
        store = build(through(proxy, server.store_config(max_attempts=2)))
        proxy.fail_next = 1000
        with pytest.raises(StoreError, match="503") as info:
            store.push(make_bundle(tmp_path / "b"), MODEL)
        assert "attempts" in str(info.value)
        assert proxy.failed == 2  # the first request, retried once: then stop


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("s3", marks=pytest.mark.s3),
        pytest.param("azure-key", marks=pytest.mark.azure),
        pytest.param("azure-sas", marks=pytest.mark.azure),
    ],
)
def test_wrong_credentials_fail_once_with_a_clear_error(backend: str, request, tmp_path: Path) -> None:
    if backend == "s3":
        server = request.getfixturevalue("s3_server")
        port, section = server.s3_port, {**server.store_config(), "secret_access_key": "not-the-secret-key"}
    else:
        server = request.getfixturevalue("azurite_server")
        port = server.port
        if backend == "azure-key":
            section = {**server.store_config(auth="key"), "credential": "V3JvbmdLZXlXcm9uZ0tleQ=="}
        else:
            good = server.store_config(auth="sas")
            section = {**good, "credential": good["credential"].replace("sig=", "sig=AAAA")}
    with FaultProxy(port) as proxy:
        store = build(through(proxy, section))
        with pytest.raises(StoreError, match="access denied") as info:
            store.push(make_bundle(tmp_path / "b"), MODEL)
        assert "credential" in str(info.value) or "access_key" in str(info.value)
        assert proxy.requests == 1, "a wrong credential must not be retried"


@pytest.mark.parametrize(
    "backend", [pytest.param("s3", marks=pytest.mark.s3), pytest.param("azure", marks=pytest.mark.azure)]
)
def test_stopped_server_names_the_endpoint(backend: str, request, tmp_path: Path) -> None:
    server = request.getfixturevalue("s3_server" if backend == "s3" else "azurite_server")
    port = server.s3_port if backend == "s3" else server.port
    proxy = FaultProxy(port).start()
    store = build(through(proxy, server.store_config(max_attempts=2, connect_timeout=2)))
    ref = store.push(make_bundle(tmp_path / "b"), MODEL)
    proxy.stop()  # the endpoint goes away
    for call in (
        lambda: store.resolve(MODEL),
        lambda: store.pull(ref, tmp_path / "p"),
        lambda: store.versions(MODEL),
    ):
        with pytest.raises(StoreError, match="does not answer") as info:
            call()
        assert proxy.url in str(info.value)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "backend", [pytest.param("s3", marks=pytest.mark.s3), pytest.param("azure", marks=pytest.mark.azure)]
)
def test_cli_reports_a_stopped_server_without_traceback(backend: str, request, tmp_path: Path) -> None:
    import yaml

    server = request.getfixturevalue("s3_server" if backend == "s3" else "azurite_server")
    dead = f"http://127.0.0.1:{free_port()}"
    section = server.store_config(max_attempts=1, connect_timeout=2)
    if backend == "s3":
        section["endpoint_url"] = dead
    else:
        section["connection_string"] = section["connection_string"].replace(
            server.account_url.rsplit("/", 1)[0], dead
        )
    config = tmp_path / "prodml.yaml"
    config.write_text(yaml.safe_dump({"project": "demo", "stages": ["export"], "store": section}))
    result = subprocess.run(
        [sys.executable, "-m", "prodml.cli", "models", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert dead in result.stderr


@pytest.mark.parametrize(
    "backend", [pytest.param("s3", marks=pytest.mark.s3), pytest.param("azure", marks=pytest.mark.azure)]
)
def test_push_killed_between_the_manifest_and_latest(backend: str, request, tmp_path: Path) -> None:
    """The last moment a push can die: every file and the manifest stored, `latest` not yet moved."""
    if backend == "s3":
        server = request.getfixturevalue("s3_server")
        section, port = server.store_config(), server.s3_port
    else:
        server = request.getfixturevalue("azurite_server")
        section, port = server.store_config(), server.port
    store = build(section)
    first_dir = make_bundle(tmp_path / "first", seed=1)
    first = store.push(first_dir, MODEL)
    env = {**os.environ}
    with FaultProxy(port) as proxy:
        proxy.drop = ("PUT", f"/{MODEL}/latest")  # the pointer update never reaches the server
        env["PRODML_TEST_STORE"] = json.dumps(through(proxy, section))
        child = subprocess.Popen(
            [sys.executable, "-c", PUSH_CHILD, str(make_bundle(tmp_path / "second", seed=2)), MODEL],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 120
            while not proxy.dropped:
                if child.poll() is not None:
                    out, err = child.communicate()
                    pytest.fail(f"the push ended before `latest`: {out!r} {err.decode()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("the push never reached `latest`")
                time.sleep(0.01)
            # the manifest was stored before the pointer was touched: kill it right here
            assert proxy.count("PUT", "MANIFEST.sha256") == 1
            os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    # latest still names the first version, which pulls intact
    assert store.resolve(MODEL) == first
    assert tree(store.pull(first, tmp_path / "pulled-first")) == tree(first_dir)
    # the second version is complete (manifest last): listed, never latest, and it verifies
    second = [v.version for v in store.versions(MODEL) if v.version != first.version]
    assert len(second) == 1 and not [v for v in store.versions(MODEL) if v.latest and v.version in second]
    pulled = store.pull(store.resolve(MODEL, second[0]), tmp_path / "pulled-second")
    assert tree(pulled) == tree(tmp_path / "second")
    # and the next push moves latest as usual
    third = store.push(make_bundle(tmp_path / "third", seed=3), MODEL)
    assert store.resolve(MODEL) == third
