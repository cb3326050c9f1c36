"""Stored model versions as the dashboard shows them: metadata, curves, lineage, moves.

A version's ``prodml.json`` is read from the store and checked against the version's
``MANIFEST.sha256`` before it is believed (:func:`read_version_file`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prodml.core.bundle import BundleMetadata
from prodml.ui.runs import parse_time


@dataclass(frozen=True)
class VersionView:
    """A stored version with what its prodml.json says (``metadata`` None if unreadable)."""

    version: str
    created_at: datetime
    size_bytes: int
    latest: bool
    metadata: BundleMetadata | None = None
    problem: str = ""

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.metadata.metrics) if self.metadata else {}

    @property
    def history(self) -> dict[str, list[float]]:
        """Per-epoch curves (``loss``, ``val_loss``, ...) when the bundle recorded them."""
        return epoch_history(self.metadata) if self.metadata else {}

    @property
    def evaluation(self) -> dict[str, Any]:
        """The evaluation block (metrics, rows, fingerprint); empty for older bundles."""
        return evaluation_of(self.metadata) if self.metadata else {}


@dataclass(frozen=True)
class MoveView:
    """One move of ``latest`` (promote, rollback, export)."""

    at: datetime | None
    from_version: str | None
    to_version: str
    reason: str
    run_id: str | None = None


def epoch_history(metadata: BundleMetadata) -> dict[str, list[float]]:
    """``{metric: [value per epoch]}`` from prodml.json.

    The agreed place is a top-level ``history`` (issue 12); until every bundle has it, the
    same shape under ``extra.history`` is read too. Bundles without either have no curves.
    """
    raw = getattr(metadata, "history", None) or metadata.extra.get("history") or {}
    if isinstance(raw, list):  # one record per epoch: [{"loss": .., "val_loss": ..}, ...]
        merged: dict[str, list[float]] = {}
        for record in raw:
            if isinstance(record, dict):
                for key, value in record.items():
                    if key != "epoch" and isinstance(value, int | float):
                        merged.setdefault(key, []).append(float(value))
        raw = merged
    if not isinstance(raw, dict):
        return {}
    curves = {}
    for key, values in raw.items():
        if isinstance(values, list) and all(isinstance(v, int | float) for v in values):
            curves[str(key)] = [float(v) for v in values]
    return curves


def read_version_file(store: Any, model_name: str, version: str, name: str) -> bytes:
    """One file of a stored version, checked against the version's manifest.

    ``ModelStore.read_file`` reads just that object where the store can (the dashboard needs
    prodml.json of 25 versions per page, not 25 whole bundles); its default pulls the version.

    Raises:
        BundleError: the file does not match the manifest (the version was tampered with).
        StoreError: the version is missing or the store cannot be read.
    """
    return store.read_file(store.resolve(model_name, version), name)


def move_view(move: Any) -> MoveView:
    """A move of ``latest`` (a :class:`~prodml.core.interfaces.LatestMove`) as shown."""
    return MoveView(
        at=parse_time(getattr(move, "at", None)),
        from_version=getattr(move, "from_version", None),
        to_version=str(getattr(move, "to_version", "") or ""),
        reason=str(getattr(move, "reason", "") or ""),
        run_id=getattr(move, "run_id", None),
    )


def _lineage(view: VersionView) -> dict[str, str]:
    meta = view.metadata
    if meta is None:
        return {}
    data = meta.training_data or {}
    evaluation = evaluation_of(meta)
    return {
        "training rows": str(data.get("rows", "")),
        "training data sha256": str(data.get("sha256", "")),
        "evaluation rows": str(evaluation.get("rows", "")),
        "evaluation rows sha256": str(evaluation.get("fingerprint", "")),
        "features": ", ".join(meta.feature_names),
        "feature refs": ", ".join(meta.feature_refs),
        "label": meta.label,
        "config digest": meta.config_digest,
        "framework": meta.framework,
        **{f"{k} version": v for k, v in sorted(meta.versions.items())},
    }


def evaluation_of(meta: BundleMetadata) -> dict[str, Any]:
    """The bundle's evaluation block as plain data (empty for bundles without one)."""
    evaluation = getattr(meta, "evaluation", None) or meta.extra.get("evaluation") or {}
    if hasattr(evaluation, "model_dump"):
        evaluation = evaluation.model_dump(mode="json")
    return evaluation if isinstance(evaluation, dict) else {}


def lineage(view: VersionView) -> dict[str, str]:
    """Where a version came from: its data fingerprint, features, config digest, versions."""
    return {k: v for k, v in _lineage(view).items() if v}


def lineage_rows(a: VersionView, b: VersionView) -> list[tuple[str, str, str, bool]]:
    """(what, in A, in B, same?) for every lineage entry of two versions."""
    left, right = _lineage(a), _lineage(b)
    keys = list(dict.fromkeys([*left, *right]))
    return [(k, left.get(k, ""), right.get(k, ""), left.get(k, "") == right.get(k, "")) for k in keys]
