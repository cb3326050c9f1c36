"""prodml's inference fast path (``_asgi.FrontDoor``) against KServe's own app, in real servers.

The same requests go to a server answering inference on the fast path and to one where
KServe's app answers it (``PRODML_SERVER_FAST_PATH=0``): statuses and predictions must be
the same. Also: the V2 binary tensor extension is parsed strictly, the model repository
cannot unload the served model, and fast-path requests are counted in KServe's metrics.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prodml.plugins.servers._requests import RequestRejected, parse_v2_body
from prodml.testing.model_server import send, start_server, stop_server, wait_ready
from prodml.testing.servers import in_process_predictions, train_tiny_bundle

NAME = "tiny"
FEATURES = ["x0", "x1", "x2"]
LIMIT = 64 * 1024

# -- the V2 body parser (no server) --------------------------------------------------------------


def _binary_body(inputs: list[tuple[str, str, list[int], bytes]], **extra: Any) -> tuple[bytes, int]:
    header = {
        "inputs": [
            {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(raw)}}
            for n, d, s, raw in inputs
        ],
        **extra,
    }
    head = json.dumps(header).encode()
    return head + b"".join(raw for *_, raw in inputs), len(head)


def test_binary_tensors_are_cut_out_of_the_body_in_order() -> None:
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([7, 8], dtype="<i8")
    body, length = _binary_body(
        [("features", "FP32", [2, 3], a.tobytes()), ("extra", "INT64", [2], b.tobytes())],
        outputs=[{"name": "prediction", "parameters": {"binary_data": True}}],
    )
    request = parse_v2_body(body, str(length))
    assert [i.name for i in request.inputs] == ["features", "extra"]
    assert request.inputs[0].raw == a.tobytes() and request.inputs[1].raw == b.tobytes()
    assert request.binary_output("prediction") is True


def test_binary_bytes_elements_decode_to_strings() -> None:
    keys = ["driver-1", "é"]
    raw = b"".join(struct.pack("<I", len(k.encode())) + k.encode() for k in keys)
    body, length = _binary_body([("driver_id", "BYTES", [2], raw)])
    assert parse_v2_body(body, length).inputs[0].data == keys


def test_a_body_without_the_binary_header_is_json() -> None:
    body = json.dumps(
        {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    ).encode()
    request = parse_v2_body(body)
    assert request.inputs[0].data == [1, 2, 3] and request.inputs[0].raw is None
    assert request.binary_output("prediction") is False


@pytest.mark.parametrize(
    ("header", "body", "status", "reason"),
    [
        ("x", b"{}", 400, "not a number"),
        ("99", b"{}", 400, "the body has 2 bytes"),
        (None, b"[1]", 422, "JSON object"),
        (None, b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}', 422, "data"),
        (
            None,
            b'{"inputs": [{"name": "a", "shape": [1.5], "datatype": "FP32", "data": [1]}]}',
            422,
            "integers",
        ),
        (None, b'{"id": 3, "inputs": []}', 422, '"id"'),
        (None, b'{"inputs": [], "outputs": [3]}', 422, "outputs[0]"),
        (None, b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP16", "data": [1]}]}', 400, "FP16"),
    ],
)
def test_malformed_v2_bodies_are_refused_with_a_reason(
    header: str | None, body: bytes, status: int, reason: str
) -> None:
    with pytest.raises(RequestRejected) as caught:
        parse_v2_body(body, header)
    assert caught.value.status == status and reason in caught.value.message


def test_binary_sizes_must_add_up_to_the_body() -> None:
    body, length = _binary_body([("features", "FP32", [1, 3], b"\0" * 12)])
    with pytest.raises(RequestRejected, match="only 8 bytes"):
        parse_v2_body(body[:-4], length)
    with pytest.raises(RequestRejected, match="add up to 12"):
        parse_v2_body(body + b"\0" * 4, length)


# -- the two paths side by side, in real servers ---------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle", model_name=NAME)


@pytest.fixture(scope="module")
def both(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A fast-path server and a KServe-path server of the same bundle, started together."""
    logs = tmp_path_factory.mktemp("logs")
    started = {
        key: start_server(
            bundle, logs / f"{key}.log", NAME, fast=key == "fast", max_request_bytes=LIMIT, max_rows=100
        )
        for key in ("fast", "kserve")
    }
    try:
        for key, (proc, url) in started.items():
            wait_ready(url, NAME, proc, logs / f"{key}.log")
        yield {key: url for key, (_, url) in started.items()}
    finally:
        for proc, _ in started.values():
            stop_server(proc)


