"""Benchmark serving: prodml's KServe server side by side with the usual alternatives.

    python bench/serve.py            # 8 clients x 15 s per server (about 3 minutes)
    python bench/serve.py --quick    # 8 clients x 4 s, a smoke run
    python bench/serve.py --skip-mlflow

One run, the same Keras model (the quickstart network, trained for one epoch) and the same
one-row payload for every server, load from a separate process (``hey`` when installed,
else a small asyncio client):

(a) prodml ``kserve`` server in mode local, V1 and V2 (compiled concrete function);
(b) a KServe custom model calling ``model.predict`` per request, as KServe's custom-model
    docs do;
(c) ``mlflow models serve`` of the same model (MLflow in its own virtualenv,
    bench/.mlflow-venv, from bench/requirements-mlflow.txt; skipped with a note if absent);
(d) a KServe model that returns a constant: the ceiling of KServe's HTTP stack here.

(b) and (d) run KServe's ModelServer with the same settings as (a) (no access log, no
per-request latency log), so the differences are the model path. Then one client, to read
latency without queueing: p50 minus the in-process inference time of the compiled function
is what the server adds. Targets (issue 6): (a) >= 25x (b) and (c); (a) >= 0.6x (d); p99 under
10 ms at batch 1. Results go to stdout and bench/.out/serve.json; nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / ".out" / "serve"
MLFLOW_VENV = HERE / ".mlflow-venv"
NAME = "bench"

BASELINE_SERVER = textwrap.dedent(
    '''
    """KServe baselines: (b) model.predict per request, (d) a constant answer."""
    import sys

    import numpy as np
    from kserve import Model, ModelServer


    class PredictPerRequest(Model):
        def __init__(self, name, path):
            super().__init__(name)
            self.path = path

        def load(self):
            import keras

            self.model = keras.saving.load_model(self.path)
            self.ready = True
            return True

        def predict(self, payload, headers=None):
            return {"predictions": self.model.predict(np.array(payload["instances"]), verbose=0).tolist()}


    class Constant(Model):
        def load(self):
            self.ready = True
            return True

        def predict(self, payload, headers=None):
            return {"predictions": [[0.0]]}


    if __name__ == "__main__":
        kind, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        sys.argv = sys.argv[:1]
        import logging

        model = PredictPerRequest("bench", path) if kind == "predict" else Constant("bench")
        model.load()
        server = ModelServer(http_port=port, workers=1, enable_grpc=False, enable_latency_logging=False)
        logging.getLogger("uvicorn.access").disabled = True
        server.start([model])
    '''
)

MLFLOW_SAVE = textwrap.dedent(
    """
    import sys

    import keras
    import mlflow.tensorflow

    model = keras.saving.load_model(sys.argv[1])
    mlflow.tensorflow.save_model(model, sys.argv[2])
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float = 240) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- load generation -----------------------------------------------------------------------


