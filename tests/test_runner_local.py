"""The ``local`` runner: run folders, progress, resume with --from, retries, clear errors.

Real plugins throughout (csv source, keras trainer, local store); the training is tiny.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from prodml.cli import main
from prodml.core.bundle import verify_bundle
from prodml.core.interfaces import ModelRef
from prodml.testing.runners import RunnerConformance

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_CSV = ROOT / "examples" / "quickstart" / "data" / "train.csv"

# The marker's absolute path is part of the code: the keras trainer caches model modules by
# content, so each test's model file must differ.
MODEL = """
from pathlib import Path

import keras

FAIL_ONCE = Path({marker!r})


def build_model(spec):
    if FAIL_ONCE.exists():  # a bug the data scientist fixes before resuming
        FAIL_ONCE.unlink()
        raise RuntimeError("simulated failure in the model code")
    inputs = keras.Input(shape=(spec.input_width,), name="features")
    x = keras.layers.Normalization(mean=spec.feature_mean, variance=spec.feature_variance)(inputs)
    outputs = keras.layers.Dense(1, name="prediction")(keras.layers.Dense(8, activation="relu")(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model
"""


class TestLocalRunnerConformance(RunnerConformance):
    @pytest.fixture
    def backend_config(self, tmp_path: Path) -> dict:
        return {"type": "local", "work_dir": str(tmp_path / "work")}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder: 200 rows of the quickstart data, the model code, a config."""
    (tmp_path / "data").mkdir()
    lines = QUICKSTART_CSV.read_text().splitlines()[:201]
    (tmp_path / "data" / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "model.py").write_text(MODEL.format(marker=str(tmp_path / "fail-once")))
    write(tmp_path, stages=["fetch", "train", "export"])
    return tmp_path


def write(project: Path, **changes) -> Path:
    config = {
        "project": "resume",
        "source": {"type": "csv", "path": "data/train.csv", "label": "target"},
        "trainer": {"type": "keras", "model": "model.py:build_model", "epochs": 1, "seed": 7},
        "store": {"type": "local", "root": "models"},
        "runner": {"type": "local"},
        **changes,
    }
    path = project / "prodml.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def latest_run(project: Path) -> Path:
    runs = project / ".prodml" / "runs"
    return runs / (runs / "latest").read_text().strip()


def record(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


@pytest.mark.slow
def test_run_writes_every_stage_output_into_the_run_folder(project: Path, capsys) -> None:
    assert main(["run", "-c", str(project / "prodml.yaml")]) == 0
    out = capsys.readouterr().out
    run = latest_run(project)
    # work_dir defaults to .prodml next to the config file
    assert run.parent.parent == project / ".prodml"
    assert (run / "dataset" / "dataset.parquet").is_file() and (run / "dataset" / "schema.json").is_file()
    verify_bundle(run / "bundle")
    ref = ModelRef.read(run / "modelref.json")
    assert ref.model_name == "resume" and (project / "models" / "resume" / "versions" / ref.version).is_dir()
    rec = record(run)
    assert rec["status"] == "ok"
    assert [rec["stages"][s]["status"] for s in ("fetch", "train", "export")] == ["ok", "ok", "ok"]
    assert rec["summary"]["outputs"]["train"] == str(run / "bundle")
    # one progress line per stage with its result
    assert "[1/3] fetch  ok" in out and "200 rows x 5 features" in out
    assert "[2/3] train  ok" in out and "[3/3] export ok" in out and ref.version in out


@pytest.mark.slow
def test_resume_from_train_does_not_fetch_again(project: Path, capsys) -> None:
    config = str(project / "prodml.yaml")
    (project / "fail-once").touch()
    assert main(["run", "-c", config]) == 1
    captured = capsys.readouterr()
    assert "simulated failure in the model code" in captured.err
    assert "--from train" in captured.out
    run = latest_run(project)
    first = record(run)
    assert first["status"] == "failed" and first["failed_stage"] == "train"
    assert first["stages"]["train"]["status"] == "failed"
    dataset = run / "dataset" / "dataset.parquet"
    before = dataset.stat()

    assert main(["run", "-c", config, "--from", "train"]) == 0
    out = capsys.readouterr().out
    assert "fetch  reused" in out and "[1/3] fetch ..." not in out
    after = record(latest_run(project))
    assert latest_run(project) == run  # resumed in place, no new run folder
    assert after["status"] == "ok"
    # fetch was not executed again: same record, same file
    assert after["stages"]["fetch"] == first["stages"]["fetch"]
    assert (dataset.stat().st_mtime_ns, dataset.stat().st_ino) == (before.st_mtime_ns, before.st_ino)
    assert after["stages"]["train"]["status"] == "ok" and after["resumed"][0]["from"] == "train"
    verify_bundle(run / "bundle")
    assert ModelRef.read(run / "modelref.json").model_name == "resume"


@pytest.mark.slow
def test_retries_rerun_a_failed_stage(project: Path, capsys) -> None:
    write(project, stages=["fetch", "train"], runner={"type": "local", "retries": {"train": 1}})
    (project / "fail-once").touch()
    assert main(["run", "-c", str(project / "prodml.yaml")]) == 0
    assert "train  failed, retry 1/1" in capsys.readouterr().out
    assert record(latest_run(project))["stages"]["train"]["attempts"] == 2


@pytest.mark.slow
def test_stages_starting_at_train_use_the_latest_runs_dataset(project: Path) -> None:
    write(project, stages=["fetch"])
    assert main(["run", "-c", str(project / "prodml.yaml")]) == 0
    fetched = latest_run(project)
    write(project, stages=["train"])
    assert main(["run", "-c", str(project / "prodml.yaml")]) == 0
    trained = latest_run(project)
    assert trained != fetched
    assert record(trained)["inputs"] == {"fetch": str(fetched / "dataset")}
    verify_bundle(trained / "bundle")


def test_from_needs_an_earlier_run(project: Path, capsys) -> None:
    assert main(["run", "-c", str(project / "prodml.yaml"), "--from", "train"]) == 1
    err = capsys.readouterr().err
    assert "no earlier run to resume" in err and "without --from" in err


def test_from_needs_the_earlier_stage_output(project: Path, capsys) -> None:
    (project / "data" / "train.csv").write_text("a,b\n1,2\n")  # no label column: fetch fails
    assert main(["run", "-c", str(project / "prodml.yaml")]) == 1
    capsys.readouterr()
    assert main(["run", "-c", str(project / "prodml.yaml"), "--from", "train"]) == 1
    err = capsys.readouterr().err
    assert "the fetch stage has no output" in err and "--from fetch" in err


def test_from_must_name_a_configured_stage(project: Path, capsys) -> None:
    assert main(["run", "-c", str(project / "prodml.yaml"), "--from", "serve"]) == 2
    assert "not one of the configured stages (fetch, train, export)" in capsys.readouterr().err


def test_first_stage_train_without_an_earlier_fetch(project: Path, capsys) -> None:
    write(project, stages=["train", "export"])
    assert main(["run", "-c", str(project / "prodml.yaml")]) == 1
    err = capsys.readouterr().err
    assert "needs the fetch output of an earlier run" in err
