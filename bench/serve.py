"""Benchmark serving: prodml's model server side by side with the usual alternatives.

    python bench/serve.py            # 8 clients x 10 s per server and round, 3 rounds
    python bench/serve.py --quick    # 8 clients x 4 s, 3 rounds (a smoke run)
    python bench/serve.py --rounds 5 --seconds 15 --skip-mlflow --skip-mlserver

One run, the same Keras model (the quickstart network, trained for one epoch) and the same
one-row payload for every server, all servers up at once, load from a separate process
(``hey`` when installed, else a small asyncio client):

(a) prodml's server in mode local, V1 and V2 (its fast path, the served inference path);
(b) a KServe custom model calling ``model.predict`` per request, as KServe's docs do;
(c) ``mlflow models serve`` of the same model (MLflow in its own virtualenv,
    bench/.mlflow-venv, from bench/requirements-mlflow.txt; skipped with a note if absent);
(d) a KServe model that returns a constant: the ceiling of KServe's HTTP stack here;
(e) a KServe custom model calling a ``tf.function`` with a fixed signature;
(f) MLServer (its own virtualenv, bench/.mlserver-venv, from bench/requirements-mlserver.txt;
    skipped with a note if absent), a custom runtime doing the same NumPy forward pass, V2;
(g) a bare ASGI app on uvicorn: orjson in, the same NumPy forward pass, orjson out, no
    validation at all: the practical limit of a Python server here.

(b), (d), (e) and (g) get prodml's server settings: a listening socket with TCP_NODELAY,
one TensorFlow thread per pool, no access log, no per-request latency log, KServe's logger
at WARNING. Every load run checks the status of every answer (hey's CSV), and a checker
thread sends a few requests with other rows during the run and compares the answers with
the model's in-process predictions (the constant model: with its constant): one wrong or
failed answer fails the run instead of counting. Each server is measured in ``--rounds``
rounds, the order shuffled every round; figures are medians with [min-max] over rounds.
Before each run the script waits (at most 15 s) until the machine is mostly idle, so the
work a slow server still has queued is not counted against the next one.

Then one client, to read latency without queueing: p50 minus the in-process time of the
inference path the server chose is what the server adds. That client is a blocking
keep-alive socket in its own process timed with perf_counter_ns (hey's latencies come in
0.1 ms steps, as coarse as the figure read); its own cost is in every server's figure,
and (g)'s shows the floor. Targets (issue 17): (a) V1 >= 3x
and V2 >= 2x (d) in req/s at 8 clients; (a) V1 >= 0.6x (g); (a) V1 p99 < 5 ms at batch 1;
one-client p50 minus inference <= 0.3 ms. Results go to stdout and bench/.out/serve.json;
nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / ".out" / "serve"
MLFLOW_VENV = HERE / ".mlflow-venv"
MLSERVER_VENV = HERE / ".mlserver-venv"
NAME = "bench"

# The settings prodml's server runs with (prodml/plugins/servers/_model.py), for every
# baseline that is a Python server: the differences measured are then the request paths.
SERVER_SETTINGS = textwrap.dedent(
    """
    import logging
    import os
    import socket

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


    def listening_socket(port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        # accepted connections inherit it (Linux): no Nagle stalls on keep-alive answers
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.listen(2048)
        return sock


    def quiet_logs():
        # as prodml's server (quiet_access_log): uvicorn skips the access line only when
        # the logger has no handler at all
        access = logging.getLogger("uvicorn.access")
        access.handlers.clear()
        access.propagate = False
        access.disabled = True
        logging.getLogger("kserve").setLevel(logging.WARNING)


    def one_tf_thread():
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    """
)

KSERVE_BASELINES = SERVER_SETTINGS + textwrap.dedent(
    '''
    """KServe baselines: (b) model.predict per request, (d) a constant, (e) a tf.function."""
    import asyncio
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
            x = np.array(payload["instances"], dtype=np.float32)
            return {"predictions": self.model.predict(x, verbose=0).tolist()}


    class TfFunction(Model):
        def __init__(self, name, path):
            super().__init__(name)
            self.path = path

        def load(self):
            import keras
            import tensorflow as tf

            model = keras.saving.load_model(self.path)
            n = model.inputs[0].shape[-1]
            self.fn = tf.function(
                lambda x: model(x, training=False),
                input_signature=[tf.TensorSpec([None, n], tf.float32)],
            ).get_concrete_function()
            self.fn(tf.zeros([1, n]))
            self.tf = tf
            self.ready = True
            return True

        def predict(self, payload, headers=None):
            x = self.tf.constant(np.asarray(payload["instances"], dtype=np.float32))
            return {"predictions": self.fn(x).numpy().tolist()}


    class Constant(Model):
        def load(self):
            self.ready = True
            return True

        def predict(self, payload, headers=None):
            return {"predictions": [[0.0]]}


    if __name__ == "__main__":
        kind, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        sys.argv = sys.argv[:1]  # kserve parses sys.argv
        from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
        from kserve.protocol.rest.server import RESTServer

        if kind != "constant":
            one_tf_thread()
        model = {"predict": PredictPerRequest, "tf_function": TfFunction}.get(kind)
        model = model("bench", path) if model else Constant("bench")
        model.load()
        sock = listening_socket(port)
        server = ModelServer(
            http_port=port, workers=1, enable_grpc=False, enable_docs_url=False, enable_latency_logging=False
        )
        server.register_model(model)
        rest = RESTServer(
            FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, port, workers=1
        )
        rest.create_application()
        quiet_logs()
        asyncio.run(rest._server.serve(sockets=[sock]))
    '''
)

BARE_ASGI = SERVER_SETTINGS + textwrap.dedent(
    '''
    """(g) The practical limit: uvicorn, orjson, the NumPy forward pass, nothing else."""
    import asyncio
    import sys

    import numpy as np
    import orjson
    import uvicorn

    sys.path.insert(0, sys.argv[3])
    from numpy_model import load_forward

    forward = load_forward(sys.argv[2])
    HEADERS = [(b"content-type", b"application/json")]


    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] == "GET":
            answer = b"{}"
        else:
            x = np.asarray(orjson.loads(body)["instances"], dtype=np.float32)
            answer = orjson.dumps({"predictions": forward(x)}, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = [*HEADERS, (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


    if __name__ == "__main__":
        sock = listening_socket(int(sys.argv[1]))
        config = uvicorn.Config(app, access_log=False, log_level="warning", lifespan="off")
        asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
    '''
)

# The quickstart network as NumPy arrays: the same math as prodml's fast inference path
# (prodml/plugins/servers/_fastpath.py), importable without TensorFlow (the bare ASGI app
# and MLServer's runtime use it).
NUMPY_MODEL = textwrap.dedent(
    """
    import json

    import numpy as np

    ACTIVATIONS = {"linear": None, "relu": lambda x: np.maximum(x, 0)}


    def load_forward(path):
        with np.load(path + ".npz") as stored:  # an NpzFile reads the zip on every access
            arrays = dict(stored)
        plan = json.load(open(path + ".json"))

        def forward(x):
            for step in plan:
                if step["kind"] == "normalization":
                    x = (x - arrays[step["mean"]]) / arrays[step["scale"]]
                else:
                    x = x @ arrays[step["kernel"]] + arrays[step["bias"]]
                    act = ACTIVATIONS[step["activation"]]
                    if act is not None:
                        x = act(x)
            return x.astype(np.float32, copy=False)

        return forward
    """
)

MLSERVER_RUNTIME = textwrap.dedent(
    '''
    """(f) MLServer custom runtime: the NumPy forward pass behind MLServer's V2 endpoints."""
    import os
    import sys

    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse

    sys.path.insert(0, os.path.dirname(__file__))
    from numpy_model import load_forward


    class NumpyForward(MLModel):
        async def load(self):
            self.forward = load_forward(self.settings.parameters.uri)
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            x = NumpyCodec.decode_input(payload.inputs[0])
            y = self.forward(x.astype("float32"))
            output = NumpyCodec.encode_output("prediction", y)
            return InferenceResponse(model_name=self.name, outputs=[output])
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


class WrongAnswer(RuntimeError):
    """A server answered a benchmark request wrongly (or not at all): the run is invalid."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float = 300) -> None:
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


def post_json(url: str, body: Any, timeout: float = 30) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise WrongAnswer(f"{url} answered {exc.code}: {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise WrongAnswer(f"{url} did not answer: {exc}") from None


# -- what a server must answer ----------------------------------------------------------------


@dataclass
class Contestant:
    """One server and protocol under load, with how to check its answers."""

    label: str
    url: str
    body: bytes
    check: Callable[[], None]
    one_client: bool = False
    #: the server's process (its descendants count too): CPU time per request is read from it
    pid: int | None = None
    runs: list[dict[str, float]] = field(default_factory=list)
    one_client_runs: list[dict[str, float]] = field(default_factory=list)


def numbers(answer: Any) -> list[float]:
    """The predictions of a V1, V2 or MLflow answer as a flat list of floats."""
    if isinstance(answer, dict) and "outputs" in answer:
        return [float(v) for v in _flat(answer["outputs"][0]["data"])]
    if isinstance(answer, dict) and "predictions" in answer:
        answer = answer["predictions"]
    rows = [list(r.values()) if isinstance(r, dict) else r for r in answer]
    return [float(v) for v in _flat(rows)]


def _flat(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [x for item in value for x in _flat(item)]
    return [value]


def expect_close(label: str, got: list[float], want: list[float]) -> None:
    if len(got) != len(want) or any(
        abs(g - w) > 1e-5 + 1e-4 * max(1.0, abs(w)) for g, w in zip(got, want, strict=True)
    ):
        raise WrongAnswer(f"{label}: answered {got[:4]}..., expected {want[:4]}...")


def v1_checker(label: str, url: str, rows: list[list[float]], want: list[float]) -> Callable[[], None]:
    def check() -> None:
        expect_close(label, numbers(post_json(url, {"instances": rows})), want)

    return check


def v2_checker(
    label: str,
    url: str,
    features: list[str],
    rows: list[list[float]],
    want: list[float],
    matrix: bool = False,
) -> Callable[[], None]:
    if matrix:
        body = {"inputs": [{"name": "features", "shape": [len(rows), len(features)], "datatype": "FP32",
                            "data": [v for r in rows for v in r]}]}  # fmt: skip
    else:
        body = {"inputs": [{"name": f, "shape": [len(rows)], "datatype": "FP32", "data": [r[j] for r in rows]}
                           for j, f in enumerate(features)]}  # fmt: skip

    def check() -> None:
        expect_close(label, numbers(post_json(url, body)), want)

    return check


# -- load generation -------------------------------------------------------------------------


def _cpu_busy_idle() -> tuple[int, int]:
    """(busy, idle) jiffies of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, idle


def tree_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid`` and its live descendants (/proc), or None."""
    if pid is None or not os.path.exists(f"/proc/{pid}"):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    used: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state, ppid, ..., utime (12th), stime (13th)
        children.setdefault(int(fields[1]), []).append(int(entry))
        used[int(entry)] = int(fields[11]) + int(fields[12])
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += used.get(current, 0)
        todo.extend(children.get(current, ()))
    return total / tick


def settle(limit: float = 15.0, window: float = 0.5, busy_at_most: float = 0.25) -> float:
    """Wait until the machine is mostly idle: the server measured before may still be working
    off queued requests (a TensorFlow server at 10 req/s has seconds of them), and that CPU
    would be counted against the next server. Returns the seconds waited."""
    if not os.path.exists("/proc/stat"):
        return 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        busy0, idle0 = _cpu_busy_idle()
        time.sleep(window)
        busy1, idle1 = _cpu_busy_idle()
        total = (busy1 - busy0) + (idle1 - idle0)
        if total and (busy1 - busy0) / total <= busy_at_most:
            break
    return time.perf_counter() - started


def run_load(c: Contestant, clients: int, seconds: float) -> dict[str, float]:
    """req/s, p50 and p99 (ms) of POSTing ``c.body`` to ``c.url`` from ``clients`` connections.

    Every answer's status must be 200, and a checker thread compares sampled answers with the
    expected predictions meanwhile; otherwise WrongAnswer.
    """
    settle()
    c.check()  # before: a server that answers wrongly is not measured at all
    stop_checking = threading.Event()
    problems: list[str] = []

    def checker() -> None:
        while not stop_checking.wait(0.25):
            try:
                c.check()
            except WrongAnswer as exc:
                problems.append(str(exc))
                return

    thread = threading.Thread(target=checker, daemon=True)
    thread.start()
    cpu_before = tree_cpu_seconds(c.pid)
    try:
        if clients == 1:
            result = _one_client_exact(c, seconds)
        elif shutil.which("hey"):
            result = _hey(c, clients, seconds)
        else:
            result = asyncio.run(_async_load(c, clients, seconds))
    finally:
        stop_checking.set()
        thread.join()
    cpu_after = tree_cpu_seconds(c.pid)
    if problems:
        raise WrongAnswer(f"{c.label} under load: {problems[0]}")
    c.check()
    if cpu_before is not None and cpu_after is not None and result["requests"]:
        # the checker's few requests are in the CPU time too: a rounding error at these rates
        result["server_cpu_us"] = (cpu_after - cpu_before) / result["requests"] * 1e6
    return result


def _hey(c: Contestant, clients: int, seconds: float) -> dict[str, float]:
    body_file = OUT / "body.json"
    body_file.write_bytes(c.body)
    argv = ["hey", "-z", f"{seconds}s", "-c", str(clients), "-m", "POST", "-T", "application/json"]
    out = subprocess.run(
        [*argv, "-D", str(body_file), "-o", "csv", c.url], capture_output=True, text=True, check=True
    ).stdout
    # -o csv: one line per request (response-time, ..., status-code, offset), so the
    # percentiles are ours and every status is seen
    latencies, offsets, statuses = [], [], {}
    for line in out.splitlines()[1:]:
        fields = line.split(",")
        if len(fields) < 8:
            continue
        latencies.append(float(fields[0]))
        offsets.append(float(fields[7]) + float(fields[0]))
        statuses[fields[6]] = statuses.get(fields[6], 0) + 1
    bad = {s: n for s, n in statuses.items() if s != "200"}
    if bad or not latencies:
        raise WrongAnswer(f"{c.label}: answers other than 200 under load: {bad or 'no answers at all'}")
    return _summary(sorted(latencies), max(offsets), "hey")


# One client, timed to the microsecond: hey writes latencies in 0.1 ms steps, as coarse as
# what is being read. A blocking keep-alive socket in its own process; every answer must be
# 200 and carry the same predictions as the first one (the checker compares those with the
# model's). Only the request-to-last-byte time is timed.
ONE_CLIENT = textwrap.dedent(
    """
    import json
    import socket
    import sys
    import time

    url, body_file, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    host_port, path = url.removeprefix("http://").split("/", 1)
    host, port = host_port.split(":")
    body = open(body_file, "rb").read()
    request = (
        f"POST /{path} HTTP/1.1\\r\\nHost: {host_port}\\r\\nContent-Type: application/json\\r\\n"
        f"Content-Length: {len(body)}\\r\\n\\r\\n"
    ).encode() + body
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies, answers, buffer = [], [], b""
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter_ns()
        sock.sendall(request)
        while True:
            end = buffer.find(b"\\r\\n\\r\\n")
            if end >= 0:
                head = buffer[:end].lower()
                length = int(head.split(b"content-length:", 1)[1].split(b"\\r\\n", 1)[0])
                if len(buffer) >= end + 4 + length:
                    break
            chunk = sock.recv(1 << 16)
            if not chunk:
                sys.exit("the server closed the connection")
            buffer += chunk
        latencies.append(time.perf_counter_ns() - t0)
        if not buffer.startswith(b"HTTP/1.1 200 "):
            sys.exit("answered " + buffer.split(b"\\r\\n", 1)[0].decode())
        answers.append(buffer[end + 4 : end + 4 + length])
        buffer = buffer[end + 4 + length :]
    elapsed = time.perf_counter() - started

    def predictions(raw):
        answer = json.loads(raw)
        if "outputs" in answer:
            return answer["outputs"][0]["data"]
        return answer.get("predictions", answer)

    first = predictions(answers[0])
    wrong = sum(1 for raw in answers if predictions(raw) != first)
    if wrong:
        sys.exit(f"{wrong} of {len(answers)} answers differ from the first one")
    latencies.sort()
    json.dump({"latencies_s": [x / 1e9 for x in latencies], "elapsed": elapsed}, sys.stdout)
    """
)


def _one_client_exact(c: Contestant, seconds: float) -> dict[str, float]:
    script = OUT / "one_client.py"
    script.write_text(ONE_CLIENT)
    body_file = OUT / "body-one-client.json"
    body_file.write_bytes(c.body)
    done = subprocess.run(
        [sys.executable, str(script), c.url, str(body_file), str(seconds)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise WrongAnswer(f"{c.label}, one client: {done.stderr.strip()[-300:]}")
    result = json.loads(done.stdout)
    return _summary(result["latencies_s"], result["elapsed"], "one-client")


async def _async_load(c: Contestant, clients: int, seconds: float) -> dict[str, float]:
    """Fallback load generator: keep-alive HTTP/1.1 connections, one request in flight each."""
    host, port_path = c.url.removeprefix("http://").split(":", 1)
    port, path = port_path.split("/", 1)
    request = (
        f"POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(c.body)}\r\n\r\n"
    ).encode() + c.body
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                status = head.split(b"\r\n", 1)[0].decode()
                raise WrongAnswer(f"{c.label}: answered {status} under load")
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
    }


# -- the model ----------------------------------------------------------------------------------


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


def export_numpy_model(model: Any, path: Path) -> None:
    """The network's weights as .npz plus a .json plan (Normalization and Dense layers only)."""
    import numpy as np

    arrays: dict[str, Any] = {}
    plan: list[dict[str, str]] = []
    for i, layer in enumerate(model.layers):
        kind = type(layer).__name__
        if kind == "InputLayer":
            continue
        if kind == "Normalization":
            arrays[f"mean{i}"] = np.asarray(layer.mean, np.float32)
            arrays[f"scale{i}"] = np.maximum(np.sqrt(np.asarray(layer.variance, np.float32)), 1e-7)
            plan.append({"kind": "normalization", "mean": f"mean{i}", "scale": f"scale{i}"})
        elif kind == "Dense":
            arrays[f"kernel{i}"] = np.asarray(layer.kernel, np.float32)
            arrays[f"bias{i}"] = np.asarray(layer.bias, np.float32)
            activation = layer.activation.__name__
            plan.append(
                {"kind": "dense", "kernel": f"kernel{i}", "bias": f"bias{i}", "activation": activation}
            )
        else:
            raise SystemExit(f"the bench's NumPy model does not know layer {kind}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(f"{path}.npz", **arrays)
    Path(f"{path}.json").write_text(json.dumps(plan))
    (path.parent / "numpy_model.py").write_text(NUMPY_MODEL)


def in_process(bundle: Path, row: list[float], rows: list[list[float]]) -> dict[str, Any]:
    """Reference predictions, and the median ms per one-row call of TF and of the served path."""
    import numpy as np
    import tensorflow as tf

    sys.argv = sys.argv[:1]  # kserve parses sys.argv on import
    from prodml.plugins.servers._model import choose_inference
    from prodml.plugins.trainers.keras import load_bundle

    model, _ = load_bundle(bundle)
    export_numpy_model(model, OUT / "numpy" / "model")
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

    reference = np.asarray(model(np.asarray(rows, dtype=np.float32), training=False))
    return {
        "tf_ms": median_ms(tf_infer),
        "served_ms": median_ms(served),
        "path": path,
        "one_row": [float(v) for v in np.asarray(model(x, training=False)).ravel()],
        "rows": [float(v) for v in reference.ravel()],
    }


# -- the servers ----------------------------------------------------------------------------------


def start_prodml(bundle: Path) -> tuple[Any, Any]:
    from prodml.plugins.servers.kserve import KServeServer, KServeServerConfig
    from prodml.plugins.stores.local import LocalStore, LocalStoreConfig

    store_root = OUT / "store"
    shutil.rmtree(store_root, ignore_errors=True)
    store = LocalStore(LocalStoreConfig(type="local", root=store_root))
    ref = store.push(bundle, NAME)
    server = KServeServer(KServeServerConfig(type="kserve", port=0, state_dir=OUT / "state"))
    return server, server.deploy(ref, store)


def start_kserve_baseline(kind: str, bundle: Path) -> tuple:
    script = OUT / "kserve_baselines.py"
    script.write_text(KSERVE_BASELINES)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(script), kind, str(port), str(bundle / "model.keras")],
        stdout=open(OUT / f"kserve-{kind}.log", "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    url = f"http://127.0.0.1:{port}"
    return proc, url, f"{url}/v2/models/{NAME}/ready"


def start_bare_asgi() -> tuple:
    script = OUT / "bare_asgi.py"
    script.write_text(BARE_ASGI)
    port = free_port()
    numpy_dir = OUT / "numpy"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(port), str(numpy_dir / "model"), str(numpy_dir)],
        stdout=open(OUT / "bare-asgi.log", "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    return proc, url, f"{url}/"


def start_mlflow(bundle: Path) -> tuple | None:
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
    argv = [
        str(MLFLOW_VENV / "bin" / "mlflow"),
        "models",
        "serve",
        "-m",
        str(model_dir),
        "--env-manager",
        "local",
    ]
    proc = subprocess.Popen(
        [*argv, "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        stdout=open(OUT / "mlflow.log", "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**env, "PATH": f"{MLFLOW_VENV / 'bin'}:{os.environ.get('PATH', '')}"},
    )
    url = f"http://127.0.0.1:{port}"
    return proc, url, f"{url}/ping"


def start_mlserver() -> tuple | None:
    mlserver = MLSERVER_VENV / "bin" / "mlserver"
    if not mlserver.exists():
        print(
            f"  (f) skipped: no MLServer virtualenv; create it with\n"
            f"      python -m venv {MLSERVER_VENV} &&\n"
            f"      {MLSERVER_VENV}/bin/pip install -r {HERE}/requirements-mlserver.txt"
        )
        return None
    folder = OUT / "mlserver"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "runtime.py").write_text(MLSERVER_RUNTIME)
    (folder / "numpy_model.py").write_text(NUMPY_MODEL)
    port = free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 0,
        "debug": False,
        "logging_level": "WARNING",
        "metrics_endpoint": None,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": NAME,
        "implementation": "runtime.NumpyForward",
        "parameters": {"uri": str(OUT / "numpy" / "model")},
    }
    (folder / "model-settings.json").write_text(json.dumps(model))
    proc = subprocess.Popen(
        [str(mlserver), "start", str(folder)],
        cwd=str(folder),
        stdout=open(OUT / "mlserver.log", "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(folder)},
    )
    url = f"http://127.0.0.1:{port}"
    return proc, url, f"{url}/v2/models/{NAME}/ready"


# -- main -----------------------------------------------------------------------------------


def spread(values: list[float], fmt: str = ".0f") -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 s per server and round instead of 10")
    parser.add_argument("--seconds", type=float, default=None, help="load duration per server and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each in a new shuffled order (>= 3)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument("--seed", type=int, default=None, help="seed of the shuffles (default: random)")
    args = parser.parse_args()
    seconds = args.seconds or (4 if args.quick else 10)
    one_client_seconds = max(3.0, seconds / 2)
    rounds = max(3, args.rounds)
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    shuffler = random.Random(args.seed)

    print(
        f"serve benchmark: {args.clients} clients x {seconds:.0f} s per server, {rounds} shuffled rounds, "
        f"load from {'hey' if shutil.which('hey') else 'an asyncio client'}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the start",
        flush=True,
    )
    bundle = train_bundle()
    meta = json.loads((bundle / "prodml.json").read_text())
    features = [f["name"] for f in meta["features"]]
    row = [0.25, -0.5, 0.75, 0.1, -0.3][: len(features)]
    sample = [[round(random.Random(i).uniform(-2, 2), 3) for _ in features] for i in range(6)]
    ref = in_process(bundle, row, sample)
    v1_body = json.dumps({"instances": [row]}).encode()
    v2_body = json.dumps(
        {
            "inputs": [
                {"name": f, "shape": [1], "datatype": "FP32", "data": [v]}
                for f, v in zip(features, row, strict=True)
            ]
        }
    ).encode()

    processes: list[subprocess.Popen] = []
    contestants: list[Contestant] = []
    prodml_server = None
    try:
        prodml_server, endpoint = start_prodml(bundle)
        base = endpoint.url
        pid = int(endpoint.details["pid"]) if endpoint.details.get("pid") else None
        v1, v2 = f"{base}/v1/models/{NAME}:predict", f"{base}/v2/models/{NAME}/infer"
        contestants.append(
            Contestant("(a) prodml V1", v1, v1_body, v1_checker("(a) V1", v1, sample, ref["rows"]), True, pid)
        )
        contestants.append(
            Contestant(
                "(a) prodml V2",
                v2,
                v2_body,
                v2_checker("(a) V2", v2, features, sample, ref["rows"]),
                True,
                pid,
            )
        )
        starting: list[tuple[str, tuple]] = [
            ("(b) kserve model.predict", start_kserve_baseline("predict", bundle)),
            ("(d) kserve constant", start_kserve_baseline("constant", bundle)),
            ("(e) kserve tf.function", start_kserve_baseline("tf_function", bundle)),
            ("(g) bare ASGI (limit)", start_bare_asgi()),
        ]
        if not args.skip_mlflow and (started := start_mlflow(bundle)):
            starting.append(("(c) mlflow models serve", started))
        if not args.skip_mlserver and (started := start_mlserver()):
            starting.append(("(f) mlserver V2", started))
        for label, (proc, url, ready) in starting:
            processes.append(proc)
            try:
                wait_http(ready, proc)
            except RuntimeError as exc:
                print(f"  {label} skipped: {exc} (see the logs in {OUT})")
                continue
            if label.startswith("(f)"):
                target = f"{url}/v2/models/{NAME}/infer"
                check = v2_checker(label, target, features, sample, ref["rows"], matrix=True)
                body = json.dumps({"inputs": [{"name": "features", "shape": [1, len(row)], "datatype": "FP32",
                                               "data": row}]}).encode()  # fmt: skip
            else:
                target = (
                    f"{url}/invocations" if label.startswith("(c)") else f"{url}/v1/models/{NAME}:predict"
                )
                if label.startswith("(g)"):
                    target = f"{url}/predict"
                want = [0.0] * len(sample) if label.startswith("(d)") else ref["rows"]
                if label.startswith("(d)"):
                    check = v1_checker(label, target, sample, [0.0])  # the constant answers one row
                else:
                    check = v1_checker(label, target, sample, want)
                body = v1_body
            one = label.startswith(("(d)", "(e)", "(g)"))
            contestants.append(Contestant(label, target, body, check, one_client=one, pid=proc.pid))

        for contestant in contestants:  # warm-up, untimed (first connections, lazy imports)
            run_load(contestant, args.clients, 2)
        for number in range(1, rounds + 1):
            order = contestants[:]
            shuffler.shuffle(order)
            print(
                f"round {number}/{rounds}: {', '.join(c.label.split(' ', 1)[0] for c in order)}", flush=True
            )
            for contestant in order:
                contestant.runs.append(run_load(contestant, args.clients, seconds))
            singles = [c for c in order if c.one_client]
            for contestant in singles:
                contestant.one_client_runs.append(run_load(contestant, 1, one_client_seconds))
    finally:
        if prodml_server is not None:
            prodml_server.undeploy(NAME)
        for proc in processes:
            stop(proc)

    by_label = {c.label: c for c in contestants}
    a_v1 = statistics.median(r["rps"] for r in by_label["(a) prodml V1"].runs)
    print(f"\n{args.clients} clients, batch 1: median [min-max] over {rounds} rounds")
    print(
        f"{'server':<26} {'req/s':>18} {'p50 ms':>18} {'p99 ms':>18} {'(a) V1 / this':>14} "
        f"{'server CPU us/req':>20}"
    )
    for c in sorted(contestants, key=lambda c: c.label):
        rps = [r["rps"] for r in c.runs]
        cpu = [r["server_cpu_us"] for r in c.runs if "server_cpu_us" in r]
        print(
            f"{c.label:<26} {spread(rps):>18} {spread([r['p50_ms'] for r in c.runs], '.2f'):>18} "
            f"{spread([r['p99_ms'] for r in c.runs], '.2f'):>18} {a_v1 / statistics.median(rps):>13.2f}x "
            f"{spread(cpu) if cpu else '-':>20}"
        )
    print(
        "  (server CPU us/req: the server's processes' CPU time over the run / answers; steadier "
        "than req/s on a shared machine)"
    )

    def rps(label: str) -> float | None:
        c = by_label.get(label)
        return statistics.median(r["rps"] for r in c.runs) if c else None

    a_v2, b, d, g = (
        rps("(a) prodml V2"),
        rps("(b) kserve model.predict"),
        rps("(d) kserve constant"),
        rps("(g) bare ASGI (limit)"),
    )
    p99_v1 = statistics.median(r["p99_ms"] for r in by_label["(a) prodml V1"].runs)
    print("\ntargets (medians):")

    def cpu(label: str) -> float | None:
        c = by_label.get(label)
        values = [r["server_cpu_us"] for r in c.runs if "server_cpu_us" in r] if c else []
        return statistics.median(values) if values else None

    def by_cpu(label: str, other: str) -> str:
        mine, theirs = cpu(label), cpu(other)
        return f"; by server CPU per answer {theirs / mine:.2f}x" if mine and theirs else ""

    v1_label, v2_label, d_label, g_label = (
        "(a) prodml V1",
        "(a) prodml V2",
        "(d) kserve constant",
        "(g) bare ASGI (limit)",
    )
    if d:
        print(f"  (a) V1 / (d) constant = {a_v1 / d:.2f}x{by_cpu(v1_label, d_label)}  (target >= 3x)")
        print(f"  (a) V2 / (d) constant = {a_v2 / d:.2f}x{by_cpu(v2_label, d_label)}  (target >= 2x)")
    if g:
        print(f"  (a) V1 / (g) bare ASGI = {a_v1 / g:.2f}x{by_cpu(v1_label, g_label)}  (target >= 0.6x)")
    if b:
        print(f"  (a) V1 / (b) model.predict = {a_v1 / b:.1f}x  (target >= 25x)")
    if c_ := rps("(c) mlflow models serve"):
        print(f"  (a) V1 / (c) mlflow = {a_v1 / c_:.1f}x  (target >= 25x)")
    print(f"  (a) V1 p99 at batch 1, {args.clients} clients: {p99_v1:.2f} ms  (target < 5 ms)")
    print("\none client (no queueing), median [min-max] over rounds:")
    print(
        f"  in-process, 1 row: TF concrete function {ref['tf_ms']:.3f} ms; "
        f"served path {ref['served_ms']:.3f} ms"
    )
    print(f"  (served path: {ref['path']})")
    for c in contestants:
        if c.one_client_runs:
            p50 = [r["p50_ms"] for r in c.one_client_runs]
            extra = ""
            if c.label.startswith(("(a)", "(g)")):  # (g) runs the same NumPy forward pass
                added = [p - ref["served_ms"] for p in p50]
                target = " (target <= 0.3 ms)" if c.label.startswith("(a)") else " (the floor)"
                extra = f"  p50 - inference {spread(added, '.3f')} ms{target}"
            print(f"  {c.label:<26} p50 {spread(p50, '.3f')} ms{extra}")
    report = {
        "clients": args.clients,
        "seconds": seconds,
        "rounds": rounds,
        "results": {c.label: c.runs for c in contestants},
        "one_client": {c.label: c.one_client_runs for c in contestants if c.one_client_runs},
        "in_process_inference_ms": ref["served_ms"],
        "in_process_tf_function_ms": ref["tf_ms"],
        "inference_path": ref["path"],
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
    }
    (OUT.parent / "serve.json").write_text(json.dumps(report, indent=2))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
