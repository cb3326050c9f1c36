"""Benchmark a version change under load: failed requests, handover vs stop-and-start.

    python bench/handover.py               # 3 rounds, hey with and without keep-alive
    python bench/handover.py --rounds 1    # a smoke run

One local server (kserve, mode local) of a tiny model serves under load from ``hey``
(4 clients, a one-row V1 request) while its version changes, two ways:

* ``restart``: what the first wave did when a model was deployed again: stop the server,
  start the new version (``undeploy`` + ``deploy``);
* ``handover``: ``ModelServer.update``: the new version loads beside the old one on the
  same port (SO_REUSEPORT, connections steered to it), then the old one drains and stops.

Each is measured with keep-alive connections (hey's default) and with a new connection per
request (``-disable-keepalive``), the order shuffled every round. Reported per way and
client mode: failed requests (non-200 answers and connection errors, from hey's summary)
out of all requests, and the seconds the change took; medians with [min-max] over rounds.
Results go to stdout and bench/.out/handover.json; nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / ".out"
BODY = json.dumps({"instances": [[0.5, -1.25, 3.0]]})


def hey_start(url: str, keepalive: bool, body_file: Path) -> subprocess.Popen:
    args = ["hey", "-z", "600s", "-c", "4", "-m", "POST", "-T", "application/json", "-D", str(body_file)]
    if not keepalive:
        args.append("-disable-keepalive")
    return subprocess.Popen([*args, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def hey_stop(proc: subprocess.Popen) -> tuple[int, int, str]:
    """Stop hey (SIGINT makes it print its summary); (requests, failed, error lines)."""
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = (
        re.findall(r"^\s+\[(\d+)\]\s+(.*)$", out.split("Error distribution:", 1)[1], re.M)
        if ("Error distribution:" in out)
        else []
    )
    failed = sum(n for c, n in codes.items() if c != 200) + sum(int(n) for n, _ in errors)
    total = sum(codes.values()) + sum(int(n) for n, _ in errors)
    return total, failed, "; ".join(f"{n}x {text.strip()[:80]}" for n, text in errors)


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):g} [{min(values):g}-{max(values):g}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of load before and after a change")
    args = parser.parse_args()
    if shutil.which("hey") is None:
        print("hey is not installed (Debian: apt-get install hey)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="prodml-handover-"))
    os.environ["PRODML_STATE_HOME"] = str(work / "state")  # never the user's ~/.cache
    from prodml.plugins.servers.kserve import KServeServer, KServeServerConfig
    from prodml.plugins.stores.local import LocalStore, LocalStoreConfig
    from prodml.testing.servers import train_tiny_bundle

    store = LocalStore(LocalStoreConfig(type="local", root=work / "store"))
    refs = [
        store.push(train_tiny_bundle(work / f"v{i}" / "bundle", model_name="tiny", epochs=i), "tiny")
        for i in (1, 2)
    ]
    from prodml.plugins.servers._local import free_port

    # a fixed port: a restart must come back where the clients send their requests
    config = KServeServerConfig.model_validate(
        {"type": "kserve", "mode": "local", "port": free_port("127.0.0.1")},
        context={"base_dir": work / "project"},
    )
    server = KServeServer(config)
    body_file = work / "body.json"
    body_file.write_text(BODY)
    endpoint = server.deploy(refs[0], store)
    url = f"{endpoint.url}/v1/models/tiny:predict"
    results: dict[str, dict[str, list[float]]] = {}
    notes: list[str] = []
    serving = 0
    try:
        for round_no in range(args.rounds):
            trials = [(way, keepalive) for way in ("restart", "handover") for keepalive in (True, False)]
            random.shuffle(trials)
            for way, keepalive in trials:
                target = refs[1 - serving]
                load = hey_start(url, keepalive, body_file)
                time.sleep(args.settle)
                started = time.monotonic()
                if way == "restart":
                    server.undeploy("tiny")
                    server.deploy(target, store)
                else:
                    server.update(target, store)
                took = time.monotonic() - started
                time.sleep(args.settle)
                total, failed, errors = hey_stop(load)
                serving = 1 - serving
                key = f"{way}, {'keep-alive' if keepalive else 'new connection per request'}"
                row = results.setdefault(key, {"failed": [], "requests": [], "seconds": []})
                row["failed"].append(failed)
                row["requests"].append(total)
                row["seconds"].append(round(took, 1))
                if errors:
                    notes.append(f"round {round_no + 1}, {key}: {errors}")
                print(
                    f"round {round_no + 1}: {key:<40} failed {failed:>5} of {total:>6}  change {took:5.1f}s"
                )
    finally:
        server.undeploy("tiny")
    print()
    print(f"{'way, clients':<42} {'failed requests':>18} {'requests':>22} {'change (s)':>20}")
    for key, row in sorted(results.items()):
        failed, requests, seconds = (summary(row[k]) for k in ("failed", "requests", "seconds"))
        print(f"{key:<42} {failed:>18} {requests:>22} {seconds:>20}")
    for note in notes:
        print("  " + note)
    OUT.mkdir(exist_ok=True)
    (OUT / "handover.json").write_text(json.dumps({"results": results, "notes": notes}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
