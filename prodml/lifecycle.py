"""The model lifecycle: a gate before ``latest``, promote, rollback, history, show and diff.

Every function here is a plain function of the loaded config (and a few values) that
returns values and prints nothing, so the CLI (:mod:`prodml.lifecycle_cli`) and a web
dashboard call the same code. They talk to backends only through the role interfaces:

* the store keeps the versions, the ``latest`` pointer and its history
  (:meth:`ModelStore.move_latest`, :meth:`ModelStore.latest_history`);
* the trainer says which rows it evaluates on and re-scores a stored model
  (:meth:`Trainer.evaluation_rows`, :meth:`Trainer.evaluate`);
* the server, when one of this project runs, follows ``latest``
  (``ModelServer.update``; None or NotImplementedError: nothing to move).

The gate (``gate: {metric, mode, tolerance}``) compares a new version with the current
``latest`` on the candidate's evaluation rows. The current ``latest``'s recorded value is
used when it was measured on the same rows (equal fingerprints); otherwise it is pulled,
loaded and re-scored on the candidate's rows, with the candidate's metric definitions.
"""

from __future__ import annotations

import difflib
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prodml.core.bundle import BundleMetadata
from prodml.core.errors import ConfigError, GatedError, StoreError
from prodml.core.interfaces import Endpoint, LatestMove, ModelRef, ModelStore, ModelVersion

if TYPE_CHECKING:
    import pandas as pd

    from prodml.core.config import ProdmlConfig
    from prodml.core.plugins import Registry

log = logging.getLogger("prodml.lifecycle")


# -- values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateDecision:
    """Whether a new version may become ``latest``, and the numbers that decided it.

    Attributes:
        passed: True when ``latest`` may move to the candidate.
        candidate: the new version.
        champion: the current ``latest`` (None when there is none).
        metric: the gate metric as configured (``val_loss``), or "" without a gate.
        measured: the evaluation metric it was read as (``loss``).
        mode: ``min`` or ``max``.
        tolerance: how much worse still passes.
        candidate_value: the candidate's value on its evaluation rows.
        champion_value: the current latest's value on the same rows.
        rescored: True when the current latest was re-scored on the candidate's rows.
        rows: number of evaluation rows compared on.
        reason: one sentence for people.
    """

    passed: bool
    candidate: str
    champion: str | None
    metric: str = ""
    measured: str = ""
    mode: str = "min"
    tolerance: float = 0.0
    candidate_value: float | None = None
    champion_value: float | None = None
    rescored: bool = False
    rows: int = 0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MoveResult:
    """What :func:`promote` and :func:`rollback` did.

    Attributes:
        ref: the version that is latest now.
        previous: what was latest before (None: nothing was).
        move: the recorded move (None when ``ref`` already was latest: nothing moved).
        endpoint: the running server that now serves ``ref`` (None: no server of this
            project runs, or its backend cannot move one).
        canary_percent: the traffic share given to ``ref`` on a cluster (``--canary``).
    """

    ref: ModelRef
    previous: str | None
    move: LatestMove | None
    endpoint: Endpoint | None = None
    canary_percent: int | None = None


# -- plumbing -------------------------------------------------------------------------------


def _registry(registry: Registry | None) -> Registry:
    from prodml.core.plugins import default_registry

    return registry or default_registry()


def open_store(config: ProdmlConfig, registry: Registry | None = None) -> ModelStore:
    """The config's model store (ConfigError when the config has none)."""
    if config.section("store") is None:
        raise ConfigError(
            "no `store:` section: the model lifecycle needs the store that keeps the versions",
            file=str(config.source_file) if config.source_file else None,
        )
    return _registry(registry).create("store", config.section("store"))  # type: ignore[arg-type]


def _current(store: ModelStore, model_name: str) -> tuple[list[ModelVersion], str | None]:
    listed = store.versions(model_name)
    return listed, next((v.version for v in listed if v.latest), None)


def find_version(store: ModelStore, model_name: str, version: str) -> ModelRef:
    """``version`` (an id, a unique prefix of one, or ``latest``) as a ModelRef.

    Raises:
        StoreError: no such version; the message lists the nearest stored ids.
    """
    listed = store.versions(model_name)
    ids = [v.version for v in listed]
    if version == "latest":
        return store.resolve(model_name)
    if version in ids:
        return store.resolve(model_name, version)
    matches = [v for v in ids if v.startswith(version) or v.endswith("-" + version)]
    if len(matches) == 1 and len(version) >= 8:
        return store.resolve(model_name, matches[0])
    if not ids:
        raise StoreError(
            f"model {model_name!r} has no stored versions, so there is no {version!r}",
            hint="run the export stage first (prodml run -c FILE)",
        )
    nearest = difflib.get_close_matches(version, ids, n=3, cutoff=0.0) if not matches else matches[:3]
    raise StoreError(
        f"no version {version!r} of {model_name!r} in the store"
        + (" (the prefix matches several)" if len(matches) > 1 else ""),
        hint=f"nearest: {', '.join(nearest)}; `prodml models -c FILE` lists all {len(ids)}",
    )


