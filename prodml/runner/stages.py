"""The four stages, as plain functions of (config, input paths) -> outputs on disk.

Every runner calls these same functions: the ``local`` runner in-process, the KFP
components inside their step (a subprocess under kfp.local, a pod on a cluster). Each stage
builds the plugins it needs from the config through the registry and talks to them only
through the role interfaces of :mod:`prodml.core.interfaces`.

=========  =====================  ==============================================
stage      reads                  writes
=========  =====================  ==============================================
fetch      the data source        ``out_dir/dataset.parquet``, ``out_dir/schema.json``
train      the fetch folder       the model bundle, as ``out_dir`` itself
export     the bundle             ``out_dir/modelref.json`` (a version in the store)
serve      ``modelref.json``      ``out_dir/endpoint.json`` (a ready model server)
=========  =====================  ==============================================
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prodml.core.errors import DataError, RunnerError
from prodml.core.interfaces import DatasetSchema, Endpoint, ModelRef, TrainResult, TrainSpec
from prodml.core.plugins import Registry, default_registry

if TYPE_CHECKING:
    from prodml.core.config import ProdmlConfig

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.parquet"
SCHEMA_FILE = "schema.json"
MODELREF_FILE = "modelref.json"
ENDPOINT_FILE = "endpoint.json"


def _create(registry: Registry | None, role: str, config: ProdmlConfig) -> Any:
    section = config.section(role)  # type: ignore[arg-type]
    if section is None:
        raise RunnerError(f"the config has no `{role}:` section, which this stage needs")
    return (registry or default_registry()).create(role, section)  # type: ignore[arg-type]


def fetch(config: ProdmlConfig, out_dir: Path, *, registry: Registry | None = None) -> DatasetSchema:
    """Read the training frame from the source; write ``dataset.parquet`` and ``schema.json``.

    Args:
        config: the loaded config (needs ``source``).
        out_dir: folder to write into (created if missing).
        registry: where plugins come from (default: the process-wide registry).

    Returns:
        The frame's :class:`DatasetSchema` (also written as ``schema.json``).

    Raises:
        DataError: the source returned no rows, or not the columns it promised.
    """
    source = _create(registry, "source", config)
    frame = source.training_frame()
    expected = [*source.feature_names, source.label]
    if list(frame.columns) != expected:
        raise DataError(
            f"{type(source).__name__} returned columns {list(frame.columns)}, expected the features "
            f"then the label: {expected}",
            hint="a DataSource's training_frame must return exactly feature_names + [label], in order",
        )
    if len(frame) == 0:
        raise DataError(f"the {config.source.type} source returned no training rows")  # type: ignore[union-attr]
    schema = source.schema(frame)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (DATASET_FILE + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, out_dir / DATASET_FILE)
    schema.write(out_dir / SCHEMA_FILE)
    log.info("fetch: %d rows, %d features -> %s", schema.rows, len(schema.feature_names), out_dir)
    return schema


def read_dataset(dataset_dir: Path) -> tuple[Any, DatasetSchema]:
    """The frame and schema written by :func:`fetch` (RunnerError when they are missing)."""
    import pandas as pd

    dataset_dir = Path(dataset_dir)
    data, schema_file = dataset_dir / DATASET_FILE, dataset_dir / SCHEMA_FILE
    for needed in (data, schema_file):
        if not needed.is_file():
            raise RunnerError(
                f"train needs the dataset written by the fetch stage, but {needed} is missing",
                hint="run the fetch stage first (run without --from, or --from fetch)",
            )
    return pd.read_parquet(data), DatasetSchema.read(schema_file)


def train(
    config: ProdmlConfig, dataset_dir: Path, out_dir: Path, *, registry: Registry | None = None
) -> TrainResult:
    """Train on the fetched dataset; write the model bundle as ``out_dir``.

    Args:
        config: the loaded config (needs ``trainer``).
        dataset_dir: the folder :func:`fetch` wrote.
        out_dir: the bundle folder to create; it must not exist or be empty.
        registry: where plugins come from.

    Returns:
        The trainer's :class:`TrainResult` (bundle path, metrics).
    """
    frame, schema = read_dataset(dataset_dir)
    out_dir = Path(out_dir)
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        # a KFP launcher may create the artifact folder up front; the trainer wants to create it
        out_dir.rmdir()
    elif out_dir.exists():
        raise RunnerError(
            f"train would overwrite {out_dir}, which already exists",
            hint="bundles are never overwritten; remove it or start a new run",
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    spec = TrainSpec(
        model_name=config.model_name,
        schema=schema,
        config_digest=config.model_digest(),
        project=config.public_dict(),
    )
    trainer = _create(registry, "trainer", config)
    result = trainer.train(frame, spec, out_dir)
    log.info("train: bundle %s, metrics %s", result.bundle_dir, dict(result.metrics))
    return result


def export(
    config: ProdmlConfig,
    bundle_dir: Path,
    out_dir: Path,
    *,
    registry: Registry | None = None,
    dataset_dir: Path | None = None,
    run_id: str | None = None,
    force_promote: bool = False,
) -> ModelRef:
    """Store the bundle as a version; move ``latest`` to it unless the gate says no.

    The version is always stored (versions are the history). ``latest`` moves when there
    is no ``gate:``, when the new version is no worse than the current latest on the gate
    metric (see :func:`prodml.lifecycle.gate_decision`), or with ``force_promote``. Writes
    ``out_dir/modelref.json`` only when it moved, so a following serve stage never serves a
    version the gate kept out.

    Args:
        dataset_dir: the fetch folder the bundle was trained from; the gate re-scores the
            current latest on its evaluation rows when that one was measured on others.
        run_id: recorded with the move in the store's history.
        force_promote: move latest even when the gate says no (recorded as such).

    Raises:
        GatedError: the gate kept the version out of latest (exit status 3).
    """
    from prodml.core.bundle import MANIFEST
    from prodml.lifecycle import export_to_latest

    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / MANIFEST).is_file():
        raise RunnerError(
            f"export needs the model bundle written by the train stage, but {bundle_dir / MANIFEST} "
            "is missing",
            hint="run the train stage first (--from train)",
        )
    store = _create(registry, "store", config)
    ref = store.push(bundle_dir, config.model_name, latest=False)
    rows = None
    if config.gate is not None and dataset_dir is not None and (Path(dataset_dir) / DATASET_FILE).is_file():
        rows, _schema = read_dataset(Path(dataset_dir))
    export_to_latest(
        config,
        store,
        ref,
        bundle_dir=bundle_dir,
        rows=rows,
        run_id=run_id,
        force_promote=force_promote,
        follow_server="serve" not in config.stages,
        registry=registry,
    )
    ref.write(Path(out_dir) / MODELREF_FILE)
    log.info("export: %s version %s -> %s", ref.model_name, ref.version, ref.uri)
    return ref


def serve(
    config: ProdmlConfig,
    modelref_json: Path | None,
    out_dir: Path,
    *,
    registry: Registry | None = None,
) -> Endpoint:
    """Deploy the exported version (or, without ``modelref_json``, the store's chosen one).

    Without a ModelRef (a config whose stages are only ``[serve]``), the version is
    ``server.version`` when the server config has one, else the store's latest.
    Writes ``out_dir/endpoint.json`` once the server answers.
    """
    store = _create(registry, "store", config)
    if modelref_json is not None:
        path = Path(modelref_json)
        if not path.is_file():
            raise RunnerError(
                f"serve needs the ModelRef written by the export stage, but {path} is missing",
                hint="run the export stage first (--from export)",
            )
        ref = ModelRef.read(path)
    else:
        version = getattr(config.server, "version", None) or "latest"
        ref = store.resolve(config.model_name, version)
    server = _create(registry, "server", config)
    source = _create(registry, "source", config) if config.section("source") is not None else None
    endpoint = server.deploy(ref, store, source)
    endpoint.write(Path(out_dir) / ENDPOINT_FILE)
    log.info("serve: %s at %s", endpoint.model_name, endpoint.url)
    return endpoint


def remove_output(path: Path) -> None:
    """Delete a stage output (file or folder) before the stage runs again."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
