"""The quickstart end to end (csv -> keras -> local store -> KServe on this machine) through
the ``local`` runner and through ``kfp-local``: one config, one word changed, same model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from prodml.cli import main
from prodml.core.bundle import verify_bundle
from prodml.core.config import load_config
from prodml.core.interfaces import Endpoint, RunSummary
from prodml.core.plugins import default_registry
from prodml.testing.sdk import needs_sdk
from prodml.testing.services import free_port

needs_sdk("kfp", extra="kfp")
needs_sdk("kserve", extra="kserve")
needs_sdk("tensorflow", extra="tensorflow")

pytestmark = [pytest.mark.slow, pytest.mark.kfp, pytest.mark.kserve, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"


def quickstart_config(tmp_path: Path, runner: str) -> Path:
    """config/local.yaml's quickstart, with its own store, server port and state in tmp_path."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = {
        "project": "quickstart",
        "source": {"type": "csv", "path": str(QUICKSTART / "data" / "train.csv"), "label": "target"},
        "trainer": {"type": "keras", "model": f"{QUICKSTART}/model.py:build_model", "epochs": 2, "seed": 42},
        "store": {"type": "local", "root": "models"},
        "server": {"type": "kserve", "mode": "local", "port": free_port(), "state_dir": "serving"},
        "runner": {"type": runner},
    }
    path = tmp_path / "prodml.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


SAMPLE = re.compile(r"^sample prediction for the first 3 rows: (.*)$", re.M)


def run_quickstart(tmp_path: Path, runner: str, capsys) -> tuple[RunSummary, str]:
    config = quickstart_config(tmp_path, runner)
    assert main(["run", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    runs = tmp_path / ".prodml" / "runs"
    record = json.loads((runs / (runs / "latest").read_text().strip() / "run.json").read_text())
    assert record["status"] == "ok" and record["server_stopped"]
    summary = RunSummary.model_validate(record["summary"])
    assert summary.stages == ("fetch", "train", "export", "serve") and summary.runner == runner
    (sample,) = SAMPLE.findall(out)
    assert "server stopped" in out
    return summary, sample


def test_local_and_kfp_local_serve_the_same_model(tmp_path: Path, capsys) -> None:
    local, local_sample = run_quickstart(tmp_path / "local", "local", capsys)
    kfp, kfp_sample = run_quickstart(tmp_path / "kfp", "kfp-local", capsys)

    # the same stages made the same artifacts: a dataset, a verified bundle, a version, an endpoint
    for summary in (local, kfp):
        assert (Path(summary.outputs["fetch"]) / "dataset.parquet").is_file()
        verify_bundle(Path(summary.outputs["train"]))
        assert summary.endpoint is not None and summary.endpoint.model_name == "quickstart"
    # the served models answered, with identical predictions for the same seed
    assert json.loads(local_sample) == json.loads(kfp_sample)
    assert len(json.loads(kfp_sample)) == 3
    local_meta = json.loads((Path(local.outputs["train"]) / "prodml.json").read_text())
    kfp_meta = json.loads((Path(kfp.outputs["train"]) / "prodml.json").read_text())
    assert local_meta["metrics"] == kfp_meta["metrics"]
    assert local_meta["training_data"] == kfp_meta["training_data"]


def test_kfp_local_keep_serving_leaves_a_server_answering(tmp_path: Path, capsys) -> None:
    from prodml.plugins.servers.client import predict, predictions

    config_file = quickstart_config(tmp_path, "kfp-local")
    assert main(["run", "-c", str(config_file), "--keep-serving"]) == 0
    out = capsys.readouterr().out
    assert "server stopped" not in out
    config = load_config(config_file)
    server = default_registry().create("server", config.server)
    runs = tmp_path / ".prodml" / "runs"
    endpoint = Endpoint.read(runs / (runs / "latest").read_text().strip() / "endpoint.json")
    try:
        # the server outlived the kfp.local step that started it, and answers V2 requests
        assert server.status("quickstart").ready
        rows = [[0.1, 0.2, 0.3, 0.4, 0.5], [-0.5, 0.0, 0.5, 1.0, -1.0]]
        answer = predict(endpoint.url, "quickstart", rows, protocol="v2")
        assert len(predictions(answer)) == 2
    finally:
        server.undeploy("quickstart")
    assert not server.status("quickstart").ready
