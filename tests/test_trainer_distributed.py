"""Multi-worker training for real: TensorFlow workers as processes on loopback, joined by
MultiWorkerMirroredStrategy, the chief writing the bundle (the path a TFJob runs on a cluster)."""

from __future__ import annotations

import os
import re
import signal
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from prodml.core.bundle import BundleMetadata, verify_bundle
from prodml.core.config import load_config
from prodml.core.errors import ConfigError, TrainingError
from prodml.core.interfaces import DatasetSchema, TrainSpec
from prodml.plugins.trainers.keras import KerasTrainer, KerasTrainerConfig, load_bundle
from prodml.runner import stages

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart"

pytestmark = pytest.mark.slow


def quickstart_frame() -> pd.DataFrame:
    return pd.read_csv(QUICKSTART / "data" / "train.csv")


def spec_for(frame: pd.DataFrame) -> TrainSpec:
    columns = list(frame.columns)
    features = tuple(c for c in columns if c != "target")
    return TrainSpec(
        model_name="dist",
        schema=DatasetSchema(feature_names=features, label="target"),
        config_digest="cd" * 32,
    )


def keras_trainer(model: Path | str, **settings: Any) -> KerasTrainer:
    data = {"type": "keras", "model": str(model), "epochs": 3, "batch_size": 32, "seed": 7, **settings}
    return KerasTrainer(KerasTrainerConfig.model_validate(data, context={"base_dir": REPO}))


def predict(bundle: Path, rows: np.ndarray) -> np.ndarray:
    model, _ = load_bundle(bundle)
    return np.asarray(model(rows, training=False))


def test_two_workers_train_what_one_worker_trains(tmp_path: Path) -> None:
    frame = quickstart_frame()
    spec = spec_for(frame)
    model = QUICKSTART / "model.py"
    one = keras_trainer(model).train(frame, spec, tmp_path / "one" / "bundle")
    two = keras_trainer(model, distributed={"workers": 2}).train(frame, spec, tmp_path / "two" / "bundle")

    bundle = tmp_path / "two" / "bundle"
    verify_bundle(bundle)
    meta = BundleMetadata.read(bundle)
    assert meta.extra["distributed"] == {"workers": 2, "strategy": "multi_worker_mirrored"}
    assert two.epochs == 3 and set(two.metrics) == set(one.metrics) == {"loss", "mae", "val_loss", "val_mae"}
    # same data, seed and global batch: a model of the same quality, with close predictions
    assert two.metrics["val_loss"] < 2 * one.metrics["val_loss"] + 0.01
    rows = frame[list(spec.feature_names)].to_numpy(np.float32)[:200]
    gap = np.abs(predict(bundle, rows) - predict(tmp_path / "one" / "bundle", rows)).mean()
    assert gap < 0.1 * float(frame["target"].std()), gap
    # both workers' logs are kept beside the bundle; the non-chief wrote no bundle of its own
    logs = tmp_path / "two" / "bundle-workers"
    assert {p.name for p in logs.iterdir()} == {"worker-0.log", "worker-1.log"}
    assert "worker 1 done" in (logs / "worker-1.log").read_text()
    assert "wrote bundle" in (logs / "worker-0.log").read_text()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["bundle", "bundle-workers"]


def _worker_pid(out_dir: Path, index: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        module = b"prodml.plugins.trainers._worker"
        if module in argv and str(out_dir).encode() in argv and argv[argv.index(module) + 2] == b"%d" % index:
            return int(entry.name)
    return None


def test_a_killed_worker_fails_training_and_leaves_no_bundle(tmp_path: Path) -> None:
    frame = quickstart_frame()
    out = tmp_path / "run" / "bundle"
    trainer = keras_trainer(QUICKSTART / "model.py", epochs=500, distributed={"workers": 2})
    outcome: dict[str, BaseException] = {}

    def train() -> None:
        try:
            trainer.train(frame, spec_for(frame), out)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=train)
    thread.start()
    chief_log = tmp_path / "run" / "bundle-workers" / "worker-0.log"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not re.search(
        r"epoch +1/500", chief_log.read_text() if chief_log.is_file() else ""
    ):
        time.sleep(0.2)
    assert "error" not in outcome, outcome
    pid = _worker_pid(out, 1)
    assert pid is not None, "worker 1 is not running"
    os.kill(pid, signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    error = outcome["error"]
    assert isinstance(error, TrainingError)
    assert "worker 1 of 2 was killed by signal 9" in str(error)
    assert "no bundle was written" in str(error)
    assert not out.exists()
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["bundle-workers"]  # no partial bundle
    assert _worker_pid(out, 0) is None  # the chief was stopped too


def test_a_model_built_outside_the_strategy_is_explained(tmp_path: Path) -> None:
    code = tmp_path / "model.py"
    code.write_text(
        textwrap.dedent(
            """
            import keras

            # built when the module is imported: outside the strategy prodml trains in
            _MODEL = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
            _MODEL.compile(optimizer="adam", loss="mse")

            def train(frame, spec):
                return _MODEL
            """
        )
    )
    frame = quickstart_frame()
    with pytest.raises(TrainingError, match="built outside the distribution strategy") as info:
        keras_trainer(code, distributed={"workers": 2}).train(frame, spec_for(frame), tmp_path / "b")
    assert "worker 0 of 2" in str(info.value)
    assert "inside the function prodml calls" in str(info.value)
    assert not (tmp_path / "b").exists()


def test_workers_below_one_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "prodml.yaml"
    path.write_text(
        f"project: p\nsource: {{type: csv, path: {QUICKSTART / 'data' / 'train.csv'}, label: target}}\n"
        f"trainer: {{type: keras, model: {QUICKSTART / 'model.py'}, distributed: {{workers: 0}}}}\n"
        "stages: [fetch, train]\n"
    )
    with pytest.raises(ConfigError, match=r"trainer\.distributed\.workers: .*greater than or equal to 1"):
        load_config(path)


@pytest.mark.feast
def test_two_workers_train_on_a_feast_frame(tmp_path: Path, copy_feast_example) -> None:
    repo = copy_feast_example(tmp_path / "feast_repo")
    path = tmp_path / "prodml.yaml"
    path.write_text(
        "project: feast-dist\n"
        f"source: {{type: feast, repo_path: {repo}, feature_service: house_price_model, "
        f"entity_df: {repo / 'data' / 'house_sales.parquet'}, label: target}}\n"
        f"trainer: {{type: keras, model: {QUICKSTART / 'model.py'}, epochs: 2, "
        "distributed: {workers: 2}}\n"
        "stages: [fetch, train]\n"
    )
    config = load_config(path)
    schema = stages.fetch(config, tmp_path / "dataset")
    stages.train(config, tmp_path / "dataset", tmp_path / "bundle")
    verify_bundle(tmp_path / "bundle")
    meta = BundleMetadata.read(tmp_path / "bundle")
    assert meta.feature_refs == list(schema.feature_refs) and meta.feature_refs
    assert meta.extra["distributed"]["workers"] == 2
    assert (tmp_path / "bundle-workers" / "worker-1.log").is_file()
