"""A small HTTP client for a served prodml model (standard library only).

Used by ``prodml predict``, by the runners to print a sample prediction, and by tests::

    from prodml.plugins.servers.client import predict
    predict("http://127.0.0.1:8080", "quickstart", [[0.1, 0.2, 0.3, 0.4, 0.5]])
    predict(url, "quickstart", [{"sqft": 0.1, ...}], protocol="v2")
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from prodml.core.errors import ServingError


class PredictionError(ServingError):
    """The server answered with an error status; ``status`` and the server's reason are kept."""

    def __init__(self, status: int, reason: str, url: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(f"{url} answered {status}: {reason}")


class RequestDataError(ServingError, ValueError):
    """The request data cannot be sent as asked (caught before any request, like a 400)."""


def call(url: str, body: Any = None, *, method: str | None = None, timeout: float = 30) -> Any:
    """Send JSON ``body`` (or GET without one) and return the decoded JSON answer.

    Raises:
        PredictionError: the server answered 4xx/5xx (with its ``error`` text).
        ServingError: nothing answered at ``url``.
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method or ("GET" if data is None else "POST"))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            reason = json.loads(raw).get("error") or json.loads(raw).get("detail") or raw.decode()
        except (ValueError, AttributeError):
            reason = raw.decode(errors="replace")[:500] or exc.reason
        raise PredictionError(exc.code, str(reason), url) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServingError(
            f"no model server answers at {url}: {getattr(exc, 'reason', exc)}",
            hint="start one with `prodml serve -c FILE` (or `prodml run` with the serve stage)",
        ) from None
    return json.loads(raw) if raw else {}


def metadata(url: str, model_name: str, timeout: float = 30) -> dict[str, Any]:
    """The V2 model metadata (inputs by feature name, outputs)."""
    return call(f"{url.rstrip('/')}/v2/models/{model_name}", timeout=timeout)


def predict(url: str, model_name: str, instances: list, protocol: str = "v1", timeout: float = 30) -> dict:
    """Predict ``instances`` (rows as lists in feature order, or dicts by feature name).

    With ``protocol="v2"`` the rows become one named FP32 input per feature; the feature
    names of list rows come from the model's V2 metadata. Returns the server's JSON answer.
    """
    base = url.rstrip("/")
    if protocol == "v1":
        return call(f"{base}/v1/models/{model_name}:predict", {"instances": instances}, timeout=timeout)
    if protocol != "v2":
        raise RequestDataError(f"protocol must be 'v1' or 'v2', not {protocol!r}")
    return call(
        f"{base}/v2/models/{model_name}/infer",
        v2_request(base, model_name, instances, timeout),
        timeout=timeout,
    )


def v2_request(url: str, model_name: str, instances: Sequence[Any], timeout: float = 30) -> dict[str, Any]:
    """A V2 inference request with one input per column of ``instances``."""
    if not instances:
        raise RequestDataError("the request has no rows", hint="e.g. --data '[[0.1, 0.2, 0.3]]'")
    if all(isinstance(row, Mapping) for row in instances):
        names = list(instances[0])
        columns = {name: [row.get(name) for row in instances] for name in names}
    else:
        names = [i["name"] for i in metadata(url, model_name, timeout).get("inputs", [])]
        bad = [i for i, row in enumerate(instances) if not _is_row(row) or len(row) != len(names)]
        if bad:
            row = instances[bad[0]]
            got = f"{len(row)} values" if _is_row(row) else f"a {type(row).__name__}, not a list"
            raise RequestDataError(
                f"row {bad[0]} has {got}; model {model_name!r} takes {len(names)}: {', '.join(names)}",
                hint="send one value per input in this order, or rows as objects by input name",
            )
        columns = {name: [row[j] for row in instances] for j, name in enumerate(names)}
    inputs = []
    for name, values in columns.items():
        integers = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        text = all(isinstance(v, str) for v in values)
        datatype = "BYTES" if text else "INT64" if integers else "FP32"
        inputs.append({"name": name, "shape": [len(values)], "datatype": datatype, "data": values})
    return {"inputs": inputs}


def _is_row(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def predictions(answer: Mapping[str, Any]) -> list[Any]:
    """The predictions of a V1 or V2 answer as rows."""
    if "predictions" in answer:
        return list(answer["predictions"])
    output = answer["outputs"][0]
    shape, data = output["shape"], output["data"]
    width = shape[1] if len(shape) > 1 else 1
    return [data[i * width : (i + 1) * width] for i in range(shape[0])]
