"""CLI start-up time: `prodml --help` and `prodml validate` vs a bare `python -c pass`.

Run: python bench/cli_startup.py [--runs N] [--baseline DIR]
Prints the median (and min-max) wall time of each command over N runs (default 15),
interleaved so that machine noise hits all of them alike, and each one's ratio to the bare
interpreter. ``--baseline DIR`` also times the same commands from another checkout of prodml
(e.g. ``git archive <commit> | tar -x -C DIR``), side by side.
Target (issue 2): `prodml --help` under 0.3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--baseline", type=Path, help="another prodml checkout to compare against")
    args = parser.parse_args()
    prodml_commands = {
        "prodml --help": ["--help"],
        "prodml validate -c config/local.yaml": ["validate", "-c", "config/local.yaml"],
        "prodml plugins": ["plugins"],
    }
    roots = {"": REPO} if args.baseline is None else {"": REPO, " [baseline]": args.baseline.resolve()}
    commands: dict[str, tuple[list[str], Path]] = {
        "python -c pass (baseline)": ([sys.executable, "-c", "pass"], REPO)
    }
    for name, argv in prodml_commands.items():
        for suffix, root in roots.items():
            commands[name + suffix] = ([sys.executable, "-m", "prodml", *argv], root)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, (argv, root) in commands.items():
            # `python -m` puts the working folder first on sys.path: each root runs its own prodml
            env = {**os.environ, "PYTHONPATH": str(root)}
            start = time.perf_counter()
            subprocess.run(
                argv, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
            )
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["python -c pass (baseline)"])
    print(f"{'command':<52} {'median s':>9} {'min-max s':>13} {'x python':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        spread = f"{min(values):.3f}-{max(values):.3f}"
        print(f"{name:<52} {median:9.3f} {spread:>13} {median / base:9.2f}")
    help_median = statistics.median(times["prodml --help"])
    verdict = "meets" if help_median < 0.3 else "MISSES"
    print(f"\nprodml --help: {help_median:.3f} s — {verdict} the 0.3 s target")


if __name__ == "__main__":
    main()
