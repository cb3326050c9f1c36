"""``prodml run`` and ``prodml compile``."""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

from prodml.core.errors import ConfigError, ProdmlError


def _options_for(runner: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The CLI options ``runner.run`` accepts (a third-party runner may take none of them)."""
    params = inspect.signature(runner.run).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    return {k: v for k, v in options.items() if k in params}


def run_command(args: argparse.Namespace) -> int:
    """Run the configured stages with the configured runner."""
    from prodml.core.config import load_config
    from prodml.core.plugins import default_registry

    config = load_config(args.config)
    start_at = getattr(args, "start_at", None)
    if start_at is not None and start_at not in config.stages:
        valid = ", ".join(config.stages)
        raise ConfigError(f"--from {start_at}: not one of the configured stages ({valid})", file=args.config)
    from prodml.runner import preflight

    # seconds, not minutes: what the stages about to run need is checked before any runs
    stages = config.stages[config.stages.index(start_at) :] if start_at else config.stages
    preflight.check(config, stages, file=args.config)
    runner = default_registry().create("runner", config.runner)  # type: ignore[attr-defined]
    options = {
        "run_id": getattr(args, "run_id", None),
        "keep_serving": bool(getattr(args, "keep_serving", False)),
        "wait": bool(getattr(args, "wait", False)),
    }
    if getattr(args, "force_promote", False):
        if "force_promote" not in inspect.signature(runner.run).parameters:
            raise ConfigError(
                f"--force-promote is not supported by the {config.runner.type} runner",  # type: ignore[attr-defined]
                file=args.config,
                hint="run it with the local runner, or promote the stored version afterwards: "
                "prodml models promote -c FILE VERSION",
            )
        options["force_promote"] = True
    runner.run(config, start_at=start_at, **_options_for(runner, options))
    return 0


def _cluster_warnings(config: Any) -> list[str]:
    """What in a config will not work inside pods on a cluster (compile still succeeds)."""
    warnings = []
    store_config = config.section("store")
    if store_config is not None:
        from prodml.core.plugins import default_registry

        try:
            store = default_registry().create("store", store_config)
            reachable = store.reachable_from_cluster()
        except NotImplementedError:
            reachable = None  # the store cannot tell: say nothing
        except ProdmlError:
            reachable = None
        if reachable is False:
            warnings.append(
                f"store type {store_config.type!r} is not reachable from a cluster's pods as configured "
                "(a folder on this machine, or a loopback endpoint): the steps would write into "
                "their own pods; use a store the cluster can reach (see config/kind.yaml)"
            )
    server = config.section("server")
    if getattr(server, "mode", None) == "local":
        warnings.append(
            "server mode 'local' starts a model server inside the serve step's pod; on a cluster "
            "use server.mode: cluster (a KServe InferenceService)"
        )
    return warnings


def compile_command(args: argparse.Namespace) -> int:
    """Write the Kubeflow pipeline YAML of a config (whatever its runner type)."""
    from prodml.core.config import load_config
    from prodml.core.errors import MissingDependencyError

    config = load_config(args.config)
    try:
        import kfp  # noqa: F401
    except ImportError:
        raise MissingDependencyError("runner", "kfp", "kfp", "kfp") from None
    from prodml.runner.kfp import compile_pipeline

    output = compile_pipeline(config, Path(args.output), check=getattr(args, "check", True))
    for warning in _cluster_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    stages = " -> ".join(config.stages)
    checked = ""
    if getattr(args, "check", True):
        from prodml.core.versions import KFP_BACKEND_VERSION, KSERVE_VERSION

        checked = f", checked against KFP {KFP_BACKEND_VERSION} and KServe {KSERVE_VERSION}"
    print(f"wrote {output}: pipeline prodml-{config.project} ({stages}), no secrets in it{checked}")
    return 0
