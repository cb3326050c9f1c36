"""CLI start-up time: `prodml --help` and `prodml validate` vs a bare `python -c pass`.

Run: python bench/cli_startup.py [--runs N]
Prints the median wall time of each command over N runs (default 15), interleaved so that
machine noise hits all of them alike, and each one's ratio to the bare interpreter.
Target (issue 2): `prodml --help` under 0.3 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    commands = {
        "python -c pass (baseline)": [sys.executable, "-c", "pass"],
        "prodml --help": [sys.executable, "-m", "prodml", "--help"],
        "prodml validate -c config/local.yaml": [
            sys.executable,
            "-m",
            "prodml",
            "validate",
            "-c",
            "config/local.yaml",
        ],
        "prodml plugins": [sys.executable, "-m", "prodml", "plugins"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"{'command':<40} {'median s':>9} {'min s':>7} {'x baseline':>11}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<40} {median:9.3f} {min(values):7.3f} {median / base:11.2f}")
    help_median = statistics.median(times["prodml --help"])
    verdict = "meets" if help_median < 0.3 else "MISSES"
    print(f"\nprodml --help: {help_median:.3f} s — {verdict} the 0.3 s target")


if __name__ == "__main__":
    main()
