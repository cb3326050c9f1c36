"""Pre-flight: what the stages about to run need is checked before any of them runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prodml.core.config import load_config
from prodml.runner import preflight

REPO = Path(__file__).parent.parent
QUICKSTART = REPO / "examples" / "quickstart"


def without_credentials(home: Path) -> dict[str, str]:
    """This environment minus every AWS/Azure credential source (HOME without ~/.aws)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AZURE_"))}
    return {**env, "HOME": str(home)}


def prodml(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prodml", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or dict(os.environ),
    )


@pytest.fixture
def no_cloud_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in os.environ:
        if name.startswith(("AWS_", "AZURE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.aws either


def write_config(tmp_path: Path, **sections: str) -> Path:
    """A config of the quickstart with some sections replaced (YAML flow text per section)."""
    parts = {
        "source": f"{{type: csv, path: {QUICKSTART / 'data' / 'train.csv'}, label: target}}",
        "trainer": f"{{type: keras, model: {QUICKSTART / 'model.py'}:build_model, epochs: 1}}",
        "store": f"{{type: local, root: {tmp_path / 'models'}}}",
        "server": f"{{type: kserve, mode: local, port: 0, state_dir: {tmp_path / 'state'}}}",
        "runner": f"{{type: local, work_dir: {tmp_path / 'work'}}}",
        **sections,
    }
    body = "".join(f"{role}: {text}\n" for role, text in parts.items())
    path = tmp_path / "prodml.yaml"
    path.write_text(f"project: pf\n{body}stages: [fetch, train, export, serve]\n")
    return path


def problems_of(path: Path, stages: list[str] | None = None, *, offline: bool = True) -> list[str]:
    return preflight.problems(load_config(path), stages, offline=offline)


def test_the_quickstart_passes(tmp_path: Path) -> None:
    assert problems_of(write_config(tmp_path)) == []


def test_missing_files_are_named(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        source="{type: csv, path: nowhere/train.csv, label: target}",
        trainer="{type: keras, model: nowhere/model.py:build_model}",
    )
    found = problems_of(path)
    assert found == [
        f"source (csv): the CSV file {tmp_path / 'nowhere' / 'train.csv'} does not exist (source.path)",
        f"trainer (keras): the model file {tmp_path / 'nowhere' / 'model.py'} does not exist (trainer.model)",
    ]


def test_only_the_stages_about_to_run_are_checked(tmp_path: Path) -> None:
    path = write_config(tmp_path, source="{type: csv, path: nowhere.csv, label: target}")
    assert len(problems_of(path)) == 1
    assert problems_of(path, ["train", "export", "serve"]) == []


def test_model_file_without_the_function(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text("def build_modle(spec):\n    pass\n")
    path = write_config(tmp_path, trainer="{type: keras, model: model.py:build_model}")
    assert problems_of(path) == [
        f"trainer (keras): the model file {tmp_path / 'model.py'} defines no function 'build_model' "
        "(trainer.model)"
    ]
    (tmp_path / "model.py").write_text("def build_model(spec:\n")
    assert "syntax error on line 1" in problems_of(path)[0]


def test_feast_repository_and_entity_file(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    path = write_config(
        tmp_path,
        source="{type: feast, repo_path: repo, feature_service: s, entity_df: events.parquet, label: y}",
    )
    assert problems_of(path, ["fetch"]) == [
        f"source (feast): the Feast config {tmp_path / 'repo' / 'feature_store.yaml'} does not exist "
        "(source.repo_path / source.feature_store_yaml)",
        f"source (feast): the entity file {tmp_path / 'events.parquet'} does not exist (source.entity_df)",
    ]


def test_feast_example_passes() -> None:
    assert preflight.problems(load_config(REPO / "config" / "feast.yaml"), ["fetch"], offline=True) == []


def test_local_store_root_must_be_creatable(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    path = write_config(tmp_path, store=f"{{type: local, root: {tmp_path / 'afile' / 'models'}}}")
    assert problems_of(path, ["export"]) == [
        f"store (local): the store folder {tmp_path / 'afile' / 'models'} cannot be created: "
        f"{tmp_path / 'afile'} is a file (store.root)"
    ]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_port_is_reported_for_the_serve_stage_only(tmp_path: Path, taken_port: int) -> None:
    path = write_config(
        tmp_path, server=f"{{type: kserve, port: {taken_port}, state_dir: {tmp_path / 'state'}}}"
    )
    assert problems_of(path) == [
        f"server (kserve): cannot listen on 127.0.0.1:{taken_port}: in use (server.port); stop what uses "
        "it, or set server.port to another port (0 picks a free one)"
    ]
    assert problems_of(path, ["fetch", "train", "export"]) == []


def test_s3_without_credentials_needs_no_network_to_say_so(
    tmp_path: Path, no_cloud_credentials: None
) -> None:
    path = write_config(
        tmp_path,
        store='{type: s3, bucket: models, endpoint_url: "http://127.0.0.1:9", access_key_id: "", '
        'secret_access_key: ""}',
    )
    found = problems_of(path, ["export"])
    assert len(found) == 1 and found[0].startswith("store (s3): no S3 credentials"), found


def test_azure_without_credentials(tmp_path: Path, no_cloud_credentials: None) -> None:
    path = write_config(tmp_path, store="{type: azure_blob, container: models}")
    found = problems_of(path, ["export"])
    assert len(found) == 1 and found[0].startswith("store (azure_blob): no Azure credentials"), found


def test_network_checks_run_unless_offline(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write_config(
        tmp_path,
        store=f'{{type: s3, bucket: models, endpoint_url: "http://127.0.0.1:{port}", '
        "access_key_id: AKID, secret_access_key: secret-key-1}",
    )
    assert problems_of(path, ["export"], offline=True) == []
    found = problems_of(path, ["export"], offline=False)
    assert len(found) == 1 and "the server does not answer" in found[0], found
    assert "secret-key-1" not in found[0]


@pytest.mark.s3
def test_s3_store_that_answers(tmp_path: Path, s3_server: Any) -> None:
    import yaml

    config = s3_server.store_config()
    path = write_config(tmp_path, store=yaml.safe_dump(config, default_flow_style=True).strip())
    assert problems_of(path, ["export"], offline=False) == []
    missing = {**config, "bucket": "no-such-bucket-pf"}
    path = write_config(tmp_path, store=yaml.safe_dump(missing, default_flow_style=True).strip())
    found = problems_of(path, ["export"], offline=False)
    assert len(found) == 1 and "the bucket does not exist" in found[0], found
    path = write_config(
        tmp_path, store=yaml.safe_dump({**missing, "create_bucket": True}, default_flow_style=True).strip()
    )
    assert problems_of(path, ["export"], offline=False) == []  # the push will create it
    wrong = {**config, "secret_access_key": "not-the-key"}
    path = write_config(tmp_path, store=yaml.safe_dump(wrong, default_flow_style=True).strip())
    found = problems_of(path, ["export"], offline=False)
    assert len(found) == 1 and "access denied" in found[0], found
    assert s3_server.secret_access_key not in found[0]


@pytest.mark.azure
def test_azure_store_that_answers(tmp_path: Path, azurite_server: Any) -> None:
    azurite_server.create_container("pf-models")
    store = (
        f'{{type: azure_blob, container: pf-models, connection_string: "{azurite_server.connection_string}"}}'
    )
    assert problems_of(write_config(tmp_path, store=store), ["export"], offline=False) == []
    store = (
        f'{{type: azure_blob, container: pf-absent, connection_string: "{azurite_server.connection_string}"}}'
    )
    found = problems_of(write_config(tmp_path, store=store), ["export"], offline=False)
    assert len(found) == 1 and "pf-absent" in found[0], found
    assert azurite_server.account_key not in found[0]


# -- the CLI --------------------------------------------------------------------------------------


def test_run_stops_before_training_when_credentials_are_missing(tmp_path: Path) -> None:
    out = prodml("run", "-c", "config/minio.yaml", env=without_credentials(tmp_path))
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""  # no stage started
    assert out.stderr.startswith("error: pre-flight found 1 problem(s) (config/minio.yaml); nothing was run")
    assert "no S3 credentials" in out.stderr and "Traceback" not in out.stderr


def test_run_checks_only_the_stages_it_resumes(tmp_path: Path) -> None:
    path = write_config(tmp_path, source="{type: csv, path: gone.csv, label: target}")
    out = prodml("run", "-c", str(path))
    assert out.returncode == 2 and "the CSV file" in out.stderr
    resumed = prodml("run", "-c", str(path), "--from", "train")
    # no earlier run to resume: the runner's own error, past the pre-flight
    assert "the CSV file" not in resumed.stderr, resumed.stderr


def test_validate_reports_every_problem_and_exits_2(tmp_path: Path, taken_port: int) -> None:
    path = write_config(
        tmp_path,
        source="{type: csv, path: gone.csv, label: target}",
        server=f"{{type: kserve, port: {taken_port}}}",
    )
    out = prodml("validate", "--offline", "-c", str(path))
    assert out.returncode == 2
    assert out.stdout.splitlines()[0] == f"{path}: valid config; pre-flight found 2 problem(s)"
    errors = out.stderr.splitlines()
    assert errors[0].startswith("error: pre-flight: source (csv): the CSV file")
    assert errors[1].startswith(
        f"error: pre-flight: server (kserve): cannot listen on 127.0.0.1:{taken_port}"
    )


def test_validate_offline_skips_the_network(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        store='{type: s3, bucket: models, endpoint_url: "http://127.0.0.1:9", access_key_id: AKID, '
        "secret_access_key: sk}",
    )
    offline = prodml("validate", "--offline", "-c", str(path))
    assert offline.returncode == 0, offline.stderr
    assert (
        "pre-flight ok: files, credentials and ports checked; network skipped (--offline)" in offline.stdout
    )
    online = prodml("validate", "-c", str(path))
    assert online.returncode == 2 and "the server does not answer" in online.stderr


def test_run_with_the_port_taken_stops_before_fetch(tmp_path: Path, taken_port: int) -> None:
    path = write_config(
        tmp_path, server=f"{{type: kserve, port: {taken_port}, state_dir: {tmp_path / 'state'}}}"
    )
    out = prodml("run", "-c", str(path))
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == "" and f"cannot listen on 127.0.0.1:{taken_port}" in out.stderr
    assert not (tmp_path / "work").exists()  # no run folder: no stage started
