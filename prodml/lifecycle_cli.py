"""``prodml models``: list versions, promote, rollback, history, show, diff.

Only argparse is imported at module level (the parser is built on every ``prodml`` call);
the commands import :mod:`prodml.lifecycle`, which does the work and prints nothing.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

MODELS_HELP = "list the model versions in the configured store, and which is latest"


def add_models_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``models`` and its subcommands to the top-level subparsers ``sub``."""
    models = sub.add_parser(
        "models",
        help=MODELS_HELP,
        description=MODELS_HELP + "; subcommands move and inspect `latest`.",
    )
    models.add_argument("-c", "--config", metavar="FILE", help="prodml YAML config")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text, description=help_text)
        # -c may come before or after the action; SUPPRESS keeps one given before it
        p.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS, help="prodml YAML config")
        p.add_argument("--json", action="store_true", help="print the answer as JSON")
        return p

    p = action("promote", "make VERSION latest (and move a running server of the project to it)")
    p.add_argument("version", metavar="VERSION", help="a version id (or a unique prefix of one)")
    p.add_argument(
        "--canary",
        type=int,
        metavar="N",
        help="server.mode cluster: send N%% of traffic to VERSION first (a promote without it: 100%%)",
    )
    action("rollback", "move latest back to the version that was latest before")
    action("history", "every move of latest: when, from, to, why")
    p = action("show", "metrics, evaluation, lineage and size of a version")
    p.add_argument("version", metavar="VERSION", help="a version id, a unique prefix, or latest")
    p = action("diff", "two versions' metrics and lineage side by side")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    return models


def models_command(args: argparse.Namespace) -> int:
    """Run ``prodml models [ACTION]``."""
    from prodml.core.config import load_config
    from prodml.core.errors import ConfigError

    if not getattr(args, "config", None):
        raise ConfigError("-c FILE is required: the config names the store", hint="prodml models -c FILE")
    command = getattr(args, "models_command", None)
    if command is None:
        from prodml.cli import cmd_models

        return cmd_models(args)
    from prodml import lifecycle

    config = load_config(args.config)
    as_json = getattr(args, "json", False)
    if command in ("promote", "rollback"):
        if command == "promote":
            result = lifecycle.promote(config, args.version, canary=args.canary)
        else:
            result = lifecycle.rollback(config)
        if as_json:
            _print_json(_move_result(result))
        else:
            print(_describe_move(command, config.model_name, result))
        return 0
    if command == "history":
        moves = lifecycle.history(config)
        if as_json:
            _print_json([m.model_dump(mode="json") for m in moves])
        elif not moves:
            print(f"latest of {config.model_name!r} has not moved yet")
        else:
            print(f"{'WHEN (UTC)':<20} {'FROM':<26} {'TO':<26} {'WHY':<14} RUN")
            for m in moves:
                print(
                    f"{m.at:%Y-%m-%d %H:%M:%S} {m.from_version or '-':<26} {m.to_version:<26} "
                    f"{m.reason:<14} {m.run_id or ''}"
                )
        return 0
    if command == "show":
        info = lifecycle.show(config, args.version)
        if as_json:
            _print_json(info)
        else:
            print(_describe_version(info))
        return 0
    compared = lifecycle.diff(config, args.a, args.b)
    if as_json:
        _print_json(compared)
    else:
        print(_describe_diff(compared))
    return 0


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _move_result(result: Any) -> dict[str, Any]:
    return {
        "version": result.ref.version,
        "previous": result.previous,
        "move": result.move.model_dump(mode="json") if result.move else None,
        "endpoint": result.endpoint.model_dump(mode="json") if result.endpoint else None,
        "canary_percent": result.canary_percent,
    }


def _describe_move(command: str, model: str, result: Any) -> str:
    if result.move is None:
        lines = [f"{result.ref.version} already is latest of {model!r}; nothing moved"]
    else:
        lines = [f"latest of {model!r}: {result.previous or '(none)'} -> {result.ref.version} ({command})"]
    if result.endpoint is not None:
        share = f" ({result.canary_percent}% of traffic)" if result.canary_percent else ""
        lines.append(f"the running server at {result.endpoint.url} now serves {result.ref.version}{share}")
    else:
        lines.append("no running server of this project to move")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
    return str(value)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _describe_version(info: dict[str, Any]) -> str:
    lines = [
        f"{info['model']} {info['version']}{'  (latest)' if info['latest'] else ''}",
        f"  created     {info['created_at']}",
        f"  size        {_human_bytes(info['size_bytes'])}",
        f"  uri         {info['uri']}",
        "  metrics (last epoch)",
        *(f"    {k:<28} {_fmt(v)}" for k, v in sorted(info["metrics"].items())),
    ]
    evaluation = info["evaluation"]
    if evaluation:
        lines.append(
            f"  evaluation ({evaluation['split']}: {evaluation['rows']} rows, "
            f"fingerprint {evaluation['fingerprint'][:12]})"
        )
        lines += [f"    {k:<28} {_fmt(v)}" for k, v in sorted(evaluation["metrics"].items())]
    else:
        lines.append("  evaluation  none recorded")
    if info["history"]:
        epochs = max(len(v) for v in info["history"].values())
        lines.append(f"  history     {epochs} epochs of {', '.join(sorted(info['history']))}")
    lines.append("  lineage")
    lines += [f"    {k:<28} {_fmt(v)}" for k, v in info["lineage"].items()]
    if info["moves"]:
        lines.append("  moves of latest")
        lines += [
            f"    {m['at'][:19]} {m['from_version'] or '-'} -> {m['to_version']} ({m['reason']})"
            for m in info["moves"]
        ]
    return "\n".join(lines)


def _describe_diff(compared: dict[str, Any]) -> str:
    a, b = compared["a"]["version"], compared["b"]["version"]
    width = max(len(a), len(b), 12)
    lines = [f"{'':<30} {a:<{width}} {b:<{width}} b - a"]
    lines.append("metrics")
    for name, row in compared["metrics"].items():
        delta = _fmt(row["delta"]) if row["delta"] is not None else ""
        lines.append(f"  {name:<28} {_fmt(row['a']):<{width}} {_fmt(row['b']):<{width}} {delta}")
    lines.append("lineage")
    for name, row in compared["lineage"].items():
        mark = "" if row["same"] else "  <- differs"
        left, right = _fmt(row["a"])[:width], _fmt(row["b"])[:width]
        lines.append(f"  {name:<28} {left:<{width}} {right:<{width}}{mark}")
    return "\n".join(lines)
