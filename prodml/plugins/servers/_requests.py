"""Turning inference request bodies into a float32 feature matrix, strictly.

numpy and orjson, no KServe import: the rules are testable on their own and the model server
(``_model.py``) only maps :class:`RequestRejected` onto an HTTP status. Every rejection
names what is wrong with the request and what a valid one looks like; nothing a client
sends may reach the model as anything other than a finite ``(rows, n_features)`` float32
matrix, or as entity rows for a feature-store lookup.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

#: V2 datatypes a request may use for features (converted to float32 for the model).
V2_NUMERIC = {"FP32": np.float32, "FP64": np.float64, "INT32": np.int32, "INT64": np.int64}
#: the name of the single matrix input (the SavedModel's input name) accepted by V2
MATRIX_INPUT = "features"
_NUMBER_TYPES = frozenset({int, float})


class RequestRejected(Exception):
    """A request the server refuses, with the HTTP status to answer and the reason."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


def bad_request(message: str) -> RequestRejected:
    return RequestRejected(400, message)


@dataclass(frozen=True)
class InputSpec:
    """What a request for one model must carry.

    Attributes:
        feature_names: the model's inputs, in the order the model takes them.
        entity_keys: join keys that may replace the features when ``feature_lookup``.
        feature_lookup: whether rows of entity keys are looked up in an online store.
        max_rows: the most rows one request may carry.
    """

    feature_names: tuple[str, ...]
    entity_keys: tuple[str, ...] = ()
    feature_lookup: bool = False
    max_rows: int = 100_000

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def example_row(self) -> str:
        shown = ", ".join(f'"{f}": 0.0' for f in self.feature_names[:3])
        return "{" + shown + (", ..." if self.n_features > 3 else "") + "}"


@dataclass(frozen=True)
class Parsed:
    """A validated request: either a feature matrix or entity rows to look up."""

    matrix: np.ndarray | None = None
    entity_rows: list[dict[str, Any]] | None = None

    @property
    def rows(self) -> int:
        if self.matrix is not None:
            return int(self.matrix.shape[0])
        return len(self.entity_rows or ())


# -- V1 -------------------------------------------------------------------------------


def parse_v1(payload: Any, spec: InputSpec) -> Parsed:
    """Validate a V1 body (already decoded from JSON): ``{"instances": [...]}``.

    Each instance is a list of numbers in feature order, an object keyed by feature name,
    or (with feature lookup) an object of entity keys. ``"inputs"`` is accepted as a
    synonym of ``"instances"``, as TensorFlow Serving does.
    """
    if not isinstance(payload, Mapping):
        raise bad_request(
            f'the body must be a JSON object like {{"instances": [[...{spec.n_features} numbers...]]}}, '
            f"not {_json_type(payload)}"
        )
    key = "instances" if "instances" in payload else "inputs" if "inputs" in payload else None
    if key is None:
        raise bad_request(
            f'the body has no "instances" list (keys: {", ".join(map(str, payload)) or "none"}); '
            f'send {{"instances": [[...{spec.n_features} numbers...]]}}'
        )
    instances = payload[key]
    if not isinstance(instances, list):
        raise bad_request(f'"{key}" must be a list of instances, not {_json_type(instances)}')
    if not instances:
        raise bad_request(f'"{key}" is empty: send at least one instance')
    if len(instances) > spec.max_rows:
        raise RequestRejected(413, f"{len(instances)} instances in one request; the limit is {spec.max_rows}")
    first = instances[0]
    if isinstance(first, list):
        return Parsed(matrix=_matrix_from_lists(instances, spec, key))
    if isinstance(first, Mapping):
        return _from_objects(instances, spec, key)
    raise bad_request(
        f"{key}[0] is {_json_type(first)}; each instance must be a list of "
        f"{spec.n_features} numbers in the order {list(spec.feature_names)} or an object "
        f"like {spec.example_row()}"
    )


#: a float64 value rounds to a finite float32 exactly when its magnitude is below this
#: (halfway between float32's largest value and 2**128, which rounds to even: infinity)
_FLOAT32_EDGE = 2.0**128 - 2.0**103
#: up to this many values, plain Python checks them faster than NumPy's calls cost
_SMALL = 64


