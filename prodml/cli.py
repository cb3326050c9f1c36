"""The ``prodml`` command line.

Start-up stays fast: this module imports only the standard library at import time; each
command imports what it needs (heavy SDKs are imported by the plugins that use them).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

COMMANDS: dict[str, str] = {
    # command -> "module:function" taking the parsed args and returning an exit code
    "validate": "prodml.cli:cmd_validate",
    "plugins": "prodml.cli:cmd_plugins",
    "models": "prodml.cli:cmd_models",
    "run": "prodml.runner.commands:run_command",
    "compile": "prodml.runner.commands:compile_command",
    "serve": "prodml.plugins.servers.commands:serve_command",
    "predict": "prodml.plugins.servers.commands:predict_command",
    "k8s": "prodml.plugins.servers.commands:manifests_command",
    "init": "prodml.scaffold:init_command",
}


def _version() -> str:
    from prodml import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prodml",
        description="Take a Keras model to production: fetch features, train, export a "
        "versioned bundle, serve it with KServe - from one YAML file.",
        epilog="Start with: prodml init myproject && prodml run -c myproject/prodml.yaml",
    )
    parser.add_argument("--version", action="version", version=f"prodml {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("-c", "--config", required=True, metavar="FILE", help="prodml YAML config")
        return p

    add("validate", "check a config; print it resolved, secrets masked")
    add("plugins", "list the installed backends per role and the package providing each", config=False)
    p = add("run", "run the configured stages with the configured runner")
    p.add_argument(
        "--from",
        dest="start_at",
        metavar="STAGE",
        help="resume the latest run from STAGE, reusing earlier stages' outputs",
    )
    p.add_argument("--run-id", help="run folder to resume (default: the latest run)")
    p.add_argument("--wait", action="store_true", help="kfp runner: follow the run until it ends")
    p.add_argument(
        "--keep-serving",
        action="store_true",
        help="leave the model server of the serve stage running after the run",
    )
    p = add("compile", "write the Kubeflow pipeline YAML for a config")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="pipeline YAML to write")
    p = add("serve", "serve a stored model version in the foreground")
    p.add_argument(
        "--version",
        dest="model_version",
        default=None,
        help="version to serve (default: server.version or latest)",
    )
    p = add("predict", "send a request to the served model and print the answer")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--data", help="request JSON, or a list of rows")
    group.add_argument("--file", help="file with the request JSON")
    p.add_argument("--protocol", choices=["v1", "v2"], default="v1")
    p.add_argument("--url", help="server URL (default: from server.host/port in the config)")
    add("models", "list the model versions in the configured store, and which is latest")
    p = add("k8s", "render Kubernetes manifests (KServe InferenceService, storage secret refs)")
    p.add_argument("what", choices=["manifests"], help="what to render")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p = add("init", "scaffold a working project in DIR", config=False)
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--feast", action="store_true", help="also scaffold a Feast feature repository")
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR")
    return parser


def load(args: argparse.Namespace) -> Any:
    """Load the config named by ``-c``."""
    from prodml.core.config import load_config

    return load_config(args.config)


def cmd_validate(args: argparse.Namespace) -> int:
    import json

    from prodml.core.config import masked_summary
    from prodml.core.plugins import default_registry

    config = load(args)
    registry = default_registry()
    missing = []
    for role in ("source", "trainer", "store", "server", "runner"):
        section = config.section(role)
        if section is None:
            continue
        error = registry.get(role, section.type).missing_dependency()
        if error is not None:
            missing.append(f"{role} type {section.type!r} needs {error.module!r}: {error.fix}")
    summary = masked_summary(config)
    print(f"{args.config}: valid")
    print(f"  project  {summary['project']}")
    print(f"  stages   {' -> '.join(summary['stages'])}")
    for role in ("source", "trainer", "store", "server", "runner"):
        section = summary.get(role)
        if section is None:
            continue
        # what the config file set (resolved: paths absolute, env filled in, secrets masked)
        given = config.section(role).model_fields_set - {"type"}
        rest = {k: v for k, v in section.items() if k in given}
        print(f"  {role:<8} {section['type']}  {json.dumps(rest, default=str)}")
    if missing:
        for line in missing:
            print(f"error: {line}", file=sys.stderr)
        return 2
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from prodml.core.interfaces import ROLES
    from prodml.core.plugins import default_registry

    registry = default_registry()
    for role in ROLES:
        print(f"{role}:")
        types = registry.types(role)
        if not types:
            print("  (none installed)")
        for name, installed in sorted(types.items()):
            error = installed.missing_dependency()
            note = f"  [missing {error.module}: {error.fix}]" if error else ""
            desc = installed.backend.description
            print(f"  {name:<12} {installed.distribution:<16} {desc}{note}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from prodml.core.errors import ConfigError
    from prodml.core.plugins import default_registry

    config = load(args)
    if config.store is None:
        raise ConfigError("no `store:` section: nothing to list", file=args.config)
    store = default_registry().create("store", config.store)
    versions = store.versions(config.model_name)
    if not versions:
        print(f"no versions of {config.model_name!r} in the {config.store.type} store")
        return 0
    print(f"{'VERSION':<28} {'CREATED (UTC)':<20} {'SIZE':>10}  LATEST")
    for v in versions:
        size = _human_bytes(v.size_bytes)
        print(f"{v.version:<28} {v.created_at:%Y-%m-%d %H:%M:%S} {size:>10}  {'*' if v.latest else ''}")
    return 0


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from prodml.core.logs import install_redaction

    install_redaction()


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    module, _, func = COMMANDS[command].partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    from prodml.core.errors import ProdmlError

    _setup_logging(args.verbose)
    try:
        return int(_handler(args.command)(args) or 0)
    except ProdmlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