def _metadata(store: ModelStore, ref: ModelRef, folder: Path) -> tuple[Path, BundleMetadata]:
    bundle = store.pull(ref, folder / ref.version)
    return bundle, BundleMetadata.read(bundle)


def read_metadata(store: ModelStore, ref: ModelRef) -> BundleMetadata:
    """prodml.json of a stored version, verified (without downloading the model files)."""
    from prodml.core.bundle import METADATA

    data = store.read_file(ref, METADATA)
    try:
        return BundleMetadata.model_validate_json(data)
    except ValueError as exc:
        raise StoreError(f"{METADATA} of {ref.model_name} {ref.version} is not valid: {exc}") from None


def _follow(
    config: ProdmlConfig,
    store: ModelStore,
    ref: ModelRef,
    *,
    canary: int | None,
    registry: Registry | None,
) -> Endpoint | None:
    """Move a running server of this project to ``ref`` (None when none runs)."""
    if config.section("server") is None:
        return None
    reg = _registry(registry)
    server = reg.create("server", config.section("server"))  # type: ignore[arg-type]
    source = reg.create("source", config.section("source")) if config.section("source") else None  # type: ignore[arg-type]
    try:
        # ModelServer.update (docs/architecture.md, "Second wave"): None when nothing runs
        return server.update(ref, store, source, canary_percent=canary)
    except NotImplementedError as exc:
        log.info("%s; the served model was not moved", exc)
        return None


def move_latest(store: ModelStore, model_name: str, version: str, **kwargs: Any) -> LatestMove:
    """``store.move_latest``; a store that cannot move atomically is refused, by name."""
    try:
        return store.move_latest(model_name, version, **kwargs)
    except NotImplementedError as exc:
        raise StoreError(
            f"the {type(store).__name__} store cannot move `latest` atomically ({exc}); refusing to move it",
            hint="use a store whose backend implements ModelStore.move_latest (local, s3, azure_blob)",
        ) from None


def _check_canary(config: ProdmlConfig, canary: int | None) -> None:
    if canary is None:
        return
    if not 0 < canary <= 100:
        raise ConfigError(f"--canary {canary}: give a percentage of traffic between 1 and 100")
    server = config.section("server")
    mode = getattr(server, "mode", None)
    if server is None or mode != "cluster":
        raise ConfigError(
            f"--canary sends a share of traffic to the new version on a cluster (KServe "
            f"canaryTrafficPercent); this config's server is "
            f"{'missing' if server is None else f'mode: {mode}'}",
            field="server.mode",
            file=str(config.source_file) if config.source_file else None,
            hint="set server.mode: cluster, or promote without --canary",
        )


# -- promote / rollback / history -----------------------------------------------------------------


def promote(
    config: ProdmlConfig,
    version: str,
    *,
    canary: int | None = None,
    reason: Literal["promote", "force-promote"] = "promote",
    run_id: str | None = None,
    registry: Registry | None = None,
) -> MoveResult:
    """Make ``version`` the model's ``latest`` and move a running server to it.

    Args:
        config: the loaded config (its store; its server, when one of this project runs).
        version: a version id (or a unique prefix of one of at least 8 characters).
        canary: on a cluster, the percentage of traffic the new version gets at first
            (refused unless ``server.mode: cluster``); a promote without it makes it 100.
        reason: recorded in the history.
        run_id: recorded in the history.

    Raises:
        StoreError: unknown version (the nearest ids are listed), or latest moved meanwhile.
        ConfigError: ``canary`` without a cluster server.
    """
    _check_canary(config, canary)
    store = open_store(config, registry)
    ref = find_version(store, config.model_name, version)
    _, current = _current(store, config.model_name)
    move = None
    if current != ref.version:
        move = move_latest(
            store, config.model_name, ref.version, reason=reason, run_id=run_id, expect=current
        )
    endpoint = _follow(config, store, ref, canary=canary, registry=registry)
    return MoveResult(ref=ref, previous=current, move=move, endpoint=endpoint, canary_percent=canary)


