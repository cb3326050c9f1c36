"""The KServe model that serves a prodml bundle, and the server process around it.

Imported only where a server really runs (it imports kserve at module level, because
:class:`BundleModel` subclasses ``kserve.Model``). Four additions to KServe's own
ModelServer, each for a promise the plugin makes:

* :class:`BundleModel` loads the bundle in the background; the model (and, through
  :class:`TruthfulDataPlane`, the server) is not ready until the model is loaded, and a failed
  load stays not-ready with the reason in the log and in the 503 answer of the readiness
  endpoints. Inference goes through one compiled TensorFlow concrete function with a fixed
  ``[None, n_features]`` float32 signature, a whole batch per call.
* :class:`~prodml.plugins.servers._asgi.FrontDoor`, a raw ASGI app in front of KServe's,
  answers inference of the served model without the web framework, and enforces the body
  limit (413) for every request.
* :class:`ReadOnlyRepository` turns KServe's model-repository load/unload off: nothing
  that reaches the data port can change what is served.
* Request problems raise :class:`~prodml.plugins.servers._requests.RequestRejected`,
  answered with its 4xx status and ``{"error": reason}``, logged at INFO without traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kserve import Model
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady, ServerNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from prodml.core.logs import import_tensorflow
from prodml.plugins.servers._requests import InputSpec, Parsed, RequestRejected, V2Input, parse_v1, parse_v2

log = logging.getLogger("prodml.server")


class BundleModel(Model):
    """Serves one prodml bundle (V1 and V2) from a local, verified copy."""

    def __init__(
        self,
        name: str,
        bundle_dir: Path,
        *,
        version: str = "",
        source: Any = None,
        feature_lookup: bool = False,
        trust_model_code: bool = False,
        max_rows: int = 100_000,
    ) -> None:
        super().__init__(name)
        self.bundle_dir = Path(bundle_dir)
        self.version = version
        self.source = source
        self.feature_lookup = feature_lookup
        self.trust_model_code = trust_model_code
        self.max_rows = max_rows
        self.ready = False
        #: called once, in the loading thread, when the model has loaded (workers > 1 report it)
        self.on_ready: Callable[[], None] | None = None
        self.failure: str | None = None
        self.metadata: Any = None
        self.spec: InputSpec | None = None
        self.output_name = "prediction"
        self.n_outputs = 0
        self._infer: Callable[[np.ndarray], np.ndarray] | None = None
        self.inference_path = ""
        self._load_lock = threading.Lock()
        self._attempted = False

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Do nothing: readiness comes only from a successful :meth:`load`."""

    def load(self) -> bool:
        """Verify and load the bundle once; a failure is kept (never retried per request)."""
        with self._load_lock:
            if self._attempted:
                return self.ready
            self._attempted = True
            started = time.monotonic()
            try:
                self._load()
            except Exception as exc:
                self.failure = _describe(exc)
                log.error("model %r failed to load and stays not ready: %s", self.name, self.failure)
                return False
            self.ready = True
            if self.on_ready is not None:
                self.on_ready()
            log.info(
                "model %r version %s ready in %.1f s (%d features -> %s[%d], inference: %s)",
                self.name,
                self.version or "?",
                time.monotonic() - started,
                self.spec.n_features if self.spec else 0,
                self.output_name,
                self.n_outputs,
                self.inference_path,
            )
            return True

    def _load(self) -> None:
        tf = import_tensorflow()

        _limit_tf_threads(tf)
        # load_bundle verifies the manifest before any byte of the model is deserialised
        model, metadata = load_keras_bundle(self.bundle_dir, trust_model_code=self.trust_model_code)
        names = tuple(metadata.feature_names)
        if not names:
            raise ValueError(f"{self.bundle_dir}/prodml.json lists no features")
        n = len(names)
        if self.feature_lookup:
            self._check_source(metadata)
        concrete = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, n], tf.float32, name="features")],
            autograph=False,
        ).get_concrete_function()
        # The first call of a concrete function does one-off work; pay it here, not in a request.
        probe = concrete(tf.zeros([2, n], tf.float32))
        if isinstance(probe, Mapping | list | tuple):
            raise ValueError("the model returns several outputs; prodml serves models with one output tensor")
        if len(probe.shape) != 2 or int(probe.shape[0]) != 2:
            raise ValueError(f"the model returns shape {probe.shape} for 2 rows; it must return (rows, k)")
        self.n_outputs = int(probe.shape[1])
        self.output_name = (metadata.outputs or ["prediction"])[0]

        def tf_infer(matrix: np.ndarray) -> np.ndarray:
            return concrete(tf.constant(matrix)).numpy()

        self._infer, self.inference_path = choose_inference(model, tf_infer, n)
        self.metadata = metadata
        self.spec = InputSpec(
            feature_names=names,
            entity_keys=tuple(metadata.entity_keys),
            feature_lookup=self.feature_lookup,
            max_rows=self.max_rows,
        )
        if not self.version:
            from prodml.core.bundle import manifest_digest

            self.version = manifest_digest(self.bundle_dir)[:12]

    def _check_source(self, metadata: Any) -> None:
        """Feature lookup must fetch exactly the features the model was trained on."""
        if self.source is None:
            raise ValueError("server.feature_lookup is true but no data source was given to the server")
        if not metadata.entity_keys or not metadata.feature_refs:
            raise ValueError(
                "server.feature_lookup is true but the bundle records no Feast entity keys/feature refs "
                "(it was trained from a plain file); set server.feature_lookup: false"
            )
        refs = list(getattr(self.source, "feature_refs", ()) or ())
        if refs != list(metadata.feature_refs):
            raise ValueError(
                f"the source's feature refs {refs} differ from the ones the model was trained on "
                f"{list(metadata.feature_refs)}; serve with the source config used for training"
            )

    # -- metadata ---------------------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        if self.spec is None:
            return []
        return [{"name": f, "datatype": "FP32", "shape": [-1]} for f in self.spec.feature_names]

    def get_output_types(self) -> list[dict[str, Any]]:
        if self.spec is None:
            return []
        return [{"name": self.output_name, "datatype": "FP32", "shape": [-1, self.n_outputs]}]

    # -- inference --------------------------------------------------------------------

    def infer(self, matrix: np.ndarray) -> np.ndarray:
        """The model's predictions for a verified ``(rows, n_features)`` float32 matrix."""
        return self._infer(matrix)  # type: ignore[misc]  # set before ready

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        return payload  # validation happens in predict, where the protocol is known

    async def postprocess(self, result: Any, headers: Any = None, response_headers: Any = None) -> Any:
        return result

    def validate(self, payload: Any) -> Any:
        return payload

    async def predict(
        self, payload: Any, headers: dict[str, str] | None = None, response_headers: Any = None
    ):
        spec = self.spec
        if spec is None or self._infer is None:
            raise ModelNotReady(self.name, self.failure)
        if isinstance(payload, InferRequest):
            parsed = parse_v2([_v2_input(i) for i in payload.inputs], spec)
            matrix = await self.matrix(parsed)
            result = self._infer(matrix)
            # numpy data is serialised once, by InferResponse.to_rest (JSON or binary as asked)
            out = InferOutput(name=self.output_name, shape=list(result.shape), datatype="FP32", data=result)
            return InferResponse(
                response_id=payload.id or uuid.uuid4().hex,
                model_name=self.name,
                model_version=self.version,
                infer_outputs=[out],
                use_binary_outputs=payload.use_binary_outputs,
                requested_outputs=payload.request_outputs,
            )
        if isinstance(payload, bytes | bytearray):
            # KServe hands over bodies without a JSON content type undecoded
            try:
                payload = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise RequestRejected(400, f"the body is not valid JSON: {exc}") from None
        matrix = await self.matrix(parse_v1(payload, spec))
        return {"predictions": self._infer(matrix).tolist()}

    async def matrix(self, parsed: Parsed) -> np.ndarray:
        """The feature matrix of a parsed request (entity rows are looked up first)."""
        if parsed.matrix is not None:
            return parsed.matrix
        # Online-store reads block on I/O: keep them off the event loop.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.lookup, parsed.entity_rows or [])

    def lookup(self, entity_rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Fetch the model's features for ``entity_rows`` from the source's online store."""
        assert self.spec is not None
        spec = self.spec
        from prodml.core.errors import DataError

        try:
            frame = self.source.online_features(list(entity_rows))
        except DataError as exc:  # the source's word for entities it has no online values for
            partly = _partly_missing(getattr(exc, "missing_values", None), entity_rows, spec)
            if partly is not None:
                raise partly from None
            keys = ", ".join(_key_text(row, spec.entity_keys) for row in entity_rows[:5])
            raise RequestRejected(404, f"online features not found for {keys}: {exc.message}") from None
        except Exception as exc:
            log.warning("online feature lookup failed: %s", _describe(exc))
            raise RequestRejected(
                502, f"the online feature store could not be read: {_describe(exc)}"
            ) from None
        missing_cols = [f for f in spec.feature_names if f not in frame.columns]
        if missing_cols:
            raise RequestRejected(
                502,
                f"the online store answered without feature(s) {missing_cols}; is the feature view applied?",
            )
        values = frame[list(spec.feature_names)].to_numpy(dtype=np.float64, na_value=np.nan)
        absent = np.isnan(values)
        if absent.any():
            whole = [i for i in range(len(values)) if absent[i].all()]
            if whole:
                keys = [_key_text(entity_rows[i], spec.entity_keys) for i in whole]
                raise RequestRejected(
                    404, f"no online features for entity {', '.join(keys)}; materialize them first"
                )
            i = int(np.argwhere(absent)[0][0])
            gaps = [f for f, a in zip(spec.feature_names, absent[i], strict=True) if a]
            raise RequestRejected(
                422, f"entity {_key_text(entity_rows[i], spec.entity_keys)} has no online value for {gaps}"
            )
        from prodml.plugins.servers._requests import finite_float32

        return finite_float32(values, spec, "online features")


def _partly_missing(
    gaps: Mapping[str, Sequence[int]] | None, entity_rows: Sequence[Mapping[str, Any]], spec: InputSpec
) -> RequestRejected | None:
    """422 for the first entity the online store knows only some features of, when no
    entity of the request is wholly unknown (that is a 404); None to answer 404.

    ``gaps`` is what a source's DataError may carry: {feature: [row indices without a value]}.
    """
    if not gaps:
        return None
    lacking: dict[int, list[str]] = {}
    for feature, rows in gaps.items():
        for row in rows:
            lacking.setdefault(int(row), []).append(feature)
    n_features = len(spec.feature_names)
    if not lacking or any(len(features) >= n_features for features in lacking.values()):
        return None
    first = min(lacking)
    if first >= len(entity_rows):
        return None
    gaps_of_first = [f for f in spec.feature_names if f in lacking[first]] or lacking[first]
    entity = _key_text(entity_rows[first], spec.entity_keys)
    return RequestRejected(422, f"entity {entity} has no online value for {gaps_of_first}")


def choose_inference(
    model: Any, tf_infer: Callable[[np.ndarray], np.ndarray], n_features: int
) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The compiled TF function, or the NumPy pass when it agrees with it and measures faster.

    Agreement is checked on probe batches (zeros and random rows at several scales); speed
    on one row, the common request. Anything else keeps TensorFlow.
    """
    from prodml.plugins.servers._fastpath import numpy_forward

    fast = numpy_forward(model)
    if fast is None:
        return tf_infer, "tensorflow concrete function"
    rng = np.random.default_rng(0)
    probes = [np.zeros((1, n_features), np.float32)] + [
        (rng.normal(size=(rows, n_features)) * scale).astype(np.float32)
        for rows, scale in ((1, 1.0), (7, 1.0), (64, 3.0), (5, 100.0))
    ]
    for probe in probes:
        want = tf_infer(probe)
        got = fast(probe.copy())
        tolerance = 1e-5 * max(1.0, float(np.abs(want).max()))
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=tolerance):
            log.info("NumPy forward pass disagrees with TensorFlow for this model; serving with TensorFlow")
            return tf_infer, "tensorflow concrete function"
    one = probes[1]

    def per_call(fn: Callable[[np.ndarray], np.ndarray]) -> float:
        times = []
        for _ in range(300):
            start = time.perf_counter()
            fn(one)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    tf_time, np_time = per_call(tf_infer), per_call(fast)
    if np_time < tf_time:
        return fast, f"numpy (verified against TF; {np_time * 1e3:.3f} ms vs {tf_time * 1e3:.3f} ms per row)"
    return tf_infer, f"tensorflow concrete function ({tf_time * 1e3:.3f} ms vs numpy {np_time * 1e3:.3f} ms)"


