"""The model lifecycle end to end: evaluation in the bundle, the gate, promote and rollback.

Real plugins throughout (csv source, keras trainer, local store, the CLI); trainings are
tiny. A "worse" model is the same network trained with a learning rate of zero, so it keeps
its random initial weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from prodml.cli import main
from prodml.core.bundle import METADATA, BundleMetadata, frame_fingerprint, write_manifest
from prodml.core.config import load_config
from prodml.core.errors import ConfigError, StoreError
from prodml.core.interfaces import ModelRef

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_CSV = ROOT / "examples" / "quickstart" / "data" / "train.csv"

MODEL = """
import keras


def build_model(spec):
    inputs = keras.Input(shape=(spec.input_width,), name="features")
    x = keras.layers.Normalization(mean=spec.feature_mean, variance=spec.feature_variance)(inputs)
    x = keras.layers.Dense(8, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="prediction")(x))
    model.compile(
        optimizer=keras.optimizers.Adam(float(spec.params["learning_rate"])),
        loss="mse",
        metrics=["mae"],
    )
    return model
"""


def write(project: Path, *, learning_rate: float = 0.03, **changes) -> Path:
    config = {
        "project": "gated",
        "source": {"type": "csv", "path": "data/train.csv", "label": "target"},
        "trainer": {
            "type": "keras",
            "model": "model.py:build_model",
            "epochs": 5,
            "seed": 3,
            "params": {"learning_rate": learning_rate},
        },
        "store": {"type": "local", "root": "models"},
        "stages": ["fetch", "train", "export"],
        "gate": {"metric": "val_loss", "mode": "min", "tolerance": 0.0},
        **changes,
    }
    path = project / "prodml.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def use_rows(project: Path, start: int, stop: int) -> None:
    lines = QUICKSTART_CSV.read_text().splitlines()
    (project / "data" / "train.csv").write_text("\n".join([lines[0], *lines[1 + start : 1 + stop]]) + "\n")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    use_rows(tmp_path, 0, 200)
    (tmp_path / "model.py").write_text(MODEL)
    write(tmp_path)
    return tmp_path


def latest_run(project: Path) -> Path:
    runs = project / ".prodml" / "runs"
    return runs / (runs / "latest").read_text().strip()


def versions(project: Path) -> list[str]:
    return sorted(p.name for p in (project / "models" / "gated" / "versions").iterdir())


def pointer(project: Path) -> str:
    return json.loads((project / "models" / "gated" / "latest").read_text())["version"]


def decision_ref(store, version: str) -> ModelRef:
    return store.resolve("gated", version)


def run(project: Path, *args: str) -> int:
    return main(["run", "-c", str(project / "prodml.yaml"), *args])


# -- what the trainer records -----------------------------------------------------------------


@pytest.mark.slow
def test_the_bundle_records_per_epoch_history_and_an_evaluation(project: Path) -> None:
    assert run(project, "--force-promote") == 0  # the first version passes anyway
    bundle = latest_run(project) / "bundle"
    meta = BundleMetadata.read(bundle)
    assert set(meta.history) == {"loss", "mae", "val_loss", "val_mae"}
    assert all(len(values) == 5 for values in meta.history.values())
    assert meta.history["loss"][-1] == pytest.approx(meta.metrics["loss"])
    assert meta.history["loss"][-1] < meta.history["loss"][0]  # it learned
    # default evaluation rows: the validation rows (the last 20 %)
    frame = pd.read_parquet(latest_run(project) / "dataset" / "dataset.parquet")
    assert meta.evaluation is not None
    assert (meta.evaluation.rows, meta.evaluation.split) == (40, "validation")
    assert meta.evaluation.fingerprint == frame_fingerprint(frame.iloc[160:])
    assert set(meta.evaluation.metrics) == {"loss", "mae"}
    assert meta.evaluation.metrics["loss"] == pytest.approx(meta.metrics["val_loss"], rel=1e-4)

    # a bundle written before prodml recorded these still loads
    from prodml.plugins.trainers.keras import load_bundle

    old = json.loads((bundle / METADATA).read_text())
    del old["history"], old["evaluation"]
    (bundle / METADATA).write_text(json.dumps(old))
    write_manifest(bundle)
    model, meta = load_bundle(bundle)
    assert meta.history == {} and meta.evaluation is None
    assert model(np.zeros((1, 5), dtype=np.float32)).shape == (1, 1)


@pytest.mark.slow
def test_a_held_out_evaluation_is_neither_fitted_nor_validated_on(project: Path, capsys) -> None:
    config = yaml.safe_load((project / "prodml.yaml").read_text())
    config["trainer"]["evaluation"] = 0.1
    (project / "prodml.yaml").write_text(yaml.safe_dump(config))
    assert run(project) == 0
    meta = BundleMetadata.read(latest_run(project) / "bundle")
    frame = pd.read_parquet(latest_run(project) / "dataset" / "dataset.parquet")
    assert (meta.evaluation.rows, meta.evaluation.split) == (20, "holdout")
    assert meta.evaluation.fingerprint == frame_fingerprint(frame.iloc[180:])
    assert meta.extra["validation_rows"] == 36  # 20 % of the 180 rows before the held-out tail
    # its loss is measured on other rows than val_loss
    assert meta.evaluation.metrics["loss"] != pytest.approx(meta.metrics["val_loss"])

    # a gate on a metric the model does not record: a config error listing the recorded ones
    config["gate"] = {"metric": "accuracy", "mode": "max"}
    (project / "prodml.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert run(project, "--from", "export") == 2
    err = capsys.readouterr().err
    assert "gate.metric: metric 'accuracy' is not recorded by version" in err
    assert "its evaluation records: loss, mae" in err


def test_bad_evaluation_fractions_are_config_errors(project: Path) -> None:
    for bad in (0.0, 1.0, 1.5):
        config = yaml.safe_load((project / "prodml.yaml").read_text())
        config["trainer"]["evaluation"] = bad
        (project / "prodml.yaml").write_text(yaml.safe_dump(config))
        with pytest.raises(ConfigError, match=r"trainer\.evaluation"):
            load_config(project / "prodml.yaml")


# -- the gate -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_worse_model_is_stored_but_kept_out_of_latest(project: Path, capsys, caplog) -> None:
    assert run(project) == 0
    first = pointer(project)
    capsys.readouterr()

    write(project, learning_rate=0.0)  # untrained weights: deliberately worse
    assert run(project) == 3
    captured = capsys.readouterr()
    gated_run = latest_run(project)
    second = next(v for v in versions(project) if v != first)
    assert pointer(project) == first, "latest must stay on the first version"
    assert len(versions(project)) == 2, "the gated version is stored all the same"
    assert "export GATED" in captured.out
    err = captured.err
    assert err.startswith("gated: ")
    candidate = BundleMetadata.read(gated_run / "bundle").evaluation.metrics["loss"]
    champion = BundleMetadata.read(project / "models" / "gated" / "versions" / first).evaluation
    assert champion is not None
    assert f"{candidate:.6g} vs {champion.metrics['loss']:.6g}" in err
    assert "val_loss" in err and "tolerance 0" in err and second in err and first in err
    assert f"prodml models promote -c FILE {second}" in err
    record = json.loads((gated_run / "run.json").read_text())
    assert record["status"] == "gated" and record["stages"]["export"]["status"] == "gated"
    assert not (gated_run / "modelref.json").exists(), "a serve stage must find nothing to serve"

    # --force-promote on the same run: the same bundle (no second upload), latest moves
    caplog.clear()
    assert run(project, "--from", "export", "--force-promote") == 0
    capsys.readouterr()
    # a warning, which the CLI prints on stderr
    assert "--force-promote moves latest to it anyway" in caplog.text
    assert "is worse than latest" in caplog.text
    assert pointer(project) == second
    assert len(versions(project)) == 2
    assert ModelRef.read(gated_run / "modelref.json").version == second
    assert main(["models", "history", "-c", str(project / "prodml.yaml"), "--json"]) == 0
    moves = json.loads(capsys.readouterr().out)
    assert [(m["from_version"], m["to_version"], m["reason"]) for m in moves] == [
        (None, first, "export"),
        (first, second, "force-promote"),
    ]
    assert moves[1]["run_id"] == gated_run.name


@pytest.mark.slow
def test_the_champion_is_rescored_on_the_candidates_rows(project: Path) -> None:
    """New data: the current latest's recorded loss is on other rows, so it is measured again."""
    from prodml.lifecycle import gate_decision, open_store
    from prodml.plugins.trainers.keras import load_bundle

    assert run(project) == 0
    first = pointer(project)
    use_rows(project, 400, 600)
    write(project, learning_rate=0.0)
    assert run(project) == 3
    config = load_config(project / "prodml.yaml")
    store = open_store(config)
    candidate = next(v for v in versions(project) if v != first)
    frame = pd.read_parquet(latest_run(project) / "dataset" / "dataset.parquet")
    decision = gate_decision(config, store, decision_ref(store, candidate), rows=frame)
    assert decision.rescored and not decision.passed
    assert (decision.champion, decision.candidate, decision.measured) == (first, candidate, "loss")
    # the champion's mse on the candidate's evaluation rows, computed here from its predictions
    model, meta = load_bundle(project / "models" / "gated" / "versions" / first)
    rows = frame.iloc[160:]
    predictions = np.asarray(model(rows[meta.feature_names].to_numpy(np.float32)))[:, 0]
    mse = float(np.mean((predictions - rows["target"].to_numpy(np.float32)) ** 2))
    assert decision.champion_value == pytest.approx(mse, rel=1e-4)
    recorded = BundleMetadata.read(project / "models" / "gated" / "versions" / first).evaluation
    assert not math.isclose(decision.champion_value, recorded.metrics["loss"])

    # a tolerance as big as the difference lets it through; `max` turns the comparison round
    gap = decision.candidate_value - decision.champion_value
    for gate, passed in (
        ({"metric": "loss", "tolerance": gap * 1.01}, True),
        ({"metric": "loss", "tolerance": gap * 0.99}, False),
        ({"metric": "loss", "mode": "max"}, True),
    ):
        write(project, learning_rate=0.0, gate=gate)
        again = gate_decision(
            load_config(project / "prodml.yaml"), store, decision_ref(store, candidate), rows=frame
        )
        assert again.passed is passed, (gate, again.reason)