def _small_matrix(rows: list[Any], n: int) -> np.ndarray | None:
    """The float32 matrix of a few valid rows, or None to take the checking path.

    A request of one or a few rows is the usual case: NumPy's per-call overhead (array,
    cast, isfinite, all) costs more than looking at each value once.
    """
    edge = _FLOAT32_EDGE
    numbers = _NUMBER_TYPES
    for row in rows:
        if type(row) is not list or len(row) != n:
            return None
        for v in row:
            # NaN fails the comparison; bool is not in _NUMBER_TYPES
            if type(v) not in numbers or not -edge < v < edge:
                return None
    return np.array(rows, dtype=np.float64).astype(np.float32)


def _matrix_from_lists(rows: list[Any], spec: InputSpec, key: str) -> np.ndarray:
    n = spec.n_features
    if len(rows) * n <= _SMALL and (matrix := _small_matrix(rows, n)) is not None:
        return matrix
    for i, row in enumerate(rows):
        if type(row) is not list:
            raise bad_request(f"{key}[{i}] is {_json_type(row)}; every instance must be a list like {key}[0]")
        if len(row) != n:
            raise bad_request(
                f"{key}[{i}] has {len(row)} values; the model takes {n} features: {list(spec.feature_names)}"
            )
    # A set of the element types is one cheap pass and catches strings, nulls, nested
    # lists and JSON booleans (which numpy would silently read as 0/1).
    kinds = {type(v) for row in rows for v in row}
    if not kinds <= _NUMBER_TYPES:
        i, j, value = next(
            (i, j, v) for i, row in enumerate(rows) for j, v in enumerate(row) if type(v) not in _NUMBER_TYPES
        )
        raise bad_request(
            f"{key}[{i}][{j}] (feature {spec.feature_names[j]!r}) is {_json_type(value)}; "
            "features must be numbers"
        )
    try:
        matrix = np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer beyond float64
        i, j, value = next(
            (i, j, v) for i, row in enumerate(rows) for j, v in enumerate(row) if abs(v) > 2**1024
        )
        raise bad_request(
            f"{key}[{i}][{j}] (feature {spec.feature_names[j]!r}) is too large for a float "
            f"({str(value)[:12]}... has {len(str(abs(value)))} digits)"
        ) from None
    return finite_float32(matrix, spec, key)


def _from_objects(rows: list[Any], spec: InputSpec, key: str) -> Parsed:
    features = set(spec.feature_names)
    entity = set(spec.entity_keys)
    lookup = spec.feature_lookup and bool(entity)
    values: list[list[Any]] = []
    entity_rows: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise bad_request(
                f"{key}[{i}] is {_json_type(row)}; every instance must be an object like {key}[0]"
            )
        names = set(row)
        if features <= names and not (names - features - entity):
            if entity_rows:
                raise bad_request(f"{key}[{i}] carries features but earlier instances carry entity keys only")
            values.append([row[f] for f in spec.feature_names])
            continue
        if lookup and names == entity:
            if values:
                raise bad_request(f"{key}[{i}] carries entity keys only but earlier instances carry features")
            for k in spec.entity_keys:
                if type(row[k]) not in (int, str):
                    raise bad_request(
                        f"{key}[{i}].{k} is {_json_type(row[k])}; entity keys are integers or strings"
                    )
            entity_rows.append(dict(row))
            continue
        raise bad_request(_object_problem(i, key, names, spec, lookup))
    if entity_rows:
        return Parsed(entity_rows=entity_rows)
    return Parsed(matrix=_matrix_from_lists(values, spec, key))