def run_load(url: str, body: bytes, clients: int, seconds: float) -> dict[str, float]:
    """req/s, p50 and p99 (ms) of POSTing ``body`` to ``url`` from ``clients`` connections."""
    body_file = OUT / "body.json"
    body_file.write_bytes(body)
    hey = shutil.which("hey")
    if hey:
        # -o csv: one line per request, so percentiles are ours even for a handful of requests
        started = time.perf_counter()
        out = subprocess.run(
            [
                hey,
                "-z",
                f"{seconds}s",
                "-c",
                str(clients),
                "-m",
                "POST",
                "-T",
                "application/json",
                "-D",
                str(body_file),
                "-o",
                "csv",
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        elapsed = time.perf_counter() - started
        latencies, errors = [], 0
        for line in out.splitlines()[1:]:
            fields = line.split(",")
            if len(fields) < 8:
                continue
            if fields[6] != "200":
                errors += 1
            latencies.append(float(fields[0]))
        if errors:
            print(f"    warning: {errors} non-200 answers from {url}", file=sys.stderr)
        if not latencies:
            raise RuntimeError(f"no answers from {url}")
        duration = max(float(line.split(",")[7]) for line in out.splitlines()[1:] if line.count(",") >= 7)
        return _summary(sorted(latencies), min(elapsed, max(duration, seconds)), "hey")
    return asyncio.run(_async_load(url, body, clients, seconds))


async def _async_load(url: str, body: bytes, clients: int, seconds: float) -> dict[str, float]:
    """Fallback load generator: keep-alive HTTP/1.1 connections, one request in flight each."""
    host, port_path = url.removeprefix("http://").split(":", 1)
    port, path = port_path.split("/", 1)
    request = (
        f"POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return _summary(sorted(latencies), time.perf_counter() - started, "asyncio")


def _summary(latencies: list[float], elapsed: float, tool: str) -> dict[str, Any]:
    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "requests": len(latencies),
        "tool": tool,
    }


# -- the servers ----------------------------------------------------------------------------


def train_bundle() -> Path:
    import pandas as pd

    from prodml.core.bundle import frame_fingerprint
    from prodml.core.interfaces import DatasetSchema, TrainSpec
    from prodml.plugins.trainers.keras import KerasTrainer, KerasTrainerConfig

    bundle = OUT / "bundle"
    if bundle.is_dir():
        shutil.rmtree(bundle)
    frame = pd.read_csv(ROOT / "examples" / "quickstart" / "data" / "train.csv").head(500)
    # the quickstart's own network, so the model is the one a user serves
    columns = list(frame.columns)
    config = KerasTrainerConfig(
        type="keras", model=f"{ROOT}/examples/quickstart/model.py:build_model", epochs=1, seed=1
    )
    spec = TrainSpec(
        model_name=NAME,
        schema=DatasetSchema(
            feature_names=tuple(columns[:-1]),
            label=columns[-1],
            rows=len(frame),
            sha256=frame_fingerprint(frame),
        ),
    )
    KerasTrainer(config).train(frame, spec, bundle)
    return bundle


def in_process_inference_ms(bundle: Path, row: list[float]) -> tuple[float, float, str]:
    """Median ms per one-row call in this process: the compiled TF function, and the path the
    server chose for this model (the same choice ``_model.choose_inference`` makes at load)."""
    import numpy as np
    import tensorflow as tf

    sys.argv = sys.argv[:1]  # kserve parses sys.argv on import
    from prodml.plugins.servers._model import choose_inference
    from prodml.plugins.trainers.keras import load_bundle

    model, _ = load_bundle(bundle)
    fn = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, len(row)], tf.float32)]
    ).get_concrete_function()

    def tf_infer(m: np.ndarray) -> np.ndarray:
        return fn(tf.constant(m)).numpy()

    served, path = choose_inference(model, tf_infer, len(row))
    x = np.asarray([row], dtype=np.float32)

    def median_ms(f: Any) -> float:
        for _ in range(200):
            f(x)
        times = []
        for _ in range(2000):
            start = time.perf_counter()
            f(x)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    return median_ms(tf_infer), median_ms(served), path


def start_prodml(bundle: Path) -> tuple[Any, Any]:
    from prodml.plugins.servers.kserve import KServeServer, KServeServerConfig
    from prodml.plugins.stores.local import LocalStore, LocalStoreConfig

    store_root = OUT / "store"
    shutil.rmtree(store_root, ignore_errors=True)
    store = LocalStore(LocalStoreConfig(type="local", root=store_root))
    ref = store.push(bundle, NAME)
    server = KServeServer(KServeServerConfig(type="kserve", port=0, state_dir=OUT / "state"))
    return server, server.deploy(ref, store)


def start_baseline(kind: str, bundle: Path) -> tuple[subprocess.Popen, str]:
    script = OUT / "baseline_server.py"
    script.write_text(BASELINE_SERVER)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), kind, str(port), str(bundle / "model.keras")],
        stdout=open(OUT / f"{kind}.log", "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/models/{NAME}/ready", proc)
    return proc, f"{url}/v1/models/{NAME}:predict"


def start_mlflow(bundle: Path) -> tuple[subprocess.Popen, str] | None:
    python = MLFLOW_VENV / "bin" / "python"
    if not python.exists():
        print(
            f"  (c) skipped: no MLflow virtualenv; create it with\n"
            f"      python -m venv {MLFLOW_VENV} &&\n"
            f"      {MLFLOW_VENV}/bin/pip install -r {HERE}/requirements-mlflow.txt"
        )
        return None
    model_dir = OUT / "mlflow-model"
    shutil.rmtree(model_dir, ignore_errors=True)
    save = OUT / "mlflow_save.py"
    save.write_text(MLFLOW_SAVE)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_TRACKING_URI": f"file://{OUT}/mlruns"}
    subprocess.run(
        [str(python), str(save), str(bundle / "model.keras"), str(model_dir)],
        check=True,
        env=env,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            str(MLFLOW_VENV / "bin" / "mlflow"),
            "models",
            "serve",
            "-m",
            str(model_dir),
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ],
        stdout=open(OUT / "mlflow.log", "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**env, "PATH": f"{MLFLOW_VENV / 'bin'}:{os.environ.get('PATH', '')}"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/ping", proc)
    return proc, f"{url}/invocations"


