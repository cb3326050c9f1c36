"""The ``prodml`` command line.

Start-up stays fast: this module imports only the standard library at import time; each
command imports what it needs (heavy SDKs are imported by the plugins that use them).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

COMMANDS: dict[str, str] = {
    # prodml's own commands -> "module:function" taking the parsed args and returning an
    # exit code. Plugins add theirs through the `prodml_commands` hook (serve, predict and
    # k8s come from the kserve plugin that way); see plugin_commands().
    "validate": "prodml.cli:cmd_validate",
    "plugins": "prodml.cli:cmd_plugins",
    "models": "prodml.lifecycle_cli:models_command",
    "run": "prodml.runner.commands:run_command",
    "compile": "prodml.runner.commands:compile_command",
    "init": "prodml.scaffold:init_command",
    "ui": "prodml.ui.commands:ui_command",
    "status": "prodml.plugins.servers.ops:status_command",
    "stop": "prodml.plugins.servers.ops:stop_command",
}


def _version() -> str:
    from prodml import __version__

    return __version__


def build_parser(plugin_commands: Sequence[Any] = ()) -> argparse.ArgumentParser:
    """The argument parser: prodml's commands, then ``plugin_commands`` (``Command`` values)."""
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

    p = add(
        "validate",
        "check a config (print it resolved, secrets masked) and pre-flight what its stages need",
    )
    p.add_argument(
        "--offline",
        action="store_true",
        help="skip the network checks (does the store answer?); files, credentials and ports are checked",
    )
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
    p.add_argument(
        "--force-promote",
        action="store_true",
        help="make the exported version latest even when the gate: section says it is worse",
    )
    p = add("compile", "write the Kubeflow pipeline YAML for a config")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="pipeline YAML to write")
    p.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip validating the pipeline and the serve step's manifests against the pinned "
        "KFP backend and KServe schemas",
    )
    from prodml.lifecycle_cli import add_models_parser

    add_models_parser(sub)
    p = add("ui", "a local dashboard of runs, model versions and live endpoints (web browser)")
    _ui_arguments(p)
    from prodml.plugins.servers import ops  # status, stop: the local model servers

    ops.add_arguments(sub)
    p = add("init", "scaffold a working project in DIR", config=False)
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--feast", action="store_true", help="also scaffold a Feast feature repository")
    p.add_argument("--force", action="store_true", help="write into a non-empty DIR")
    for command in plugin_commands:
        p = add(command.name, command.help, config=command.config)
        if command.arguments is not None:
            command.arguments(p)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def plugin_commands(argv: Sequence[str]) -> dict[str, Any]:
    """The commands plugins add ({name: InstalledCommand}), loaded only when ``argv`` may need one.

    A command line naming one of prodml's own commands needs no plugin; ``prodml --help``
    and plugin commands load the registry's light first step (no backend is imported). A
    broken plugin does not break the help text of the other commands.
    """
    if _command_word(argv) in COMMANDS:
        return {}
    from prodml.core.errors import PluginError
    from prodml.core.plugins import default_registry

    try:
        installed = default_registry().commands()
        for name, command in installed.items():
            if name in COMMANDS:
                raise PluginError(
                    f"plugin {command.plugin_name!r} ({command.distribution}) adds command {name!r}, "
                    "which is one of prodml's own; rename it in the plugin"
                )
    except PluginError as exc:
        if _command_word(argv) is not None:
            raise
        print(f"warning: plugin commands are not listed: {exc}", file=sys.stderr)
        return {}
    return installed


