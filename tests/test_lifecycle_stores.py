"""promote, rollback and history through prodml.lifecycle on every built-in store.

Local folder, SeaweedFS (S3) and Azurite (Azure Blob), each a real backend; the bundles
are small synthetic ones (no training), pushed the way the export stage pushes them.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from prodml import lifecycle
from prodml.core.config import load_config_dict
from prodml.core.errors import StoreError
from prodml.core.interfaces import ModelRef
from prodml.testing.stores import make_bundle

PROJECT = "lifecycle"


@pytest.fixture(params=["local", "s3", "azure_blob"])
def store_section(request, tmp_path: Path) -> dict:
    if request.param == "local":
        return {"type": "local", "root": str(tmp_path / "models")}
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        return server.store_config()
    server = request.getfixturevalue("azurite_server")
    return server.store_config()


@pytest.fixture
def config(store_section: dict, tmp_path: Path):
    return load_config_dict(
        {"project": PROJECT, "store": store_section, "stages": ["export"]}, base_dir=tmp_path
    )


def push_three(config, tmp_path: Path) -> list[ModelRef]:
    """Three versions pushed as exports, the last one latest."""
    store = lifecycle.open_store(config)
    refs = []
    for seed in range(3):
        refs.append(store.push(make_bundle(tmp_path / f"b{seed}-{uuid.uuid4().hex[:6]}", seed=seed), PROJECT))
    return refs


@pytest.mark.slow
def test_promote_rollback_and_history(config, tmp_path: Path) -> None:
    a, b, c = push_three(config, tmp_path)
    store = lifecycle.open_store(config)
    assert store.resolve(PROJECT) == c

    result = lifecycle.promote(config, a.version)
    assert (result.previous, result.ref, result.endpoint) == (c.version, a, None)
    assert result.move is not None and result.move.reason == "promote"
    assert store.resolve(PROJECT) == a
    again = lifecycle.promote(config, a.version)
    assert again.move is None  # already latest: nothing recorded

    back = lifecycle.rollback(config)
    assert (back.previous, back.ref.version) == (a.version, c.version)
    assert lifecycle.rollback(config).ref.version == b.version
    assert lifecycle.rollback(config).ref.version == a.version
    with pytest.raises(StoreError, match=f"was latest before {a.version}"):
        lifecycle.rollback(config)
    assert store.resolve(PROJECT) == a

    moves = lifecycle.history(config)
    assert [(m.from_version, m.to_version, m.reason) for m in moves] == [
        (None, a.version, "export"),
        (a.version, b.version, "export"),
        (b.version, c.version, "export"),
        (c.version, a.version, "promote"),
        (a.version, c.version, "rollback"),
        (c.version, b.version, "rollback"),
        (b.version, a.version, "rollback"),
    ]
    shown = lifecycle.show(config, c.version)
    assert shown["latest"] is False and shown["digest"] == c.digest
    assert [(m["from_version"], m["to_version"]) for m in shown["moves"]] == [
        (b.version, c.version),
        (c.version, a.version),
        (a.version, c.version),
        (c.version, b.version),
    ]
    compared = lifecycle.diff(config, a.version, b.version)
    assert compared["metrics"]["loss"] == {"a": 0.5, "b": 1.5, "delta": 1.0}


@pytest.mark.slow
def test_a_push_of_identical_content_is_a_no_op(config, tmp_path: Path) -> None:
    store = lifecycle.open_store(config)
    bundle = make_bundle(tmp_path / "bundle")
    first = store.push(bundle, PROJECT)
    results: list[object] = []

    def push() -> None:
        try:
            results.append(store.push(bundle, PROJECT))
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=push) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [first, first]
    assert [v.version for v in store.versions(PROJECT)] == [first.version]
    assert len(store.latest_history(PROJECT)) == 1  # no move for a version already latest


@pytest.mark.slow
def test_a_lost_history_record_is_recovered_from_the_pointer(config, tmp_path: Path) -> None:
    """A mover killed between swapping the pointer and writing the record loses nothing."""
    a, b, c = push_three(config, tmp_path)
    store = lifecycle.open_store(config)
    key = store.history_key(PROJECT, 3)
    record = store._read(key)
    store._delete([key])
    assert [m.to_version for m in store.latest_history(PROJECT)] == [a.version, b.version, c.version]
    lifecycle.promote(config, a.version)  # the next move writes the missing record back
    assert store._read(key) == record
    assert json.loads(store._read(store.history_key(PROJECT, 4)))["to_version"] == a.version