def _object_problem(i: int, key: str, names: set[str], spec: InputSpec, lookup: bool) -> str:
    features = set(spec.feature_names)
    entity = set(spec.entity_keys)
    missing = [f for f in spec.feature_names if f not in names]
    unknown = sorted(names - features - entity)
    parts = []
    if missing:
        parts.append(f"missing feature(s) {missing}")
    if unknown:
        parts.append(f"unknown key(s) {unknown}")
    message = f"{key}[{i}]: " + "; ".join(parts) + f"; the model's features are {list(spec.feature_names)}"
    if lookup:
        message += f", or send only the entity key(s) {list(spec.entity_keys)} to look the features up"
    elif entity and names <= entity:
        message += " (feature lookup by entity keys is off: set server.feature_lookup: true)"
    return message


# -- V2 -------------------------------------------------------------------------------


@dataclass(slots=True)
class V2Input:
    """The parts of one V2 request input that validation needs (SDK-independent)."""

    name: str
    datatype: str
    shape: Sequence[int]
    data: Any
    raw: bytes | None = None


def parse_v2(inputs: Sequence[V2Input], spec: InputSpec) -> Parsed:
    """Validate V2 inputs.

    Accepted layouts: one input per feature (each shape ``[rows]`` or ``[rows, 1]``), one
    ``"features"`` input of shape ``[rows, n_features]``, or (with feature lookup) one
    input per entity key.
    """
    if not inputs:
        raise bad_request('"inputs" is empty: send one input per feature, named as in the model metadata')
    names = [inp.name for inp in inputs]
    if len(set(names)) != len(names):
        raise bad_request(f"input names repeat: {names}")
    if names == [MATRIX_INPUT] and MATRIX_INPUT not in spec.feature_names:
        arr = _v2_array(inputs[0], spec)
        if arr.ndim != 2 or arr.shape[1] != spec.n_features:
            raise bad_request(
                f'input "{MATRIX_INPUT}" has shape {list(arr.shape)}; it must be [rows, {spec.n_features}]'
            )
        _check_rows(arr.shape[0], spec)
        return Parsed(matrix=finite_float32(arr, spec, f"inputs[{MATRIX_INPUT}]"))
    given = set(names)
    entity = set(spec.entity_keys)
    if spec.feature_lookup and entity and given == entity:
        columns = [_v2_column(inp, spec, entity_key=True) for inp in inputs]
        rows = _same_rows(inputs, columns)
        _check_rows(rows, spec)
        by_name = dict(zip(names, columns, strict=True))
        return Parsed(entity_rows=[{k: _plain(by_name[k][r]) for k in spec.entity_keys} for r in range(rows)])
    missing = [f for f in spec.feature_names if f not in given]
    unknown = sorted(given - set(spec.feature_names))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing input(s) {missing}")
        if unknown:
            parts.append(f"unknown input(s) {unknown}")
        hint = f'one input per feature {list(spec.feature_names)}, or one "{MATRIX_INPUT}" input [rows, n]'
        if spec.feature_lookup and entity:
            hint += f", or the entity key(s) {list(spec.entity_keys)}"
        raise bad_request("; ".join(parts) + f"; send {hint}")
    by_name = {inp.name: inp for inp in inputs}
    ordered = [by_name[f] for f in spec.feature_names]
    plain = _plain_float_columns(ordered)
    if plain is not None:
        _check_rows(plain.shape[0], spec)
        return Parsed(matrix=plain)
    columns = [_v2_column(inp, spec) for inp in ordered]
    rows = _same_rows(ordered, columns)
    _check_rows(rows, spec)
    return Parsed(matrix=finite_float32(np.stack(columns, axis=1), spec, "inputs"))


def _plain_float_columns(ordered: Sequence[V2Input]) -> np.ndarray | None:
    """The ``[rows, n]`` matrix of per-feature FP32/FP64 JSON inputs that need no checks beyond
    what this looks at (same rows, flat lists of numbers), else None (the general path, with
    its messages, decides). One array build instead of one per input and a stack."""
    rows = -1
    for inp in ordered:
        data = inp.data
        if inp.raw is not None or inp.datatype not in ("FP32", "FP64") or type(data) is not list:
            return None
        shape = inp.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] != len(data):
            return None
        if rows == -1:
            rows = len(data)
        elif len(data) != rows:
            return None
        for v in data:
            # NaN fails the comparison: the general path names it
            if type(v) not in _NUMBER_TYPES or not -_FLOAT32_EDGE < v < _FLOAT32_EDGE:
                return None
    if rows <= 0:
        return None
    # every value is a finite number that stays finite in float32 (checked above)
    return np.array([inp.data for inp in ordered], dtype=np.float64).T.astype(np.float32, order="C")


