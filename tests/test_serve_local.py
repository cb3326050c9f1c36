"""The kserve server in mode local: a real KServe ModelServer process on a free port, real HTTP."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prodml.core.interfaces import ModelRef
from prodml.plugins.servers import client
from prodml.testing.sdk import needs_sdk
from prodml.testing.servers import ModelServerConformance, in_process_predictions, train_tiny_bundle

needs_sdk("tensorflow", extra="tensorflow")
needs_sdk("kserve", extra="kserve")

pytestmark = [pytest.mark.slow, pytest.mark.kserve]

NAME = "tiny"
FEATURES = ["x0", "x1", "x2"]
LIMIT = 64 * 1024
FAST_PATH_ENV = "PRODML_SERVER_FAST_PATH"


class TestKServeLocal(ModelServerConformance):
    @pytest.fixture
    def backend_config(self, tmp_path: Path) -> dict[str, Any]:
        return {"type": "kserve", "mode": "local", "port": 0, "state_dir": str(tmp_path / "serving")}


# -- one server for the request tests -----------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle", model_name=NAME)


@pytest.fixture(scope="module")
def store_and_ref(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ModelRef]:
    from prodml.plugins.stores.local import LocalStore, LocalStoreConfig

    store = LocalStore(LocalStoreConfig(type="local", root=tmp_path_factory.mktemp("store")))
    return store, store.push(bundle, NAME)


@pytest.fixture(scope="module", params=["fast path", "kserve path"])
def server(
    request: pytest.FixtureRequest,
    store_and_ref: tuple[Any, ModelRef],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    """The served model, inference answered by prodml's fast path or by KServe's app."""
    from prodml.plugins.servers.kserve import KServeServer, KServeServerConfig

    config = KServeServerConfig(
        type="kserve", port=0, max_request_bytes=LIMIT, state_dir=tmp_path_factory.mktemp("state")
    )
    backend = KServeServer(config)
    store, ref = store_and_ref
    saved = os.environ.get(FAST_PATH_ENV)
    os.environ[FAST_PATH_ENV] = "1" if request.param == "fast path" else "0"  # read by the server process
    try:
        endpoint = backend.deploy(ref, store)
    finally:
        if saved is None:
            os.environ.pop(FAST_PATH_ENV, None)
        else:
            os.environ[FAST_PATH_ENV] = saved
    try:
        yield endpoint
    finally:
        backend.undeploy(NAME)


def send(
    url: str, path: str, body: bytes | str | None = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    """A raw HTTP request (any body, any content type): (status, decoded JSON or text)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        data = body.encode() if isinstance(body, str) else body
        headers = {"Content-Type": content_type} if data is not None else {}
        conn.request("POST" if data is not None else "GET", path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw.decode(errors="replace")


def assert_healthy(url: str) -> None:
    assert send(url, "/v2/health/ready") == (200, {"ready": True})
    assert send(url, f"/v2/models/{NAME}/ready")[0] == 200


ROWS = [[0.5, -1.25, 3.0], [0.0, 0.0, 0.0], [-2.0, 1.0, 0.125]]


# -- round trips ----------------------------------------------------------------------------


def test_v1_lists_and_objects_match_in_process_predictions(server: Any, bundle: Path) -> None:
    expected = in_process_predictions(bundle, ROWS)
    by_list = client.predictions(client.predict(server.url, NAME, ROWS))
    objects = [dict(zip(FEATURES, row, strict=True)) for row in ROWS]
    by_object = client.predictions(client.predict(server.url, NAME, objects))
    np.testing.assert_allclose(np.asarray(by_list, dtype=np.float32), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(by_object, dtype=np.float32), expected, rtol=1e-5, atol=1e-6)


def test_v2_named_inputs_and_matrix_input_match(server: Any, bundle: Path) -> None:
    expected = in_process_predictions(bundle, ROWS)
    answer = client.predict(server.url, NAME, ROWS, protocol="v2")
    output = answer["outputs"][0]
    assert output["name"] == "prediction" and output["datatype"] == "FP32"
    assert output["shape"] == [3, 1]
    assert answer["model_version"] == server.version
    np.testing.assert_allclose(np.asarray(client.predictions(answer), dtype=np.float32), expected, rtol=1e-5)
    for datatype in ("FP32", "FP64"):
        matrix = {"inputs": [{"name": "features", "shape": [3, 3], "datatype": datatype, "data": ROWS}]}
        status, body = send(server.url, f"/v2/models/{NAME}/infer", json.dumps(matrix))
        assert status == 200, body
        np.testing.assert_allclose(
            np.asarray(client.predictions(body), dtype=np.float32), expected, rtol=1e-5
        )


def test_v2_integer_inputs_are_accepted(server: Any, bundle: Path) -> None:
    rows = [[1, 2, 3], [-4, 0, 7]]
    for datatype in ("INT32", "INT64"):
        inputs = [
            {"name": f, "shape": [2], "datatype": datatype, "data": [r[i] for r in rows]}
            for i, f in enumerate(FEATURES)
        ]
        status, body = send(server.url, f"/v2/models/{NAME}/infer", json.dumps({"inputs": inputs}))
        assert status == 200, body
        got = np.asarray(client.predictions(body), dtype=np.float32)
        np.testing.assert_allclose(got, in_process_predictions(bundle, rows), rtol=1e-5)


def test_a_batch_is_predicted_in_one_request(server: Any, bundle: Path) -> None:
    rows = np.random.default_rng(3).normal(size=(500, 3)).round(4).tolist()
    got = np.asarray(client.predictions(client.predict(server.url, NAME, rows)), dtype=np.float32)
    assert got.shape == (500, 1)
    np.testing.assert_allclose(got, in_process_predictions(bundle, rows), rtol=1e-4, atol=1e-5)


def test_v2_metadata_lists_the_features(server: Any) -> None:
    meta = client.metadata(server.url, NAME)
    assert [i["name"] for i in meta["inputs"]] == FEATURES
    assert {i["datatype"] for i in meta["inputs"]} == {"FP32"}
    assert meta["outputs"] == [{"name": "prediction", "datatype": "FP32", "shape": [-1, 1]}]


def test_health_endpoints(server: Any) -> None:
    assert send(server.url, "/v2/health/live") == (200, {"live": True})
    assert_healthy(server.url)
    assert send(server.url, f"/v1/models/{NAME}")[1] == {"name": NAME, "ready": True}


# -- bad requests: 4xx with a reason, and the server keeps serving ----------------------------

V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"


def _v2(*inputs: dict) -> str:
    return json.dumps({"inputs": list(inputs)})


BAD_REQUESTS = [
    ("v1 malformed json", V1, '{"instances": [[1, 2,', 400, "JSON"),
    ("v2 malformed json", V2, '{"inputs": [{"name"', 400, "JSON"),
    ("v1 not an object", V1, "[[1, 2, 3]]", 400, "JSON object"),
    ("v1 no instances", V1, '{"rows": [[1, 2, 3]]}', 400, '"instances"'),
    ("v1 instances not a list", V1, '{"instances": 3}', 400, "must be a list"),
    ("v1 empty instances", V1, '{"instances": []}', 400, "empty"),
    ("v1 too few features", V1, '{"instances": [[1, 2]]}', 400, "3 features"),
    ("v1 too many features", V1, '{"instances": [[1, 2, 3, 4]]}', 400, "has 4 values"),
    ("v1 ragged rows", V1, '{"instances": [[1, 2, 3], [1, 2]]}', 400, "instances[1] has 2 values"),
    ("v1 string value", V1, '{"instances": [[1, "2", 3]]}', 400, "a string"),
    ("v1 boolean value", V1, '{"instances": [[1, true, 3]]}', 400, "boolean"),
    ("v1 null value", V1, '{"instances": [[1, null, 3]]}', 400, "null"),
    ("v1 nested value", V1, '{"instances": [[1, [2], 3]]}', 400, "a list"),
    ("v1 NaN literal", V1, '{"instances": [[1, NaN, 3]]}', 400, "JSON"),
    ("v1 infinite number", V1, '{"instances": [[1, 1e999, 3]]}', 400, "infinity"),
    ("v1 float32 overflow", V1, '{"instances": [[1, 1e39, 3]]}', 400, "float32 range"),
    ("v1 unknown feature", V1, '{"instances": [{"x0": 1, "x1": 2, "x2": 3, "zz": 4}]}', 400, "zz"),
    ("v1 missing feature", V1, '{"instances": [{"x0": 1, "x2": 3}]}', 400, "x1"),
    ("v1 scalar instance", V1, '{"instances": [1, 2, 3]}', 400, "instances[0] is a number"),
    ("v2 empty inputs", V2, _v2(), 400, "empty"),
    (
        "v2 unknown input",
        V2,
        _v2({"name": "nope", "shape": [1], "datatype": "FP32", "data": [1.0]}),
        400,
        "nope",
    ),
    (
        "v2 bytes datatype",
        V2,
        _v2({"name": "features", "shape": [1, 3], "datatype": "BYTES", "data": ["a", "b", "c"]}),
        400,
        "datatype",
    ),
    (
        "v2 shape and data disagree",
        V2,
        _v2({"name": "features", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}),
        400,
        "needs 6",
    ),
    (
        "v2 wrong width",
        V2,
        _v2({"name": "features", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}),
        400,
        "[rows, 3]",
    ),
    (
        "v2 floats declared int",
        V2,
        _v2(*({"name": f, "shape": [1], "datatype": "INT64", "data": [1.5]} for f in FEATURES)),
        400,
        "non-integer",
    ),
    (
        "v2 missing field",
        V2,
        json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "data": [1, 2, 3]}]}),
        422,
        "shape",
    ),
    ("v1 unknown model", "/v1/models/nope:predict", '{"instances": [[1, 2, 3]]}', 404, "nope"),
    ("v2 unknown model", "/v2/models/nope/infer", _v2(), 404, "nope"),
    ("v1 body over the limit", V1, '{"instances": [' + "[1,2,3]," * 10_000 + "[1,2,3]]}", 413, "at most"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
def test_bad_request_gets_4xx_and_the_server_keeps_serving(
    server: Any, path: str, body: str, status: int, reason: str
) -> None:
    got_status, got = send(server.url, path, body)
    assert got_status == status, got
    assert reason in got["error"], got
    assert_healthy(server.url)


def test_body_without_json_content_type_is_still_validated(server: Any) -> None:
    assert send(server.url, V1, '{"instances": [[1, 2, 3]]}', content_type="text/plain")[0] == 200
    status, body = send(server.url, V1, "not json", content_type="text/plain")
    assert status == 400 and "JSON" in body["error"]


def _raw_exchange(url: str, head: str, body: bytes = b"") -> str:
    """Send raw bytes, read until the server closes the connection (413 answers close it)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received.decode(errors="replace")


def test_413_is_answered_from_the_header_before_the_body_is_sent(server: Any) -> None:
    # announce a gigabyte, send none of it: the answer can only come from the header
    answer = _raw_exchange(
        server.url,
        f"POST {V1} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {10**9}\r\n\r\n",
    )
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "max_request_bytes" in answer
    assert_healthy(server.url)


def test_chunked_body_over_the_limit_gets_413(server: Any) -> None:
    data = b"[" + b"1," * (LIMIT // 2) + b"1]"  # no Content-Length: the length is counted as it streams
    chunked = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"
    answer = _raw_exchange(
        server.url,
        f"POST {V1} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
        chunked,
    )
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "max_request_bytes" in answer
    assert_healthy(server.url)


# -- readiness tells the truth ------------------------------------------------------------------


def _start_entry_point(spec: dict[str, Any], log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "prodml.plugins.servers._main", "--spec", "-"],
        stdin=subprocess.PIPE,
        stdout=open(log, "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    return proc


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _states_until(url: str, done: Any, proc: subprocess.Popen, limit: float = 180) -> list[tuple]:
    """(live status, ready status, ready reason) observed until ``done(state)`` (or the limit)."""
    seen: list[tuple] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            live = send(url, "/v2/health/live")[0]
            ready, body = send(url, "/v2/health/ready")
            state = (live, ready, body.get("error", "") if isinstance(body, dict) else "")
        except OSError:
            state = (None, None, "")
        if not seen or seen[-1] != state:
            seen.append(state)
        if done(state):
            break
        time.sleep(0.05)
    return seen


def test_not_ready_until_loaded_then_ready(bundle: Path, tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_entry_point({"model_name": NAME, "bundle_dir": str(bundle), "port": port}, tmp_path / "log")
    try:
        seen = _states_until(url, lambda s: s[1] == 200, proc)
    finally:
        _stop(proc)
    assert seen[-1][:2] == (200, 200), (seen, (tmp_path / "log").read_text())
    loading = [s for s in seen if s[0] == 200 and s[1] == 503]
    assert loading and "is loading" in loading[0][2], seen


def test_tampered_bundle_never_becomes_ready(bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "prodml.json").read_text())
    meta["label"] = "something-else"
    (copy / "prodml.json").write_text(json.dumps(meta))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_entry_point({"model_name": NAME, "bundle_dir": str(copy), "port": port}, tmp_path / "log")
    try:
        seen = _states_until(url, lambda s: "failed to load" in s[2], proc)
        assert "failed to load" in seen[-1][2] and "changed prodml.json" in seen[-1][2], seen
        time.sleep(0.5)  # it stays not ready: a failed load is not retried into readiness
        assert send(url, "/v2/health/ready")[0] == 503
        status, body = send(url, f"/v2/models/{NAME}/ready")
        assert status == 503 and "changed prodml.json" in body["error"]
        assert send(url, V1, '{"instances": [[1, 2, 3]]}')[0] == 503
        assert send(url, "/v2/health/live")[0] == 200
    finally:
        _stop(proc)
    assert "failed to load" in (tmp_path / "log").read_text()


# -- the CLI: prodml serve (foreground) and prodml predict -------------------------------------


def test_cli_serve_and_predict(store_and_ref: tuple[Any, ModelRef], bundle: Path, tmp_path: Path) -> None:
    store, _ = store_and_ref
    config = tmp_path / "prodml.yaml"
    config.write_text(
        f"project: {NAME}\nstages: [serve]\n"
        f"store: {{type: local, root: {store.root}}}\n"
        f"server: {{type: kserve, port: 0, state_dir: {tmp_path / 'state'}}}\n"
    )
    prodml = [sys.executable, "-m", "prodml"]
    serve = subprocess.Popen(
        [*prodml, "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    try:
        assert serve.stdout is not None
        first = serve.stdout.readline().decode()
        assert first.startswith(f"serving {NAME} "), first
        url = first.split(" at ", 1)[1].split(";")[0]
        # the banner comes once the port answers: no waiting for it to open
        assert send(url, "/v2/health/live") == (200, {"live": True})
        lines = [first]
        while not lines[-1].startswith(("ready:", "error:")) and lines[-1]:
            lines.append(serve.stdout.readline().decode())
        assert lines[-1].startswith(f"ready: {NAME} "), lines
        assert send(url, f"/v2/models/{NAME}/ready")[0] == 200
        out = subprocess.run(
            [*prodml, "predict", "-c", str(config), "--data", json.dumps(ROWS[:1])],
            capture_output=True,
            text=True,
            check=True,
        )
        answer = json.loads(out.stdout)
        np.testing.assert_allclose(
            np.asarray(answer["predictions"], dtype=np.float32),
            in_process_predictions(bundle, ROWS[:1]),
            rtol=1e-5,
        )
        v2 = subprocess.run(
            [*prodml, "predict", "-c", str(config), "--protocol", "v2", "--data", json.dumps(ROWS[:1])],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(v2.stdout)["outputs"][0]["shape"] == [1, 1]
        bad = subprocess.run(
            [*prodml, "predict", "-c", str(config), "--data", "[[1, 2]]"], capture_output=True, text=True
        )
        assert bad.returncode == 1 and "400" in bad.stderr and "3 features" in bad.stderr
        assert "Traceback" not in bad.stderr
        # V2 with rows of the wrong width: the same clean one-line error, no traceback
        bad_v2 = subprocess.run(
            [*prodml, "predict", "-c", str(config), "--protocol", "v2", "--data", "[[1, 2]]"],
            capture_output=True,
            text=True,
        )
        assert bad_v2.returncode == 1, bad_v2.stderr
        assert bad_v2.stderr.startswith("error: row 0 has 2 values; model 'tiny' takes 3: x0, x1, x2")
        assert "Traceback" not in bad_v2.stderr
        # `prodml predict ... | head -1`: the reader leaves early; no BrokenPipeError traceback
        read_end, write_end = os.pipe()
        os.close(read_end)
        piped = subprocess.run(
            [*prodml, "predict", "-c", str(config), "--data", json.dumps(ROWS)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(write_end)
        assert piped.returncode == 141, piped.stderr
        assert piped.stderr == ""
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
    assert (tmp_path / "state" / "servers").is_dir()  # it was recorded while it served...
    assert list((tmp_path / "state" / "servers").glob(f"{NAME}-*.json")) == []  # ...and not after


def test_cli_serve_on_a_taken_port_says_so_first(store_and_ref: tuple[Any, ModelRef], tmp_path: Path) -> None:
    store, _ = store_and_ref
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "prodml.yaml"
        config.write_text(
            f"project: {NAME}\nstages: [serve]\n"
            f"store: {{type: local, root: {store.root}}}\n"
            f"server: {{type: kserve, port: {port}, state_dir: {tmp_path / 'state'}}}\n"
        )
        out = subprocess.run(
            [sys.executable, "-m", "prodml", "serve", "-c", str(config)], capture_output=True, text=True
        )
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""  # no banner for a server that cannot listen
    assert out.stderr.startswith("error: pre-flight found 1 problem(s)")
    assert f"cannot listen on 127.0.0.1:{port}: in use (server.port)" in out.stderr
    assert not (tmp_path / "state" / "models").exists()  # nothing was pulled


def test_v2_body_without_json_content_type_is_read_as_json(server: Any, bundle: Path) -> None:
    # curl -d sends application/x-www-form-urlencoded: the V2 JSON is still understood
    body = _v2({"name": "features", "shape": [1, 3], "datatype": "FP32", "data": ROWS[:1]})
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        status, answer = send(server.url, V2, body, content_type=content_type)
        assert status == 200, answer
        np.testing.assert_allclose(
            np.asarray(client.predictions(answer), dtype=np.float32),
            in_process_predictions(bundle, ROWS[:1]),
            rtol=1e-5,
        )


# -- what the docs promise, through HTTP ----------------------------------------------------------

LAYERS_MODEL = """
import keras


def build_model(spec):
    inputs = keras.Input(shape=(spec.input_width,), name="features")
    x = keras.layers.Dense(8, activation="tanh")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dense(8, activation="sigmoid")(x)
    x = keras.layers.Activation("tanh")(x)
    x = keras.layers.Dense(4, activation="softmax")(x)
    outputs = keras.layers.Dense(1, name="prediction")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    return model
"""

# A layer that looks like Dense to anything reading layer class names, but doubles its output:
# a NumPy re-implementation of Dense disagrees with it, so TensorFlow must serve it.
LOOKALIKE_MODEL = """
import keras


@keras.saving.register_keras_serializable(package="prodml_test")
class Dense(keras.layers.Dense):
    def call(self, inputs):
        return super().call(inputs) * 2.0 + 1.0


def build_model(spec):
    inputs = keras.Input(shape=(spec.input_width,), name="features")
    hidden = Dense(8, activation="relu")(inputs)
    outputs = Dense(1, name="prediction")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    return model
"""


def train_bundle(out_dir: Path, model_code: str, *, trust_model_code: bool = False) -> Path:
    """A bundle of ``model_code`` trained by the real keras trainer on the tiny frame."""
    from prodml.core.bundle import frame_fingerprint
    from prodml.core.interfaces import DatasetSchema, TrainSpec
    from prodml.plugins.trainers.keras import KerasTrainer, KerasTrainerConfig
    from prodml.testing.trainers import regression_frame

    frame = regression_frame(rows=64)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model_file = out_dir.parent / "model.py"
    model_file.write_text(model_code)
    config = KerasTrainerConfig(
        type="keras", model=f"{model_file}:build_model", epochs=2, seed=3, trust_model_code=trust_model_code
    )
    spec = TrainSpec(
        model_name=NAME,
        schema=DatasetSchema(
            feature_names=tuple(FEATURES),
            label="target",
            dtypes={c: str(frame[c].dtype) for c in frame.columns},
            rows=len(frame),
            sha256=frame_fingerprint(frame),
        ),
    )
    return Path(KerasTrainer(config).train(frame, spec, out_dir).bundle_dir)


def reference(bundle: Path, rows: Any, *, trust_model_code: bool = False) -> np.ndarray:
    from prodml.plugins.trainers.keras import load_bundle

    model, _ = load_bundle(bundle, trust_model_code=trust_model_code)
    return np.asarray(model(np.asarray(rows, dtype=np.float32), training=False))


def deployed(bundle: Path, tmp_path: Path, **server: Any) -> tuple[Any, Any, ModelRef, Any]:
    """(server backend, store, ref, endpoint) of ``bundle`` served from a local store."""
    from prodml.plugins.servers.kserve import KServeServer, KServeServerConfig
    from prodml.plugins.stores.local import LocalStore, LocalStoreConfig

    store = LocalStore(LocalStoreConfig(type="local", root=tmp_path / "store"))
    ref = store.push(bundle, NAME)
    backend = KServeServer(KServeServerConfig(type="kserve", port=0, state_dir=tmp_path / "state", **server))
    return backend, store, ref, backend.deploy(ref, store)


MANY_ROWS = np.random.default_rng(5).normal(scale=2.0, size=(32, 3)).tolist()


def test_batchnorm_sigmoid_tanh_softmax_layers_serve_what_keras_computes(tmp_path: Path) -> None:
    bundle = train_bundle(tmp_path / "layers" / "bundle", LAYERS_MODEL)
    backend, _store, _ref, endpoint = deployed(bundle, tmp_path)
    try:
        expected = reference(bundle, MANY_ROWS)
        for protocol in ("v1", "v2"):
            got = client.predictions(client.predict(endpoint.url, NAME, MANY_ROWS, protocol=protocol))
            np.testing.assert_allclose(np.asarray(got, dtype=np.float32), expected, rtol=1e-4, atol=1e-5)
        one = client.predictions(client.predict(endpoint.url, NAME, MANY_ROWS[:1]))
        np.testing.assert_allclose(np.asarray(one, dtype=np.float32), expected[:1], rtol=1e-4, atol=1e-5)
    finally:
        backend.undeploy(NAME)


def test_a_layer_a_fast_path_would_misread_is_served_by_tensorflow(tmp_path: Path) -> None:
    bundle = train_bundle(tmp_path / "lookalike" / "bundle", LOOKALIKE_MODEL, trust_model_code=True)
    backend, _store, _ref, endpoint = deployed(bundle, tmp_path, trust_model_code=True)
    try:
        expected = reference(bundle, MANY_ROWS, trust_model_code=True)
        for rows in (MANY_ROWS[:1], MANY_ROWS):
            got = client.predictions(client.predict(endpoint.url, NAME, rows))
            np.testing.assert_allclose(
                np.asarray(got, dtype=np.float32), expected[: len(rows)], rtol=1e-4, atol=1e-5
            )
    finally:
        backend.undeploy(NAME)


def _server_processes(pid: int) -> list[int]:
    """The model-server processes of the process group led by ``pid``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            pgid = os.getpgid(int(proc.name))
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ProcessLookupError):
            continue
        if pgid == pid and b"prodml.plugins.servers._main" in cmdline:
            found.append(int(proc.name))
    return sorted(found)


