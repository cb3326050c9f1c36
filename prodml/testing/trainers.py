"""Conformance suite of the ``trainer`` role.

Every trainer writes the same bundle (see :mod:`prodml.core.bundle`): stores keep it and
servers load it, whoever trained it. Use it as::

    class TestMyTrainer(TrainerConformance):
        @pytest.fixture
        def backend_config(self, tmp_path):
            return {"type": "mine", ...}

Override :meth:`training_frame` for a model that needs other data (the default is a small
numeric regression frame), and :meth:`train_spec` to match it. The suite trains once per
test class and checks the result from several sides; the bad-input tests train nothing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import pytest

from prodml.core.bundle import (
    METADATA,
    SAVED_MODEL_DIR,
    BundleMetadata,
    frame_fingerprint,
    verify_bundle,
)
from prodml.core.errors import BundleError, DataError, ProdmlError
from prodml.core.interfaces import DatasetSchema, TrainResult, TrainSpec
from prodml.testing.base import BackendConformance
from prodml.testing.sdk import needs_sdk


def regression_frame(rows: int = 96, features: int = 3, seed: int = 0) -> Any:
    """A deterministic numeric frame: ``x0..x{n-1}`` then ``target`` (a noisy linear mix)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    weights = np.linspace(1.0, -1.0, features)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(features)])
    frame["target"] = x @ weights + 0.5 + 0.05 * rng.normal(size=rows)
    return frame


class TrainerConformance(BackendConformance):
    """What every trainer's bundle must satisfy for the export and serve stages."""

    role: ClassVar = "trainer"

    @pytest.fixture
    def training_frame(self) -> Any:
        """The frame to train on: features in order, then the label."""
        return regression_frame()

    @pytest.fixture
    def train_spec(self, training_frame: Any) -> TrainSpec:
        """The spec matching :meth:`training_frame` (last column is the label)."""
        columns = [str(c) for c in training_frame.columns]
        schema = DatasetSchema(
            feature_names=tuple(columns[:-1]),
            label=columns[-1],
            dtypes={c: str(training_frame[c].dtype) for c in columns},
            rows=len(training_frame),
            sha256=frame_fingerprint(training_frame),
        )
        return TrainSpec(model_name="conformance", schema=schema, config_digest="0" * 64)

    @pytest.fixture(scope="class")
    def _trained_cache(self) -> dict[str, TrainResult]:
        return {}

    @pytest.fixture
    def trained(
        self,
        _trained_cache: dict[str, TrainResult],
        backend: Any,
        training_frame: Any,
        train_spec: TrainSpec,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> TrainResult:
        """One training run per test class (tests must not modify its bundle)."""
        if "result" not in _trained_cache:
            out = tmp_path_factory.mktemp("trained") / "bundle"
            _trained_cache["result"] = backend.train(training_frame, train_spec, out)
        return _trained_cache["result"]

    # -- the bundle -------------------------------------------------------------------

    def test_writes_a_bundle_that_verifies(self, trained: TrainResult) -> None:
        bundle = Path(trained.bundle_dir)
        manifest = verify_bundle(bundle)
        assert METADATA in manifest
        assert any(name.startswith(f"{SAVED_MODEL_DIR}/1/") for name in manifest)
        assert (bundle / SAVED_MODEL_DIR / "1" / "saved_model.pb").is_file()

    def test_leaves_nothing_beside_the_bundle(self, trained: TrainResult) -> None:
        bundle = Path(trained.bundle_dir)
        assert sorted(p.name for p in bundle.parent.iterdir()) == [bundle.name]

    def test_metadata_describes_the_training_data(
        self, trained: TrainResult, training_frame: Any, train_spec: TrainSpec
    ) -> None:
        meta = BundleMetadata.read(Path(trained.bundle_dir))
        assert meta.name == train_spec.model_name
        assert meta.feature_names == list(train_spec.feature_names)
        assert meta.label == train_spec.label
        assert meta.training_data["rows"] == len(training_frame)
        assert meta.training_data["sha256"] == frame_fingerprint(training_frame)
        assert meta.config_digest == train_spec.config_digest
        assert {"prodml", "python"} <= set(meta.versions)

    def test_reports_finite_metrics(self, trained: TrainResult) -> None:
        assert trained.metrics, "a training run reports at least its loss"
        assert all(math.isfinite(v) for v in trained.metrics.values())
        meta = BundleMetadata.read(Path(trained.bundle_dir))
        assert meta.metrics == pytest.approx(dict(trained.metrics))

    def test_saved_model_serves_the_named_signature(self, trained: TrainResult, training_frame: Any) -> None:
        tf = needs_sdk("tensorflow", extra="tensorflow")
        import numpy as np

        meta = BundleMetadata.read(Path(trained.bundle_dir))
        loaded = tf.saved_model.load(str(Path(trained.bundle_dir) / SAVED_MODEL_DIR / "1"))
        signature = loaded.signatures[meta.serving_signature]
        rows = training_frame[meta.feature_names].to_numpy(dtype=np.float32)[:5]
        out = signature(features=tf.constant(rows))
        assert list(out) == ["prediction"]
        prediction = out["prediction"].numpy()
        assert prediction.shape[0] == 5 and prediction.ndim == 2
        assert np.isfinite(prediction).all()

    # -- refusals: nothing half-written -----------------------------------------------

    def test_refuses_an_existing_out_dir(
        self, backend: Any, training_frame: Any, train_spec: TrainSpec, tmp_path: Path
    ) -> None:
        out = tmp_path / "bundle"
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        with pytest.raises(BundleError, match="already exists"):
            backend.train(training_frame, train_spec, out)
        assert [p.name for p in out.iterdir()] == ["keep.txt"]

    def test_missing_feature_column_is_a_data_error(
        self, backend: Any, training_frame: Any, train_spec: TrainSpec, tmp_path: Path
    ) -> None:
        missing = train_spec.feature_names[0]
        with pytest.raises(DataError, match=missing):
            backend.train(training_frame.drop(columns=[missing]), train_spec, tmp_path / "bundle")
        assert list(tmp_path.iterdir()) == []

    def test_non_numeric_label_is_a_data_error(
        self, backend: Any, training_frame: Any, train_spec: TrainSpec, tmp_path: Path
    ) -> None:
        frame = training_frame.copy()
        frame[train_spec.label] = ["class-" + str(i % 3) for i in range(len(frame))]
        with pytest.raises(DataError, match=train_spec.label):
            backend.train(frame, train_spec, tmp_path / "bundle")
        assert list(tmp_path.iterdir()) == []

    def test_missing_values_are_a_data_error(
        self, backend: Any, training_frame: Any, train_spec: TrainSpec, tmp_path: Path
    ) -> None:
        frame = training_frame.copy()
        column = train_spec.feature_names[-1]
        frame.loc[frame.index[3], column] = float("nan")
        with pytest.raises(ProdmlError, match=column):
            backend.train(frame, train_spec, tmp_path / "bundle")
        assert list(tmp_path.iterdir()) == []
