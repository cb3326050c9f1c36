"""Interrupted runs leave a true record: `interrupted` with the stage, nothing left running, and
``--from`` resumes the newest run that really has the earlier stages' outputs.

Real runners in real processes (``prodml run`` is started as a subprocess and sent the
signal); the model code waits while a hold file exists, so the signal lands in train.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from prodml.cli import main
from prodml.core.bundle import verify_bundle
from prodml.runner._runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_CSV = ROOT / "examples" / "quickstart" / "data" / "train.csv"

# Paths are part of the code: the keras trainer caches model modules by content.
MODEL = """
import time
from pathlib import Path

import keras

HOLD = Path({hold!r})
STARTED = Path({started!r})


def build_model(spec):
    STARTED.touch()
    while HOLD.exists():  # a long training run, until the test lets it go
        time.sleep(0.05)
    inputs = keras.Input(shape=(spec.input_width,), name="features")
    outputs = keras.layers.Dense(1, name="prediction")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    return model
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    lines = QUICKSTART_CSV.read_text().splitlines()[:101]
    (tmp_path / "data" / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "model.py").write_text(
        MODEL.format(hold=str(tmp_path / "hold"), started=str(tmp_path / "train-started"))
    )
    for runner in ("local", "kfp-local"):
        config = {
            "project": "interrupted",
            "source": {"type": "csv", "path": "data/train.csv", "label": "target"},
            "trainer": {"type": "keras", "model": "model.py:build_model", "epochs": 1, "seed": 7},
            "store": {"type": "local", "root": "models"},
            "runner": {"type": runner},
            "stages": ["fetch", "train", "export"],
        }
        (tmp_path / f"{runner}.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def run_until_train_then(project: Path, config: str, sig: int) -> tuple[int, str, Path]:
    """Start ``prodml run``, send ``sig`` once the model code runs; (exit status, output, run folder)."""
    (project / "hold").touch()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prodml", "run", "-c", str(project / config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    try:
        deadline = time.monotonic() + 600
        while not (project / "train-started").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the train stage never started"
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        (project / "hold").unlink(missing_ok=True)
        (project / "train-started").unlink(missing_ok=True)
    runs = project / ".prodml" / "runs"
    return proc.returncode, out, runs / (runs / "latest").read_text().strip()


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (e.g. a run's folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            raw = cmdline.read_bytes()
        except OSError:
            continue
        if text.encode() in raw and str(os.getpid()) != cmdline.parent.name:
            found.append(raw.replace(b"\0", b" ").decode(errors="replace")[:200])
    return found


@pytest.mark.slow
@pytest.mark.kfp
def test_sigint_in_a_kfp_local_train_marks_it_and_from_train_resumes_that_run(project: Path, capsys) -> None:
    code, out, run = run_until_train_then(project, "kfp-local.yaml", signal.SIGINT)
    assert code == 130, out
    assert "interrupted during the train stage" in out and "--from train" in out
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "interrupted" and record["interrupted_stage"] == "train"
    assert record["stages"]["fetch"]["status"] == "ok"
    assert Path(record["stages"]["fetch"]["output"], "dataset.parquet").is_file()
    assert record["stages"]["train"]["status"] == "interrupted"
    assert record["stages"]["export"]["status"] == "pending"
    deadline = time.monotonic() + 30  # the step got SIGINT and ends; nothing of the run stays
    while processes_mentioning(str(run)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(str(run)) == []

    # a newer run killed before it fetched anything (SIGKILL leaves it `running`, no outputs)
    killed = RunFolder.create(
        project / ".prodml", runner="local", project="interrupted", stages=("fetch", "train")
    )
    assert killed.run_id > run.name

    assert main(["run", "-c", str(project / "local.yaml"), "--from", "train"]) == 0
    resumed_out = capsys.readouterr().out
    assert f"resuming run {run.name} from train" in resumed_out
    assert f"{killed.run_id} (running)" in resumed_out
    after = json.loads((run / "run.json").read_text())
    assert after["status"] == "ok" and "interrupted_stage" not in after
    assert after["stages"]["fetch"] == record["stages"]["fetch"]  # reused, not fetched again
    assert after["stages"]["train"]["status"] == "ok" and after["stages"]["export"]["status"] == "ok"
    verify_bundle(run / "bundle")
    assert json.loads((run / "modelref.json").read_text())["model_name"] == "interrupted"


@pytest.mark.slow
def test_sigterm_in_a_local_train_marks_the_run_interrupted_with_exit_130(project: Path, capsys) -> None:
    code, out, run = run_until_train_then(project, "local.yaml", signal.SIGTERM)
    assert code == 130, out
    assert "interrupted during the train stage" in out
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "interrupted" and record["interrupted_stage"] == "train"
    assert (
        record["stages"]["fetch"]["status"] == "ok" and record["stages"]["train"]["status"] == "interrupted"
    )
    assert not (run / "bundle" / "MANIFEST.sha256").exists()

    assert main(["run", "-c", str(project / "local.yaml"), "--from", "train"]) == 0
    assert f"resuming run {run.name} from train" in capsys.readouterr().out
    assert json.loads((run / "run.json").read_text())["status"] == "ok"
