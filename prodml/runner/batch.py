"""Batch scoring: predictions for a file of entity rows, each with its features as of its time.

The offline twin of feature lookup at inference: where the model server looks an entity's
*latest* features up in the online store, batch scoring asks the source for the features each
row would have seen at its own timestamp — the same point-in-time join that built the
training frame (for Feast, the same engine) — and runs the stored model over them::

    prodml predict -c config/feast.yaml --entities entities.parquet -o scored.parquet

The output holds every entity row, in order, with all its columns, and a column per model
output (``prediction``). A row without a feature value within the TTL is kept with a null
prediction and counted in the log; nothing is silently dropped. Called by the ``predict``
command wherever that command lives; everything it needs comes from the config.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prodml.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: rows per model call: large enough to amortize a call, small enough to bound memory
BATCH_ROWS = 65_536


@dataclass(frozen=True)
class BatchResult:
    """What a batch scoring run wrote."""

    output: Path
    rows: int
    scored: int
    model: str
    version: str

    def summary(self) -> str:
        missing = self.rows - self.scored
        tail = f"; {missing} without features (null prediction)" if missing else ""
        model = f"{self.model} {self.version}"
        return f"scored {self.scored} of {self.rows} rows with {model} -> {self.output}{tail}"


def batch_predict(config: Any, entities: Path, output: Path, *, version: str | None = None) -> BatchResult:
    """Score every row of ``entities`` with the stored model, features as of each row's time.

    Args:
        config: the loaded prodml config (its source, store, and server.version if any).
        entities: CSV or Parquet file: the source's join keys and timestamp column, any others.
        output: ``.parquet`` or ``.csv`` file to write (the entity rows plus predictions).
        version: model version; default ``server.version`` of the config, else ``latest``.

    Raises:
        ConfigError: no source or store, or a source that cannot compute features as of a time.
        DataError: unreadable entity rows, or a model trained on other features.
    """
    from prodml.core.plugins import default_registry

    if config.source is None or config.store is None:
        raise ConfigError("batch scoring needs `source:` (features) and `store:` (the model) sections")
    output = Path(output)
    if output.suffix.lower() not in (".parquet", ".csv"):
        raise ConfigError(f"output {output} must end in .parquet or .csv")
    registry = default_registry()
    source = registry.create("source", config.source)
    if not hasattr(source, "historical_features") or not hasattr(source, "read_entity_df"):
        raise ConfigError(
            f"source type {config.source.type!r} cannot compute features as of a time; batch scoring "
            "with --entities needs a point-in-time source (type: feast)",
            field="source.type",
        )
    store = registry.create("store", config.store)
    wanted = version or getattr(config.server, "version", None) or "latest"
    ref = store.resolve(config.model_name, wanted)
    started = time.perf_counter()
    frame = source.read_entity_df(entities, with_label=False)
    features = source.historical_features(frame)
    log.info(
        "batch: %d rows x %d features in %.2fs", len(frame), features.shape[1], time.perf_counter() - started
    )
    with tempfile.TemporaryDirectory(prefix="prodml-batch-") as tmp:
        bundle = store.pull(ref, Path(tmp) / "bundle")
        trust = bool(getattr(config.server, "trust_model_code", False))
        predictions, outputs = _score(bundle, source, features, trust_model_code=trust)
    for index, name in enumerate(outputs):
        column = name if name not in frame.columns else f"{name}_predicted"
        frame[column] = predictions[:, index]
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".csv":
        frame.to_csv(output, index=False)
    else:
        frame.to_parquet(output, index=False)
    scored = int((~features.isna().any(axis=1)).sum())
    result = BatchResult(output, len(frame), scored, ref.model_name, ref.version)
    log.info("batch: %s", result.summary())
    return result


def _score(bundle: Path, source: Any, features: Any, *, trust_model_code: bool) -> tuple[Any, list[str]]:
    """Predictions (rows x outputs, NaN where a feature is missing) and the output names."""
    import numpy as np

    from prodml.plugins.trainers.keras import load_bundle

    model, metadata = load_bundle(bundle, trust_model_code=trust_model_code)
    trained_on = list(metadata.feature_refs)
    if trained_on and trained_on != list(source.feature_refs):
        raise DataError(
            f"model {metadata.name} was trained on features {trained_on}, the config's source gives "
            f"{list(source.feature_refs)}",
            hint="score with the source config the model was trained with",
        )
    missing = [name for name in metadata.feature_names if name not in features.columns]
    if missing:
        raise DataError(
            f"the source gives no column(s) {', '.join(missing)} that model {metadata.name} takes"
        )
    matrix = features[metadata.feature_names].to_numpy(dtype="float32", na_value=np.nan)
    complete = ~np.isnan(matrix).any(axis=1)
    outputs = list(metadata.outputs or ["prediction"])
    result = None
    rows = np.flatnonzero(complete)
    for start in range(0, len(rows), BATCH_ROWS):
        chunk = rows[start : start + BATCH_ROWS]
        # model(x), not model.predict(x): no per-call Keras machinery, the same numbers
        answer = np.asarray(model(matrix[chunk], training=False), dtype="float64").reshape(len(chunk), -1)
        if result is None:
            result = np.full((len(matrix), answer.shape[1]), np.nan, dtype="float64")
        result[chunk] = answer
    if result is None:  # no row has its features: nothing to run the model on
        result = np.full((len(matrix), len(outputs)), np.nan, dtype="float64")
    if result.shape[1] != len(outputs):  # one output holding a vector: a column per element
        outputs = [f"{outputs[0]}_{i}" for i in range(result.shape[1])]
    if not complete.all():
        log.warning(
            "batch: %d of %d rows lack a feature value; their prediction is null",
            (~complete).sum(),
            len(matrix),
        )
    return result, outputs