def rollback_target(moves: list[LatestMove]) -> str | None:
    """The version that was latest before the current one, from the history.

    Replaying the moves as a stack — a promote or export pushes the version it replaced, a
    rollback pops one — makes repeated rollbacks walk back in time (C -> B -> A) instead of
    toggling between the last two versions.
    """
    stack: list[str | None] = []
    for move in moves:
        if move.reason == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(move.from_version)
    return stack[-1] if stack else None


def rollback(config: ProdmlConfig, *, registry: Registry | None = None) -> MoveResult:
    """Move ``latest`` back to the version that was latest before, and the server with it.

    Raises:
        StoreError: nothing was latest before the current version.
    """
    store = open_store(config, registry)
    try:
        moves = store.latest_history(config.model_name)
    except NotImplementedError as exc:
        raise StoreError(
            f"the {type(store).__name__} store keeps no history of `latest` ({exc}), so there is no "
            "earlier version to roll back to",
            hint="`prodml models promote -c FILE VERSION` names the version instead",
        ) from None
    _, current = _current(store, config.model_name)
    if current is None:
        raise StoreError(
            f"model {config.model_name!r} has no latest version to roll back from",
            hint="run the export stage, or `prodml models promote -c FILE VERSION`",
        )
    target = rollback_target(moves)
    if target is None:
        raise StoreError(
            f"no version of {config.model_name!r} was latest before {current}, so there is nothing "
            "to roll back to",
            hint="`prodml models history -c FILE` shows the moves; `prodml models promote -c FILE "
            "VERSION` makes any stored version latest",
        )
    ref = store.resolve(config.model_name, target)
    move = move_latest(store, config.model_name, target, reason="rollback", expect=current)
    endpoint = _follow(config, store, ref, canary=None, registry=registry)
    return MoveResult(ref=ref, previous=current, move=move, endpoint=endpoint)


def history(config: ProdmlConfig, *, registry: Registry | None = None) -> list[LatestMove]:
    """Every move of the model's ``latest``, oldest first."""
    return open_store(config, registry).latest_history(config.model_name)


# -- show / diff -----------------------------------------------------------------------------------


def show(config: ProdmlConfig, version: str, *, registry: Registry | None = None) -> dict[str, Any]:
    """Metrics, evaluation, lineage and size of one stored version, as plain data.

    Returns:
        ``version``, ``latest``, ``created_at``, ``size_bytes``, ``digest``, ``uri``,
        ``metrics`` (last epoch), ``evaluation`` (metrics, rows, fingerprint, split, or
        None), ``history`` (per epoch), ``lineage`` (training data rows and fingerprint,
        features, label, feature refs, config digest, model code, library versions) and
        ``moves`` (the history entries that moved latest to or from it).
    """
    store = open_store(config, registry)
    ref = find_version(store, config.model_name, version)
    listed, current = _current(store, config.model_name)
    entry = next(v for v in listed if v.version == ref.version)
    meta = read_metadata(store, ref)
    moves = [
        m.model_dump(mode="json")
        for m in store.latest_history(config.model_name)
        if ref.version in (m.from_version, m.to_version)
    ]
    return {
        "model": config.model_name,
        "version": ref.version,
        "latest": ref.version == current,
        "created_at": entry.created_at.isoformat(),
        "size_bytes": entry.size_bytes,
        "digest": ref.digest,
        "uri": store.uri(ref),
        "metrics": dict(meta.metrics),
        "evaluation": meta.evaluation.model_dump() if meta.evaluation else None,
        "history": {k: list(v) for k, v in meta.history.items()},
        "lineage": lineage(meta),
        "moves": moves,
    }


def lineage(meta: BundleMetadata) -> dict[str, Any]:
    """Where a version came from: data, features, code, config and library versions."""
    return {
        "training_rows": meta.training_data.get("rows"),
        "training_data_sha256": meta.training_data.get("sha256"),
        "features": meta.feature_names,
        "label": meta.label,
        "feature_refs": list(meta.feature_refs),
        "config_digest": meta.config_digest,
        "model_code": meta.extra.get("model_code"),
        "params": meta.extra.get("params"),
        "epochs": meta.extra.get("epochs"),
        "seed": meta.extra.get("seed"),
        "versions": dict(meta.versions),
    }