def _ui_arguments(parser: argparse.ArgumentParser) -> None:
    from prodml.ui.commands import add_arguments

    add_arguments(parser)


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
    from prodml.runner.preflight import problems

    # a backend whose SDK is missing is reported above, not pre-flighted
    found = problems(config, offline=bool(getattr(args, "offline", False)), registry=registry)
    summary = masked_summary(config)
    if found:
        print(f"{args.config}: valid config; pre-flight found {len(found)} problem(s)")
    else:
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
    for line in missing:
        print(f"error: {line}", file=sys.stderr)
    for line in found:
        print(f"error: pre-flight: {line}", file=sys.stderr)
    if not missing and not found:
        network = "skipped (--offline)" if getattr(args, "offline", False) else "checked"
        print(f"  pre-flight ok: files, credentials and ports checked; network {network}")
    return 2 if missing or found else 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from prodml.core.interfaces import ROLES
    from prodml.core.plugins import default_registry

    registry = default_registry()
    rows: list[tuple[str, str, str, str, str]] = []  # role, type, distribution, description, note
    for role in ROLES:
        for name, installed in sorted(registry.types(role).items()):
            error = installed.missing_dependency()
            note = f"[missing {error.module}: {error.fix}]" if error else ""
            rows.append((role, name, installed.distribution, installed.backend.description, note))
    commands = sorted(registry.commands().items())
    # one width for every section, so long type or distribution names keep the columns aligned
    name_w = max([len(r[1]) for r in rows] + [len(n) for n, _ in commands] + [4])
    dist_w = max([len(r[2]) for r in rows] + [len(c.distribution) for _, c in commands] + [7])
    for role in ROLES:
        print(f"{role}:")
        mine = [r for r in rows if r[0] == role]
        if not mine:
            print("  (none installed)")
        for _, name, dist, desc, note in mine:
            print(f"  {name:<{name_w}}  {dist:<{dist_w}}  {' '.join(t for t in (desc, note) if t)}".rstrip())
    if commands:
        print("commands:")
        for name, command in commands:
            print(f"  {name:<{name_w}}  {command.distribution:<{dist_w}}  {command.command.help}".rstrip())
    if registry.load_failures:
        # listed, and the exit status says so: an image build that ends with `prodml
        # plugins` must not succeed with a plugin that cannot be imported
        print("failed to load:")
        for failure in registry.load_failures:
            print(f"  {failure}")
        return 1
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
    from prodml.core.logs import configure_console

    configure_console(verbosity)


def _handler(command: str, plugins: dict[str, Any]) -> Callable[[argparse.Namespace], int]:
    if command in plugins:
        return plugins[command].load()
    module, _, func = COMMANDS[command].partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> int:
    from prodml.core.errors import ProdmlError
    from prodml.core.plugins import skip_pydantic_plugin_scan

    skip_pydantic_plugin_scan()  # before the first pydantic model is built
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        plugins = plugin_commands(argv)
    except ProdmlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    parser = build_parser([c.command for c in plugins.values()])
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0

    _setup_logging(args.verbose)
    try:
        code = int(_handler(args.command, plugins)(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, while BrokenPipeError is still caught
        return code
    except ProdmlError as exc:
        from prodml.core.errors import GatedError

        print(f"{'gated' if isinstance(exc, GatedError) else 'error'}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`prodml predict ... | head -5`): stop quietly, as `cat` would
        _discard_stdout()
        return 141


def entry() -> int:
    """The ``prodml`` command (console script and ``python -m prodml``): :func:`main`, then exit.

    A command that imported TensorFlow (run, train, serve in the foreground, predict with a
    model) spends most of a second after its last line tearing the interpreter down (module
    and C++ object destructors), with nothing left to do. So the process leaves the quick
    way once everything that asked to run at exit has run: a handler registered here, before
    any library registers its own, runs last (they run in reverse order), flushes the
    standard streams and ends the process with the command's status. A command that never
    imported TensorFlow exits as usual. :func:`main` itself never exits (tests call it).
    """
    import atexit

    status: list[int] = []

    def leave_now() -> None:
        if not status or "tensorflow" not in sys.modules:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status[0])

    atexit.register(leave_now)
    code = 1  # an exception escaping main: Python prints it, the status is 1
    try:
        code = main()
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        raise
    finally:
        status.append(code)
    return code


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    raise SystemExit(entry())
