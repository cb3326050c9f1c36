"""The kserve plugin's commands: ``prodml serve``, ``prodml predict``, ``prodml k8s manifests``.

Registered as the built-in plugin ``kserve-commands`` through the ``prodml_commands`` hook,
like any plugin's commands. This module must stay light (standard library and prodml.core
only at import time): ``prodml --help`` imports it to list the commands.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from prodml.core.errors import ConfigError, ServingError
from prodml.core.hookspecs import hookimpl
from prodml.core.plugins import Command

_HERE = "prodml.plugins.servers.commands"


def serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``prodml serve``."""
    parser.add_argument(
        "--version",
        dest="model_version",
        default=None,
        help="version to serve (default: server.version or latest)",
    )


def predict_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``prodml predict``."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--data", help="request JSON, or a list of rows")
    group.add_argument("--file", help="file with the request JSON")
    group.add_argument(
        "--entities",
        metavar="F",
        help="batch scoring: CSV/Parquet entity rows (join keys, timestamp); features as of each "
        "row's time, the stored model run in this process (needs -o)",
    )
    parser.add_argument("-o", "--output", metavar="OUT", help="with --entities: .parquet or .csv to write")
    parser.add_argument(
        "--version",
        dest="model_version",
        default=None,
        help="with --entities: model version (default: server.version or latest)",
    )
    parser.add_argument("--protocol", choices=["v1", "v2"], default="v1")
    parser.add_argument("--url", help="server URL (default: from server.host/port in the config)")


