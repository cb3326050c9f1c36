"""CLI start-up time: `prodml --help` and `prodml validate` vs a bare `python -c pass`.

Run: python bench/cli_startup.py [--runs N] [--baseline DIR]
Prints the median (and min-max) wall time of each command over N runs (default 15),
interleaved so that machine noise hits all of them alike, and each one's ratio to the bare
interpreter; also the CPU time (user + system) each command used, which a busy machine
disturbs far less than wall time. ``--baseline DIR`` also times the same commands from
another checkout of prodml (e.g. ``git archive <commit> | tar -x -C DIR``), side by side.

Every command must succeed (a crash is not a fast start). The checkouts are byte-compiled
first (``compileall``), as an installed package is: with ``PYTHONDONTWRITEBYTECODE`` set and
no ``__pycache__``, every run would compile prodml from source and time the compiler.
Targets: `prodml --help` under 0.3 s (issue 2); `prodml validate` at most 0.25 s (issue 17).
"""

from __future__ import annotations

import argparse
import os
import resource
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
    for root in roots.values():
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "prodml")], check=True)
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, (argv, root) in commands.items():
            # `python -m` puts the working folder first on sys.path: each root runs its own prodml
            env = {**os.environ, "PYTHONPATH": str(root)}
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(argv, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            times[name].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if done.returncode != 0:
                raise SystemExit(
                    f"`{name}` failed with exit status {done.returncode}; a crash is not a start-up time:\n"
                    + done.stderr.decode(errors="replace")[-2000:]
                )
    base = statistics.median(times["python -c pass (baseline)"])
    header = (
        f"{'command':<52} {'median s':>9} {'min-max s':>13} {'x python':>9} {'cpu s':>7} {'cpu min-max':>13}"
    )
    print(header)
    for name, values in times.items():
        median = statistics.median(values)
        spread = f"{min(values):.3f}-{max(values):.3f}"
        used = cpu[name]
        cpu_spread = f"{min(used):.3f}-{max(used):.3f}"
        print(
            f"{name:<52} {median:9.3f} {spread:>13} {median / base:9.2f} "
            f"{statistics.median(used):7.3f} {cpu_spread:>13}"
        )
    help_median = statistics.median(times["prodml --help"])
    verdict = "meets" if help_median < 0.3 else "MISSES"
    print(f"\nprodml --help: {help_median:.3f} s — {verdict} the 0.3 s target")
    validate_median = statistics.median(times["prodml validate -c config/local.yaml"])
    verdict = "meets" if validate_median <= 0.25 else "MISSES"
    print(f"prodml validate: {validate_median:.3f} s — {verdict} the 0.25 s target")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)")


if __name__ == "__main__":
    main()
