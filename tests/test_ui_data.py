"""The dashboard's data layer against real run folders and real stores (local, SeaweedFS, Azurite).

Runs are written with the runner's own :class:`RunFolder` (the code ``prodml run`` uses);
versions are pushed with the store plugins' own ``push``; no training is needed here
(the browser tests train real models).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from prodml.core.bundle import BundleMetadata, FeatureInfo, write_manifest
from prodml.core.config import load_config
from prodml.core.errors import RunnerError
from prodml.core.plugins import default_registry
from prodml.runner._runs import RunFolder
from prodml.ui import charts
from prodml.ui.data import NotFound, Project, epoch_history, lineage, read_version_file

FEATURES = ["sqft", "rooms", "age"]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch):
    """Version ids from a counter of seconds: pushes in one second still sort in push order."""
    from prodml.core import bundle as bundle_mod

    state = {"n": 0}

    def version_id(bundle_dir: Path, now=None) -> str:
        state["n"] += 1
        return f"20261130T1200{state['n']:02d}Z-{bundle_mod.manifest_digest(bundle_dir)[:8]}"

    monkeypatch.setattr(bundle_mod, "new_version_id", version_id)


def make_bundle(folder: Path, *, epochs: int, loss: float, rows: int = 120) -> Path:
    """A complete bundle (files + prodml.json + manifest), per-epoch history included."""
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(f"weights for loss {loss}".encode())
    history = {
        "loss": [loss + 1.0 / (e + 1) for e in range(epochs)],
        "val_loss": [loss + 1.5 / (e + 1) for e in range(epochs)],
    }
    BundleMetadata(
        name="uidata",
        features=[FeatureInfo(name=n, dtype="float64") for n in FEATURES],
        label="target",
        metrics={"loss": history["loss"][-1], "val_loss": history["val_loss"][-1]},
        training_data={"rows": rows, "sha256": f"{rows:064x}"},
        config_digest="c" * 64,
        extra={"history": history},
    ).write(folder)
    write_manifest(folder)
    return folder


def write_config(folder: Path, store: dict, **extra) -> Path:
    config = {
        "project": "uidata",
        "source": {"type": "csv", "path": "data.csv", "label": "target"},
        "store": store,
        "runner": {"type": "local"},
        "stages": ["fetch"],
        **extra,
    }
    path = folder / "prodml.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# -- run folders ------------------------------------------------------------------------


@pytest.fixture
def runs_project(tmp_path: Path) -> tuple[Project, tuple[str, str, str]]:
    """Three runs written by the runner's RunFolder: ok, failed (with a hint), running."""
    config = load_config(write_config(tmp_path, {"type": "local", "root": "models"}))
    work = tmp_path / ".prodml"
    ok = RunFolder.create(work, runner="local", project="uidata", stages=("fetch", "train"))
    ok.record["config_digest"] = config.digest()
    ok.mark("fetch", "running")
    (ok.dataset_dir).mkdir()
    (ok.dataset_dir / "schema.json").write_text(
        json.dumps({"feature_names": FEATURES, "label": "target", "rows": 120})
    )
    ok.mark("fetch", "ok", seconds=0.5, attempts=1, result={"rows": 120, "feature_names": FEATURES})
    ok.mark("train", "ok", seconds=3.25, attempts=2, result={"epochs": 4, "metrics": {"loss": 0.5}})
    ok.finish("ok")
    failed = RunFolder.create(work, runner="local", project="uidata", stages=("fetch", "train"))
    failed.mark("fetch", "ok", seconds=0.5, attempts=1)
    error = RunnerError("stage 'train' failed: ValueError: bad layer", hint="fix the model code")
    failed.mark("train", "failed", error=str(error), seconds=1.0, attempts=1)
    failed.finish("failed", failed_stage="train")
    running = RunFolder.create(work, runner="kfp-local", project="uidata", stages=("fetch", "train"))
    running.mark("fetch", "running")
    (running.root / "run.log").write_text("[1/2] fetch ...\n")
    # the newest run is `latest`; make the failed one latest again to test --run-id
    (work / "runs" / "latest").write_text(failed.run_id + "\n")
    return Project(config), (ok.run_id, failed.run_id, running.run_id)


def test_runs_newest_first_with_their_stages(runs_project) -> None:
    runs_project, (ok_id, failed_id, running_id) = runs_project
    page = runs_project.runs()
    assert [r.run_id for r in page.items] == sorted([ok_id, failed_id, running_id], reverse=True)
    assert page.total == 3 and page.pages == 1
    ok = runs_project.run(ok_id)
    assert ok.status == "ok" and ok.runner == "local"
    assert [(s.name, s.status, s.seconds, s.attempts) for s in ok.stages] == [
        ("fetch", "ok", 0.5, 1),
        ("train", "ok", 3.25, 2),
    ]
    assert ok.seconds is not None and ok.seconds >= 0
    assert ok.stages[1].summary == "4 epochs, loss 0.5"
    assert runs_project.config_matches(ok)
    assert runs_project.resume_command(ok) is None
    running = runs_project.run(running_id)
    assert running.running and running.stages[0].status == "running"
    assert runs_project.run_log(running) == "[1/2] fetch ...\n"