def _v2(*inputs: dict, **extra: Any) -> str:
    return json.dumps({"inputs": list(inputs), **extra})


_MATRIX = {"name": "features", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2, 3], [-1, 0.5, 2]]}
_NAMED = [{"name": f, "shape": [2], "datatype": "FP64", "data": [1.5, -2.0]} for f in FEATURES]
V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"
JSON = {"Content-Type": "application/json"}
CASES = [
    ("v1 lists", V1, '{"instances": [[0.5, -1.25, 3.0], [0, 0, 0]]}', JSON),
    ("v1 objects", V1, '{"instances": [{"x0": 1, "x1": 2, "x2": 3}]}', JSON),
    ("v1 inputs key", V1, '{"inputs": [[1, 2, 3]]}', JSON),
    ("v1 text/plain", V1, '{"instances": [[1, 2, 3]]}', {"Content-Type": "text/plain"}),
    ("v1 no content type", V1, '{"instances": [[1, 2, 3]]}', {}),
    ("v1 not json", V1, "not json", {"Content-Type": "text/plain"}),
    ("v1 empty body", V1, "", JSON),
    ("v1 ragged", V1, '{"instances": [[1, 2, 3], [1]]}', JSON),
    ("v1 too many rows", V1, '{"instances": [' + ",".join(["[1,2,3]"] * 101) + "]}", JSON),
    ("v1 unknown model", "/v1/models/nope:predict", '{"instances": [[1, 2, 3]]}', JSON),
    ("v2 matrix", V2, _v2(_MATRIX), JSON),
    ("v2 named", V2, _v2(*_NAMED, id="req-1"), JSON),
    ("v2 no content type", V2, _v2(_MATRIX), {}),
    ("v2 octet-stream, no binary header", V2, _v2(_MATRIX), {"Content-Type": "application/octet-stream"}),
    ("v2 json with charset", V2, _v2(_MATRIX), {"Content-Type": "application/json; charset=utf-8"}),
    ("v2 output asked by name", V2, _v2(_MATRIX, outputs=[{"name": "prediction"}]), JSON),
    ("v2 unknown output", V2, _v2(_MATRIX, outputs=[{"name": "zzz"}]), JSON),
    ("v2 malformed", V2, '{"inputs": [{"name"', JSON),
    ("v2 no inputs key", V2, "{}", JSON),
    (
        "v2 missing shape",
        V2,
        json.dumps({"inputs": [{"name": "features", "datatype": "FP32", "data": [1]}]}),
        JSON,
    ),
    ("v2 id not a string", V2, json.dumps({"id": 5, "inputs": [_MATRIX]}), JSON),
    ("v2 wrong width", V2, _v2({**_MATRIX, "shape": [3, 2]}), JSON),
    ("v2 unknown model", "/v2/models/nope/infer", _v2(_MATRIX), JSON),
    ("v2 model version route", f"/v2/models/{NAME}/versions/1/infer", _v2(_MATRIX), JSON),
]


@pytest.mark.slow
@pytest.mark.kserve
def test_fast_path_answers_like_kserve(both: dict[str, str], bundle: Path) -> None:
    for label, path, body, headers in CASES:
        fast = send(both["fast"], path, body, headers)
        kserve = send(both["kserve"], path, body, headers)
        assert fast[0] == kserve[0], (label, fast, kserve)
        if fast[0] != 200:
            assert isinstance(fast[2], dict) and fast[2].get("error"), (label, fast)
            continue
        if "predictions" in kserve[2]:
            np.testing.assert_allclose(fast[2]["predictions"], kserve[2]["predictions"], rtol=1e-6)
            rows = json.loads(body)
            rows = rows.get("instances", rows.get("inputs"))
            rows = [[r[f] for f in FEATURES] if isinstance(r, dict) else r for r in rows]
            np.testing.assert_allclose(
                fast[2]["predictions"], in_process_predictions(bundle, rows), rtol=1e-5, atol=1e-6
            )
        else:
            f_out, k_out = fast[2]["outputs"][0], kserve[2]["outputs"][0]
            assert {k: v for k, v in f_out.items() if k != "data"} == {
                k: v for k, v in k_out.items() if k != "data"
            }, label
            np.testing.assert_allclose(f_out["data"], k_out["data"], rtol=1e-6)
            assert set(fast[2]) == set(kserve[2]) and fast[2]["model_version"] == kserve[2]["model_version"]
            if "req-1" in body:
                assert fast[2]["id"] == kserve[2]["id"] == "req-1"


