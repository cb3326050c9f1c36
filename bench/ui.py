"""Dashboard page times for a project with 500 runs and 200 model versions.

Run: python bench/ui.py [--runs 500] [--versions 200] [--rounds 15] [--store local|s3]

Builds the project in a temporary folder with prodml's own writers (RunFolder for the run
folders, the store plugin's ``push`` for the versions, each bundle with a 20-epoch history),
starts ``prodml ui`` in its own process and times each page over HTTP from this process,
rounds interleaved so machine noise hits every page alike. Side by side:

- baseline: the same data read the way the CLI reads it — ``prodml models -c FILE``'s
  store listing (in this process) and opening every run.json with ``RunFolder.open``;
- ``cold``: the first request of the models page, before the dashboard has cached the
  versions' prodml.json (immutable, so read once per process).

Target (issue 16): every page under 300 ms (median).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET_MS = 300


def stamp(i: int) -> str:
    """The time part of a run or version id, ``i`` seconds after 2026-11-01 00:00 UTC."""
    return f"20261101T{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}Z"


def build_project(folder: Path, *, runs: int, versions: int, store: dict) -> Path:
    """A config, ``runs`` run folders and ``versions`` stored versions of one model."""
    from prodml.core import bundle as bundle_mod
    from prodml.core.bundle import BundleMetadata, FeatureInfo, write_manifest
    from prodml.core.config import load_config
    from prodml.core.plugins import default_registry
    from prodml.runner._runs import RunFolder

    config_file = folder / "prodml.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "project": "benchui",
                "source": {"type": "csv", "path": "data.csv", "label": "target"},
                "store": store,
                "runner": {"type": "local"},
                "stages": ["fetch"],
            }
        )
    )
    config = load_config(config_file)
    work = folder / ".prodml"
    for i in range(runs):
        run = RunFolder(work / "runs" / f"{stamp(i)}-{i:06x}", {})
        run.root.mkdir(parents=True)
        failed = i % 7 == 3
        run.record = {
            "run_id": run.run_id,
            "project": "benchui",
            "runner": "local",
            "status": "failed" if failed else "ok",
            "started_at": "2026-11-01T10:00:00+00:00",
            "finished_at": "2026-11-01T10:01:00+00:00",
            "config_digest": config.digest(),
            "stages": {
                "fetch": {"status": "ok", "seconds": 1.2, "attempts": 1, "result": {"rows": 1000}},
                "train": {"status": "failed", "error": "boom\n  hint: fix it", "seconds": 3.0, "attempts": 1}
                if failed
                else {"status": "ok", "seconds": 30.5, "attempts": 1, "result": {"epochs": 20}},
                "export": {"status": "pending"} if failed else {"status": "ok", "seconds": 0.2},
            },
        }
        run.save()
    (work / "runs" / "latest").write_text(run.run_id + "\n")

    counter = {"n": 0}

    def version_id(bundle_dir: Path, now: object = None) -> str:
        counter["n"] += 1
        return f"{stamp(counter['n'])}-{bundle_mod.manifest_digest(bundle_dir)[:8]}"

    bundle_mod.new_version_id = version_id  # ids one second apart, without sleeping
    backend = default_registry().create("store", config.store)
    for i in range(versions):
        bundle = folder / "bundles" / str(i)
        bundle.mkdir(parents=True)
        (bundle / "model.keras").write_bytes(i.to_bytes(4, "big") * 4096)
        loss = [1.0 / (e + 1) + i * 1e-4 for e in range(20)]
        BundleMetadata(
            name="benchui",
            features=[FeatureInfo(name=f"f{j}", dtype="float64") for j in range(5)],
            label="target",
            metrics={"loss": loss[-1], "val_loss": loss[-1] * 1.1},
            training_data={"rows": 1000, "sha256": f"{i:064x}"},
            extra={"history": {"loss": loss, "val_loss": [v * 1.1 for v in loss]}},
        ).write(bundle)
        write_manifest(bundle)
        backend.push(bundle, "benchui")
    return config_file


def fetch(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as resp:
        resp.read()
        assert resp.status == 200, url
    return (time.perf_counter() - started) * 1000


def baseline_models(config_file: Path) -> float:
    """``prodml models -c FILE`` in this process (what listing versions costs the CLI)."""
    from prodml.cli import main

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        main(["models", "-c", str(config_file)])
    return (time.perf_counter() - started) * 1000


def baseline_runs(work: Path) -> float:
    """Opening every run.json with RunFolder.open (a CLI listing of all runs)."""
    from prodml.runner._runs import RunFolder

    started = time.perf_counter()
    for path in sorted((work / "runs").iterdir()):
        if path.is_dir():
            RunFolder.open(work, path.name)
    return (time.perf_counter() - started) * 1000


def show(name: str, values: list[float]) -> str:
    median = statistics.median(values)
    flag = "" if median < TARGET_MS else "  > target"
    return f"{name:<44} {median:8.1f} ms  ({min(values):.1f}-{max(values):.1f}){flag}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--store", choices=["local", "s3"], default="local")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prodml-bench-ui-") as tmp, contextlib.ExitStack() as stack:
        folder = Path(tmp)
        store: dict = {"type": "local", "root": "models"}
        if args.store == "s3":
            from prodml.testing.services import SeaweedFS

            server = stack.enter_context(SeaweedFS(folder / "seaweed").start())
            store = server.store_config()
        started = time.perf_counter()
        config_file = build_project(folder, runs=args.runs, versions=args.versions, store=store)
        print(
            f"built {args.runs} runs and {args.versions} versions ({args.store}) in "
            f"{time.perf_counter() - started:.1f} s"
        )
        from prodml.testing.services import free_port

        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "prodml", "ui", "-c", str(config_file), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        stack.callback(proc.terminate)
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                fetch(base + "/runs")
                break
            except OSError:
                time.sleep(0.1)
        runs = sorted(p.name for p in (folder / ".prodml" / "runs").iterdir() if p.is_dir())
        versions = (
            sorted(p.name for p in (folder / "models" / "benchui" / "versions").iterdir())
            if (args.store == "local")
            else None
        )
        if versions is None:
            from prodml.core.config import load_config
            from prodml.core.plugins import default_registry

            config = load_config(config_file)
            backend = default_registry().create("store", config.store)
            versions = sorted(v.version for v in backend.versions("benchui"))
        cold = fetch(base + "/models")
        pages = {
            "overview /": "/",
            "runs, page 1 of 10": "/runs",
            "runs, page 10 of 10": "/runs?page=10",
            "run page": f"/runs/{runs[len(runs) // 2]}",
            "models, page 1 of 8": "/models",
            "models, page 8 of 8": "/models?page=8",
            "version page (2 curves x 20 epochs)": f"/models/{versions[len(versions) // 2]}",
            "compare two versions": f"/compare?a={versions[0]}&b={versions[-1]}",
            f"history of latest ({len(versions)} moves)": "/history",
        }
        fetch(base + "/models?page=8")  # its versions' metadata cached, as after one visit
        times: dict[str, list[float]] = {name: [] for name in pages}
        base_models: list[float] = []
        base_runs: list[float] = []
        for _ in range(args.rounds):
            for name, path in pages.items():
                times[name].append(fetch(base + path))
            base_models.append(baseline_models(config_file))
            base_runs.append(baseline_runs(folder / ".prodml"))
        print(f"\n{'page (' + str(args.rounds) + ' rounds)':<44} {'median':>11}  (min-max)")
        for name, values in times.items():
            print(show(name, values))
        print(f"{'models page, first request (cold cache)':<44} {cold:8.1f} ms")
        print("\nbaselines (the CLI's way of reading the same data)")
        print(show("prodml models -c FILE (store listing)", base_models))
        print(show(f"RunFolder.open on all {len(runs)} runs", base_runs))
        worst = max(statistics.median(v) for v in times.values())
        verdict = "meets" if worst < TARGET_MS else "MISSES"
        print(f"\nslowest page median {worst:.1f} ms — {verdict} the {TARGET_MS} ms target")


if __name__ == "__main__":
    main()