def assert_every_worker_ready(url: str) -> None:
    """Ready on every new connection: deploy returns only once each worker has loaded.

    The kernel hands each new connection to any of the processes sharing the port, so one
    still loading would answer 503 to some of these.
    """
    answers = [send(url, f"/v2/models/{NAME}/ready")[0] for _ in range(16)]
    assert answers == [200] * 16, answers


def test_max_rows_workers_and_deploying_again(bundle: Path, tmp_path: Path) -> None:
    from prodml.plugins.servers import _local

    backend, store, first, endpoint = deployed(bundle, tmp_path, max_rows=2, workers=2)
    try:
        pid = int(endpoint.details["pid"])
        # workers: 2 processes share the port, and every request is answered
        assert len(_server_processes(pid)) == 2
        assert_every_worker_ready(endpoint.url)
        for _ in range(8):
            assert len(client.predictions(client.predict(endpoint.url, NAME, ROWS[:2]))) == 2
        # max_rows: one row over the limit is refused whole, with the limit named
        for protocol in ("v1", "v2"):
            with pytest.raises(client.PredictionError) as caught:
                client.predict(endpoint.url, NAME, ROWS[:3], protocol=protocol)
            assert caught.value.status == 413, caught.value
            assert re.search(r"\b2\b", caught.value.reason), caught.value.reason  # names the limit
        assert_healthy(endpoint.url)

        # deploying again (a new version) replaces the running server: old processes gone
        second = store.push(train_tiny_bundle(tmp_path / "second" / "bundle", model_name=NAME), NAME)
        again = backend.deploy(second, store)
        assert not any(_local.process_alive(p, entry_point=False) for p in _server_processes(pid))
        assert _server_processes(pid) == []
        assert_every_worker_ready(again.url)
        status = backend.status(NAME)
        assert status.ready and second.version in status.reason
        answer = client.predict(again.url, NAME, ROWS[:1], protocol="v2")
        assert answer["model_version"] == second.version != first.version
    finally:
        backend.undeploy(NAME)
    assert not _server_processes(int(again.details["pid"]))