def k8s_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``prodml k8s``."""
    parser.add_argument("what", choices=["manifests"], help="what to render")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.add_argument(
        "--version",
        dest="model_version",
        default=None,
        help="render for this version id without asking the store (default: resolve server.version)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="do not ask the store: a placeholder stands for the version id",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate every object against the pinned KServe CRD and Kubernetes schemas",
    )


@hookimpl
def prodml_commands() -> list[Command]:
    return [
        Command(
            "serve",
            "serve a stored model version in the foreground",
            handler=f"{_HERE}:serve_command",
            arguments=serve_arguments,
        ),
        Command(
            "predict",
            "send a request to the served model and print the answer",
            handler=f"{_HERE}:predict_command",
            arguments=predict_arguments,
        ),
        Command(
            "k8s",
            "render Kubernetes manifests (KServe InferenceService, storage secret refs)",
            handler=f"{_HERE}:manifests_command",
            arguments=k8s_arguments,
        ),
    ]


def _load(args: argparse.Namespace) -> Any:
    from prodml.core.config import load_config

    return load_config(args.config)


def _server_parts(config: Any, file: str) -> tuple[Any, Any, Any]:
    """(server config, server, store) of ``config``; errors name the missing section."""
    from prodml.core.plugins import default_registry

    if config.server is None:
        raise ConfigError(
            "no `server:` section: nothing to serve", file=file, hint="add server: {type: kserve}"
        )
    if config.store is None:
        raise ConfigError("no `store:` section: the server reads the model from a store", file=file)
    registry = default_registry()
    return config.server, registry.create("server", config.server), registry.create("store", config.store)


def _source_for(config: Any) -> Any:
    if not getattr(config.server, "feature_lookup", False) or config.source is None:
        return None
    from prodml.core.plugins import default_registry

    return default_registry().create("source", config.source)


def serve_command(args: argparse.Namespace) -> int:
    """``prodml serve -c FILE``: serve a stored version in the foreground (local mode)."""
    config = _load(args)
    server_config, server, store = _server_parts(config, args.config)
    _serve_preflight(config, server_config, args.config)
    version = args.model_version or getattr(server_config, "version", "latest")
    ref = store.resolve(config.model_name, version)
    source = _source_for(config)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_foreground(ref, store, source)
        return 0
    except NotImplementedError:
        pass  # a server that cannot run in this process (a cluster): deploy and say where
    endpoint = server.deploy(ref, store, source)
    print(endpoint.to_json())
    return 0


def _serve_preflight(config: Any, server_config: Any, file: str) -> None:
    """Before pulling anything: the store answers, and (foreground) the port is really free."""
    from prodml.runner import preflight

    found = preflight.problems(config, ["serve"], include_runner=False)
    port = getattr(server_config, "port", None)
    if getattr(server_config, "mode", None) == "local" and isinstance(port, int):
        # prodml serve binds in this process: a port held even by a model server is taken
        why = preflight.port_taken(server_config.host, port)
        problem = f"cannot listen on {server_config.host}:{port}: {why} (server.port)"
        if why is not None and not any(
            p.startswith(f"server ({server_config.type}): cannot listen") for p in found
        ):
            found.append(
                f"server ({server_config.type}): {problem}; stop what uses it (`prodml run` with "
                "--keep-serving leaves a server running), or pick another port"
            )
    if found:
        raise preflight.PreflightError(found, file=file)


def _read_request(args: argparse.Namespace) -> Any:
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ServingError(f"cannot read request file {args.file}: {exc.strerror or exc}") from None
        where = args.file
    else:
        text, where = args.data, "--data"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServingError(
            f"{where} is not valid JSON: {exc}",
            hint="e.g. --data '[[0.1, 0.2, 0.3]]' or --data '{\"instances\": [{\"sqft\": 0.1, ...}]}'",
        ) from None


def predict_command(args: argparse.Namespace) -> int:
    """``prodml predict -c FILE --data JSON``: send a request, print the answer.

    With ``--entities F -o OUT`` it scores a file of entity rows in this process instead
    (:func:`prodml.runner.batch.batch_predict`).
    """
    from prodml.plugins.servers import client

    config = _load(args)
    if args.entities:  # batch scoring runs here, not on a server
        from prodml.runner.batch import batch_predict

        if not args.output:
            raise ConfigError("--entities needs -o OUT (a .parquet or .csv file to write)")
        result = batch_predict(config, Path(args.entities), Path(args.output), version=args.model_version)
        print(result.summary())
        return 0
    if config.server is None:
        raise ConfigError("no `server:` section: no server to send the request to", file=args.config)
    server_config = config.server
    name = getattr(server_config, "model_name", None) or config.model_name
    url = args.url or _server_url(config, name)
    body = _read_request(args)
    base = url.rstrip("/")
    if isinstance(body, list):
        answer = client.predict(base, name, body, protocol=args.protocol)
    elif isinstance(body, dict) and args.protocol == "v2" and "inputs" in body:
        answer = client.call(f"{base}/v2/models/{name}/infer", body)
    elif isinstance(body, dict) and "instances" in body:
        if args.protocol == "v2":
            answer = client.predict(base, name, body["instances"], protocol="v2")
        else:
            answer = client.call(f"{base}/v1/models/{name}:predict", body)
    else:
        raise ServingError(
            'the request must be a list of rows, {"instances": [...]}, '
            'or (with --protocol v2) {"inputs": [...]}'
        )
    json.dump(answer, sys.stdout, indent=2)
    print()
    return 0


def _server_url(config: Any, name: str) -> str:
    """The URL of the running server of ``name``, as its server backend reports it."""
    from prodml.core.plugins import default_registry

    status = default_registry().create("server", config.server).status(name)
    if status.url:
        return status.url
    raise ServingError(
        f"no running server of model {name!r} is known ({status.reason or 'not deployed'})",
        hint="start one with `prodml serve -c FILE`, or pass --url http://...",
    )


def manifests_command(args: argparse.Namespace) -> int:
    """``prodml k8s manifests -c FILE``: the InferenceService and storage access, as YAML.

    ``--version V`` renders without asking the store; when the store cannot be reached (or
    with ``--offline``) a placeholder stands for the version and a note says so. ``--check``
    validates every object against the pinned releases' schemas.
    """
    config = _load(args)
    server_config, server, store = _server_parts(config, args.config)
    render = getattr(server, "manifests", None)
    if getattr(server_config, "mode", None) != "cluster" or not callable(render):
        raise ConfigError(
            f"server type {server_config.type!r} with this config has no Kubernetes manifests",
            file=args.config,
            hint="set server.mode: cluster",
        )
    docs, notes = render(
        store,
        config.model_name,
        version=getattr(args, "model_version", None),
        offline=bool(getattr(args, "offline", False)),
    )
    if config.section("trainer") is not None:
        # what the train step creates on the cluster (a TFJob for trainer.distributed), first
        from prodml.core.plugins import default_registry

        trainer = default_registry().create("trainer", config.section("trainer"))
        docs = [*trainer.cluster_manifests(config), *docs]
    if getattr(args, "check", False):
        from prodml.core import cluster_check, versions

        cluster_check.raise_for(cluster_check.check_objects(docs), "the manifests", file=args.config)
        notes.append(
            f"checked {len(docs)} objects against KServe {versions.KSERVE_VERSION}'s InferenceService "
            f"CRD, the Training Operator {versions.TRAINING_OPERATOR_VERSION}'s TFJob CRD and "
            f"Kubernetes {versions.KUBERNETES_SCHEMA_VERSION}'s schemas: accepted"
        )
    from prodml.plugins.servers import _k8s

    text = _k8s.to_yaml(docs)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if any(doc.get("kind") == "Secret" for doc in docs):
        print(
            "note: the storage Secret holds ${NAME} placeholders, never values; apply with\n"
            "  envsubst < manifests.yaml | kubectl apply -f -   (with the credentials exported)",
            file=sys.stderr,
        )
    return 0
