"""Check what prodml would send to a cluster against the cluster's own schemas.

Three validators, each fed by data derived from the pinned upstream release
(:mod:`prodml.core.versions`; the data is in ``cluster_schemas/``, whose README names the
source of every file):

* custom resources (KServe's InferenceService, and any CRD registered in
  :data:`CRD_SCHEMAS`) against the CRD's ``openAPIV3Schema``, applied with ``jsonschema``
  with unknown fields made errors, as the API server does with strict field validation
  (kubectl's default);
* core objects (Secret, ServiceAccount, ...) against the pinned Kubernetes version's schemas
  from PyPI ``kubernetes-validate``, strict;
* a compiled KFP pipeline (the PipelineSpec and its platform spec) against the field set of
  the pinned KFP backend's protos: the backend's driver parses them with protojson, which
  rejects an unknown field (kubeflow/pipelines#12495).

A validator returns a list of problems (empty: accepted), each naming the object and the
path of the bad field; :func:`raise_for` turns them into one :class:`ClusterCheckError`.
``jsonschema`` and ``kubernetes_validate`` are imported only when a check runs.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from prodml.core import versions
from prodml.core.errors import ConfigError, MissingDependencyError

SCHEMA_PACKAGE = "prodml.core.cluster_schemas"

#: (apiVersion, kind) -> the file holding that custom resource's derived CRD schema. Another
#: CRD (a Kubeflow TFJob, ...) is checked as soon as its schema file is listed here.
CRD_SCHEMAS: dict[tuple[str, str], str] = {
    (
        "serving.kserve.io/v1beta1",
        "InferenceService",
    ): f"kserve-{versions.KSERVE_VERSION}-inferenceservice.json.gz",
    ("kubeflow.org/v1", "TFJob"): f"training-operator-{versions.TRAINING_OPERATOR_VERSION}-tfjob.json.gz",
}

#: The KFP backend's proto field tables (message -> field -> [json name, type, label]).
KFP_PROTOS = f"kfp-{versions.KFP_BACKEND_VERSION}-protos.json"
PIPELINE_SPEC = "ml_pipelines.PipelineSpec"
PLATFORM_SPEC = "ml_pipelines.PlatformSpec"
KUBERNETES_EXECUTOR = "kfp_kubernetes.KubernetesExecutorConfig"

#: protobuf well-known types as protojson writes them: anything, or a string
_ANY_JSON = {
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.rpc.Status",
}
_STRING_JSON = {"google.protobuf.Duration", "google.protobuf.Timestamp", "string", "bytes"}
_INT_TYPES = {
    "int32",
    "int64",
    "uint32",
    "uint64",
    "sint32",
    "sint64",
    "fixed32",
    "fixed64",
    "sfixed32",
    "sfixed64",
}


class ClusterCheckError(ConfigError):
    """Objects prodml would send are not accepted by the pinned cluster versions."""


@dataclass(frozen=True)
class Problem:
    """One rejected field: which object, where in it, and why."""

    subject: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.subject} at {self.path}" if self.path else self.subject
        return f"{where}: {self.message}"


def _load_text(name: str) -> bytes:
    data = resources.files(SCHEMA_PACKAGE).joinpath(name).read_bytes()
    return gzip.decompress(data) if name.endswith(".gz") else data


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The strict JSON schema of a registered custom resource (None: not registered)."""
    name = CRD_SCHEMAS.get((api_version, kind))
    if name is None:
        return None
    return _strict(json.loads(_load_text(name))["openAPIV3Schema"])


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields made errors (``additionalProperties: false``).

    A structural CRD schema does not say ``additionalProperties: false``: the API server
    prunes unknown fields, or with strict field validation (kubectl's default) rejects
    them. ``x-kubernetes-preserve-unknown-fields`` keeps a subtree open, as the server does.
    """
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _path(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _subject(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    name = meta.get("name", "?") if isinstance(meta, Mapping) else "?"
    return f"{obj.get('kind', '?')} {name}"


def check_custom_resource(obj: Mapping[str, Any]) -> list[Problem]:
    """Problems of ``obj`` against its CRD schema (an unregistered kind is itself a problem)."""
    import jsonschema

    subject = _subject(obj)
    schema = crd_schema(str(obj.get("apiVersion")), str(obj.get("kind")))
    if schema is None:
        known = ", ".join(f"{k} ({a})" for a, k in sorted(CRD_SCHEMAS))
        return [
            Problem(subject, "", f"no schema for {obj.get('apiVersion')} {obj.get('kind')}; known: {known}")
        ]
    validator = jsonschema.Draft7Validator(schema)
    problems = [
        Problem(subject, _path(error.absolute_path), error.message)
        for error in sorted(validator.iter_errors(dict(obj)), key=lambda e: list(map(str, e.absolute_path)))
    ]
    return problems + _check_metadata(subject, obj.get("metadata"))


def _check_metadata(subject: str, metadata: Any) -> list[Problem]:
    """A custom resource's metadata against the core ObjectMeta schema (the CRD leaves it open)."""
    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
    return [Problem(subject, p.path, p.message) for p in check_core_object(probe, subject=subject)]


def check_core_object(obj: Mapping[str, Any], *, subject: str | None = None) -> list[Problem]:
    """Problems of a core Kubernetes object against the pinned version's strict schemas."""
    try:
        import kubernetes_validate
        from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
    except ImportError:
        raise MissingDependencyError("server", "kserve", "kubernetes_validate", "kserve") from None
    subject = subject or _subject(obj)
    try:
        kubernetes_validate.validate(dict(obj), versions.KUBERNETES_SCHEMA_VERSION, strict=True)
    except SchemaNotFoundError:
        known = ", ".join(f"{k} ({a})" for a, k in sorted(CRD_SCHEMAS))
        return [
            Problem(
                subject,
                "",
                f"{obj.get('apiVersion')} {obj.get('kind')} is neither a Kubernetes "
                f"{versions.KUBERNETES_SCHEMA_VERSION} kind nor a custom resource prodml knows ({known})",
            )
        ]
    except ValidationError as exc:
        # the first error only: kubernetes-validate stops there
        return [Problem(subject, _path(exc.absolute_path), exc.message)]
    return []


def check_objects(objs: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """Every object against its schema: registered CRDs by theirs, the rest by Kubernetes'."""
    problems: list[Problem] = []
    for obj in objs:
        if (str(obj.get("apiVersion")), str(obj.get("kind"))) in CRD_SCHEMAS:
            problems += check_custom_resource(obj)
        else:
            problems += check_core_object(obj)
    return problems


# -- KFP: protojson field sets ---------------------------------------------------------------


@cache
def kfp_messages() -> dict[str, dict[str, list[Any]]]:
    """message -> {proto field name: [json name, type, label, (enum values)]} of the pinned backend."""
    return json.loads(_load_text(KFP_PROTOS))["messages"]


def check_message(value: Any, message: str, subject: str, path: tuple[Any, ...] = ()) -> list[Problem]:
    """Problems of protojson ``value`` as ``message``: unknown fields, wrong JSON types."""
    messages = kfp_messages()
    fields = messages[message]
    if not isinstance(value, Mapping):
        return [
            Problem(
                subject,
                _path(path),
                f"expected an object ({message.split('.')[-1]}), got {type(value).__name__}",
            )
        ]
    # protojson accepts the proto name and the lowerCamelCase JSON name of each field
    by_name: dict[str, Any] = {}
    for name, spec in fields.items():
        by_name[name] = spec
        by_name[spec[0]] = spec
    problems: list[Problem] = []
    for key, item in value.items():
        found = by_name.get(key)
        if found is None:
            known = ", ".join(sorted(s[0] for s in fields.values()))
            problems.append(
                Problem(
                    subject,
                    _path((*path, key)),
                    f"unknown field {key!r} in {message} of KFP {versions.KFP_BACKEND_VERSION} "
                    f"(known: {known})",
                )
            )
            continue
        problems += _check_field(item, found, subject, (*path, key))
    return problems


def _check_field(value: Any, spec: list[Any], subject: str, path: tuple[Any, ...]) -> list[Problem]:
    label = spec[2]
    if label == "repeated":
        if not isinstance(value, list):
            return [Problem(subject, _path(path), f"expected a list, got {type(value).__name__}")]
        out: list[Problem] = []
        for index, item in enumerate(value):
            out += _check_scalar(item, spec, subject, (*path, index))
        return out
    if label == "map":
        if not isinstance(value, Mapping):
            return [Problem(subject, _path(path), f"expected a map, got {type(value).__name__}")]
        out = []
        for key, item in value.items():
            out += _check_scalar(item, spec, subject, (*path, key))
        return out
    return _check_scalar(value, spec, subject, path)


def _check_scalar(value: Any, spec: list[Any], subject: str, path: tuple[Any, ...]) -> list[Problem]:
    type_name = spec[1]
    if type_name in kfp_messages():
        return check_message(value, type_name, subject, path)
    ok = True
    if type_name in _ANY_JSON:
        ok = True
    elif type_name in _STRING_JSON:
        ok = isinstance(value, str)
    elif type_name == "bool":
        ok = isinstance(value, bool)
    elif type_name in _INT_TYPES:
        # protojson writes 64-bit integers as strings and accepts both
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.lstrip("-").isdigit()
        )
    elif type_name in ("double", "float"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif len(spec) > 3:  # an enum: its value names (or numbers)
        ok = value in spec[3] or isinstance(value, int)
        if not ok:
            return [Problem(subject, _path(path), f"{value!r} is not one of {', '.join(spec[3])}")]
    if not ok:
        return [Problem(subject, _path(path), f"expected {type_name}, got {type(value).__name__} {value!r}")]
    return []


def check_pipeline(docs: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """A compiled pipeline (PipelineSpec, then the optional PlatformSpec) against the backend's protos."""
    if not docs:
        return [Problem("pipeline", "", "the file holds no document")]
    problems = check_message(docs[0], PIPELINE_SPEC, "PipelineSpec")
    for platform_doc in docs[1:]:
        problems += check_message(platform_doc, PLATFORM_SPEC, "PlatformSpec")
        platforms = platform_doc.get("platforms") if isinstance(platform_doc, Mapping) else None
        kubernetes = (platforms or {}).get("kubernetes") or {}
        executors = (kubernetes.get("deploymentSpec") or {}).get("executors") or {}
        for name, config in executors.items():
            # the driver reads each executor's Struct as a KubernetesExecutorConfig
            problems += check_message(
                config,
                KUBERNETES_EXECUTOR,
                "PlatformSpec",
                ("platforms", "kubernetes", "deploymentSpec", "executors", name),
            )
    return problems


def raise_for(problems: Sequence[Problem], what: str, *, file: str | None = None) -> None:
    """Raise one :class:`ClusterCheckError` listing ``problems`` (nothing when there are none)."""
    if not problems:
        return
    shown = "\n".join(f"  - {p}" for p in problems[:12])
    more = f"\n  (and {len(problems) - 12} more)" if len(problems) > 12 else ""
    raise ClusterCheckError(
        f"{what} would be rejected by the cluster versions prodml supports "
        f"(KFP {versions.KFP_BACKEND_VERSION}, KServe {versions.KSERVE_VERSION}, "
        f"Kubernetes {versions.KUBERNETES_SCHEMA_VERSION}):\n{shown}{more}",
        file=file,
        hint="this is a bug in prodml or in a plugin that rendered the object: please report it",
    )