def _limit_tf_threads(tf: Any) -> None:
    """One TensorFlow thread per pool unless PRODML_TF_THREADS says otherwise.

    A served request is a few rows through a small network: TF's default pools (one thread
    per core each) only wake threads that compete with the event loop for the same cores.
    Batch-heavy deployments can raise it (or use server.workers).
    """
    threads = int(os.environ.get("PRODML_TF_THREADS", "1"))
    if threads <= 0:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TF already initialised its runtime in this process: keep its pools
        log.debug("TensorFlow thread pools were already set up; PRODML_TF_THREADS not applied")


def load_keras_bundle(bundle_dir: Path, *, trust_model_code: bool = False) -> tuple[Any, Any]:
    """The trainer's ``load_bundle`` (manifest check, safe-mode Keras load)."""
    from prodml.plugins.trainers.keras import load_bundle

    return load_bundle(Path(bundle_dir), trust_model_code=trust_model_code)


def _v2_input(inp: Any) -> V2Input:
    return V2Input(
        name=inp.name, datatype=inp.datatype, shape=list(inp.shape), data=inp.data, raw=inp._raw_data
    )


def _key_text(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ",".join(f"{k}={row.get(k)!r}" for k in keys)


def _describe(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message}"


class TruthfulDataPlane(DataPlane):
    """KServe's DataPlane whose server readiness is the readiness of its models."""

    def metadata(self) -> dict[str, Any]:
        """Server metadata listing the extensions this server really offers.

        KServe lists ``model_repository_extension``, which prodml turns off
        (:class:`ReadOnlyRepository`); both inference paths speak the binary tensor extension.
        """
        return {**super().metadata(), "extensions": ["binary_tensor_data"]}

    async def ready(self) -> bool:
        models = list(self.model_registry.get_models().values())
        for model in models:
            if not await model.healthy():
                detail = getattr(model, "failure", None)
                raise ServerNotReady(
                    f"model {model.name!r} " + (f"failed to load: {detail}" if detail else "is loading")
                )
        return bool(models)

    async def model_ready(self, model_name: str, disable_predictor_health_check: bool = False) -> bool:
        ready = await super().model_ready(model_name, disable_predictor_health_check)
        if not ready:
            failure = getattr(self.model_registry.get_model(model_name), "failure", None)
            if failure:
                raise ModelNotReady(model_name, f"Loading failed: {failure}")
        return ready


class ReadOnlyRepository(ModelRepositoryExtension):
    """KServe's model-repository extension with load and unload refused (403).

    KServe answers ``POST /v2/repository/models/<m>/unload`` for anyone who reaches the data
    port, and the model is gone until a restart; on a cluster that is any pod. prodml changes
    what a server serves through ``prodml serve``/``update`` only.
    """

    async def load(self, model_name: str) -> None:
        raise RequestRejected(403, _REPOSITORY_OFF.format(action="load", name=model_name))

    async def unload(self, model_name: str) -> None:
        raise RequestRejected(403, _REPOSITORY_OFF.format(action="unload", name=model_name))


_REPOSITORY_OFF = (
    "model repository {action} is turned off on prodml's model server ({name!r} stays as it is); "
    "serve another version with prodml (prodml serve / prodml models promote)"
)


async def _rejected_handler(_request: Any, exc: Exception) -> Any:
    from fastapi.responses import ORJSONResponse

    if isinstance(exc, ModelNotFound):
        status = 404
    elif isinstance(exc, ModelNotReady | ServerNotReady):
        status = 503
    else:
        status = getattr(exc, "status", 400)
    message = getattr(exc, "message", None) or getattr(exc, "reason", None) or str(exc)
    if isinstance(exc, InvalidInput) and message.startswith("Unrecognized request format: "):
        # KServe's wording for a body its JSON decoder refused
        message = "the body is not valid JSON: " + message.removeprefix("Unrecognized request format: ")
    elif "inference-header-content-length" in message:
        # KServe takes a V2 body without a JSON content type for its binary tensor extension
        message = (
            "send the V2 request as JSON with the header `Content-Type: application/json` "
            "(a body without it is read as binary tensor data, which needs the "
            "`Inference-Header-Content-Length` header)"
        )
    log.info("rejected request (%d): %s", status, message)
    return ORJSONResponse(status_code=status, content={"error": message})


async def _validation_handler(_request: Any, exc: Any) -> Any:
    """FastAPI's body validation (V2 JSON that is not an inference request) as a short 4xx."""
    from fastapi.responses import ORJSONResponse

    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    status = 400 if any(e.get("type") == "json_invalid" for e in exc.errors()) else 422
    message = "; ".join(problems) or "invalid request body"
    log.info("rejected request (%d): %s", status, message)
    return ORJSONResponse(status_code=status, content={"error": message})


@dataclass
class ServeOptions:
    """How the server process listens (the local-mode part of the server config)."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_request_bytes: int = 4 << 20
    access_log: bool = False
    reuse_port: bool = False
    fast_path: bool = True
    #: SIGUSR1 makes every later response close its connection (a handover drains this server)
    drain_on_signal: bool = False


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket; SO_REUSEPORT lets several worker processes share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from prodml.core.errors import ServingError

        raise ServingError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="another process uses the port: stop it, or set server.port (0 picks a free port)",
        ) from None
    # Accepted connections inherit TCP_NODELAY (Linux): without it, a response written as
    # headers + body stalls ~40 ms per keep-alive request on Nagle and delayed ACKs.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(model: Model, options: ServeOptions, *, sock: socket.socket | None = None) -> None:
    """Run KServe's ModelServer for ``model`` in this process until SIGINT/SIGTERM.

    The socket is bound before the model loads, so liveness answers at once and readiness
    tells the truth while the bundle loads in a background thread.
    """
    from kserve import ModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.rest.server import RESTServer
    from uvicorn.importer import import_from_string

    from prodml.plugins.servers._asgi import FrontDoor

    sock = sock or bind_socket(options.host, options.port, reuse_port=options.reuse_port)
    server = ModelServer(
        http_port=sock.getsockname()[1],
        workers=1,
        enable_grpc=False,
        enable_docs_url=False,
        enable_latency_logging=False,
    )
    server.dataplane = TruthfulDataPlane(model_registry=server.registered_models)
    server.register_model(model)
    rest = RESTServer(
        FASTAPI_APP_IMPORT_STRING,
        server.dataplane,
        ReadOnlyRepository(server.registered_models),
        sock.getsockname()[1],
        workers=1,
        grace_period=5,
    )
    rest.config.host = options.host  # KServe binds 0.0.0.0; prodml binds server.host (loopback by default)
    rest.config.access_log = options.access_log
    rest.create_application()
    app = import_from_string(FASTAPI_APP_IMPORT_STRING)
    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(RequestRejected, _rejected_handler)
    app.add_exception_handler(InvalidInput, _rejected_handler)
    app.add_exception_handler(ModelNotFound, _rejected_handler)
    # not-ready answers are expected while loading (and polled often): no traceback per poll
    app.add_exception_handler(ModelNotReady, _rejected_handler)
    app.add_exception_handler(ServerNotReady, _rejected_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    # the front door answers the model's inference itself and passes the rest to KServe
    rest.config.app = FrontDoor(app, model, max_bytes=options.max_request_bytes, fast=options.fast_path)
    if options.drain_on_signal:
        from prodml.plugins.servers._handover import DrainGate

        rest.config.app = DrainGate(rest.config.app)
    if not options.access_log:
        logging.getLogger("uvicorn.access").disabled = True
    # kserve logs every rejected request with a traceback at ERROR; prodml's handlers log them
    logging.getLogger("kserve").setLevel(logging.WARNING)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=4))
        threading.Thread(target=model.load, name="prodml-model-load", daemon=True).start()
        await rest._server.serve(sockets=[sock])

    log.info(
        "serving %r on http://%s:%d (pid %d, inference: %s)",
        model.name,
        options.host,
        sock.getsockname()[1],
        os.getpid(),
        "prodml fast path" if options.fast_path else "KServe's app",
    )
    asyncio.run(main())