def _v2_array(inp: V2Input, spec: InputSpec) -> np.ndarray:
    datatype = str(inp.datatype).upper()
    dtype = V2_NUMERIC.get(datatype)
    if dtype is None:
        raise bad_request(
            f"input {inp.name!r} has datatype {inp.datatype!r}; use one of {', '.join(V2_NUMERIC)}"
        )
    shape = list(inp.shape)
    if not shape or any(type(d) is not int or d < 0 for d in shape):
        raise bad_request(f"input {inp.name!r} has shape {shape}; a shape is a list of non-negative integers")
    size = math.prod(shape)
    if inp.raw is not None:
        if len(inp.raw) != size * np.dtype(dtype).itemsize:
            raise bad_request(
                f"input {inp.name!r}: binary data has {len(inp.raw)} bytes; shape {shape} "
                f"of {datatype} needs {size * np.dtype(dtype).itemsize}"
            )
        return np.frombuffer(inp.raw, dtype=dtype).reshape(shape)
    data = inp.data
    if not isinstance(data, list):
        raise bad_request(f'input {inp.name!r}: "data" must be a list of numbers, not {_json_type(data)}')
    flat = data if all(type(v) in _NUMBER_TYPES for v in data) else _flatten(data, inp.name)
    if len(flat) != size:
        raise bad_request(f"input {inp.name!r} has {len(flat)} values; shape {shape} needs {size}")
    if datatype.startswith("INT") and any(type(v) is not int for v in flat):
        raise bad_request(f"input {inp.name!r} is {datatype} but its data has non-integer values")
    try:
        arr = np.array(flat, dtype=np.float64 if datatype.startswith("FP") else np.int64)
    except OverflowError:
        raise bad_request(f"input {inp.name!r} has integers too large for {datatype}") from None
    return arr.reshape(shape)


def _v2_column(inp: V2Input, spec: InputSpec, *, entity_key: bool = False) -> np.ndarray:
    if entity_key and str(inp.datatype).upper() == "BYTES":
        data = inp.data if isinstance(inp.data, list) else []
        if not all(isinstance(v, str) for v in data):
            raise bad_request(f"entity key input {inp.name!r} of datatype BYTES must hold strings")
        return np.array(data, dtype=object)
    arr = _v2_array(inp, spec)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise bad_request(
            f"input {inp.name!r} has shape {list(arr.shape)}; a per-feature input is [rows] or [rows, 1]"
        )
    return arr


def _same_rows(inputs: Sequence[V2Input], columns: Sequence[np.ndarray]) -> int:
    lengths = {inp.name: len(col) for inp, col in zip(inputs, columns, strict=True)}
    if len(set(lengths.values())) != 1:
        raise bad_request(f"inputs have different numbers of rows: {lengths}")
    return next(iter(lengths.values()))


def _check_rows(rows: int, spec: InputSpec) -> None:
    if rows == 0:
        raise bad_request("the request has 0 rows: send at least one")
    if rows > spec.max_rows:
        raise RequestRejected(413, f"{rows} rows in one request; the limit is {spec.max_rows}")


def _flatten(data: list[Any], name: str) -> list[Any]:
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif type(item) in _NUMBER_TYPES:
            out.append(item)
        else:
            raise bad_request(f"input {name!r} holds {_json_type(item)}; data must be numbers")
    return out


# -- V2 request bodies (JSON, or JSON + binary tensors) ----------------------------------

#: the header of the V2 binary tensor extension: the length of the JSON part of the body
BINARY_HEADER = "inference-header-content-length"


