"""The model-server process: ``python -m prodml.plugins.servers._main``.

Started three ways, always serving one verified bundle with :mod:`._model`:

* by :meth:`KServeServer.deploy <prodml.plugins.servers.kserve.KServeServer.deploy>` in
  mode local, detached, with a JSON spec on stdin (``--spec -``; stdin keeps the data
  source's credentials off the command line and off the disk);
* by ``prodml serve`` in the foreground (:func:`run_spec` in-process);
* as the predictor container of ``runtime: prodml`` on a cluster, with flags
  (``--bundle /mnt/models --model-name NAME --host 0.0.0.0 --port 8080``).

With ``workers > 1`` the first process starts ``workers - 1`` more copies of itself; all
bind the port with SO_REUSEPORT and the kernel spreads connections between them. They
share one process group, so stopping the group stops them all.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("prodml.server")


def _import_model_module() -> Any:
    """Import :mod:`._model` (and kserve) with a clean ``sys.argv``.

    ``kserve.model_server`` parses ``sys.argv`` when imported, and argparse's prefix
    matching would read prodml's own flags (``--worker`` as ``--workers``) as its own.
    """
    saved = sys.argv
    sys.argv = [saved[0] if saved else "prodml"]
    try:
        return importlib.import_module("prodml.plugins.servers._model")
    finally:
        sys.argv = saved


def build_source(spec: dict[str, Any]) -> Any:
    """The data source for feature lookup, rebuilt from the spec (or None)."""
    described = spec.get("source")
    if described:
        impl = _import_object(described["implementation"])
        config_cls = _import_object(described["config_class"])
        return impl(config_cls.model_validate(described["config"]))
    config_file = spec.get("config_file")
    if config_file:
        from prodml.core.config import load_config
        from prodml.core.plugins import default_registry

        config = load_config(config_file)
        if config.source is None:
            return None
        return default_registry().create("source", config.source)
    return None


def _import_object(path: str) -> Any:
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def run_spec(spec: dict[str, Any], *, worker: bool = False) -> None:
    """Serve ``spec`` in this process until interrupted (starting sibling workers first)."""
    model_module = _import_model_module()
    feature_lookup = bool(spec.get("feature_lookup"))
    source = build_source(spec) if feature_lookup else None
    workers = int(spec.get("workers") or 1)
    # detached servers always share the port, so a new version can be handed the port later
    reuse = workers > 1 or bool(spec.get("reuse_port"))
    model = model_module.BundleModel(
        spec["model_name"],
        Path(spec["bundle_dir"]),
        version=spec.get("version", ""),
        source=source,
        feature_lookup=feature_lookup,
        trust_model_code=bool(spec.get("trust_model_code")),
        max_rows=int(spec.get("max_rows") or 100_000),
    )
    loaded_file = spec.get("loaded_file")
    if loaded_file:
        # a fresh start with several workers: deploy waits until every one of them has loaded
        from prodml.plugins.servers._handover import report_pid

        model.on_ready = lambda: report_pid(str(loaded_file))
    handover = spec.get("handover")  # replacing a running server on its port: see _handover
    if handover:
        from prodml.plugins.servers import _handover

        _handover.load_first(model)
    sock = model_module.bind_socket(
        spec.get("host", "127.0.0.1"), int(spec.get("port", 8080)), reuse_port=reuse
    )
    if handover:
        _handover.after_bind(sock, handover, primary=not worker)
    children: list[subprocess.Popen] = []
    if workers > 1 and not worker:
        # the siblings must bind the port this process got (it may have been 0: "any free port")
        sibling_spec = {**spec, "port": sock.getsockname()[1]}
        for _ in range(workers - 1):
            children.append(_start_sibling(sibling_spec))
    options = model_module.ServeOptions(
        host=spec.get("host", "127.0.0.1"),
        port=sock.getsockname()[1],
        max_request_bytes=int(spec.get("max_request_bytes") or 4 << 20),
        access_log=bool(spec.get("access_log")),
        reuse_port=reuse,
        fast_path=fast_path_enabled(spec),
        drain_on_signal=bool(spec.get("reuse_port")),
    )
    try:
        model_module.serve(model, options, sock=sock)
    finally:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def fast_path_enabled(spec: dict[str, Any]) -> bool:
    """Whether inference takes prodml's fast path (``_asgi.FrontDoor``) or KServe's app.

    On unless the spec says ``"fast_path": false`` or ``PRODML_SERVER_FAST_PATH=0`` is set: a
    diagnostic switch (both paths give the same answers; the tests run both).
    """
    if os.environ.get("PRODML_SERVER_FAST_PATH", "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return bool(spec.get("fast_path", True))


def _start_sibling(spec: dict[str, Any]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "prodml.plugins.servers._main", "--spec", "-", "--worker"],
        stdin=subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    return proc


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the process that started it dies."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m prodml.plugins.servers._main",
        description="Serve one prodml model bundle with KServe's ModelServer (V1 + V2).",
    )
    p.add_argument("--spec", help="'-': read the JSON serving spec from stdin (used by deploy)")
    p.add_argument("--bundle", help="bundle folder (on a cluster: /mnt/models)")
    p.add_argument("--model-name", help="name the model answers to")
    p.add_argument("--model-version", default="", help="version id reported in V2 answers")
    p.add_argument("--host", default=os.environ.get("PRODML_SERVER_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PRODML_SERVER_PORT", "8080")))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-request-bytes", type=int, default=4 << 20)
    p.add_argument("--access-log", action="store_true")
    p.add_argument("--trust-model-code", action="store_true")
    p.add_argument("--feature-lookup", action="store_true")
    p.add_argument("--config", help="prodml config to build the data source from (feature lookup)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s", force=True
    )
    if args.spec == "-":
        spec = json.loads(sys.stdin.read())
    elif args.spec:
        spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    else:
        if not args.bundle or not args.model_name:
            _parser().error("give --spec, or --bundle and --model-name")
        spec = {
            "model_name": args.model_name,
            "bundle_dir": args.bundle,
            "version": args.model_version,
            "host": args.host,
            "port": args.port,
            "workers": args.workers,
            "max_request_bytes": args.max_request_bytes,
            "access_log": args.access_log,
            "trust_model_code": args.trust_model_code,
            "feature_lookup": args.feature_lookup,
            "config_file": args.config,
        }
    from prodml.core.errors import ProdmlError
    from prodml.core.logs import install_redaction, register_secret

    install_redaction()
    for secret in spec.pop("secrets", []):
        register_secret(secret)
    try:
        run_spec(spec, worker=args.worker)
    except ProdmlError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