def diff(config: ProdmlConfig, a: str, b: str, *, registry: Registry | None = None) -> dict[str, Any]:
    """Two versions side by side: metrics (with b - a) and lineage (with what differs).

    Returns:
        ``a`` and ``b`` (each :func:`show`'s answer), ``metrics``: {name: {a, b, delta}} over
        the last-epoch and evaluation metrics (``eval:`` prefixed), and ``lineage``:
        {field: {a, b, same}}.
    """
    left, right = show(config, a, registry=registry), show(config, b, registry=registry)

    def flat(info: Mapping[str, Any]) -> dict[str, float]:
        values = dict(info["metrics"])
        if info["evaluation"]:
            values.update({f"eval:{k}": v for k, v in info["evaluation"]["metrics"].items()})
        return values

    la, lb = flat(left), flat(right)
    metrics = {
        name: {
            "a": la.get(name),
            "b": lb.get(name),
            "delta": lb[name] - la[name] if name in la and name in lb else None,
        }
        for name in sorted({*la, *lb})
    }
    fields = {**left["lineage"], "size_bytes": left["size_bytes"], "eval_fingerprint": None}
    lin_a = {**left["lineage"], "size_bytes": left["size_bytes"], "eval_fingerprint": _fp(left)}
    lin_b = {**right["lineage"], "size_bytes": right["size_bytes"], "eval_fingerprint": _fp(right)}
    compared = {
        name: {"a": lin_a.get(name), "b": lin_b.get(name), "same": lin_a.get(name) == lin_b.get(name)}
        for name in fields
    }
    return {"a": left, "b": right, "metrics": metrics, "lineage": compared}


def _fp(info: Mapping[str, Any]) -> str | None:
    return info["evaluation"]["fingerprint"] if info["evaluation"] else None


# -- the gate ---------------------------------------------------------------------------------------


def gate_metric(name: str, recorded: Mapping[str, float], version: str) -> str:
    """The evaluation metric ``gate.metric`` names (``val_loss`` reads as ``loss``).

    Raises:
        ConfigError: the version records no such metric; lists the ones it records.
    """
    if name in recorded:
        return name
    if name.startswith("val_") and name[4:] in recorded:
        return name[4:]
    listed = ", ".join(sorted(recorded)) or "none"
    raise ConfigError(
        f"metric {name!r} is not recorded by version {version} (its evaluation records: {listed})",
        field="gate.metric",
        hint="name one of them (a `val_` prefix is accepted: val_loss means loss on the evaluation rows)",
    )


def gate_decision(
    config: ProdmlConfig,
    store: ModelStore,
    candidate_ref: ModelRef,
    *,
    candidate_dir: Path | None = None,
    rows: pd.DataFrame | None = None,
    registry: Registry | None = None,
) -> GateDecision:
    """Whether ``candidate_ref`` may become latest under ``config.gate``.

    Args:
        config: the loaded config (``gate``, ``trainer``).
        store: the store holding both versions.
        candidate_ref: the stored new version.
        candidate_dir: the candidate's bundle on disk (saves pulling it).
        rows: the fetched frame the candidate was trained on; needed to re-score the current
            latest when its evaluation used other rows.

    Raises:
        ConfigError: the gate metric is not recorded (the recorded ones are listed), or the
            candidate records no evaluation.
    """
    gate = config.gate
    name = candidate_ref.version
    _, champion = _current(store, candidate_ref.model_name)
    if gate is None:
        return GateDecision(True, name, champion, reason="no gate configured")
    base = GateDecision(True, name, champion, metric=gate.metric, mode=gate.mode, tolerance=gate.tolerance)
    with tempfile.TemporaryDirectory(prefix="prodml-gate-") as tmp:
        folder = Path(tmp)
        if candidate_dir is None:
            candidate_dir, cand_meta = _metadata(store, candidate_ref, folder)
        else:
            cand_meta = BundleMetadata.read(candidate_dir)
        if cand_meta.evaluation is None:
            raise ConfigError(
                f"version {name} records no evaluation, so the gate cannot compare it "
                f"(recorded metrics of its last epoch: {', '.join(sorted(cand_meta.metrics)) or 'none'})",
                field="gate",
                hint="compile the model with a loss and keep evaluation rows (trainer.validation_split "
                "> 0 or trainer.evaluation: 0.1), or remove the gate",
            )
        measured = gate_metric(gate.metric, cand_meta.evaluation.metrics, name)
        cand_value = cand_meta.evaluation.metrics[measured]
        base = _replace(base, measured=measured, candidate_value=cand_value, rows=cand_meta.evaluation.rows)
        if champion is None or champion == name:
            why = "there is no latest version yet" if champion is None else "it already is latest"
            return _replace(base, reason=f"{name} passes: {why}")
        champ_ref = store.resolve(candidate_ref.model_name, champion)
        champ_meta = read_metadata(store, champ_ref)
        same_rows = (
            champ_meta.evaluation is not None
            and champ_meta.evaluation.fingerprint == cand_meta.evaluation.fingerprint
            and measured in champ_meta.evaluation.metrics
        )
        rescored = False
        if same_rows:
            champ_value = champ_meta.evaluation.metrics[measured]  # type: ignore[union-attr]
        else:
            if rows is None:
                return _replace(
                    base,
                    passed=False,
                    reason=f"the current latest {champion} was evaluated on other rows and this step has "
                    "no fetched data to re-score it on, so the gate cannot compare them",
                )
            champ_dir = store.pull(champ_ref, folder / "champion" / champion)
            champ_value, cand_value = _rescore(
                config, registry, rows, candidate_dir, champ_dir, cand_meta, measured, cand_value
            )
            rescored = True
    worse = cand_value - champ_value if gate.mode == "min" else champ_value - cand_value
    passed = worse <= gate.tolerance  # NaN compares False: a NaN never passes
    verdict = "no worse than" if passed else "worse than"
    better = "lower" if gate.mode == "min" else "higher"
    return _replace(
        base,
        passed=passed,
        candidate_value=cand_value,
        champion_value=champ_value,
        rescored=rescored,
        reason=(
            f"{name} is {verdict} latest {champion} on {gate.metric} ({better} is better): "
            f"{cand_value:.6g} vs {champ_value:.6g}, tolerance {gate.tolerance:g}"
            + (f"; {champion} re-scored on the same {base.rows} rows" if rescored else "")
        ),
    )


