"""Every backend combination of the design card, end to end, through the real CLI.

One base config (config/local.yaml); each case changes only the `type:` blocks — the source
(csv | feast) and the store (local | s3 on SeaweedFS | azure_blob on Azurite) — then runs
`prodml run`, and the served model must answer V1 and V2 with the same predictions as the
bundle's own Keras model. Two cases also go through the `kfp-local` runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from prodml.plugins.servers.client import predict
from prodml.testing.sdk import needs_sdk
from prodml.testing.services import Azurite, SeaweedFS

needs_sdk("tensorflow", extra="tensorflow")
needs_sdk("kserve", extra="kserve")
needs_sdk("feast", extra="feast")
needs_sdk("kfp", extra="kfp")

REPO = Path(__file__).parent.parent
BASE = yaml.safe_load((REPO / "config" / "local.yaml").read_text())
FEAST = yaml.safe_load((REPO / "config" / "feast.yaml").read_text())

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.kserve]


def source_block(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if kind == "csv":
        return {**BASE["source"], "path": str(REPO / "examples/quickstart/data/train.csv")}
    # a private copy of the example repo: its Feast state (registry, online store) is per test
    repo = request.getfixturevalue("copy_feast_example")(tmp_path / "feast_repo")
    return {**FEAST["source"], "repo_path": str(repo), "entity_df": str(repo / "data/house_sales.parquet")}


def store_block(kind: str, tmp_path: Path, env: dict[str, str], request: pytest.FixtureRequest) -> dict:
    if kind == "local":
        return {"type": "local", "root": str(tmp_path / "models")}
    if kind == "s3":
        server: SeaweedFS = request.getfixturevalue("s3_server")
        block = server.store_config()
        env["E2E_S3_SECRET"] = block.pop("secret_access_key")
        return {**block, "secret_access_key": "${env:E2E_S3_SECRET}"}
    azurite: Azurite = request.getfixturevalue("azurite_server")
    block = azurite.store_config()
    env["E2E_AZURE_CONN"] = block.pop("connection_string")
    return {**block, "connection_string": "${env:E2E_AZURE_CONN}"}


def run_case(tmp_path: Path, request: pytest.FixtureRequest, source: str, store: str, runner: str) -> None:
    # local server records go to the test's folder too (never the user's ~/.cache)
    env = {**os.environ, "PRODML_STATE_HOME": str(tmp_path / "serving" / "records")}
    config = {
        **BASE,
        "project": f"e2e-{source}-{store}".replace("_", "-"),
        "source": source_block(source, tmp_path, request),
        "trainer": {
            **BASE["trainer"],
            "model": str(REPO / "examples/quickstart/model.py:build_model"),
            "epochs": 2,
        },
        "store": store_block(store, tmp_path, env, request),
        # the server's state (bundle cache, pid file, log) in the test's folder, and scanned below
        "server": {**BASE["server"], "port": 0, "state_dir": str(tmp_path / "serving")},
        "runner": {"type": runner, "work_dir": str(tmp_path / "work")},
    }
    path = tmp_path / "prodml.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "prodml", "run", "-c", str(path), "--keep-serving"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # a normal run shows prodml's lines only: no SDK warnings or C++ log on stderr, no
    # kfp.local step logs (executor_input), no Feast progress with colour codes
    assert done.stderr == "", done.stderr
    assert "executor_input" not in output and "\x1b[" not in output and "Materializing" not in output
    assert len(done.stdout.splitlines()) <= 20, done.stdout
    for secret in ("E2E_S3_SECRET", "E2E_AZURE_CONN"):
        if secret in env:
            assert env[secret] not in output
            assert not _files_containing(tmp_path / "work", env[secret])

    (run_dir,) = [p for p in (tmp_path / "work" / "runs").iterdir() if p.name != "latest"]
    endpoint = json.loads((run_dir / "endpoint.json").read_text())
    modelref = json.loads((run_dir / "modelref.json").read_text())
    assert modelref["store_type"] == store
    # both runners record where each stage's artifact is (kfp-local keeps them in its pipeline root)
    outputs = {
        name: Path(stage["output"])
        for name, stage in json.loads((run_dir / "run.json").read_text())["stages"].items()
    }
    rows = _first_rows(outputs["fetch"], 3)
    try:
        v1 = predict(endpoint["url"], endpoint["model_name"], rows, protocol="v1")
        v2 = predict(endpoint["url"], endpoint["model_name"], rows, protocol="v2")
        expected = _bundle_predictions(outputs["train"], rows)
        got_v1 = [p[0] if isinstance(p, list) else p for p in v1["predictions"]]
        (output_tensor,) = v2["outputs"]
        assert output_tensor["name"] == "prediction"
        assert got_v1 == pytest.approx(expected, rel=1e-4, abs=1e-5)
        assert output_tensor["data"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    finally:
        stop = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from prodml.core.config import load_config; "
                "from prodml.core.plugins import default_registry as r; "
                "c = load_config(sys.argv[1]); r().create('server', c.server).undeploy(c.model_name)",
                str(path),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        assert stop.returncode == 0, stop.stderr
    # nothing the server process wrote (its log, state file, cached bundle) holds a credential
    served = [p for p in (tmp_path / "serving").rglob("*") if p.is_file()]
    logs = [p for p in served if p.suffix == ".log"]
    assert logs, served
    for log in logs:  # the server log of a normal run: no deprecation warnings from the SDKs
        assert "Warning:" not in log.read_text(errors="replace"), log.read_text(errors="replace")[-3000:]
    for secret in ("E2E_S3_SECRET", "E2E_AZURE_CONN"):
        if secret in env:
            assert not _files_containing(tmp_path / "serving", env[secret])


def _files_containing(root: Path, needle: str) -> list[Path]:
    data = needle.encode()
    return [p for p in root.rglob("*") if p.is_file() and data in p.read_bytes()]


def _first_rows(dataset: Path, n: int) -> list[list[float]]:
    import pandas as pd

    schema = json.loads((dataset / "schema.json").read_text())
    frame = pd.read_parquet(dataset / "dataset.parquet")
    return frame[schema["feature_names"]].head(n).astype(float).values.tolist()


def _bundle_predictions(bundle: Path, rows: list[list[float]]) -> list[float]:
    code = (
        "import json, sys, numpy as np\n"
        "from prodml.plugins.trainers.keras import load_bundle\n"
        "model, _ = load_bundle(sys.argv[1])\n"
        "x = np.asarray(json.loads(sys.argv[2]), dtype='float32')\n"
        "print(json.dumps(model(x).numpy().reshape(len(x), -1)[:, 0].tolist()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(bundle), json.dumps(rows)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("store", ["local", "s3", "azure_blob"])
@pytest.mark.parametrize("source", ["csv", "feast"])
def test_local_runner_matrix(tmp_path: Path, request: pytest.FixtureRequest, source: str, store: str) -> None:
    run_case(tmp_path, request, source, store, "local")


@pytest.mark.kfp
@pytest.mark.parametrize("source, store", [("csv", "s3"), ("feast", "azure_blob")])
def test_kfp_local_runner(tmp_path: Path, request: pytest.FixtureRequest, source: str, store: str) -> None:
    run_case(tmp_path, request, source, store, "kfp-local")
