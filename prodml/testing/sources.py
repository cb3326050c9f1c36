"""Conformance suite of the ``source`` role: what the trainer may rely on from any DataSource.

Use it from a plugin's tests::

    class TestMySource(DataSourceConformance):
        @pytest.fixture
        def backend_config(self, tmp_path):
            return {"type": "mine", ...}

Sources that serve online features (``entity_keys`` not empty) also override
:meth:`DataSourceConformance.entity_rows` with a few entity rows known to the online store.

Sources that read data someone else wrote override
:meth:`DataSourceConformance.dirty_backend_config` too: the suite then checks that a missing
value or a word in a numeric column is refused with a :class:`~prodml.core.errors.DataError`
naming the column, instead of reaching the trainer (clean test data alone cannot show it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from prodml.core.errors import DataError
from prodml.core.interfaces import DatasetSchema, DataSource
from prodml.core.interfaces import Role as _Role
from prodml.testing.base import BackendConformance


class DataSourceConformance(BackendConformance):
    """Behaviour every :class:`~prodml.core.interfaces.DataSource` must show."""

    role: ClassVar[_Role] = "source"

    @pytest.fixture
    def entity_rows(self) -> Sequence[Mapping[str, Any]] | None:
        """Entity rows for :meth:`DataSource.online_features` (None: the source has none)."""
        return None

    @pytest.fixture
    def dirty_backend_config(self) -> Callable[[str, str], dict[str, Any]] | None:
        """``make(problem, column)``: a config section whose data has ``problem`` in ``column``.

        ``problem`` is ``"missing"`` (one row has no value there: an empty cell, a null) or
        ``"text"`` (one row has a word there); ``column`` is one of the source's feature
        columns (as named by a config from :meth:`backend_config`). Return None for a source
        whose data cannot hold either (generated data); the refusal checks are then skipped.
        """
        return None

    @pytest.fixture
    def frame(self, backend: DataSource):
        """The training frame, built once per test."""
        return backend.training_frame()

    # -- the frame the trainer receives ------------------------------------------------

    def test_frame_is_features_then_label(self, backend: DataSource, frame) -> None:
        features = list(backend.feature_names)
        assert features, "a source must name at least one feature"
        assert len(set(features)) == len(features), f"feature names repeat: {features}"
        assert backend.label not in features
        assert list(frame.columns) == [*features, backend.label]

    def test_frame_is_numeric_complete_and_not_empty(self, frame) -> None:
        from pandas.api.types import is_bool_dtype, is_numeric_dtype

        assert len(frame) > 0
        for name in frame.columns:
            assert is_numeric_dtype(frame[name]) or is_bool_dtype(frame[name]), (
                f"column {name!r} has dtype {frame[name].dtype}"
            )
        assert not frame.isna().any().any(), "the training frame must not contain NaNs"

    def test_frame_has_a_plain_index(self, frame) -> None:
        import pandas as pd

        # the trainer and the fingerprint treat rows positionally
        assert isinstance(frame.index, pd.RangeIndex)
        assert frame.index.start == 0 and frame.index.step == 1

    def test_frame_is_reproducible(self, backend: DataSource, frame) -> None:
        again = backend.training_frame()
        assert backend.schema(again).sha256 == backend.schema(frame).sha256

    def test_schema_describes_the_frame(self, backend: DataSource, frame) -> None:
        schema = backend.schema(frame)
        assert isinstance(schema, DatasetSchema)
        assert schema.feature_names == tuple(backend.feature_names)
        assert schema.label == backend.label
        assert schema.rows == len(frame)
        assert len(schema.sha256) == 64
        assert set(schema.dtypes) == set(frame.columns)
        # written and read back as JSON, as the fetch stage does
        assert DatasetSchema.model_validate_json(schema.to_json()) == schema

    def test_feature_refs_match_features(self, backend: DataSource) -> None:
        refs = list(backend.feature_refs)
        keys = list(backend.entity_keys)
        assert all(isinstance(r, str) and r for r in refs)
        assert all(isinstance(k, str) and k for k in keys)
        if refs:
            # one ref per feature, in the same order: serving looks features up by these refs
            assert len(refs) == len(backend.feature_names)
            assert keys, "a source with feature-store refs must name its entity keys"
            assert not set(keys) & set(backend.feature_names)

    # -- online features ---------------------------------------------------------------

    def test_online_features_or_not_implemented(
        self, backend: DataSource, entity_rows: Sequence[Mapping[str, Any]] | None
    ) -> None:
        if not backend.entity_keys:
            with pytest.raises(NotImplementedError, match=type(backend).__name__):
                backend.online_features([{"id": 1}])
            return
        assert entity_rows, f"{type(self).__name__} must override the `entity_rows` fixture"
        online = backend.online_features(entity_rows)
        assert len(online) == len(entity_rows)
        for name in [*backend.entity_keys, *backend.feature_names]:
            assert name in online.columns, f"online_features lacks column {name!r}"
        for key in backend.entity_keys:
            assert list(online[key]) == [row[key] for row in entity_rows]

    # -- data the trainer must never see ---------------------------------------------------

    @pytest.mark.parametrize("problem", ["missing", "text"])
    def test_missing_and_text_values_are_refused(
        self,
        problem: str,
        backend: DataSource,
        dirty_backend_config: Callable[[str, str], dict[str, Any]] | None,
        registry: Any,
        base_dir: Path,
    ) -> None:
        if dirty_backend_config is None:
            pytest.skip(f"{type(self).__name__} does not provide dirty_backend_config")
        column = list(backend.feature_names)[-1]
        data = dirty_backend_config(problem, column)
        installed = registry.get(self.role, data["type"])
        config = installed.backend.config.model_validate(data, context={"base_dir": base_dir})
        dirty = registry.create(self.role, config)
        with pytest.raises(DataError) as refused:
            dirty.training_frame()
        assert column in str(refused.value), "the error must name the column"