def _replace(decision: GateDecision, **changes: Any) -> GateDecision:
    from dataclasses import replace

    return replace(decision, **changes)


def _rescore(
    config: ProdmlConfig,
    registry: Registry | None,
    frame: pd.DataFrame,
    candidate_dir: Path,
    champion_dir: Path,
    cand_meta: BundleMetadata,
    measured: str,
    cand_value: float,
) -> tuple[float, float]:
    """(champion, candidate) values of ``measured`` on the candidate's evaluation rows."""
    from prodml.core.bundle import frame_fingerprint

    if config.section("trainer") is None:
        raise ConfigError(
            "the gate re-scores the current latest with the trainer, but the config has no `trainer:`",
            field="trainer",
        )
    trainer = _registry(registry).create("trainer", config.section("trainer"))  # type: ignore[arg-type]
    columns = [*cand_meta.feature_names, cand_meta.label]
    eval_rows = trainer.evaluation_rows(frame[columns])
    champion = trainer.evaluate(champion_dir, eval_rows, metrics_of=candidate_dir)
    if frame_fingerprint(eval_rows) != cand_meta.evaluation.fingerprint:  # type: ignore[union-attr]
        # not the rows the candidate recorded (another fetch): measure both here
        cand_value = trainer.evaluate(candidate_dir, eval_rows)[measured]
    if measured not in champion:
        raise ConfigError(
            f"re-scoring the current latest gave no {measured!r} (it gave: {', '.join(sorted(champion))})",
            field="gate.metric",
        )
    return champion[measured], cand_value


def export_to_latest(
    config: ProdmlConfig,
    store: ModelStore,
    ref: ModelRef,
    *,
    bundle_dir: Path | None = None,
    rows: pd.DataFrame | None = None,
    run_id: str | None = None,
    force_promote: bool = False,
    follow_server: bool = False,
    registry: Registry | None = None,
) -> tuple[GateDecision, LatestMove | None]:
    """After an export stored ``ref``: move latest to it if the gate lets it (or forced).

    With ``follow_server`` (a run without a serve stage), a running server of this
    project is moved to the new latest too.

    Raises:
        GatedError: the gate kept it out (exit status 3); the version stays stored.
    """
    decision = gate_decision(config, store, ref, candidate_dir=bundle_dir, rows=rows, registry=registry)
    reason: Literal["export", "force-promote"] = "export"
    if not decision.passed:
        if not force_promote:
            raise GatedError(
                f"gate: {decision.reason}. Version {ref.version} is stored, but latest stays "
                f"{decision.champion} and the served model is unchanged",
                hint=f"to use it anyway: prodml models promote -c FILE {ref.version} "
                "(or run again with --force-promote)",
                decision=decision,
            )
        reason = "force-promote"
        log.warning("gate: %s; --force-promote moves latest to it anyway", decision.reason)
    elif config.gate is not None:
        log.info("gate: %s", decision.reason)
    if decision.champion == ref.version:
        return decision, None
    move = move_latest(
        store, ref.model_name, ref.version, reason=reason, run_id=run_id, expect=decision.champion
    )
    if follow_server:
        _follow(config, store, ref, canary=None, registry=registry)
    return decision, move