SERVER_SECRET = "srv-Secret-Value-9f3b2e71c4"


def test_secrets_given_to_the_server_are_masked_in_its_log(bundle: Path, tmp_path: Path) -> None:
    from prodml.plugins.servers import _local
    from prodml.plugins.servers.kserve import KServeServerConfig

    # the server process registers the spec's secrets and masks them in every log line, also
    # third-party ones (here: the access log line of a request whose URL carries one)
    config = KServeServerConfig(type="kserve", port=0, access_log=True, state_dir=tmp_path / "state")
    from prodml.plugins.stores.local import LocalStore, LocalStoreConfig

    store = LocalStore(LocalStoreConfig(type="local", root=tmp_path / "store"))
    ref = store.push(bundle, NAME)
    path = _local.pull_to_cache(config, ref, store, NAME)
    port = _free_port()
    spec, _ = _local.serving_spec(config, ref, path, NAME, None, port)
    spec["secrets"] = [SERVER_SECRET]
    log = tmp_path / "server.log"
    proc = _start_entry_point(spec, log)
    url = f"http://127.0.0.1:{port}"
    try:
        _states_until(url, lambda s: s[1] == 200, proc)
        status, _ = send(
            url, f"/v1/models/{NAME}:predict?token={SERVER_SECRET}", '{"instances": [[1, 2, 3]]}'
        )
        assert status == 200
        send(url, f"/v2/models/{SERVER_SECRET}/infer", _v2())
    finally:
        _stop(proc)
    text = log.read_text()
    assert "token=***" in text, text[-3000:]
    assert SERVER_SECRET not in text