def test_a_failed_run_shows_its_error_hint_and_resume_command(runs_project) -> None:
    runs_project, (ok_id, failed_id, _) = runs_project
    failed = runs_project.run(failed_id)
    train = failed.stages[1]
    assert train.error == "stage 'train' failed: ValueError: bad layer"
    assert train.hint == "fix the model code"
    resume = runs_project.resume_command(failed)
    assert resume is not None and resume.startswith("prodml run -c ") and resume.endswith("--from train")
    assert "--run-id" not in resume  # it is the latest run: --from alone resumes it
    # an older failed run needs its id
    (runs_project.runs_dir / "latest").write_text(ok_id + "\n")
    assert runs_project.resume_command(failed).endswith(f"--from train --run-id {failed_id}")


def test_outputs_of_a_run(runs_project) -> None:
    runs_project, (ok_id, _, _) = runs_project
    ok = runs_project.run(ok_id)
    fetch, train = runs_project.outputs(ok)
    assert fetch.exists and fetch.summary == "120 rows × 3 features, label 'target'"
    assert fetch.files == [("schema.json", (Path(fetch.path) / "schema.json").stat().st_size)]
    assert not train.exists


def test_runs_paginate_and_read_only_their_page(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"type": "local", "root": "models"}))
    runs = tmp_path / ".prodml" / "runs"
    for i in range(7):
        folder = runs / f"20261130T1200{i:02d}Z-00000{i}"
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"runner": "local", "status": "ok", "stages": {}}))
    (runs / "20261130T120003Z-000003" / "run.json").write_text("{not json")  # half-written
    project = Project(config)
    first, third = project.runs(1, per_page=3), project.runs(3, per_page=3)
    assert first.total == 7 and first.pages == 3 and first.has_next and not first.has_previous
    assert [r.run_id for r in first.items] == [f"20261130T1200{i:02d}Z-00000{i}" for i in (6, 5, 4)]
    assert [r.run_id for r in third.items] == ["20261130T120000Z-000000"]
    assert [r.run_id for r in project.runs(2, per_page=3).items] == [  # the broken one is left out
        "20261130T120002Z-000002",
        "20261130T120001Z-000001",
    ]


@pytest.mark.parametrize("run_id", ["nope", "../../etc", "..", ".hidden", "a/b"])
def test_unknown_run_ids_are_not_found(runs_project, run_id: str) -> None:
    with pytest.raises(NotFound):
        runs_project[0].run(run_id)


# -- stores -----------------------------------------------------------------------------


def store_sections(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> dict:
    if kind == "local":
        return {"type": "local", "root": str(tmp_path / "models")}
    if kind == "s3":
        return request.getfixturevalue("s3_server").store_config()
    return request.getfixturevalue("azurite_server").store_config()


@pytest.fixture(
    params=["local", pytest.param("s3", marks=pytest.mark.s3), pytest.param("azure", marks=pytest.mark.azure)]
)
def stored(request: pytest.FixtureRequest, tmp_path: Path, clock) -> tuple[Project, list[str]]:
    """A project whose store (local, SeaweedFS or Azurite) holds two versions; the second is latest."""
    store = store_sections(request, tmp_path, request.param)
    config = load_config(write_config(tmp_path, store))
    backend = default_registry().create("store", config.store)
    refs = [
        backend.push(make_bundle(tmp_path / "b1", epochs=3, loss=0.9), "uidata"),
        backend.push(make_bundle(tmp_path / "b2", epochs=5, loss=0.4, rows=150), "uidata"),
    ]
    return Project(config), [r.version for r in refs]


def test_versions_newest_first_with_metadata_and_latest(stored) -> None:
    project, (first, second) = stored
    page = project.versions()
    assert [v.version for v in page.items] == [second, first]
    assert [v.latest for v in page.items] == [True, False]
    newest = page.items[0]
    assert newest.problem == ""
    assert newest.metrics["loss"] == pytest.approx(0.4 + 1 / 5)
    assert newest.metadata.training_data["rows"] == 150
    assert newest.size_bytes > 0
    assert len(newest.history["loss"]) == 5 and len(page.items[1].history["val_loss"]) == 3
    assert project.version("latest").version == second
    assert lineage(newest)["training rows"] == "150"


def test_compare_puts_two_versions_side_by_side(stored) -> None:
    project, (first, second) = stored
    result = project.compare(first, second)
    rows = {name: (a, b, delta) for name, a, b, delta in result["metrics"]}
    assert rows["loss"][0] == pytest.approx(0.9 + 1 / 3)
    assert rows["loss"][2] == pytest.approx((0.4 + 1 / 5) - (0.9 + 1 / 3))
    lineage_rows = {name: (a, b, same) for name, a, b, same in result["lineage"]}
    assert lineage_rows["training rows"] == ("120", "150", False)
    assert lineage_rows["config digest"][2] is True


def test_unknown_versions_are_not_found(stored) -> None:
    project, _ = stored
    for bad in ("20991231T000000Z-00000000", "nonsense", "../latest"):
        with pytest.raises(NotFound):
            project.version(bad)


def test_secrets_of_the_store_config_are_scrubbed(stored) -> None:
    project, _ = stored
    secrets = project.config.secret_values()
    if project.config.store.type == "local":
        assert secrets == []
        return
    assert secrets, "the s3 and azure configs carry a credential"
    page = json.dumps(project.config_summary()) + " ".join(secrets)
    cleaned = project.scrub(page)
    assert all(secret not in cleaned for secret in secrets)
    assert all(secret not in json.dumps(project.config_summary()) for secret in secrets)


def test_a_tampered_prodml_json_is_refused(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, {"type": "local", "root": "models"}))
    backend = default_registry().create("store", config.store)
    ref = backend.push(make_bundle(tmp_path / "b1", epochs=2, loss=0.5), "uidata")
    stored = tmp_path / "models" / "uidata" / "versions" / ref.version / "prodml.json"
    stored.write_text(stored.read_text().replace('"loss"', '"lost"'))
    project = Project(config)
    (view,) = project.versions().items
    assert view.metadata is None
    assert "does not match" in view.problem
    with pytest.raises(Exception, match="does not match"):
        read_version_file(backend, "uidata", ref.version, "prodml.json")


