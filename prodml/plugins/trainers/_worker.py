"""One TensorFlow training worker: ``python -m prodml.plugins.trainers._worker WORKDIR INDEX OUT_DIR``.

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


def main(argv: list[str]) -> int:
    workdir, index, out_dir = Path(argv[0]), int(argv[1]), Path(argv[2])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stdout,
        format=f"%(asctime)s worker {index} %(levelname)s %(name)s: %(message)s",
    )
    from prodml.core.errors import ProdmlError
    from prodml.plugins.trainers import distributed as d

    try:
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
            result = _keras_impl.train(config, frame, spec, out_dir, worker=worker)
            (workdir / d.RESULT_FILE).write_text(result.to_json(), encoding="utf-8")
        else:
            with tempfile.TemporaryDirectory(prefix="prodml-worker-") as scratch:
                _keras_impl.train(config, frame, spec, Path(scratch) / "bundle", worker=worker)
        logging.getLogger("prodml.trainer").info("worker %d of %d done", index, worker.workers)
        return 0
    except ProdmlError as exc:
        (workdir / d.ERROR_FILE.format(index=index)).write_text(
            json.dumps({"message": exc.message, "hint": exc.hint}), encoding="utf-8"
        )
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
