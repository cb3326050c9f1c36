"""The model bundle: a directory that stages pass on and stores keep.

::

    model.keras        Keras v3 native file
    saved_model/1/     TF SavedModel in TF-Serving layout
    prodml.json        :class:`BundleMetadata`
    MANIFEST.sha256    sha256 of every other file, written last

``MANIFEST.sha256`` uses the ``sha256sum`` text format (``<hex>  <relative/posix/path>``),
sorted by path, so ``sha256sum -c MANIFEST.sha256`` checks a bundle without prodml.
A directory without a manifest is not a bundle; one whose files differ from it is refused.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from prodml.core.errors import BundleError

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "MANIFEST.sha256"
METADATA = "prodml.json"
KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def safe_relpath(name: str) -> PurePosixPath:
    """Check that ``name`` is a relative path that stays inside its folder.

    Raises:
        BundleError: ``name`` is absolute, empty, or climbs out with ``..``.
    """
    if not name or "\\" in name or "\x00" in name:
        raise BundleError(f"refusing file name {name!r} in bundle: not a plain relative path")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith("/"):
        raise BundleError(f"refusing file name {name!r} in bundle: it would escape the destination folder")
    return path


def bundle_files(bundle_dir: Path) -> list[str]:
    """Relative posix paths of every file in the bundle except the manifest, sorted."""
    root = Path(bundle_dir)
    files = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != MANIFEST:
                files.append(rel)
    return sorted(files)


def write_manifest(bundle_dir: Path) -> Path:
    """Hash every file of ``bundle_dir`` into MANIFEST.sha256 (atomically) and return it."""
    root = Path(bundle_dir)
    lines = [f"{sha256_file(root / rel)}  {rel}\n" for rel in bundle_files(root)]
    if not lines:
        raise BundleError(f"bundle {root} is empty: nothing to write a manifest for")
    tmp = root / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(root / MANIFEST)
    return root / MANIFEST


def parse_manifest(text: str, *, source: str = MANIFEST) -> dict[str, str]:
    """Parse manifest text into {relative path: sha256}; names are checked for traversal."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise BundleError(f"{source} line {number} is malformed: {line[:80]!r}")
        safe_relpath(name)
        if name in entries:
            raise BundleError(f"{source} lists {name!r} twice")
        entries[name] = digest
    if not entries:
        raise BundleError(f"{source} is empty")
    return entries


def read_manifest(bundle_dir: Path) -> dict[str, str]:
    """The manifest of ``bundle_dir`` as {relative path: sha256}."""
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(
            f"{bundle_dir} is not a model bundle: {MANIFEST} is missing",
            hint="a bundle is written by the train stage; an interrupted write leaves no manifest",
        )
    return parse_manifest(path.read_text(encoding="utf-8"), source=str(path))


def verify_bundle(bundle_dir: Path, *, contents: bool = True) -> dict[str, str]:
    """Check every file of ``bundle_dir`` against its manifest; return the manifest.

    Args:
        contents: also hash each file. ``False`` checks only that the manifest lists exactly
            the files present (for callers that hash each file while reading it anyway).

    Raises:
        BundleError: naming each missing, changed or unlisted file.
    """
    root = Path(bundle_dir)
    expected = read_manifest(root)
    present = set(bundle_files(root))
    problems = []
    for name, digest in expected.items():
        if name not in present:
            problems.append(f"missing {name}")
        elif contents and sha256_file(root / name) != digest:
            problems.append(f"changed {name}")
    problems += [f"unlisted {name}" for name in sorted(present - set(expected))]
    if problems:
        shown = "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
        raise BundleError(
            f"bundle {root} does not match its {MANIFEST}: {shown}",
            hint="the bundle was modified or partly copied; export it again from a clean run",
        )
    return expected


def manifest_digest(bundle_dir: Path) -> str:
    """sha256 of the manifest file: one hash that identifies the bundle's whole content."""
    return sha256_file(Path(bundle_dir) / MANIFEST)


def _now() -> datetime:
    """The clock of :func:`new_version_id` (the store conformance suite pins it)."""
    return datetime.now(UTC)


def new_version_id(bundle_dir: Path, now: datetime | None = None) -> str:
    """A version id that sorts by time: ``20261129T173000Z-<8 hex of content>``.

    Stores name every new version with it, so ids sort by time across backends and the
    store conformance suite can pin its clock.
    """
    now = (now or _now()).astimezone(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{manifest_digest(bundle_dir)[:8]}"


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """sha256 over a DataFrame's column names, dtypes and values (order-sensitive)."""
    import pandas as pd

    digest = hashlib.sha256()
    for name in frame.columns:
        digest.update(f"{name}\x00{frame[name].dtype}\x00".encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


class FeatureInfo(BaseModel):
    """A model input as recorded in prodml.json."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    name: str
    dtype: str


class Evaluation(BaseModel):
    """How well the model did on rows it was not fitted on, recorded in prodml.json.

    Two versions whose ``fingerprint`` is equal were measured on the same rows, so their
    metrics compare directly; otherwise a gate re-scores one of them on the other's rows.
    """

    model_config = ConfigDict(extra="forbid", defer_build=True)

    metrics: dict[str, float] = Field(description="metric name (as compiled: loss, mae, ...) -> value")
    rows: int = Field(description="number of evaluation rows")
    fingerprint: str = Field(description="frame_fingerprint of the evaluation rows (features + label)")
    split: str = Field(
        "validation", description="which rows: `validation`, or `holdout` (trainer.evaluation)"
    )


class BundleMetadata(BaseModel):
    """prodml.json: what a bundle holds and how it was made.

    The version id is assigned by the store at push time (it hashes the manifest, which
    covers this file), so it is not recorded here; :class:`~prodml.core.interfaces.ModelRef`
    carries it.
    """

    model_config = ConfigDict(extra="forbid", defer_build=True)

    format_version: int = 1
    name: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    framework: str = "keras"
    features: list[FeatureInfo]
    label: str
    label_dtype: str = "float32"
    outputs: list[str] = Field(default_factory=lambda: ["prediction"])
    metrics: dict[str, float] = Field(default_factory=dict)
    history: dict[str, list[float]] = Field(
        default_factory=dict,
        description="per-epoch values of the loss and every compiled metric (train and val_), "
        "empty in bundles written before prodml recorded it",
    )
    evaluation: Evaluation | None = Field(
        None, description="metrics on the evaluation rows; None when there were none (or older bundles)"
    )
    training_data: dict[str, Any] = Field(
        default_factory=dict, description="rows and sha256 of the training frame"
    )
    feature_refs: list[str] = Field(default_factory=list)
    entity_keys: list[str] = Field(default_factory=list)
    serving_signature: str = "serving_default"
    config_digest: str = ""
    versions: dict[str, str] = Field(
        default_factory=dict, description="prodml, tensorflow, keras, python versions"
    )
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def write(self, bundle_dir: Path) -> Path:
        path = Path(bundle_dir) / METADATA
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, bundle_dir: Path) -> BundleMetadata:
        path = Path(bundle_dir) / METADATA
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise BundleError(f"{bundle_dir} has no {METADATA}") from None
        except ValueError as exc:
            raise BundleError(f"{path} is not valid prodml bundle metadata: {exc}") from None
