"""A third-party store on a cluster gets what the built-in s3 store gets (issue 15, cluster side).

tests/plugin_pkg's ``hellostore`` and examples/plugin's ``sharedfolder`` (installed for real
with pip) say through the store capabilities which Secret keys their pods need and how KServe
reads them; nothing in prodml knows their types. The compiled pipeline and the manifests must
have the same shape as the built-in s3 store's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from prodml.core.errors import StoreError
from prodml.core.interfaces import ModelRef, ModelStore, ModelVersion
from prodml.core.plugins import AUTOLOAD_ENV

HERE = Path(__file__).parent
QUICKSTART_CSV = HERE.parent / "examples" / "quickstart" / "data" / "train.csv"
SECRET = "gateway-creds"

pytestmark = pytest.mark.kfp


#: each plugin store: its config section, and {Secret key: pod variable} of its pod environment
PLUGIN_STORES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "hellostore": (
        {"type": "hellostore", "root": "gateway", "bucket": "models",
         "endpoint_url": "http://gateway.storage.svc:8333"},
        {"access-key": "HELLO_ACCESS_KEY", "secret-key": "HELLO_SECRET_KEY"},
    ),
    "sharedfolder": (
        {"type": "sharedfolder", "root": "shared", "bucket": "models",
         "endpoint_url": "http://gateway.storage.svc:8333"},
        {"access-key-id": "SHARED_FOLDER_ACCESS_KEY_ID",
         "secret-access-key": "SHARED_FOLDER_SECRET_ACCESS_KEY"},
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def plugin_sites(pip_site) -> list[Path]:
    return [pip_site(HERE / "plugin_pkg"), pip_site(HERE.parent / "examples" / "plugin")]


@pytest.fixture
def prodml(plugin_sites: list[Path], monkeypatch: pytest.MonkeyPatch):
    """``prodml ARGS`` run in this process with both plugins installed (their entry points found)."""
    import contextlib
    import io

    from prodml.cli import main
    from prodml.core.plugins import reset_default_registry

    for site in plugin_sites:
        monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(AUTOLOAD_ENV, raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    for _, env in PLUGIN_STORES.values():
        for name in env.values():
            monkeypatch.delenv(name, raising=False)

    def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        monkeypatch.chdir(cwd)
        reset_default_registry()
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
        return subprocess.CompletedProcess(["prodml", *args], code, out.getvalue(), err.getvalue())

    yield run
    reset_default_registry()


def write_config(folder: Path, store: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_bytes(QUICKSTART_CSV.read_bytes())
    (folder / "model.py").write_text("def build_model(spec):\n    raise NotImplementedError\n")
    config = {
        "project": "houses",
        "source": {"type": "csv", "path": "train.csv", "label": "target"},
        "trainer": {"type": "keras", "model": "model.py:build_model"},
        "store": store,
        "server": {"type": "kserve", "mode": "cluster", "image": "registry.example/prodml:1"},
        "runner": {
            "type": "kfp",
            "host": "http://127.0.0.1:9",
            "image": "registry.example/prodml:1",
            "project_dir": ".",
            "credentials_secret": SECRET,
        },
    }
    path = folder / "prodml.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def shape(value: Any) -> Any:
    """The structure of ``value``: keys and list lengths, every leaf replaced by its type."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stores")
    found = {name: write_config(root / name, store) for name, (store, _) in PLUGIN_STORES.items()}
    found["s3"] = write_config(
        root / "s3",
        {"type": "s3", "bucket": "models", "endpoint_url": "http://gateway.storage.svc:8333",
         "access_key_id": "AKIAEXAMPLE", "secret_access_key": "s3cr3t-never-compiled"},
    )  # fmt: skip
    return found