@dataclass(frozen=True)
class V2Request:
    """A V2 inference request body, structurally checked (values are checked by parse_v2).

    Attributes:
        inputs: the inputs, binary tensors already cut out of the body.
        id: the request id to echo (None: the server makes one).
        parameters: the request's ``parameters`` object.
        outputs: the requested outputs as ``(name, binary)`` pairs, ``binary`` None when the
            output does not say; None when the request names no outputs.
    """

    inputs: list[V2Input]
    id: str | None = None
    parameters: Mapping[str, Any] | None = None
    outputs: list[tuple[str, bool | None]] | None = None

    def binary_output(self, name: str) -> bool:
        """Whether output ``name`` is answered as binary: its own flag, else ``binary_data_output``."""
        for requested, binary in self.outputs or ():
            if requested == name and binary is not None:
                return binary
        return bool((self.parameters or {}).get("binary_data_output", False))


def _structure(message: str) -> RequestRejected:
    # 422, as KServe's pydantic validation answers a body that is not an inference request
    return RequestRejected(422, message)


def parse_v2_body(body: bytes, json_length: int | str | None = None) -> V2Request:
    """Split and structurally check a V2 body.

    With ``json_length`` (the ``inference-header-content-length`` header) the first
    ``json_length`` bytes are the JSON request and the rest are the binary tensors of the
    inputs whose ``parameters.binary_data_size`` says how many bytes they take, in order.
    Without it the whole body is JSON, whatever its content type says.
    """
    raw = b""
    if json_length is not None:
        try:
            length = int(json_length)
        except (TypeError, ValueError):
            shown = str(json_length)[:20]
            raise bad_request(f"{BINARY_HEADER} is {shown!r}, not a number of bytes") from None
        if not 0 <= length <= len(body):
            raise bad_request(f"{BINARY_HEADER} is {length} but the body has {len(body)} bytes")
        body, raw = body[:length], body[length:]
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _structure(
            f'the body must be a JSON object like {{"inputs": [...]}}, not {_json_type(payload)}'
        )
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _structure(f'"id" must be a string, not {_json_type(request_id)}')
    parameters = payload.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _structure(f'"parameters" must be an object, not {_json_type(parameters)}')
    if "inputs" not in payload:
        raise _structure('"inputs": field required; send {"inputs": [{"name", "shape", "datatype", "data"}]}')
    items = payload["inputs"]
    if not isinstance(items, list):
        raise _structure(f'"inputs" must be a list of inputs, not {_json_type(items)}')
    inputs = []
    offset = 0
    for i, item in enumerate(items):
        inp, offset = _v2_item(item, i, raw, offset)
        inputs.append(inp)
    if offset != len(raw):
        raise bad_request(
            f"the body carries {len(raw)} bytes of binary data but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    outputs = _requested_outputs(payload.get("outputs"))
    return V2Request(inputs=inputs, id=request_id, parameters=parameters, outputs=outputs)


def _v2_item(item: Any, i: int, raw: bytes, offset: int) -> tuple[V2Input, int]:
    if type(item) is dict and "parameters" not in item:
        # the usual JSON input, checked in one look; anything unusual takes the full path
        name, shape, datatype, data = (
            item.get("name"),
            item.get("shape"),
            item.get("datatype"),
            item.get("data"),
        )
        if (
            type(name) is str
            and type(datatype) is str
            and type(data) is list
            and type(shape) is list
            and datatype.upper() != "FP16"  # refused as JSON by the full path
            and (
                (len(shape) == 1 and type(shape[0]) is int)  # the usual [rows]
                or all(type(d) is int for d in shape)
            )
        ):
            return V2Input(name=name, datatype=datatype, shape=shape, data=data), offset
    where = f"inputs[{i}]"
    if not isinstance(item, dict):
        raise _structure(
            f"{where} must be an object with name, shape, datatype and data, not {_json_type(item)}"
        )
    missing = [k for k in ("name", "shape", "datatype") if k not in item]
    parameters = item.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise _structure(f"{where}.parameters must be an object, not {_json_type(parameters)}")
    size = (parameters or {}).get("binary_data_size")
    if size is None and "data" not in item:
        missing.append("data")
    if missing:
        raise _structure(f"{where}: field(s) {', '.join(missing)} required")
    name, shape, datatype = item["name"], item["shape"], item["datatype"]
    if not isinstance(name, str):
        raise _structure(f"{where}.name must be a string, not {_json_type(name)}")
    if not isinstance(datatype, str):
        raise _structure(f"{where}.datatype must be a string, not {_json_type(datatype)}")
    if not isinstance(shape, list):
        raise _structure(f"{where}.shape must be a list of integers, not {_json_type(shape)}")
    dims = []
    for d in shape:
        if type(d) is float and d.is_integer():
            d = int(d)  # 3.0 is read as 3, as KServe's request model reads it
        if type(d) is not int:
            raise _structure(f"{where}.shape must be a list of integers, not {shape}")
        dims.append(d)
    if size is None:
        data = item["data"]
        if not isinstance(data, list):
            raise _structure(f"{where}.data must be a list, not {_json_type(data)}")
        if datatype.upper() == "FP16":
            raise bad_request(f"input {name!r}: FP16 data cannot be sent as JSON; send it as a binary tensor")
        return V2Input(name=name, datatype=datatype, shape=dims, data=data), offset
    if type(size) is not int or size < 0:
        raise bad_request(f"{where}.parameters.binary_data_size must be a non-negative integer, not {size!r}")
    if offset + size > len(raw):
        raise bad_request(
            f"input {name!r} says binary_data_size {size} but only {len(raw) - offset} bytes of binary "
            f"data are left (is {BINARY_HEADER} right?)"
        )
    chunk = raw[offset : offset + size]
    if datatype.upper() == "BYTES":
        strings = _bytes_elements(chunk, name)
        return V2Input(name=name, datatype=datatype, shape=dims, data=strings), offset + size
    return V2Input(name=name, datatype=datatype, shape=dims, data=None, raw=chunk), offset + size


def _bytes_elements(chunk: bytes, name: str) -> list[str]:
    """Binary BYTES elements (each a 4-byte little-endian length, then the bytes) as strings."""
    out = []
    at = 0
    while at < len(chunk):
        if at + 4 > len(chunk):
            raise bad_request(f"input {name!r}: binary BYTES data ends inside an element's length")
        n = int.from_bytes(chunk[at : at + 4], "little")
        value = chunk[at + 4 : at + 4 + n]
        if len(value) != n:
            raise bad_request(f"input {name!r}: binary BYTES element is shorter than its length")
        try:
            out.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise bad_request(f"input {name!r}: BYTES elements must be UTF-8 text (entity keys)") from None
        at += 4 + n
    return out


def _requested_outputs(outputs: Any) -> list[tuple[str, bool | None]] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise _structure(f'"outputs" must be a list of {{"name": ...}} objects, not {_json_type(outputs)}')
    requested = []
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise _structure(f'outputs[{i}] must be an object with a "name" string')
        parameters = out.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise _structure(f"outputs[{i}].parameters must be an object")
        binary = parameters.get("binary_data")
        requested.append((out["name"], None if binary is None else bool(binary)))
    return requested


# -- shared ---------------------------------------------------------------------------


def finite_float32(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    """``arr`` as a C-contiguous float32 matrix; NaN, ±Inf and float32 overflow rejected."""
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 are refused below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if out.ndim != 2 or out.shape[1] != spec.n_features:
        raise bad_request(f"{where}: expected [rows, {spec.n_features}] values, got shape {list(out.shape)}")
    if out.shape[0] == 0:
        raise bad_request(f"{where}: no rows")
    finite = np.isfinite(out)
    if not finite.all():
        r, c = (int(x) for x in np.argwhere(~finite)[0])
        original = float(np.asarray(arr, dtype=np.float64)[r, c])
        reason = (
            "not a number"
            if math.isnan(original)
            else ("infinite" if math.isinf(original) else "outside the float32 range")
        )
        raise bad_request(f"{where}: row {r}, feature {spec.feature_names[c]!r} is {reason} ({original})")
    return out


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        shown = value if len(value) <= 20 else value[:20] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
