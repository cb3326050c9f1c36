"""One TensorFlow training worker.

``python -m prodml.plugins.trainers._worker WORKDIR INDEX OUT_DIR`` on this machine, or
``python -m prodml.plugins.trainers._worker --cluster`` in a TFJob pod (see
:mod:`prodml.plugins.trainers.tfjob`: it fetches the frame itself and the chief pushes the
bundle to the store).

Started by :mod:`prodml.plugins.trainers.distributed` (one process per worker, ``TF_CONFIG``
in its environment) or, on a cluster, as the command of a TFJob pod. It reads the frame,
spec and trainer config from WORKDIR and runs the ordinary keras trainer with a
:class:`~prodml.plugins.trainers._distributed_impl.WorkerContext`; the chief (worker 0)
writes the bundle to OUT_DIR and ``result.json`` to WORKDIR. A prodml error is written to
``error-<INDEX>.json`` so the launcher can repeat the worker's own message.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prodml.core.interfaces import TrainResult


def main(argv: list[str]) -> int:
    cluster = argv[:1] == ["--cluster"]
    index = _task_index() if cluster else int(argv[1])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format=f"%(asctime)s worker {index} %(levelname)s %(name)s: %(message)s",
    )
    from prodml.core.errors import ProdmlError
    from prodml.plugins.trainers import distributed as d

    if cluster:
        workdir = Path(tempfile.mkdtemp(prefix="prodml-tfjob-"))
        out_dir = workdir / "bundle"
    else:
        workdir, out_dir = Path(argv[0]), Path(argv[2])
    try:
        project = None
        if cluster:
            from prodml.plugins.trainers import tfjob

            project, _ = tfjob.cluster_worker_inputs(workdir)
        result = train_worker(workdir, index, out_dir)
        if result is not None:
            (workdir / d.RESULT_FILE).write_text(result.to_json(), encoding="utf-8")
            if project is not None:
                from prodml.core.plugins import default_registry

                store = default_registry().create("store", project.store)
                # export and its gate decide about `latest`; the train step finds this version
                ref = store.push(out_dir, project.model_name, latest=False)
                logging.getLogger("prodml.trainer").info("pushed %s %s", ref.model_name, ref.version)
        logging.getLogger("prodml.trainer").info("worker %d done", index)
        return 0
    except ProdmlError as exc:
        (workdir / d.ERROR_FILE.format(index=index)).write_text(
            json.dumps({"message": exc.message, "hint": exc.hint}), encoding="utf-8"
        )
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _task_index() -> int:
    return int(json.loads(os.environ["TF_CONFIG"])["task"]["index"])


def train_worker(workdir: Path, index: int, out_dir: Path) -> TrainResult | None:
    """Train as worker ``index``; the chief returns its result (the bundle is in ``out_dir``)."""
    from prodml.plugins.trainers import distributed as d
    from prodml.plugins.trainers.keras import KerasTrainerConfig

    config = KerasTrainerConfig.model_validate_json((workdir / d.CONFIG_FILE).read_text(encoding="utf-8"))
    assert config.distributed is not None
    # the strategy first: it must set up TensorFlow's collectives before any other TF work
    from prodml.plugins.trainers._distributed_impl import WorkerContext

    worker = WorkerContext(config.distributed.communication_timeout)
    import pandas as pd

    from prodml.core.interfaces import TrainSpec
    from prodml.plugins.trainers import _keras_impl

    frame = pd.read_parquet(workdir / d.FRAME_FILE)
    spec = TrainSpec.read(workdir / d.SPEC_FILE)
    if worker.is_chief:
        return _keras_impl.train(config, frame, spec, out_dir, worker=worker)
    with tempfile.TemporaryDirectory(prefix="prodml-worker-") as scratch:
        _keras_impl.train(config, frame, spec, Path(scratch) / "bundle", worker=worker)
    return None


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