def test_versions_paginate(tmp_path: Path, clock) -> None:
    config = load_config(write_config(tmp_path, {"type": "local", "root": "models"}))
    backend = default_registry().create("store", config.store)
    pushed = [
        backend.push(make_bundle(tmp_path / f"b{i}", epochs=1, loss=i), "uidata").version for i in range(4)
    ]
    project = Project(config)
    page = project.versions(2, per_page=3)
    assert page.total == 4 and page.pages == 2
    assert [v.version for v in page.items] == sorted(pushed)[:1]


# -- charts -----------------------------------------------------------------------------


def test_curves_have_one_point_per_epoch_for_train_and_validation() -> None:
    history = {"loss": [3.0, 2.0, 1.5, 1.2], "mae": [1.0, 0.8, 0.7, 0.6], "val_loss": [3.5, 2.5, 2.0, 1.9]}
    svgs = charts.curves_svg(history)
    assert len(svgs) == 2  # loss (with val_loss) and mae
    loss, mae = svgs
    assert loss.count('class="point train"') == 4 and loss.count('class="point validation"') == 4
    assert mae.count('class="point train"') == 4 and 'class="point validation"' not in mae
    assert 'data-epochs="4"' in loss


def test_history_as_a_list_of_epoch_records() -> None:
    meta = BundleMetadata(
        name="x",
        features=[FeatureInfo(name="a", dtype="float32")],
        label="y",
        extra={
            "history": [
                {"epoch": 1, "loss": 2.0, "val_loss": 3.0},
                {"epoch": 2, "loss": 1.0, "val_loss": 2.0},
            ]
        },
    )
    assert epoch_history(meta) == {"loss": [2.0, 1.0], "val_loss": [3.0, 2.0]}


def test_promote_rollback_and_history_through_the_lifecycle_code(stored) -> None:
    project, (first, second) = stored
    assert project.can_move_latest
    before = project.history()
    assert before is not None and before[0].to_version == second  # newest first
    message = project.promote(first)
    assert first in message and project.latest_version() == first
    moves = project.history()
    assert (moves[0].reason, moves[0].from_version, moves[0].to_version) == ("promote", second, first)
    assert len(moves) == len(before) + 1
    project.rollback()
    assert project.latest_version() == second
    assert project.history()[0].reason == "rollback"
    assert [v.version for v in project.versions().items if v.latest] == [second]


def test_outputs_kept_outside_the_run_folder_are_found(tmp_path: Path) -> None:
    # a kfp-local run keeps each output in its pipeline's artifact folder and records where
    config = load_config(write_config(tmp_path, {"type": "local", "root": "models"}))
    run = RunFolder.create(tmp_path / ".prodml", runner="kfp-local", project="uidata", stages=("fetch",))
    artifact = run.root / "kfp" / "fetch" / "dataset"
    artifact.mkdir(parents=True)
    (artifact / "schema.json").write_text(json.dumps({"feature_names": FEATURES, "label": "y", "rows": 9}))
    run.mark("fetch", "ok", seconds=1.0, output=str(artifact))
    project = Project(config)
    (fetch,) = project.outputs(project.run(run.run_id))
    assert fetch.path == str(artifact) and fetch.summary == "9 rows × 3 features, label 'y'"
