"""The raw ASGI front door of prodml's model server: inference without the web framework.

KServe's FastAPI app costs about a millisecond per request on this kind of machine (routing,
pydantic models in and out, exception middleware), two orders of magnitude more than the
model. :class:`FrontDoor` sits in front of it and answers the two inference routes of the
served model itself::

    POST /v1/models/<model>:predict
    POST /v2/models/<model>/infer        (JSON, or the binary tensor extension)

with the same validation (:mod:`._requests`), the same inference function and the same
answers and statuses as KServe's path, written with orjson and no pydantic. Everything else
(health, readiness, metadata, the model repository, metrics, CloudEvents, other models,
a model that is still loading) goes to KServe's app untouched, so its behaviour stays
KServe's. ``PRODML_SERVER_FAST_PATH=0`` sends inference to KServe as well (a diagnostic
switch; the tests run both ways).

Two things the front door does for every POST, on either path:

* the body limit (``server.max_request_bytes``): 413 from the ``Content-Length`` header
  before the body is read, or as soon as a chunked body passes the limit. The 413 is sent
  at once, then the rest of the body is read and thrown away (at most
  :data:`DRAIN_BYTES`, for at most :data:`DRAIN_SECONDS`) before the connection closes:
  clients that send the whole body before reading the answer (urllib, requests, httpx)
  would otherwise get a TCP reset instead of the 413.
* a V2 body without the ``inference-header-content-length`` header is JSON whatever its
  ``Content-Type`` says (tritonclient sends none; KServe would read it as binary).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from prodml.plugins.servers._requests import (
    RequestRejected,
    V2Request,
    parse_v1,
    parse_v2,
    parse_v2_body,
)

log = logging.getLogger("prodml.server")

#: after a 413, read and discard at most this much of the rest of the body ...
DRAIN_BYTES = 64 << 20
#: ... for at most this long, so the client reads the 413 instead of a connection reset
DRAIN_SECONDS = 10.0

_V1_PREFIX = "/v1/models/"
_V1_SUFFIX = ":predict"
_V2_PREFIX = "/v2/models/"
_V2_SUFFIX = "/infer"
_JSON = b"application/json"
_READ_ONLY = frozenset({"GET", "HEAD", "OPTIONS"})


def _is_json(content_type: bytes | None) -> bool:
    """``application/json``, ``application/cloudevents+json`` and the like, with parameters."""
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == _JSON or media.endswith(b"+json")


def _json_headers(length: int, content_type: bytes = _JSON) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type), (b"content-length", str(length).encode())]


class FrontDoor:
    """ASGI app: the body limit for every request, inference of ``model`` on the fast path.

    Args:
        app: KServe's ASGI app, which answers everything the front door does not.
        model: the served :class:`~prodml.plugins.servers._model.BundleModel`.
        max_bytes: the largest request body accepted.
        fast: answer the model's inference routes here (False: KServe answers them).
    """

    def __init__(self, app: Any, model: Any, *, max_bytes: int, fast: bool = True) -> None:
        self.app = app
        self.model = model
        self.max_bytes = max_bytes
        self.fast = fast
        self.drain_bytes = DRAIN_BYTES
        self.drain_seconds = DRAIN_SECONDS
        self._observe: Callable[[float], None] | None = None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] in _READ_ONLY:
            await self.app(scope, receive, send)
            return
        length = content_type = json_length = None
        chunked = expect = cloudevent = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                content_type = value
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"inference-header-content-length":
                json_length = value
            elif name == b"expect":
                expect = True
            elif name.startswith(b"ce-"):
                cloudevent = True
        size = None
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                await _send_error(send, 400, f"Content-Length {length[:20]!r} is not a number", close=True)
                return
            if size > self.max_bytes:
                await self._too_large(receive, send, f"{size} bytes", 0, size, drain=not expect)
                return
        path = scope["path"]
        route = None
        if path.startswith(_V2_PREFIX) and path.endswith(_V2_SUFFIX):
            route = "v2"
            name = path[len(_V2_PREFIX) : -len(_V2_SUFFIX)]
        elif path.startswith(_V1_PREFIX) and path.endswith(_V1_SUFFIX):
            route = "v1"
            name = path[len(_V1_PREFIX) : -len(_V1_SUFFIX)]
        if route == "v2" and json_length is None and not _is_json(content_type):
            # no binary header: the body is JSON, whatever Content-Type says (KServe's
            # request parsing would treat it as binary tensors and refuse it)
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", _JSON)]}
        model = self.model
        fast = (
            route is not None
            and self.fast
            and name == model.name
            and model.ready
            and not cloudevent
            and content_type != b"application/cloudevents+json"
        )
        if not fast and length is not None:
            await self.app(scope, receive, send)
            return
        if not fast and not chunked:
            await self.app(scope, receive, send)
            return
        body = await self._read_body(receive, send, expect)
        if body is None:  # answered (413) or the client went away
            return
        if not fast:
            await self.app(scope, _replay(body, receive), send)
            return
        if route == "v1":
            await self._v1(scope, body, receive, send)
        else:
            await self._v2(body, json_length, send)

    # -- the body ---------------------------------------------------------------------------

    async def _read_body(self, receive: Callable, send: Callable, expect: bool) -> bytes | None:
        """The whole body, or None after answering 413 (or when the client disconnected)."""
        message = await receive()
        if message["type"] != "http.request":
            return None
        body = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > self.max_bytes:
                await self._too_large(receive, send, f"more than {self.max_bytes} bytes", len(body), None)
                return None
            return body
        chunks = [body]
        seen = len(body)
        while True:
            if seen > self.max_bytes:
                await self._too_large(receive, send, f"more than {self.max_bytes} bytes", seen, None)
                return None
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if seen > self.max_bytes:
            await self._too_large(receive, send, f"more than {self.max_bytes} bytes", seen, None)
            return None
        return b"".join(chunks)

    async def _too_large(
        self,
        receive: Callable,
        send: Callable,
        size: str,
        seen: int,
        announced: int | None,
        *,
        drain: bool = True,
    ) -> None:
        """Answer 413 now; then read and drop the rest of the body, within bounds, and close."""
        message = (
            f"request body is {size}; this server accepts at most {self.max_bytes} bytes "
            "(server.max_request_bytes): send fewer rows per request"
        )
        log.info("rejected request (413): %s", message)
        body = orjson.dumps({"error": message})
        headers = [*_json_headers(len(body)), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        worth_draining = drain and (announced is None or announced <= self.drain_bytes)
        # the answer is complete on the wire; the response ends (and the connection closes)
        # only after the drain, because a server that stops reading leaves the client's
        # unsent bytes to turn into a reset
        await send({"type": "http.response.body", "body": body, "more_body": worth_draining})
        if not worth_draining:
            return
        try:
            await asyncio.wait_for(self._discard(receive, seen), self.drain_seconds)
        except TimeoutError:
            log.info("gave up reading the rest of an oversized body after %.0f s", self.drain_seconds)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _discard(self, receive: Callable, seen: int) -> None:
        while seen <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            seen += len(message.get("body", b""))

    # -- inference --------------------------------------------------------------------------

    def _observer(self) -> Callable[[float], None]:
        """KServe's predict-latency histogram for this model (its ``/metrics``).

        Only the predict histogram: each observation takes prometheus_client's locks and
        walks the buckets, and the pre/post-process pair would double that per request.
        """
        if self._observe is None:
            from kserve.metrics import PREDICT_HIST_TIME, get_labels

            self._observe = PREDICT_HIST_TIME.labels(**get_labels(self.model.name)).observe
        return self._observe

    async def _v1(self, scope: dict, body: bytes, receive: Callable, send: Callable) -> None:
        model = self.model
        observe = self._observer()
        try:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise RequestRejected(400, f"the body is not valid JSON: {exc}") from None
            if type(payload) is dict and "specversion" in payload:
                # a structured CloudEvent: KServe unwraps it and answers with one
                await self.app(scope, _replay(body, receive), send)
                return
            parsed = parse_v1(payload, model.spec)
            matrix = parsed.matrix if parsed.matrix is not None else await model.matrix(parsed)
            started = time.perf_counter()
            result = model.infer(matrix)
            observe(time.perf_counter() - started)
            answer = b'{"predictions":' + _json_rows(result) + b"}"
        except RequestRejected as exc:
            await _rejected(send, exc)
            return
        except Exception as exc:
            await _failed(send, exc)
            return
        await send({"type": "http.response.start", "status": 200, "headers": _json_headers(len(answer))})
        await send({"type": "http.response.body", "body": answer})

    async def _v2(self, body: bytes, json_length: bytes | None, send: Callable) -> None:
        model = self.model
        observe = self._observer()
        try:
            request = parse_v2_body(body, None if json_length is None else json_length.decode("latin-1"))
            parsed = parse_v2(request.inputs, model.spec)
            matrix = parsed.matrix if parsed.matrix is not None else await model.matrix(parsed)
            started = time.perf_counter()
            result = model.infer(matrix)
            observe(time.perf_counter() - started)
            answer, header_length = _v2_answer(model, request, result)
        except RequestRejected as exc:
            await _rejected(send, exc)
            return
        except Exception as exc:
            await _failed(send, exc)
            return
        if header_length is None:
            headers = _json_headers(len(answer))
        else:
            headers = [
                *_json_headers(len(answer), b"application/octet-stream"),
                (b"inference-header-content-length", str(header_length).encode()),
            ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def _json_rows(result: np.ndarray) -> bytes:
    # float64 so the digits are the ones KServe's path writes (Python floats of the float32
    # values), not float32's shortest form
    return orjson.dumps(result.astype(np.float64, copy=False), option=orjson.OPT_SERIALIZE_NUMPY)


@functools.lru_cache(maxsize=16)
def _v2_parts(model_name: str, version: str, output: str) -> tuple[bytes, bytes]:
    """The fixed parts of a V2 answer: before the request id, and from it to the shape."""
    start = b'{"model_name":' + orjson.dumps(model_name) + b',"model_version":' + orjson.dumps(version)
    middle = b',"parameters":null,"outputs":[{"name":' + orjson.dumps(output) + b',"shape":'
    return start + b',"id":', middle


def _v2_answer(model: Any, request: V2Request, result: np.ndarray) -> tuple[bytes, int | None]:
    """The V2 answer (JSON, or JSON + binary output) and the length of its JSON part if binary."""
    name = model.output_name
    for requested, _ in request.outputs or ():
        if requested != name:
            raise RequestRejected(400, f"unknown output {requested!r}; this model's output is {name!r}")
    start, middle = _v2_parts(model.name, model.version, name)
    request_id = request.id or os.urandom(16).hex()  # KServe's path: uuid4().hex, same form
    head = start + orjson.dumps(request_id) + middle + b"[%d,%d]" % result.shape + b',"datatype":"FP32",'

    if request.binary_output(name):
        raw = np.ascontiguousarray(result, dtype="<f4").tobytes()
        header = head + b'"parameters":{"binary_data_size":%d}}]}' % len(raw)
        return header + raw, len(header)
    return head + b'"parameters":null,"data":' + _json_rows(result.reshape(-1)) + b"}]}", None


def _replay(body: bytes, receive: Callable) -> Callable:
    """A receive() that hands ``body`` over once, then defers to the real one."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Callable, status: int, message: str, *, close: bool = False) -> None:
    body = orjson.dumps({"error": message})
    headers = _json_headers(len(body))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _rejected(send: Callable, exc: RequestRejected) -> None:
    log.info("rejected request (%d): %s", exc.status, exc.message)
    await _send_error(send, exc.status, exc.message)


async def _failed(send: Callable, exc: Exception) -> None:
    # KServe's generic handler answers 500 with the error text; so does the fast path
    log.exception("inference failed")
    await _send_error(send, 500, f"{type(exc).__name__}: {exc}")
