"""The inside of a KFP step: rebuild the config from its pipeline parameter, run one stage.

The pipeline carries the config as JSON with every secret removed. A step gets credentials
the way the backend's SDK does without prodml (environment variables set from a Kubernetes
Secret on a cluster). Under ``kfp-local`` the runner also hands the config's own secrets to
its step subprocesses through the environment variable :data:`SECRETS_ENV` (never on disk),
so a local pipeline behaves exactly like the ``local`` runner.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr

if TYPE_CHECKING:
    from prodml.core.config import ProdmlConfig

SECRETS_ENV = "PRODML_STEP_SECRETS"
#: kfp-local: where the export step records a gate's "no" (the runner turns it into exit 3)
GATED_FILE_ENV = "PRODML_STEP_GATED_FILE"
#: kfp-local: `prodml run --force-promote` reaches the export step through this ("1")
FORCE_PROMOTE_ENV = "PRODML_STEP_FORCE_PROMOTE"


def secret_items(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[list[Any], str]]:
    """Every secret of a config as ``(path of keys, plain value)``."""
    found: list[tuple[list[Any], str]] = []
    if isinstance(value, SecretStr):
        found.append((list(path), value.get_secret_value()))
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found += secret_items(getattr(value, name), (*path, name))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            found += secret_items(item, (*path, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += secret_items(item, (*path, index))
    return found


def _put(data: Any, path: list[Any], value: str) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def step_config(config_json: str) -> ProdmlConfig:
    """The config of a pipeline step: the JSON parameter plus secrets from the environment."""
    from prodml.core.config import load_config_dict

    data = json.loads(config_json)
    secrets = os.environ.get(SECRETS_ENV)
    if secrets:
        for path, value in json.loads(secrets):
            try:
                _put(data, path, value)
            except (KeyError, IndexError, TypeError):
                continue  # the section is not in this config (a different pipeline's secrets)
    # the parameter holds an already interpolated config: `$${...}` literals must stay literal
    return load_config_dict(data, base_dir=Path.cwd(), interpolate_env=False)


def _report(stage: str, started: float, result: Any) -> None:
    from prodml.runner._report import describe

    print(f"prodml {stage}: ok {time.perf_counter() - started:.1f}s  {describe(result)}", flush=True)


def run_fetch(config_json: str, dataset_path: str) -> dict[str, Any]:
    """fetch into the Dataset artifact's folder; return metadata for the artifact."""
    from prodml.runner import stages

    started = time.perf_counter()
    schema = stages.fetch(step_config(config_json), Path(dataset_path))
    _report("fetch", started, schema)
    return {
        "rows": schema.rows,
        "features": list(schema.feature_names),
        "label": schema.label,
        "sha256": schema.sha256,
        "seconds": round(time.perf_counter() - started, 3),
    }


def run_train(config_json: str, dataset_path: str, model_path: str) -> dict[str, Any]:
    """train into the Model artifact's folder (the bundle); return metadata for the artifact."""
    from prodml.runner import stages

    started = time.perf_counter()
    result = stages.train(step_config(config_json), Path(dataset_path), Path(model_path))
    _report("train", started, result)
    return {
        "framework": "keras",
        "epochs": result.epochs,
        **{k: float(v) for k, v in result.metrics.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }


def run_export(config_json: str, model_path: str, dataset_path: str = "") -> str:
    """export the bundle to the store; return the ModelRef as JSON.

    ``dataset_path`` (the fetch step's Dataset, given when the config has a ``gate:``) lets
    the gate re-score the current latest on the new version's evaluation rows.
    """
    import tempfile

    from prodml.core.errors import GatedError
    from prodml.runner import stages

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prodml-export-") as out:
        try:
            ref = stages.export(
                step_config(config_json),
                Path(model_path),
                Path(out),
                dataset_dir=Path(dataset_path) if dataset_path else None,
                force_promote=os.environ.get(FORCE_PROMOTE_ENV) == "1",
            )
        except GatedError as exc:
            gated_file = os.environ.get(GATED_FILE_ENV)
            if gated_file:  # the step still fails (the pipeline stops); the runner reads why
                Path(gated_file).write_text(json.dumps({"message": exc.message, "hint": exc.hint}))
            raise
    _report("export", started, ref)
    return ref.model_dump_json()


def run_serve(config_json: str, modelref_json: str) -> str:
    """serve the exported version (or the store's, when ``modelref_json`` is empty); return the Endpoint."""
    import tempfile

    from prodml.runner import stages

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prodml-serve-") as out:
        ref_file = None
        if modelref_json:
            ref_file = Path(out) / stages.MODELREF_FILE
            ref_file.write_text(modelref_json, encoding="utf-8")
        endpoint = stages.serve(step_config(config_json), ref_file, Path(out))
    _report("serve", started, endpoint)
    return endpoint.model_dump_json()
