"""The bundle manifest: written last, verified fully, traversal refused."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from prodml.core.bundle import (
    MANIFEST,
    BundleMetadata,
    FeatureInfo,
    frame_fingerprint,
    new_version_id,
    parse_manifest,
    read_manifest,
    safe_relpath,
    sha256_file,
    verify_bundle,
    write_manifest,
)
from prodml.core.errors import BundleError


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    (root / "saved_model" / "1" / "variables").mkdir(parents=True)
    (root / "model.keras").write_bytes(b"keras-bytes" * 100)
    (root / "saved_model" / "1" / "saved_model.pb").write_bytes(b"pb")
    (root / "saved_model" / "1" / "variables" / "variables.index").write_bytes(b"idx")
    BundleMetadata(name="demo", features=[FeatureInfo(name="x", dtype="float32")], label="y").write(root)
    write_manifest(root)
    return root


def test_manifest_is_sha256sum_format_and_verifies(bundle: Path) -> None:
    lines = (bundle / MANIFEST).read_text().splitlines()
    names = [line.split("  ", 1)[1] for line in lines]
    assert (
        names
        == sorted(names)
        == [
            "model.keras",
            "prodml.json",
            "saved_model/1/saved_model.pb",
            "saved_model/1/variables/variables.index",
        ]
    )
    assert lines[0].split("  ")[0] == sha256_file(bundle / "model.keras")
    assert verify_bundle(bundle) == read_manifest(bundle)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda b: (b / "model.keras").write_bytes(b"tampered"), "changed model.keras"),
        (lambda b: (b / "prodml.json").unlink(), "missing prodml.json"),
        (lambda b: (b / "extra.bin").write_bytes(b"x"), "unlisted extra.bin"),
        (lambda b: (b / MANIFEST).unlink(), "MANIFEST.sha256 is missing"),
    ],
    ids=["changed", "missing", "unlisted", "no-manifest"],
)
def test_damaged_bundle_is_refused(bundle: Path, damage, expected: str) -> None:
    damage(bundle)
    with pytest.raises(BundleError, match=expected):
        verify_bundle(bundle)


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../b", "", "a\\b"])
def test_traversal_names_refused(name: str) -> None:
    with pytest.raises(BundleError, match="refusing file name"):
        safe_relpath(name)


def test_manifest_with_traversal_entry_refused() -> None:
    with pytest.raises(BundleError, match="escape"):
        parse_manifest(f"{'0' * 64}  ../../outside\n")


def test_malformed_manifest_line_named() -> None:
    with pytest.raises(BundleError, match="line 2 is malformed"):
        parse_manifest(f"{'a' * 64}  ok\nnot-a-hash  x\n")


def test_version_id_sorts_by_time_and_names_content(bundle: Path) -> None:
    early = new_version_id(bundle, datetime(2026, 11, 29, 17, 30, tzinfo=UTC))
    late = new_version_id(bundle, datetime(2026, 11, 29, 17, 31, tzinfo=UTC))
    assert early.startswith("20261129T173000Z-") and len(early) == len("20261129T173000Z-") + 8
    assert early < late
    assert early.split("-")[1] == sha256_file(bundle / MANIFEST)[:8]


def test_metadata_roundtrip(bundle: Path) -> None:
    meta = BundleMetadata.read(bundle)
    assert meta.feature_names == ["x"]
    assert meta.label == "y"


def test_frame_fingerprint_is_content_sensitive() -> None:
    import pandas as pd

    a = pd.DataFrame({"x": [1.0, 2.0], "y": [0.0, 1.0]})
    assert frame_fingerprint(a) == frame_fingerprint(a.copy())
    assert frame_fingerprint(a) != frame_fingerprint(a.assign(x=[1.0, 2.5]))
    assert frame_fingerprint(a) != frame_fingerprint(a[["y", "x"]])