def test_gate_config_errors(project: Path) -> None:
    for gate, message in (
        ({"metric": "loss", "mode": "lowest"}, "gate.mode"),
        ({"metric": "loss", "tolerance": -1}, "gate.tolerance"),
        ({"mode": "min"}, "gate.metric: field required"),
        ({"metric": "loss", "tolerence": 0.1}, "did you mean 'tolerance'"),
    ):
        write(project, gate=gate)
        with pytest.raises(ConfigError, match=message):
            load_config(project / "prodml.yaml")


# -- promote, rollback, history, show, diff through the CLI --------------------------------------


@pytest.fixture
def three_versions(project: Path) -> tuple[Path, list[str]]:
    """Three stored versions (no gate), the last one latest."""
    made = []
    for rate in (0.03, 0.01, 0.0):
        write(project, learning_rate=rate, gate=None)
        assert run(project) == 0
        made.append(pointer(project))
    return project, made


@pytest.mark.slow
def test_promote_rollback_history_show_and_diff(three_versions, capsys) -> None:
    project, (a, b, c) = three_versions
    config = str(project / "prodml.yaml")
    capsys.readouterr()

    # an unknown version: nothing moves, the nearest ids are listed
    typo = a[:-1] + ("0" if a[-1] != "0" else "1")
    assert main(["models", "promote", "-c", config, typo]) == 1
    err = capsys.readouterr().err
    assert f"no version {typo!r} of 'gated'" in err and f"nearest: {a}" in err
    assert pointer(project) == c

    assert main(["models", "promote", "-c", config, a]) == 0
    out = capsys.readouterr().out
    assert f"{c} -> {a} (promote)" in out and "no running server" in out
    assert pointer(project) == a
    assert main(["models", "promote", "-c", config, a]) == 0
    assert "already is latest" in capsys.readouterr().out

    # rollback walks back through what was latest: a -> c -> b -> a, then nothing earlier
    assert main(["models", "rollback", "-c", config]) == 0
    assert pointer(project) == c
    assert main(["models", "rollback", "-c", config]) == 0
    assert pointer(project) == b
    assert main(["models", "rollback", "-c", config]) == 0
    assert pointer(project) == a
    capsys.readouterr()
    assert main(["models", "rollback", "-c", config]) == 1
    err = capsys.readouterr().err
    assert f"no version of 'gated' was latest before {a}" in err and "models promote" in err
    assert pointer(project) == a

    assert main(["models", "history", "-c", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["WHEN", "(UTC)", "FROM", "TO", "WHY", "RUN"]
    assert [line.split()[4] for line in lines[1:]] == [
        "export",
        "export",
        "export",
        "promote",
        "rollback",
        "rollback",
        "rollback",
    ]

    assert main(["models", "show", "-c", config, b]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"gated {b}\n")
    for expected in (
        "evaluation (validation: 40 rows",
        "config_digest",
        "model_code",
        "model.py:build_model",
    ):
        assert expected in out
    assert main(["models", "show", "-c", config, "latest", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == a and info["latest"] is True
    assert info["lineage"]["training_rows"] == 200 and info["lineage"]["features"][0] == "sqft"
    assert info["size_bytes"] > 0 and info["evaluation"]["rows"] == 40

    assert main(["models", "diff", "-c", config, a, c, "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)
    loss = compared["metrics"]["eval:loss"]
    assert loss["delta"] == pytest.approx(loss["b"] - loss["a"]) and loss["b"] > loss["a"]
    assert compared["lineage"]["training_data_sha256"]["same"] is True
    assert compared["lineage"]["config_digest"]["same"] is False  # another learning rate
    assert compared["lineage"]["params"]["a"] == {"learning_rate": 0.03}
    assert main(["models", "diff", "-c", config, a, c]) == 0
    out = capsys.readouterr().out
    assert "eval:loss" in out and "<- differs" in out

    # a unique part of an id is enough: its content hash
    assert main(["models", "promote", "-c", config, b.split("-")[1]]) == 0
    assert pointer(project) == b


def test_rollback_and_promote_without_any_version(project: Path, capsys) -> None:
    config = str(project / "prodml.yaml")
    assert main(["models", "rollback", "-c", config]) == 1
    assert "has no latest version to roll back from" in capsys.readouterr().err
    assert main(["models", "promote", "-c", config, "20260101T000000Z-abcdef12"]) == 1
    assert "has no stored versions" in capsys.readouterr().err
    assert main(["models", "history", "-c", config]) == 0
    assert "has not moved yet" in capsys.readouterr().out


def test_canary_needs_a_cluster_server(project: Path, capsys) -> None:
    write(project, server={"type": "kserve", "mode": "local", "port": 8080})
    assert main(["models", "promote", "-c", str(project / "prodml.yaml"), "x", "--canary", "10"]) == 2
    err = capsys.readouterr().err
    assert "server.mode: --canary" in err and "mode: local" in err
    write(project)
    assert main(["models", "promote", "-c", str(project / "prodml.yaml"), "x", "--canary", "10"]) == 2
    assert "server is missing" in capsys.readouterr().err


def test_models_needs_a_config(capsys) -> None:
    assert main(["models", "history"]) == 2
    assert "-c FILE is required" in capsys.readouterr().err


def test_a_store_that_cannot_move_latest_atomically_is_refused(project: Path) -> None:
    """A backend whose server ignores the write condition is detected, and named."""
    from prodml.core.interfaces import ModelStore
    from prodml.lifecycle import move_latest
    from prodml.plugins.stores.local import LocalStore, LocalStoreConfig
    from prodml.testing.stores import make_bundle

    class IgnoresConditions(LocalStore):
        def _write_if(self, key: str, data: bytes, *, tag: str | None) -> None:
            self._write(key, data, overwrite=True)

    store = IgnoresConditions(LocalStoreConfig(type="local", root=project / "models"))
    ref = store.push(make_bundle(project / "b1"), "m", latest=False)
    with pytest.raises(StoreError, match=r"IgnoresConditions.*does not enforce conditional writes"):
        store.move_latest("m", ref.version, reason="promote")
    assert store.latest_history("m") == []

    class NoMoves(ModelStore):
        """A third-party store that implements only the required operations."""

        push = pull = resolve = versions = uri = None  # type: ignore[assignment]

    with pytest.raises(StoreError, match=r"the NoMoves store cannot move `latest` atomically.*refusing"):
        move_latest(NoMoves(None), "m", ref.version, reason="promote")


# -- the served model follows latest, and only latest --------------------------------------------


@pytest.mark.kserve
@pytest.mark.slow
def test_a_gated_run_leaves_the_served_model_and_promote_rollback_move_it(project: Path, capsys) -> None:
    """A real local KServe server: the gated version never reaches it; promote and rollback do."""
    from prodml.core.interfaces import Endpoint
    from prodml.plugins.servers import client

    server = {"type": "kserve", "mode": "local", "port": 0, "state_dir": str(project / "serving")}
    stages = ["fetch", "train", "export", "serve"]
    write(project, server=server, stages=stages)
    config = str(project / "prodml.yaml")
    rows = [[0.5, -0.1, 0.7, 0.4, -0.8]]

    def served() -> tuple[str, float]:
        answer = client.predict(endpoint.url, "gated", rows, protocol="v2")
        return answer["model_version"], float(client.predictions(answer)[0][0])

    assert run(project, "--keep-serving") == 0
    endpoint = Endpoint.read(latest_run(project) / "endpoint.json")
    try:
        first = pointer(project)
        first_answer = served()
        assert first_answer[0] == first

        write(project, learning_rate=0.0, server=server, stages=stages)
        assert run(project) == 3
        second = next(v for v in versions(project) if v != first)
        assert served() == first_answer, "the gated version must not reach the server"

        capsys.readouterr()
        assert main(["models", "promote", "-c", config, second]) == 0
        out = capsys.readouterr().out
        assert f"now serves {second}" in out
        moved = served()
        assert moved[0] == second and moved[1] != pytest.approx(first_answer[1])

        assert main(["models", "rollback", "-c", config]) == 0
        assert served() == first_answer
    finally:
        from prodml.core.config import load_config as load
        from prodml.core.plugins import default_registry

        loaded = load(project / "prodml.yaml")
        default_registry().create("server", loaded.server).undeploy("gated")


# -- the gate in a Kubeflow pipeline ----------------------------------------------------------------


def test_a_gated_pipeline_hands_the_dataset_to_the_export_step(project: Path) -> None:
    """Re-scoring needs the fetched rows, so under a gate the export task also takes fetch's Dataset."""
    pytest.importorskip("kfp")
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    write(project, runner={"type": "kfp-local"})
    out = project / "pipeline.yaml"
    assert main(["compile", "-c", str(project / "prodml.yaml"), "-o", str(out)]) == 0
    spec = json_format.ParseDict(next(yaml.safe_load_all(out.read_text())), pipeline_spec_pb2.PipelineSpec())
    export = spec.root.dag.tasks["export"]
    assert export.inputs.artifacts["dataset"].task_output_artifact.producer_task == "fetch"
    assert export.inputs.artifacts["model"].task_output_artifact.producer_task == "train"

    write(project, runner={"type": "kfp-local"}, gate=None)
    assert main(["compile", "-c", str(project / "prodml.yaml"), "-o", str(out)]) == 0
    spec = json_format.ParseDict(next(yaml.safe_load_all(out.read_text())), pipeline_spec_pb2.PipelineSpec())
    assert "dataset" not in spec.root.dag.tasks["export"].inputs.artifacts  # no download without a gate


@pytest.mark.kfp
@pytest.mark.slow
def test_a_kfp_local_export_step_rescoring_on_new_data_keeps_a_worse_model_out(project: Path, capsys) -> None:
    pytest.importorskip("kfp")
    assert run(project) == 0  # the local runner trains the first version
    first = pointer(project)
    use_rows(project, 400, 600)  # new data: the export step must re-score the first version on it
    write(project, learning_rate=0.0, runner={"type": "kfp-local"})
    capsys.readouterr()
    assert run(project) == 3  # gated, as under the local runner: not a failure
    captured = capsys.readouterr()
    assert captured.err.startswith("gated: ") and "failed" not in captured.err.splitlines()[0]
    assert "re-scored on the same 40 rows" in captured.out + captured.err
    assert pointer(project) == first
    assert len(versions(project)) == 2
    records = [json.loads(p.read_text()) for p in project.rglob("run.json")]
    assert any(r.get("status") == "gated" and r.get("failed_stage") == "export" for r in records), records
    # --force-promote reaches the export step: the new version becomes latest, and says so
    assert main(["run", "-c", str(project / "prodml.yaml"), "--force-promote"]) == 0
    assert pointer(project) != first and pointer(project) in versions(project)
