"""The plugin registry with a real third-party package installed from tests/plugin_pkg."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import ConfigDict

from prodml import hookimpl
from prodml.core.config import PluginConfig, load_config_dict
from prodml.core.errors import ConfigError, MissingDependencyError, PluginError
from prodml.core.interfaces import DataSource, ModelStore
from prodml.core.plugins import AUTOLOAD_ENV, BUILTIN_PLUGINS, Backend, Registry

HERE = Path(__file__).parent
REPO = HERE.parent


@pytest.fixture(scope="module")
def hello_site(pip_site) -> Path:
    """prodml-hello installed for real into a site folder."""
    site = pip_site(HERE / "plugin_pkg")
    assert list(site.glob("prodml_hello-*.dist-info"))
    return site


def run_prodml(
    args: list[str], site: Path | None, env_extra: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != AUTOLOAD_ENV}
    if site:
        env["PYTHONPATH"] = str(site)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "prodml", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_builtins_are_registered_through_the_prodml_entry_point_group() -> None:
    from importlib.metadata import entry_points

    declared = {ep.name: ep.value for ep in entry_points(group="prodml") if ep.dist.name == "prodml"}
    assert declared == dict(BUILTIN_PLUGINS)


def test_builtin_roles_listed() -> None:
    registry = Registry(autoload=False)
    assert {"csv", "feast"} <= set(registry.types("source"))
    assert {"local", "s3", "azure_blob"} <= set(registry.types("store"))
    assert "keras" in registry.types("trainer")
    assert "kserve" in registry.types("server")
    assert {"local", "kfp-local", "kfp"} <= set(registry.types("runner"))
    assert all(b.distribution == "prodml" for b in registry)


def test_installed_plugin_is_listed_and_selected_by_config(hello_site: Path, tmp_path: Path) -> None:
    listing = run_prodml(["plugins"], hello_site)
    assert listing.returncode == 0, listing.stderr
    hello = [line for line in listing.stdout.splitlines() if line.strip().startswith("hello")]
    assert hello and "prodml-hello" in hello[0]

    (tmp_path / "p.yaml").write_text("project: demo\nsource: {type: hello, rows: 5}\nstages: [fetch]\n")
    ok = run_prodml(["validate", "-c", str(tmp_path / "p.yaml")], hello_site)
    assert ok.returncode == 0, ok.stderr
    assert "source   hello" in ok.stdout

    frame = subprocess.run(
        [
            sys.executable,
            "-c",
            "from prodml.core.config import load_config; from prodml.core.plugins import default_registry;"
            f"c = load_config({str(tmp_path / 'p.yaml')!r});"
            "print(len(default_registry().create('source', c.source).training_frame()))",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(hello_site), AUTOLOAD_ENV: ""},
    )
    assert frame.stdout.strip() == "5", frame.stderr


def test_autoload_off_really_disables_entry_points(hello_site: Path, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("project: demo\nsource: {type: hello}\nstages: [fetch]\n")
    off = run_prodml(["validate", "-c", str(tmp_path / "p.yaml")], hello_site, {AUTOLOAD_ENV: "1"})
    assert off.returncode == 2
    assert "source type 'hello' is not installed; installed: csv, feast" in off.stderr
    assert "Traceback" not in off.stderr
    listing = run_prodml(["plugins"], hello_site, {AUTOLOAD_ENV: "1"})
    assert "hello" not in listing.stdout
    assert "csv" in listing.stdout


class _Csv2Config(PluginConfig):
    """A second 'csv' (test plugin)."""

    type: Literal["csv"]


class _Dup:
    @hookimpl
    def prodml_backends(self):
        return [Backend("source", "csv", _Csv2Config, DataSource)]


def test_duplicate_type_names_both_providers() -> None:
    with pytest.raises(PluginError) as info:
        Registry(autoload=False, plugins={"my-dup": _Dup()})
    message = str(info.value)
    assert "source type 'csv' is provided twice" in message
    assert "prodml (csv)" in message and "my-dup" in message


class _LooseConfig(PluginConfig):
    """Allows anything (wrong)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["loose"]


class _Loose:
    @hookimpl
    def prodml_backends(self):
        return [Backend("source", "loose", _LooseConfig, DataSource)]


def test_plugin_config_must_forbid_extra_keys() -> None:
    with pytest.raises(
        PluginError, match="must declare `type: Literal\\['loose'\\]` and model_config extra='forbid'"
    ):
        Registry(autoload=False, builtins=False, plugins={"loose": _Loose()})


class _NeedsConfig(PluginConfig):
    """Needs a package that is not installed."""

    type: Literal["needy"]


class _NeedsStore(ModelStore):  # abstract on purpose: never built
    pass


class _Needy:
    @hookimpl
    def prodml_backends(self):
        return [
            Backend(
                "store",
                "needy",
                _NeedsConfig,
                _NeedsStore,
                requires=("prodml_surely_missing_sdk",),
                extra="needy",
            )
        ]


def test_missing_optional_dependency_names_the_extra(tmp_path: Path) -> None:
    registry = Registry(autoload=False, builtins=False, plugins={"needy": _Needy()})
    config = _NeedsConfig(type="needy")
    with pytest.raises(MissingDependencyError) as info:
        registry.create("store", config)
    assert "store type 'needy' needs the Python package 'prodml_surely_missing_sdk'" in str(info.value)
    assert "pip install 'prodml[needy]'" in str(info.value)


def test_unknown_role_type_lists_choices_from_this_registry(tmp_path: Path) -> None:
    registry = Registry(autoload=False, builtins=False, plugins={"needy": _Needy()})
    with pytest.raises(
        ConfigError, match="store type 'ned' is not installed; installed: needy — did you mean 'needy'"
    ):
        load_config_dict(
            {"project": "x", "store": {"type": "ned"}, "stages": ["export"]},
            base_dir=tmp_path,
            registry=registry,
        )