# -- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 s per server instead of 15")
    parser.add_argument("--seconds", type=float, default=None, help="load duration per server")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--skip-mlflow", action="store_true")
    args = parser.parse_args()
    seconds = args.seconds or (4 if args.quick else 15)
    one_client_seconds = max(3.0, seconds / 3)
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    print(
        f"serve benchmark: {args.clients} clients x {seconds:.0f} s per server, load from "
        f"{'hey' if shutil.which('hey') else 'an asyncio client'}"
    )
    bundle = train_bundle()
    meta = json.loads((bundle / "prodml.json").read_text())
    features = [f["name"] for f in meta["features"]]
    row = [0.25, -0.5, 0.75, 0.1, -0.3][: len(features)]
    v1_body = json.dumps({"instances": [row]}).encode()
    v2_body = json.dumps(
        {
            "inputs": [
                {"name": f, "shape": [1], "datatype": "FP32", "data": [v]}
                for f, v in zip(features, row, strict=True)
            ]
        }
    ).encode()
    tf_ms, inference_ms, inference_path = in_process_inference_ms(bundle, row)

    results: dict[str, dict[str, float]] = {}
    server, endpoint = start_prodml(bundle)
    try:
        v1_url = f"{endpoint.url}/v1/models/{NAME}:predict"
        v2_url = f"{endpoint.url}/v2/models/{NAME}/infer"
        run_load(v1_url, v1_body, args.clients, 2)  # warm-up
        results["(a) prodml kserve V1"] = run_load(v1_url, v1_body, args.clients, seconds)
        results["(a) prodml kserve V2"] = run_load(v2_url, v2_body, args.clients, seconds)
        one_v1 = run_load(v1_url, v1_body, 1, one_client_seconds)
        one_v2 = run_load(v2_url, v2_body, 1, one_client_seconds)
    finally:
        server.undeploy(NAME)
    for kind, label in (("predict", "(b) kserve model.predict"), ("constant", "(d) kserve constant")):
        proc, url = start_baseline(kind, bundle)
        try:
            run_load(url, v1_body, args.clients, 2)
            results[label] = run_load(url, v1_body, args.clients, seconds)
            if kind == "constant":
                one_constant = run_load(url, v1_body, 1, one_client_seconds)
        finally:
            stop(proc)
    if not args.skip_mlflow:
        started = start_mlflow(bundle)
        if started:
            proc, url = started
            try:
                run_load(url, v1_body, args.clients, 2)
                results["(c) mlflow models serve"] = run_load(url, v1_body, args.clients, seconds)
            finally:
                stop(proc)

    a = results["(a) prodml kserve V1"]["rps"]
    print(f"\n{'server':<28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'(a) V1 / this':>14}")
    for label, r in results.items():
        print(f"{label:<28} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {a / r['rps']:>13.2f}x")
    print("\ntargets:")
    b = results["(b) kserve model.predict"]["rps"]
    d = results["(d) kserve constant"]["rps"]
    print(f"  (a)/(b) = {a / b:.1f}x  (target >= 25x)")
    if "(c) mlflow models serve" in results:
        print(f"  (a)/(c) = {a / results['(c) mlflow models serve']['rps']:.1f}x  (target >= 25x)")
    print(f"  (a)/(d) = {a / d:.2f}x  (target >= 0.6x)")
    p99_v1 = results["(a) prodml kserve V1"]["p99_ms"]
    print(
        f"  (a) p99 at batch 1, {args.clients} clients: V1 {p99_v1:.2f} ms, "
        f"V2 {results['(a) prodml kserve V2']['p99_ms']:.2f} ms  (target < 10 ms)"
    )
    print("\none client (no queueing):")
    print(f"  in-process, 1 row: TF concrete function {tf_ms:.3f} ms; served path {inference_ms:.3f} ms")
    print(f"  (served path: {inference_path})")
    for label, r in (("(a) V1", one_v1), ("(a) V2", one_v2), ("(d) constant", one_constant)):
        print(
            f"  {label:<13} p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  "
            f"p50 - inference {r['p50_ms'] - inference_ms:.2f} ms"
        )
    report = {
        "clients": args.clients,
        "seconds": seconds,
        "results": results,
        "one_client": {"a_v1": one_v1, "a_v2": one_v2, "d_constant": one_constant},
        "in_process_inference_ms": inference_ms,
        "in_process_tf_function_ms": tf_ms,
        "inference_path": inference_path,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    (OUT.parent / "serve.json").write_text(json.dumps(report, indent=2))
    print(
        f"\nload average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
