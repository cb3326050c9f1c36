"""Real clients against prodml's model server: what users call it with must work.

KServe's own ``InferenceRESTClient`` (V1, V2 JSON, V2 binary tensors), Triton's
``tritonclient.http`` from PyPI (health, metadata, inference with JSON and binary tensors
both ways), and a 413 for an oversized body that urllib, requests, httpx and
``prodml predict --file`` all receive as a 413 with its reason, not as a connection reset.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from prodml.testing.model_server import send, start_server, stop_server, wait_ready
from prodml.testing.servers import in_process_predictions, train_tiny_bundle

pytestmark = [pytest.mark.slow, pytest.mark.kserve]

NAME = "tiny"
FEATURES = ["x0", "x1", "x2"]
LIMIT = 64 * 1024
ROWS = np.array([[0.5, -1.25, 3.0], [0.0, 0.0, 0.0], [-2.0, 1.0, 0.125]], dtype=np.float32)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle", model_name=NAME)


@pytest.fixture(scope="module")
def expected(bundle: Path) -> np.ndarray:
    return np.asarray(in_process_predictions(bundle, ROWS), dtype=np.float32)


@pytest.fixture(scope="module")
def url(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("log") / "server.log"
    proc, base = start_server(bundle, log, NAME, max_request_bytes=LIMIT)
    try:
        wait_ready(base, NAME, proc, log)
        yield base
    finally:
        stop_server(proc)


# -- KServe's InferenceRESTClient -------------------------------------------------------------------


def test_kserve_rest_client_v1_v2_json_and_binary(url: str, expected: np.ndarray) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def run() -> None:
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
        try:
            answer = await v1.infer(url, {"instances": ROWS.tolist()}, model_name=NAME)
        finally:
            await v1.close()
        np.testing.assert_allclose(np.asarray(answer["predictions"]), expected, rtol=1e-5, atol=1e-6)

        v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            for binary in (False, True):
                features = InferInput(name="features", shape=list(ROWS.shape), datatype="FP32")
                features.set_data_from_numpy(ROWS, binary_data=binary)
                request = InferRequest(
                    model_name=NAME,
                    infer_inputs=[features],
                    request_id=f"kserve-client-{binary}",
                    parameters={"binary_data_output": binary},
                )
                response = await v2.infer(url, request, model_name=NAME)
                assert response.id == f"kserve-client-{binary}"
                got = response.outputs[0].as_numpy()
                np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)
        finally:
            await v2.close()

    asyncio.run(run())


# -- Triton's tritonclient.http ---------------------------------------------------------------------


def test_tritonclient_health_and_metadata(url: str) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
        meta = client.get_model_metadata(NAME)
        assert [i["name"] for i in meta["inputs"]] == FEATURES
        assert meta["outputs"][0]["name"] == "prediction"
        assert "model_repository_extension" not in client.get_server_metadata()["extensions"]
    finally:
        client.close()


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True, None], ids=["json-out", "binary-out", "default-out"])
def test_tritonclient_infer(url: str, expected: np.ndarray, binary_in: bool, binary_out: bool | None) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        features = triton.InferInput("features", list(ROWS.shape), "FP32")
        features.set_data_from_numpy(ROWS, binary_data=binary_in)
        outputs = (
            None
            if binary_out is None
            else [triton.InferRequestedOutput("prediction", binary_data=binary_out)]
        )
        result = client.infer(NAME, [features], outputs=outputs, request_id="triton-1")
        np.testing.assert_allclose(result.as_numpy("prediction"), expected, rtol=1e-5, atol=1e-6)
        assert result.get_response()["id"] == "triton-1"
        # named inputs, one per feature, as JSON
        columns = []
        for j, name in enumerate(FEATURES):
            column = triton.InferInput(name, [len(ROWS)], "FP32")
            column.set_data_from_numpy(np.ascontiguousarray(ROWS[:, j]), binary_data=binary_in)
            columns.append(column)
        by_name = client.infer(NAME, columns, outputs=outputs)
        np.testing.assert_allclose(by_name.as_numpy("prediction"), expected, rtol=1e-5, atol=1e-6)
    finally:
        client.close()


def test_tritonclient_sees_a_bad_request_as_an_error(url: str) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        narrow = triton.InferInput("features", [1, 2], "FP32")
        narrow.set_data_from_numpy(np.zeros((1, 2), np.float32))
        with pytest.raises(InferenceServerException, match=r"\[rows, 3\]"):
            client.infer(NAME, [narrow])
    finally:
        client.close()


# -- a 413 every client sees -----------------------------------------------------------------------

#: well past the limit, and past what socket buffers absorb, so a server that stops reading
#: would leave the client writing into a reset connection
HUGE = json.dumps({"instances": [[0.123456789, -0.5, 2.0]] * 600_000}).encode()


def _assert_413(status: int, text: str) -> None:
    assert status == 413, text
    assert "max_request_bytes" in json.loads(text)["error"]


def test_urllib_gets_the_413(url: str) -> None:
    request = urllib.request.Request(
        f"{url}/v1/models/{NAME}:predict", data=HUGE, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    _assert_413(caught.value.code, caught.value.read().decode())


def test_requests_gets_the_413(url: str) -> None:
    import requests

    answer = requests.post(f"{url}/v1/models/{NAME}:predict", data=HUGE, timeout=30)
    _assert_413(answer.status_code, answer.text)
    # and a chunked body (no Content-Length) that passes the limit while streaming
    chunks = (HUGE[i : i + 65536] for i in range(0, len(HUGE), 65536))
    answer = requests.post(f"{url}/v2/models/{NAME}/infer", data=chunks, timeout=30)
    _assert_413(answer.status_code, answer.text)


def test_httpx_gets_the_413(url: str) -> None:
    import httpx

    answer = httpx.post(f"{url}/v1/models/{NAME}:predict", content=HUGE, timeout=30)
    _assert_413(answer.status_code, answer.text)
    assert send(url, f"/v2/models/{NAME}/ready")[0] == 200


def test_prodml_predict_reports_the_413(url: str, tmp_path: Path) -> None:
    config = tmp_path / "prodml.yaml"
    config.write_text(
        f"project: {NAME}\nstages: [serve]\nstore: {{type: local, root: {tmp_path / 'store'}}}\n"
        "server: {type: kserve}\n"
    )
    huge = tmp_path / "huge.json"
    huge.write_bytes(HUGE)
    done = subprocess.run(
        [sys.executable, "-m", "prodml", "predict", "-c", str(config), "--url", url, "--file", str(huge)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "413" in done.stderr and "max_request_bytes" in done.stderr, done.stderr
    assert "no model server answers" not in done.stderr and "Traceback" not in done.stderr
