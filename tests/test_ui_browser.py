"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

One project for the module, trained once with a tiny model: two versions (2 and 3 epochs),
the second served by a real KServe process, the dashboard a real ``prodml ui`` process.
Screenshots of every page go under the test's temporary folder, and also into
``$PRODML_UI_SCREENSHOTS`` when set (that is how docs/ui-*.png are made).

Playwright never downloads a browser here: it launches /usr/bin/chromium. A missing browser
skips these tests on a laptop and fails them under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from prodml.cli import main
from prodml.testing.services import free_port, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.kserve]

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_CSV = ROOT / "examples" / "quickstart" / "data" / "train.csv"
CHROMIUM = os.environ.get("PRODML_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SECRET = "ui-secret-marker-52e1b7"
EPOCHS = (2, 3)  # the first version's epochs, the second's

# A tiny model; FLAG_FILE makes build_model wait, so a test can watch a run while it runs.
MODEL = """
import time
from pathlib import Path

import keras

WAIT_FOR = Path({wait_for!r})


def build_model(spec):
    deadline = time.monotonic() + 300
    while WAIT_FOR.name != "never" and not WAIT_FOR.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    inputs = keras.Input(shape=(spec.input_width,), name="features")
    x = keras.layers.Normalization(mean=spec.feature_mean, variance=spec.feature_variance)(inputs)
    outputs = keras.layers.Dense(1, name="prediction")(keras.layers.Dense(4, activation="relu")(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", metrics=["mae"])
    return model
"""


def make_project(folder: Path, *, wait_for: str = "never", rows: int = 120) -> Path:
    """A project folder with data, model code and a config whose runner holds a secret."""
    (folder / "data").mkdir(parents=True)
    lines = QUICKSTART_CSV.read_text().splitlines()[: rows + 1]
    (folder / "data" / "train.csv").write_text("\n".join(lines) + "\n")
    (folder / "model.py").write_text(MODEL.format(wait_for=str(folder / wait_for)))
    return folder


def write_config(folder: Path, *, epochs: int, stages: list[str]) -> Path:
    config = {
        "project": "uitest",
        "source": {"type": "csv", "path": "data/train.csv", "label": "target"},
        "trainer": {"type": "keras", "model": "model.py:build_model", "epochs": epochs, "seed": 3},
        "store": {"type": "local", "root": "models"},
        "server": {"type": "kserve", "mode": "local", "port": 0, "state_dir": "serving"},
        # the local runner ignores `token`; it is here as a secret no page may show
        "runner": {"type": "local", "token": "${env:UI_TEST_SECRET}"},
        "stages": stages,
    }
    path = folder / "prodml.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def start_dashboard(config: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``prodml ui -c CONFIG`` in its own process; returns it and its URL once it answers."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prodml", "ui", "-c", str(config), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prodml ui exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if get(url + "/runs", timeout=2)[0] == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"prodml ui did not answer within 60 s:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The secret the configs read, and server state kept out of the user's ~/.cache."""
    saved = dict(os.environ)
    os.environ["UI_TEST_SECRET"] = SECRET
    os.environ["PRODML_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    yield dict(os.environ)
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable(RuntimeError(f"playwright is not installed ({exc}): pip install 'prodml[dev]'"))
    if not Path(CHROMIUM).is_file():
        unavailable(RuntimeError(f"no browser at {CHROMIUM}: apt-get install chromium"))
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    # a promote moves the running server too (a new process loads the model): allow for it
    context.set_default_timeout(180_000)
    context.set_default_navigation_timeout(180_000)
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, env) -> Iterator[dict]:
    """Two versions (trained here, in this process), the second served; the dashboard running."""
    folder = make_project(tmp_path_factory.mktemp("uiproject"))
    config = write_config(folder, epochs=EPOCHS[0], stages=["fetch", "train", "export"])
    assert main(["run", "-c", str(config)]) == 0
    config = write_config(folder, epochs=EPOCHS[1], stages=["fetch", "train", "export", "serve"])
    assert main(["run", "-c", str(config), "--keep-serving"]) == 0
    runs = sorted(p.name for p in (folder / ".prodml" / "runs").iterdir() if p.is_dir())
    refs = [folder / ".prodml" / "runs" / run / "modelref.json" for run in runs]
    versions = [json.loads(ref.read_text())["version"] for ref in refs]
    proc, url = start_dashboard(config, folder / "ui.log")
    try:
        yield {"folder": folder, "config": config, "runs": runs, "versions": versions, "url": url}
    finally:
        stop(proc)
        from prodml.core.config import load_config
        from prodml.core.plugins import default_registry

        loaded = load_config(config)
        default_registry().create("server", loaded.server).undeploy(loaded.model_name)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory):
    """``shot(page, name)``: a full-page screenshot under the tmp folder (and $PRODML_UI_SCREENSHOTS)."""
    folder = tmp_path_factory.mktemp("screenshots")
    extra = os.environ.get("PRODML_UI_SCREENSHOTS")

    def shot(page, name: str) -> Path:
        path = folder / f"ui-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(extra) / path.name)
        return path

    shot.folder = folder  # type: ignore[attr-defined]
    return shot


