"""Write the quickstart's training data: ``data/train.csv``.

Deterministic (fixed seed, values rounded to 4 decimals), so the committed file and a
regenerated one are byte-identical::

    python examples/quickstart/make_data.py          # rewrites data/train.csv
    python examples/quickstart/make_data.py --check  # exit 1 if the committed file differs

Five numeric features on a unit scale and a label ``target`` that is mostly linear in them
plus one gentle interaction and a little noise: a tiny Keras model learns it in a few epochs
(R^2 well above 0.9), which makes a broken pipeline show up as a bad metric.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROWS = 1000
SEED = 42
FEATURES = ("sqft", "rooms", "age", "distance", "quality")
WEIGHTS = np.array([1.5, 0.8, -0.6, -1.0, 1.2])
OUT = Path(__file__).resolve().parent / "data" / "train.csv"


def make_frame(rows: int = ROWS, seed: int = SEED) -> pd.DataFrame:
    """The quickstart frame: the five features, then ``target``."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(rows, len(FEATURES)))
    noise = rng.normal(0.0, 0.05, size=rows)
    target = x @ WEIGHTS + 0.5 * x[:, 0] * x[:, 4] + 0.3 + noise
    frame = pd.DataFrame(x, columns=list(FEATURES))
    frame["target"] = target
    return frame.round(4)


def render(frame: pd.DataFrame) -> str:
    """CSV text with a fixed float format and Unix newlines (stable across platforms)."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.4f", lineterminator="\n")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="compare with the file instead of writing")
    args = parser.parse_args(argv)
    text = render(make_frame(args.rows))
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from the generator'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({args.rows} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
