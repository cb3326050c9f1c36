"""The kserve server config split by ``mode`` (issue 15): one class per mode, each forbidding
the other's keys, built whether the config is validated or constructed."""

from __future__ import annotations

import pickle

import pytest

from prodml.core.config import load_config_dict
from prodml.core.errors import ConfigError
from prodml.plugins.servers.kserve import KServeClusterConfig, KServeLocalConfig, KServeServerConfig


def load_server(server: dict) -> object:
    config = load_config_dict(
        {
            "project": "demo",
            "stages": ["serve"],
            "store": {"type": "local", "root": "models"},
            "server": server,
        },
        base_dir="/tmp",
    )
    return config.server


def test_each_mode_has_its_own_class_and_keys() -> None:
    local = load_server({"type": "kserve", "port": 0})
    assert isinstance(local, KServeLocalConfig) and local.mode == "local" and local.port == 0
    cluster = load_server({"type": "kserve", "mode": "cluster", "namespace": "ml", "image": "i"})
    assert isinstance(cluster, KServeClusterConfig) and cluster.namespace == "ml"
    assert not hasattr(local, "namespace") and not hasattr(cluster, "port")
    # shared keys keep their names in both
    assert local.workers == cluster.workers == 1 and local.version == cluster.version == "latest"


def test_constructing_the_shared_name_builds_the_modes_class() -> None:
    """Code that builds KServeServerConfig(...) directly (tests, benches) keeps working."""
    local = KServeServerConfig(type="kserve", port=0)
    assert type(local) is KServeLocalConfig and local.port == 0
    cluster = KServeServerConfig(type="kserve", mode="cluster", image="i")
    assert type(cluster) is KServeClusterConfig and cluster.runtime == "prodml"
    assert (
        type(KServeServerConfig.model_validate({"type": "kserve", "mode": "cluster"})) is KServeClusterConfig
    )
    assert pickle.loads(pickle.dumps(cluster)) == cluster
    assert cluster.model_copy(update={"namespace": "x"}).namespace == "x"


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            {"type": "kserve", "port": 1, "namespace": "ml"},
            "server.namespace: 'namespace' is a `mode: cluster` setting",
        ),
        (
            {"type": "kserve", "mode": "cluster", "state_dir": "s"},
            "server.state_dir: 'state_dir' is a `mode: local` setting",
        ),
        ({"type": "kserve", "mode": "cluster", "namespce": "x"}, "did you mean 'namespace'?"),
        ({"type": "kserve", "mode": "local", "prot": 1}, "did you mean 'port'?"),
        ({"type": "kserve", "mode": "cloud"}, "server.mode: input should be 'local' or 'cluster'"),
        ({"type": "kserve", "mode": "cluster", "min_replicas": 3, "max_replicas": 1}, "below min_replicas"),
    ],
)
def test_wrong_keys_say_which_mode_they_belong_to(server: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_server(server)
    assert message in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_the_pipeline_parameter_keeps_the_mode() -> None:
    """A step rebuilds the config from its public dict: the mode picks the same class again."""
    cluster = load_server({"type": "kserve", "mode": "cluster", "image": "i"})
    again = KServeServerConfig.model_validate(cluster.model_dump(mode="json"))
    assert again == cluster