def cli_latest(config: Path) -> str:
    """The version `prodml models -c FILE` marks latest (the CLI, in its own process)."""
    out = subprocess.run(
        [sys.executable, "-m", "prodml", "models", "-c", str(config)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    marked = [line.split()[0] for line in out.splitlines() if line.rstrip().endswith("*")]
    assert len(marked) == 1, out
    return marked[0]


def test_every_page_opens_and_shows_no_secret(project, page, shots) -> None:
    url, (first, second) = project["url"], project["versions"]
    pages = {
        "overview": "/",
        "runs": "/runs",
        "run": f"/runs/{project['runs'][1]}",
        "models": "/models",
        "version": f"/models/{second}",
        "compare": f"/compare?a={first}&b={second}",
        "history": "/history",
        "endpoints": "/endpoints",
    }
    for name, path in pages.items():
        response = page.goto(url + path)
        assert response is not None and response.status == 200, path
        assert page.locator("h1").first.is_visible()
        html = page.content()
        assert SECRET not in html, f"{path} shows the secret"
        shots(page, name)
    assert len(list(shots.folder.glob("ui-*.png"))) == len(pages)
    # the run page shows the config as validated, the secret masked, and the run's log
    page.goto(url + f"/runs/{project['runs'][1]}")
    config_text = page.locator("pre.config").inner_text()
    assert '"token": "**********"' in config_text
    assert "[4/4] serve" in page.locator("pre.log").inner_text()
    assert page.locator("tr[data-stage=train] .badge").inner_text() == "ok"


def test_versions_metrics_and_the_latest_mark(project, page) -> None:
    first, second = project["versions"]
    page.goto(project["url"] + "/models")
    rows = page.locator("table.versions tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).get_attribute("data-version") == second
    assert rows.nth(1).get_attribute("data-version") == first
    assert page.locator("tr.is-latest").get_attribute("data-version") == second
    assert page.locator("tr.is-latest .badge.latest").inner_text() == "latest"
    metrics = json.loads(
        (project["folder"] / ".prodml" / "runs" / project["runs"][1] / "bundle" / "prodml.json").read_text()
    )["metrics"]
    shown = rows.nth(0).locator("td.metrics").inner_text()
    for name, value in metrics.items():
        assert f"{name} {value:.6g}" in shown


def test_training_curves_have_one_point_per_epoch(project, page) -> None:
    for version, epochs in zip(project["versions"], EPOCHS, strict=True):
        page.goto(project["url"] + f"/models/{version}")
        chart = page.locator('svg.curve[data-metric="loss"]')
        assert chart.count() == 1
        assert chart.locator("circle.point.train").count() == epochs
        assert chart.locator("circle.point.validation").count() == epochs


def test_try_it_returns_the_models_own_prediction(project, page, shots) -> None:
    import keras
    import numpy as np

    second = project["versions"][1]
    page.goto(project["url"] + "/endpoints")
    section = page.locator('section.endpoint[data-model="uitest"]')
    assert second in section.locator("h2").inner_text()
    assert section.locator(".badge").inner_text() == "ready"
    fields = section.locator(".fields input")
    names = [fields.nth(i).get_attribute("name")[2:] for i in range(fields.count())]
    assert names == ["sqft", "rooms", "age", "distance", "quality"]
    row = [-0.25, 0.5, 0.125, -0.75, 1.0]
    for name, value in zip(names, row, strict=True):
        section.locator(f'input[name="f_{name}"]').fill(str(value))
    bundle = project["folder"] / ".prodml" / "runs" / project["runs"][1] / "bundle"
    model = keras.saving.load_model(bundle / "model.keras", compile=False)
    expected = float(np.asarray(model(np.array([row], dtype="float32")))[0][0])
    for protocol in ("v1", "v2"):
        page.locator(f'section.endpoint input[name=protocol][value="{protocol}"]').check()
        page.locator("#send-uitest").click()
        page.wait_for_selector("#answer")
        answer = page.locator("#answer .prediction").inner_text()
        (value,) = json.loads(answer)
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-6), protocol
        assert re.search(r"[\d.]+ ms", page.locator("#answer .rtt").inner_text())
        if protocol == "v1":
            shots(page, "try-it")


def test_a_forged_post_is_refused(project, page) -> None:
    first, second = project["versions"]
    url = project["url"]
    # another site's page submitting a form to the dashboard: no token, refused
    page.set_content(
        f'<form method="post" action="{url}/models/promote">'
        f'<input name="version" value="{first}"><input name="confirm" value="yes"></form>'
    )
    with page.expect_navigation() as navigation:
        page.locator("form").evaluate("form => form.submit()")
    assert navigation.value.status == 403
    response = page.request.post(url + "/models/rollback", form={"confirm": "yes", "token": "guessed"})
    assert response.status == 403
    assert cli_latest(project["config"]) == second


def test_promote_and_rollback_from_the_page_move_latest(project, page) -> None:
    first, second = project["versions"]
    page.goto(project["url"] + "/models")
    page.locator(f'tr[data-version="{first}"] button.promote').click()
    page.wait_for_selector("#confirm")  # the confirmation step
    assert cli_latest(project["config"]) == second  # nothing moved before confirming
    page.locator("#confirm").click()
    page.wait_for_selector("p.notice")
    assert page.locator("tr.is-latest").get_attribute("data-version") == first
    assert cli_latest(project["config"]) == first
    page.locator("button.rollback").click()
    page.locator("#confirm").click()
    page.wait_for_selector("p.notice")
    assert cli_latest(project["config"]) == second
    page.goto(project["url"] + "/history")
    history = page.locator("table.history tbody tr")
    assert history.count() >= 2
    assert "rollback" in history.nth(0).inner_text()


def test_the_dashboard_answers_while_a_run_executes(tmp_path: Path, env, page, shots) -> None:
    folder = make_project(tmp_path / "running", wait_for="release", rows=60)
    config = write_config(folder, epochs=1, stages=["fetch", "train"])
    runner = subprocess.Popen(
        [sys.executable, "-m", "prodml", "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    ui, url = start_dashboard(config, folder / "ui.log")
    try:
        runs = folder / ".prodml" / "runs"
        deadline = time.monotonic() + 120
        run_id = None
        while time.monotonic() < deadline and run_id is None:
            record = next(iter(runs.glob("*/run.json")), None) if runs.is_dir() else None
            stages = json.loads(record.read_text())["stages"] if record is not None else {}
            if stages.get("train", {}).get("status") == "running":
                run_id = record.parent.name
            time.sleep(0.2)
        assert run_id is not None, "the run never reached its train stage"
        status, html = get(f"{url}/runs/{run_id}")
        assert status == 200 and 'data-status="running"' in html
        page.goto(f"{url}/runs/{run_id}")
        assert page.locator("tr[data-stage=train] .badge").inner_text() == "running"
        assert page.locator("tr[data-stage=fetch] .badge").inner_text() == "ok"
        shots(page, "run-running")
        (folder / "release").touch()
        # the page refreshes its stages itself until the run ends
        page.wait_for_selector("tr[data-stage=train] .badge.ok", timeout=180_000)
        assert runner.wait(180) == 0
    finally:
        (folder / "release").touch()
        if runner.poll() is None:
            runner.kill()
        stop(ui)
