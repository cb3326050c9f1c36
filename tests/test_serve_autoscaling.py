"""server.autoscaling: rendered into the InferenceService and checked against KServe's own CRD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from prodml.core import cluster_check
from prodml.core.config import load_config
from prodml.core.errors import ConfigError
from prodml.core.plugins import default_registry

REPO = Path(__file__).resolve().parents[1]


def config_file(tmp_path: Path, server: str) -> Path:
    path = tmp_path / "prodml.yaml"
    path.write_text(
        "project: scaled\n"
        f"source: {{type: csv, path: {REPO / 'examples/quickstart/data/train.csv'}, label: target}}\n"
        f"trainer: {{type: keras, model: {REPO / 'examples/quickstart/model.py'}}}\n"
        "store: {type: s3, bucket: models, endpoint_url: 'http://minio.minio.svc:9000', region: us-east-1}\n"
        f"server: {server}\n"
        "stages: [fetch, train, export, serve]\n"
    )
    return path


def isvc(tmp_path: Path, server: str) -> dict[str, Any]:
    config = load_config(config_file(tmp_path, server))
    registry = default_registry()
    built = registry.create("server", config.server)
    store = registry.create("store", config.store)
    docs, _ = built.manifests(store, config.model_name, offline=True)
    return next(d for d in docs if d["kind"] == "InferenceService")


SCALED = (
    "{type: kserve, mode: cluster, image: 'prodml:0.1.0', "
    "autoscaling: {min_replicas: 2, max_replicas: 6, metric: cpu, target: 70}}"
)


def test_autoscaling_is_rendered_into_the_predictor_and_passes_the_crd(tmp_path: Path) -> None:
    obj = isvc(tmp_path, SCALED)
    predictor = obj["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 6)
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 70)
    assert cluster_check.check_custom_resource(obj) == []


@pytest.mark.parametrize(
    ("field", "value"), [("scaleMetric", "latency"), ("scaleTarget", "seventy"), ("scaleTargetPercent", 5)]
)
def test_autoscaling_kserve_rejects_fails_the_schema_check_naming_the_field(
    tmp_path: Path, field: str, value: Any
) -> None:
    obj = isvc(tmp_path, SCALED)
    obj["spec"]["predictor"][field] = value
    problems = cluster_check.check_custom_resource(obj)
    assert problems and any(field in str(p) for p in problems), problems


@pytest.mark.parametrize(
    ("autoscaling", "message"),
    [
        ("{max_replicas: 3, metric: latency}", "'latency' is not a metric KServe v0.20.0 scales on"),
        ("{max_replicas: 3, metric: rps}", "needs KServe's Serverless (Knative) mode"),
        ("{min_replicas: 4, max_replicas: 3}", "max_replicas 3 is below min_replicas 4"),
        ("{max_replicas: 3, target: 0}", "greater than or equal to 1"),
        ("{max_replicas: 3, metrc: cpu}", "metrc"),
    ],
)
def test_bad_autoscaling_settings_are_config_errors(tmp_path: Path, autoscaling: str, message: str) -> None:
    server = f"{{type: kserve, mode: cluster, autoscaling: {autoscaling}}}"
    with pytest.raises(ConfigError, match=r"server\.autoscaling") as info:
        load_config(config_file(tmp_path, server))
    assert message in str(info.value)


def test_replica_bounds_live_in_one_place(tmp_path: Path) -> None:
    server = "{type: kserve, mode: cluster, max_replicas: 2, autoscaling: {max_replicas: 3}}"
    with pytest.raises(ConfigError, match=r"set the replica bounds in server\.autoscaling only"):
        load_config(config_file(tmp_path, server))


def test_autoscaling_belongs_to_cluster_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="autoscaling"):
        load_config(config_file(tmp_path, "{type: kserve, mode: local, autoscaling: {max_replicas: 3}}"))