@pytest.mark.slow
@pytest.mark.kserve
@pytest.mark.parametrize("path", ["fast", "kserve"])
def test_binary_request_and_binary_answer(both: dict[str, str], bundle: Path, path: str) -> None:
    rows = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, -0.25]], dtype="<f4")
    body, length = _binary_body(
        [("features", "FP32", [2, 3], rows.tobytes())],
        outputs=[{"name": "prediction", "parameters": {"binary_data": True}}],
    )
    headers = {"Inference-Header-Content-Length": str(length), "Content-Type": "application/octet-stream"}
    status, answer_headers, raw = send(both[path], V2, body, headers)
    assert status == 200, raw
    json_length = int(answer_headers["inference-header-content-length"])
    head = json.loads(raw[:json_length])
    output = head["outputs"][0]
    assert output["shape"] == [2, 1] and output["parameters"]["binary_data_size"] == 8
    got = np.frombuffer(raw[json_length:], dtype="<f4").reshape(2, 1)
    np.testing.assert_allclose(got, in_process_predictions(bundle, rows), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.kserve
def test_model_repository_cannot_unload_or_load(both: dict[str, str]) -> None:
    for url in both.values():
        for action in ("unload", "load"):
            status, _, body = send(url, f"/v2/repository/models/{NAME}/{action}", b"")
            assert status == 403, body
            assert "turned off" in body["error"]
        assert send(url, f"/v2/models/{NAME}/ready")[0] == 200
        assert send(url, V1, '{"instances": [[1, 2, 3]]}', JSON)[0] == 200


@pytest.mark.slow
@pytest.mark.kserve
def test_fast_path_requests_are_counted_in_kserve_metrics(both: dict[str, str]) -> None:
    def predict_count() -> float:
        status, _, text = send(both["fast"], "/metrics")
        assert status == 200
        lines = text.decode().splitlines()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in lines
            if line.startswith("request_predict_seconds_count") and f'model_name="{NAME}"' in line
        )

    before = predict_count()
    for _ in range(3):
        assert send(both["fast"], V1, '{"instances": [[1, 2, 3]]}', JSON)[0] == 200
    assert predict_count() == before + 3


def test_per_feature_float_inputs_build_the_same_matrix_as_the_general_path() -> None:
    from prodml.plugins.servers._requests import InputSpec, V2Input, parse_v2

    spec = InputSpec(feature_names=("a", "b", "c"))
    columns = {"a": [1, 2.5], "b": [-3.0, 4], "c": [0.125, 1e30]}
    plain = [V2Input(name=n, datatype="FP32", shape=[2], data=v) for n, v in columns.items()]
    general = [
        V2Input(name=n, datatype="fp64", shape=[2, 1], data=[[x] for x in v]) for n, v in columns.items()
    ]
    a, b = parse_v2(plain, spec).matrix, parse_v2(general, spec).matrix
    assert a is not None and b is not None
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (2, 3) and (a == b).all()
    values = {"a": 1, "b": 10**400, "c": 1}
    huge = [V2Input(name=n, datatype="FP64", shape=[1], data=[v]) for n, v in values.items()]
    with pytest.raises(RequestRejected, match="too large"):
        parse_v2(huge, spec)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -7,
        2.5,
        1e-45,
        3.4028234663852886e38,  # float32's largest
        3.4028235677973362e38,  # just below the rounding edge: still float32's largest
        3.4028235677973366e38,  # the edge itself rounds to infinity
        -3.5e38,
        10**39,
        2**64 + 1,
        10**400,
        float("nan"),
        float("inf"),
        True,
        None,
        "1.0",
        [1.0],
    ],
    ids=lambda v: repr(v)[:24],
)
def test_small_batches_are_checked_like_large_ones(value: Any) -> None:
    """The few-rows shortcut of V1 parsing accepts and refuses exactly what the NumPy path does."""
    from prodml.plugins.servers import _requests
    from prodml.plugins.servers._requests import InputSpec, parse_v1

    spec = InputSpec(feature_names=("a", "b", "c"))
    rows = [[1.0, value, -2], [0.5, 0.25, 3]]

    def outcome() -> Any:
        try:
            return parse_v1({"instances": rows}, spec).matrix
        except RequestRejected as exc:
            return (exc.status, exc.message)

    small = outcome()
    large_only = pytest.MonkeyPatch()
    large_only.setattr(_requests, "_SMALL", 0)
    try:
        large = outcome()
    finally:
        large_only.undo()
    if isinstance(large, np.ndarray):
        assert isinstance(small, np.ndarray) and small.dtype == large.dtype == np.float32
        assert small.flags.c_contiguous and small.tobytes() == large.tobytes()
    else:
        assert small == large
