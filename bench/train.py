"""One worker vs two local TensorFlow workers on the quickstart network.

Run: python bench/train.py [--rows 200000] [--epochs 3] [--batch 256] [--repeat 3]

Both contenders train the quickstart's build_model() on the same generated rows (the
quickstart's own formula, examples/quickstart/make_data.py) with the same seed, epochs and
global batch, each in a fresh process through the keras trainer:

* 1 worker:  `trainer.distributed` unset — Keras' own fit, in-process;
* 2 workers: `trainer.distributed.workers: 2` — two worker processes on loopback, joined by
  MultiWorkerMirroredStrategy (an all-reduce of the gradients every step).

Rounds are interleaved in shuffled order; medians with min-max are reported, with the final
validation loss of each and the extra wall time per global step that the second worker
costs (or saves). Every run must write a verified bundle whose validation loss is below
the threshold (a model that did not learn fails the benchmark). On a 2-core machine expect
no speed-up: the second worker competes for the same cores and adds one all-reduce per step.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "quickstart"))

#: A model that learned the quickstart's formula has a validation MSE far below the label's
#: variance (~2.2); a broken run does not.
MAX_VAL_LOSS = 0.1

RUN_ONE = r"""
import json, sys, time
from pathlib import Path
import pandas as pd
from prodml.core.bundle import verify_bundle
from prodml.core.interfaces import DatasetSchema, TrainSpec
from prodml.plugins.trainers.keras import KerasTrainer, KerasTrainerConfig

data, model, out, settings = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
frame = pd.read_parquet(data)
features = tuple(c for c in frame.columns if c != "target")
spec = TrainSpec(model_name="bench", schema=DatasetSchema(feature_names=features, label="target"))
config = KerasTrainerConfig.model_validate({"type": "keras", "model": model, **settings})
started = time.perf_counter()
result = KerasTrainer(config).train(frame, spec, out)
seconds = time.perf_counter() - started
verify_bundle(out)
print(json.dumps({"seconds": seconds, "val_loss": result.metrics["val_loss"], "epochs": result.epochs}))
"""


def run(data: Path, out: Path, settings: dict) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_ONE,
            str(data),
            str(REPO / "examples/quickstart/model.py"),
            str(out),
            json.dumps(settings),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({settings}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not result["val_loss"] < MAX_VAL_LOSS:
        raise SystemExit(f"wrong answer: val_loss {result['val_loss']:.4g} >= {MAX_VAL_LOSS} ({settings})")
    return {**result, "wall": wall}


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from make_data import make_frame

    settings = {"epochs": args.epochs, "batch_size": args.batch, "seed": 42, "validation_split": 0.2}
    contenders = {"1 worker": settings, "2 workers": {**settings, "distributed": {"workers": 2}}}
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory(prefix="prodml-bench-train-") as tmp:
        data = Path(tmp) / "train.parquet"
        make_frame(args.rows, seed=7).to_parquet(data, index=False)
        rounds = [name for name in contenders for _ in range(args.repeat)]
        random.Random(0).shuffle(rounds)
        for i, name in enumerate(rounds):
            res = run(data, Path(tmp) / f"bundle-{i}", contenders[name])
            results[name].append(res)
            wall, loss = res["wall"], res["val_loss"]
            print(f"  round {i + 1}/{len(rounds)}: {name:<10} {wall:.2f} s, val_loss {loss:.5f}")

    steps = args.epochs * -(-int(args.rows * 0.8) // args.batch)
    print(
        f"\n{args.rows} rows x 5 features, {args.epochs} epochs, global batch {args.batch} "
        f"({steps} steps), {args.repeat} rounds each, shuffled; median (min-max)"
    )
    print(f"{'':<10} {'wall s':>22} {'train s':>22} {'val_loss':>10}")
    for name, rows in results.items():
        wall, train = summary([r["wall"] for r in rows]), summary([r["seconds"] for r in rows])
        print(f"{name:<10} {wall:>22} {train:>22} {statistics.median(r['val_loss'] for r in rows):>10.5f}")
    one = statistics.median(r["seconds"] for r in results["1 worker"])
    two = statistics.median(r["seconds"] for r in results["2 workers"])
    print(
        f"\n2 workers / 1 worker (train time): {two / one:.2f}x; "
        f"extra time per global step with 2 workers: {(two - one) / steps * 1000:+.1f} ms "
        "(worker start-up, one all-reduce per step, per-epoch evaluation on the chief)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