@pytest.mark.parametrize("plugin", sorted(PLUGIN_STORES))
def test_compile_puts_the_plugin_stores_environment_in_the_steps_that_use_it(
    configs: dict[str, Path], prodml: Any, plugin: str
) -> None:
    platforms = {}
    for name in (plugin, "s3"):
        config = configs[name]
        out = config.parent / "pipeline.yaml"
        done = prodml(["compile", "-c", str(config), "-o", str(out)], config.parent)
        assert done.returncode == 0, done.stderr
        docs = list(yaml.safe_load_all(out.read_text(encoding="utf-8")))
        assert "s3cr3t-never-compiled" not in out.read_text(encoding="utf-8")
        platforms[name] = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    executors = platforms[plugin]
    assert set(executors) == {"exec-export", "exec-serve"}  # fetch and train do not use the store
    for executor in executors.values():
        (secret,) = executor["secretAsEnv"]
        assert secret["secretName"] == SECRET
        assert {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]} == set(
            PLUGIN_STORES[plugin][1].items()
        )
    assert shape(executors) == shape(platforms["s3"])


@pytest.mark.parametrize("plugin", sorted(PLUGIN_STORES))
def test_manifests_use_the_plugin_stores_kserve_storage(
    configs: dict[str, Path], prodml: Any, plugin: str
) -> None:
    rendered = {}
    for name in (plugin, "s3"):
        config = configs[name]
        done = prodml(["k8s", "manifests", "-c", str(config), "--offline", "--check"], config.parent)
        assert done.returncode == 0, done.stderr
        assert "accepted" in done.stderr
        rendered[name] = list(yaml.safe_load_all(done.stdout))
    secret, account, isvc = rendered[plugin]
    access, secret_key = PLUGIN_STORES[plugin][1].values()
    assert secret["stringData"] == {
        "AWS_ACCESS_KEY_ID": f"${{{access}}}",
        "AWS_SECRET_ACCESS_KEY": f"${{{secret_key}}}",
    }
    assert secret["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == "gateway.storage.svc:8333"
    assert account["secrets"] == [{"name": "houses-storage"}]
    env = isvc["spec"]["predictor"]["containers"][0]["env"]
    assert env == [{"name": "STORAGE_URI", "value": "s3://models/houses/versions/VERSION"}]
    assert shape(rendered[plugin]) == shape(rendered["s3"])
    # the same objects but for the environment variables the placeholders name
    s3_secret = rendered["s3"][0]
    assert secret["metadata"] == s3_secret["metadata"] and rendered[plugin][1:] == rendered["s3"][1:]


class BareStore(ModelStore):
    """A store with the required methods only: none of the optional cluster capabilities."""

    def push(self, bundle_dir: Path, model_name: str) -> ModelRef:
        raise StoreError("read-only")

    def pull(self, ref: ModelRef, dest: Path) -> Path:
        raise StoreError("empty")

    def resolve(self, model_name: str, version: str = "latest") -> ModelRef:
        raise StoreError("empty")

    def versions(self, model_name: str) -> list[ModelVersion]:
        return []

    def uri(self, ref: ModelRef) -> str:
        return f"bare://{ref.model_name}/{ref.version}"


def test_a_store_without_the_capabilities_gets_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prodml.core.config import load_config_dict
    from prodml.core.errors import ConfigError, RunnerError
    from prodml.plugins.servers import _cluster
    from prodml.plugins.servers.kserve import KServeServerConfig
    from prodml.runner import _pipeline

    store = BareStore(None)
    ref = ModelRef(model_name="houses", version="20261129T173000Z-0123abcd", store_type="bare", uri="")
    with pytest.raises(NotImplementedError, match="BareStore does not support pod_environment"):
        store.pod_environment("s")
    with pytest.raises(NotImplementedError, match="BareStore does not support reachable_from_cluster"):
        store.reachable_from_cluster()
    with pytest.raises(NotImplementedError, match="BareStore does not support kserve_storage"):
        store.kserve_storage(ref)

    server = KServeServerConfig(type="kserve", mode="cluster", image="i")
    with pytest.raises(ConfigError, match="has no kserve_storage") as caught:
        _cluster.offline_plan(server, store, "houses", "houses", None)
    assert caught.value.field == "store"

    path = write_config(tmp_path, {"type": "local", "root": "m"})
    config = load_config_dict(yaml.safe_load(path.read_text()), base_dir=tmp_path)
    monkeypatch.setattr(_pipeline, "_store", lambda _config: store)
    with pytest.raises(RunnerError, match=r"BareStore does not say which of its keys") as raised:
        _pipeline.step_environment(config, "export")
    assert "runner.secret_env" in (raised.value.hint or "")
    assert _pipeline.step_environment(config, "train") == []  # train does not use the store
