"""Config loading: good configs resolve, bad ones get the exact message a user needs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from prodml.core.config import ConfigPath, PluginConfig, interpolate, load_config, load_config_dict
from prodml.core.errors import ConfigError
from prodml.core.plugins import Registry

HERE = Path(__file__).parent
BAD = sorted((HERE / "bad_configs").glob("*.yaml"))
REPO = HERE.parent


def expected_error(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path} must start with '# expect: <message>'"
    return first.removeprefix("# expect: ").replace("{file}", str(path))


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_config_has_exact_message(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message == expected_error(path)
    assert info.value.exit_code == 2


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found \(.*nope\.yaml\)"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["local.yaml", "minio.yaml", "azure.yaml", "feast.yaml", "kind.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    path = REPO / "config" / name
    config = load_config(path)
    assert config.project
    assert config.source_file == path.resolve()


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "prodml.yaml").write_text(
        "project: demo\nsource: {type: csv, path: data/train.csv, label: y}\nstages: [fetch]\n"
    )
    config = load_config(folder / "prodml.yaml")
    assert config.source.path == (folder / "data" / "train.csv").resolve()
    assert config.base_dir == folder.resolve()


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    data = {
        "project": "demo",
        "source": {"type": "csv", "path": str(tmp_path / "x.csv"), "label": "y"},
        "stages": ["fetch"],
    }
    assert load_config_dict(data, base_dir=Path("/elsewhere")).source.path == tmp_path / "x.csv"


def test_env_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRODML_T_LABEL", "target")
    monkeypatch.delenv("PRODML_T_UNSET", raising=False)
    got = interpolate(
        {
            "a": "${env:PRODML_T_LABEL}",
            "b": "pre-${env:PRODML_T_UNSET:-fallback}-post",
            "c": ["${env:PRODML_T_UNSET:-}", 3],
            "d": "$${env:PRODML_T_LABEL}",
        }
    )
    assert got == {"a": "target", "b": "pre-fallback-post", "c": ["", 3], "d": "${env:PRODML_T_LABEL}"}


def test_defaults_runner_local_and_all_stages(tmp_path: Path) -> None:
    data = {
        "project": "demo",
        "source": {"type": "csv", "path": "x.csv", "label": "y"},
        "trainer": {"type": "keras", "model": "model.py:build_model"},
        "store": {"type": "local", "root": "models"},
        "server": {"type": "kserve"},
    }
    config = load_config_dict(data, base_dir=tmp_path)
    assert config.stages == ("fetch", "train", "export", "serve")
    assert config.runner.type == "local"
    assert config.model_name == "demo"


# -- secrets ---------------------------------------------------------------------------

SECRET = "s3cr3t-VALUE-never-shown"


class SecretSourceConfig(PluginConfig):
    """A source with a credential (test plugin)."""

    type: str = "vault"
    path: ConfigPath
    label: str
    token: SecretStr


def _secret_registry() -> Registry:
    from typing import Literal

    from prodml import hookimpl
    from prodml.core.interfaces import DataSource
    from prodml.core.plugins import Backend

    class VaultConfig(SecretSourceConfig):
        """A source with a credential (test plugin)."""

        type: Literal["vault"]

    class Vault(DataSource):
        label = "y"
        feature_names = ("x",)

        def training_frame(self):  # pragma: no cover - never trained
            raise NotImplementedError

    class Plugin:
        @hookimpl
        def prodml_backends(self):
            return [Backend("source", "vault", VaultConfig, Vault)]

    return Registry(builtins=False, plugins={"vault": Plugin()})


def test_secrets_never_in_repr_dump_or_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRODML_T_TOKEN", SECRET)
    registry = _secret_registry()
    data = {
        "project": "demo",
        "source": {"type": "vault", "path": "x", "label": "y", "token": "${env:PRODML_T_TOKEN}"},
        "stages": ["fetch"],
    }
    config = load_config_dict(data, base_dir=tmp_path, registry=registry)
    assert config.source.token.get_secret_value() == SECRET
    assert SECRET not in repr(config)
    assert SECRET not in str(config.model_dump())
    assert SECRET not in config.model_dump_json()
    assert "token" not in config.public_dict()["source"]
    assert config.secret_values() == [SECRET]
    bad = {**data, "source": {**data["source"], "label": 3}}
    with pytest.raises(ConfigError) as info:
        load_config_dict(bad, base_dir=tmp_path, registry=registry)
    assert SECRET not in str(info.value)


def test_digest_ignores_secrets(tmp_path: Path) -> None:
    registry = _secret_registry()
    base = {"project": "demo", "stages": ["fetch"]}
    one = load_config_dict(
        {**base, "source": {"type": "vault", "path": "x", "label": "y", "token": "aaaa1"}},
        base_dir=tmp_path,
        registry=registry,
    )
    two = load_config_dict(
        {**base, "source": {"type": "vault", "path": "x", "label": "y", "token": "bbbb2"}},
        base_dir=tmp_path,
        registry=registry,
    )
    assert one.digest() == two.digest()


def test_secret_values_are_masked_in_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    registry = _secret_registry()
    token = "tok-" + "x" * 12 + "-masked"
    load_config_dict(
        {
            "project": "demo",
            "stages": ["fetch"],
            "source": {"type": "vault", "path": "x", "label": "y", "token": token},
        },
        base_dir=tmp_path,
        registry=registry,
    )
    with caplog.at_level(logging.DEBUG, logger="botocore.endpoint"):
        logging.getLogger("botocore.endpoint").debug("Authorization: Bearer %s", token)
    assert token not in caplog.text
    assert "Bearer ***" in caplog.text


def test_model_digest_ignores_store_server_and_runner(tmp_path: Path) -> None:
    base = {
        "project": "demo",
        "source": {"type": "csv", "path": "x.csv", "label": "y"},
        "trainer": {"type": "keras", "model": "model.py:build_model"},
        "store": {"type": "local", "root": "models"},
        "server": {"type": "kserve"},
    }
    one = load_config_dict({**base, "runner": {"type": "local"}}, base_dir=tmp_path)
    two = load_config_dict(
        {**base, "runner": {"type": "kfp-local"}, "store": {"type": "local", "root": "elsewhere"}},
        base_dir=tmp_path,
    )
    assert one.model_digest() == two.model_digest()
    assert one.digest() != two.digest()
    three = load_config_dict({**base, "trainer": {**base["trainer"], "seed": 7}}, base_dir=tmp_path)
    assert three.model_digest() != one.model_digest()


def test_already_interpolated_data_can_skip_interpolation(tmp_path: Path) -> None:
    data = {
        "project": "demo",
        "source": {"type": "csv", "path": "x.csv", "label": "$${env:HOME}"},
        "stages": ["fetch"],
    }
    once = load_config_dict(data, base_dir=tmp_path)
    assert once.source.label == "${env:HOME}"
    # a pipeline step re-validates the public dict: the literal must survive
    again = load_config_dict(once.public_dict(), base_dir=tmp_path, interpolate_env=False)
    assert again.source.label == "${env:HOME}"
