"""The dashboard's pages and its safety rules, through Starlette's test client (no browser).

The data is real (run folders written by RunFolder, versions pushed to a local store); the
browser tests (test_ui_browser.py) cover the same pages with trained models and a server.
"""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

# the data tests' bundle and config builders (tests/ is on sys.path under pytest)
from test_ui_data import clock, make_bundle, write_config  # noqa: F401

from prodml.core.config import load_config
from prodml.core.plugins import default_registry
from prodml.runner._runs import RunFolder
from prodml.ui.app import create_app
from prodml.ui.data import Project

SECRET = "s3cr3t-marker-7f3a9c"


@pytest.fixture
def client(tmp_path, monkeypatch, clock):  # noqa: F811
    """A dashboard over a project with a secret in its config, two versions and two runs."""
    monkeypatch.setenv("UI_TEST_TOKEN", SECRET)
    path = write_config(
        tmp_path,
        {"type": "local", "root": "models"},
        runner={"type": "local", "token": "${env:UI_TEST_TOKEN}"},
    )
    config = load_config(path)
    store = default_registry().create("store", config.store)
    versions = [
        store.push(
            make_bundle(tmp_path / f"b{i}", epochs=3 + i, loss=1.0 - i / 4, rows=100 + i), "uidata"
        ).version
        for i in range(2)
    ]
    work = tmp_path / ".prodml"
    ok = RunFolder.create(work, runner="local", project="uidata", stages=("fetch",))
    ok.mark("fetch", "ok", seconds=0.1, attempts=1)
    ok.finish("ok")
    failed = RunFolder.create(work, runner="local", project="uidata", stages=("fetch",))
    # a secret that reached an error message and a log must still not reach a page
    failed.mark("fetch", "failed", error=f"could not log in with {SECRET}", seconds=0.1, attempts=1)
    failed.finish("failed", failed_stage="fetch")
    (failed.root / "run.log").write_text(f"[1/1] fetch FAILED with {SECRET}\n")
    app = create_app(Project(config), token="the-token")
    with TestClient(app, base_url="http://127.0.0.1:8765") as test_client:
        test_client.versions = versions  # type: ignore[attr-defined]
        test_client.run_ids = (ok.run_id, failed.run_id)  # type: ignore[attr-defined]
        yield test_client


def test_pages_show_runs_versions_and_latest(client) -> None:
    first, second = client.versions
    ok_id, failed_id = client.run_ids
    for path in ("/", "/runs", "/models", "/history", "/endpoints", f"/runs/{ok_id}", f"/models/{first}"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    models = client.get("/models").text
    assert first in models and second in models
    assert models.count('class="badge latest"') == 1
    assert f'data-version="{second}"' in models.split('class="is-latest"')[1][:200]
    version = client.get(f"/models/{first}").text
    assert version.count('class="point train"') == 3 and version.count('class="point validation"') == 3
    failed = client.get(f"/runs/{failed_id}").text
    assert "prodml run -c " in failed and "--from fetch" in failed
    history = client.get("/history").text
    assert history.count("<td>export</td>") == 2 and f"/models/{second}" in history
    compare = client.get(f"/compare?a={first}&b={second}").text
    assert "differs" in compare and first in compare and second in compare


def test_no_page_shows_a_secret(client) -> None:
    first, _ = client.versions
    ok_id, failed_id = client.run_ids
    pages = [
        "/",
        "/runs",
        "/models",
        "/endpoints",
        f"/runs/{ok_id}",
        f"/runs/{failed_id}",
        f"/models/{first}",
    ]
    for path in pages:
        html = client.get(path).text
        assert SECRET not in html, path
    failed = client.get(f"/runs/{failed_id}").text
    assert "could not log in with ***" in failed and "FAILED with ***" in failed


@pytest.mark.parametrize(
    "path",
    ["/runs/20990101T000000Z-abcdef", "/runs/..%2F..%2Fetc", "/models/20990101T000000Z-00000000", "/nope"],
)
def test_unknown_ids_get_a_404_page(client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "Not found" in response.text and "Traceback" not in response.text


def test_forged_posts_are_refused(client) -> None:
    first, second = client.versions
    for data in ({"version": first}, {"version": first, "token": "guess", "confirm": "yes"}):
        response = client.post("/models/promote", data=data)
        assert response.status_code == 403
        assert "token" in response.text
    assert client.post("/models/rollback", data={"confirm": "yes"}).status_code == 403
    assert client.post("/endpoints/uidata/try", data={"f_sqft": "1"}).status_code == 403
    # latest did not move
    assert Project(client.app.state.project.config).latest_version() == second


def test_requests_for_another_host_name_are_refused(client) -> None:
    # a page on another site that rebinds its DNS name to 127.0.0.1 sends its own Host
    response = client.get("/models", headers={"Host": "attacker.example:8765"})
    assert response.status_code == 400


def test_a_taken_port_is_a_clear_error(tmp_path, capsys) -> None:
    import socket

    from prodml.cli import main

    config = write_config(tmp_path, {"type": "local", "root": "models"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["ui", "-c", str(config), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_every_screenshot_docs_ui_shows_is_committed() -> None:
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[1] / "docs"
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", (docs / "ui.md").read_text())
    assert len(images) >= 8
    assert [name for name in images if not (docs / name).is_file()] == []


def test_a_fresh_project_without_runs_or_store(tmp_path) -> None:
    (tmp_path / "prodml.yaml").write_text(
        "project: fresh\nstages: [fetch]\nsource: {type: csv, path: data.csv, label: target}\n"
    )
    app = create_app(Project(load_config(tmp_path / "prodml.yaml")), token="t")
    with TestClient(app, base_url="http://127.0.0.1:8765") as client:
        assert "no runs yet" in client.get("/").text
        assert "no runs yet" in client.get("/runs").text
        assert "no <code>store:</code> section" in client.get("/models").text
        assert "no model server of fresh is running" in client.get("/endpoints").text
        assert client.get("/models/latest").status_code == 404
