"""The ModelStore conformance suite: what every store backend must do, against a real server.

Use it like fsspec's abstract tests::

    from prodml.testing.stores import ModelStoreConformance, RawAccess

    class TestMyStore(ModelStoreConformance):
        uri_scheme = "myfs://"

        @pytest.fixture
        def backend_config(self, my_server):
            return {"type": "mystore", "url": my_server.url, "prefix": unique_prefix()}

        @pytest.fixture
        def raw(self, my_server, backend_config) -> RawAccess:
            return MyRawAccess(...)   # writes/deletes objects behind the store's back

The ``raw`` fixture tampers with stored objects directly through the backend's own SDK, so
the suite can check that a store refuses what it did not write. Stores must name new
versions with :func:`prodml.plugin.new_version_id` (however they import it): the suite pins
its clock, so it knows the id a push will get and when the version was made.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest

from prodml.core import bundle as bundle_mod
from prodml.core.bundle import MANIFEST, BundleMetadata, FeatureInfo, write_manifest
from prodml.core.errors import BundleError, ProdmlError, StoreError
from prodml.core.interfaces import LatestMove, ModelRef, ModelStore
from prodml.testing.base import BackendConformance

MODEL = "conformance-model"


class RawAccess(abc.ABC):
    """Direct access to a store's objects, bypassing the store (to simulate tampering)."""

    @abc.abstractmethod
    def write(self, ref: ModelRef, relpath: str, data: bytes) -> None:
        """Write ``data`` at ``relpath`` inside the stored version folder of ``ref``."""

    @abc.abstractmethod
    def delete(self, ref: ModelRef, relpath: str) -> None:
        """Delete ``relpath`` inside the stored version folder of ``ref``."""


def make_bundle(path: Path, *, seed: int = 0, big_bytes: int = 0) -> Path:
    """Write a small, valid bundle (nested files, metadata, manifest) to ``path``."""
    path.mkdir(parents=True)
    rng = hashlib.sha256(f"seed-{seed}".encode()).digest()
    (path / "model.keras").write_bytes(rng * 64 + os.urandom(512))
    variables = path / "saved_model" / "1" / "variables"
    variables.mkdir(parents=True)
    (path / "saved_model" / "1" / "saved_model.pb").write_bytes(os.urandom(2048))
    (variables / "variables.index").write_bytes(os.urandom(256))
    (variables / "variables.data-00000-of-00001").write_bytes(os.urandom(big_bytes or 4096))
    BundleMetadata(
        name=MODEL,
        features=[FeatureInfo(name="x1", dtype="float32"), FeatureInfo(name="x2", dtype="float32")],
        label="target",
        metrics={"loss": 0.5 + seed},
    ).write(path)
    write_manifest(path)
    return path


def tree(root: Path) -> dict[str, bytes]:
    """{relative path: content} of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def stamp_time(stamp: str) -> datetime:
    """The UTC time of a version-id stamp such as ``20250101T000000Z``."""
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


class ModelStoreConformance(BackendConformance):
    """Behaviour every :class:`~prodml.core.interfaces.ModelStore` backend must have."""

    role = "store"
    #: what :meth:`ModelStore.uri` starts with (``s3://``, ``https://``, ``file://``)
    uri_scheme: ClassVar[str] = ""

    @pytest.fixture
    def raw(self) -> RawAccess:
        """Direct object access for tamper tests. Subclasses must override."""
        pytest.fail(f"{type(self).__name__} must override the `raw` fixture (see RawAccess)")

    @pytest.fixture
    def big_file_bytes(self) -> int:
        """Size of the big file in :meth:`test_big_file_round_trip` (above the multipart threshold)."""
        return 12 << 20

    @pytest.fixture
    def store(self, backend: ModelStore) -> ModelStore:
        return backend

    @pytest.fixture
    def bundles(self, tmp_path: Path):
        """Factory of distinct bundles: ``bundles(seed, big_bytes=0)``."""
        count = iter(range(10_000))

        def make(seed: int = 0, big_bytes: int = 0) -> Path:
            return make_bundle(tmp_path / f"bundle-{next(count)}", seed=seed, big_bytes=big_bytes)

        return make

    @pytest.fixture
    def clock(self, monkeypatch: pytest.MonkeyPatch):
        """``clock(stamp)`` pins the time of new version ids (no sleeping between pushes).

        It pins the clock inside :func:`~prodml.core.bundle.new_version_id`, not the function
        itself, so it works however the store imports the function.
        """
        state = {"stamp": "20250101T000000Z"}
        monkeypatch.setattr(bundle_mod, "_now", lambda: stamp_time(state["stamp"]))

        def set_stamp(stamp: str) -> None:
            state["stamp"] = stamp

        return set_stamp

    @pytest.fixture
    def two_versions(self, store: ModelStore, bundles, clock) -> tuple[ModelRef, ModelRef, Path, Path]:
        clock("20250101T000000Z")
        first_dir = bundles(seed=1)
        first = store.push(first_dir, MODEL)
        clock("20250102T000000Z")
        second_dir = bundles(seed=2)
        second = store.push(second_dir, MODEL)
        return first, second, first_dir, second_dir

    # -- push / resolve / pull -----------------------------------------------------------

    def test_push_returns_a_ref_that_resolves_as_latest(self, store: ModelStore, bundles) -> None:
        bundle = bundles()
        ref = store.push(bundle, MODEL)
        assert ref.model_name == MODEL
        assert ref.digest == bundle_mod.manifest_digest(bundle)
        assert ref.version.endswith(ref.digest[:8])
        assert store.resolve(MODEL) == ref
        assert store.resolve(MODEL, ref.version) == ref
        assert ModelRef.model_validate_json(ref.to_json()) == ref

    def test_pull_returns_the_identical_bundle(self, store: ModelStore, bundles, tmp_path: Path) -> None:
        bundle = bundles()
        ref = store.push(bundle, MODEL)
        dest = store.pull(ref, tmp_path / "pulled")
        assert dest == tmp_path / "pulled"
        assert tree(dest) == tree(bundle)
        bundle_mod.verify_bundle(dest)

    def test_pull_into_the_same_folder_again_is_a_no_op(self, store, bundles, tmp_path: Path) -> None:
        ref = store.push(bundles(), MODEL)
        first = store.pull(ref, tmp_path / "pulled")
        assert store.pull(ref, tmp_path / "pulled") == first

    def test_pull_refuses_a_folder_holding_something_else(self, store, two_versions, tmp_path) -> None:
        first, second, *_ = two_versions
        store.pull(first, tmp_path / "pulled")
        with pytest.raises(StoreError, match="exists"):
            store.pull(second, tmp_path / "pulled")
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "notes.txt").write_text("mine")
        with pytest.raises(StoreError):
            store.pull(first, tmp_path / "other")
        assert (tmp_path / "other" / "notes.txt").read_text() == "mine"

    def test_big_file_round_trip(self, store, bundles, big_file_bytes: int, tmp_path: Path) -> None:
        bundle = bundles(big_bytes=big_file_bytes)
        store.push(bundle, MODEL)
        dest = store.pull(store.resolve(MODEL), tmp_path / "pulled")
        assert tree(dest) == tree(bundle)

    def test_uri_points_at_the_version(self, store: ModelStore, bundles) -> None:
        ref = store.push(bundles(), MODEL)
        uri = store.uri(ref)
        assert uri == ref.uri
        assert uri.startswith(self.uri_scheme)
        assert MODEL in uri and ref.version in uri

    # -- versions and latest -------------------------------------------------------------------

    def test_new_versions_are_named_by_new_version_id(self, store: ModelStore, bundles, clock) -> None:
        clock("20250301T120000Z")
        bundle = bundles()
        ref = store.push(bundle, MODEL)
        assert ref.version == f"20250301T120000Z-{bundle_mod.manifest_digest(bundle)[:8]}", (
            "name new versions with prodml.plugin.new_version_id(bundle_dir)"
        )

    def test_versions_newest_first_with_latest_marked(self, store, two_versions) -> None:
        first, second, _, second_dir = two_versions
        listed = store.versions(MODEL)
        assert [v.version for v in listed] == [second.version, first.version]
        assert [v.latest for v in listed] == [True, False]
        assert listed[0].created_at.tzinfo is not None
        # when the version was made (the pinned clock), not when its files were last touched
        assert [v.created_at for v in listed] == [
            stamp_time("20250102T000000Z"),
            stamp_time("20250101T000000Z"),
        ]
        size = sum(p.stat().st_size for p in second_dir.rglob("*") if p.is_file())
        assert listed[0].size_bytes == size

    def test_older_version_still_resolves_and_pulls(self, store, two_versions, tmp_path) -> None:
        first, second, first_dir, _ = two_versions
        assert store.resolve(MODEL) == second
        assert store.resolve(MODEL, first.version) == first
        assert tree(store.pull(first, tmp_path / "old")) == tree(first_dir)

    def test_unknown_model_and_version(self, store: ModelStore, bundles) -> None:
        assert store.versions("never-pushed") == []
        with pytest.raises(StoreError, match="never-pushed"):
            store.resolve("never-pushed")
        store.push(bundles(), MODEL)
        with pytest.raises(StoreError, match="20990101T000000Z-deadbeef"):
            store.resolve(MODEL, "20990101T000000Z-deadbeef")
        with pytest.raises(StoreError):
            store.resolve(MODEL, "not-a-version")

    def test_model_names_cannot_leave_the_prefix(self, store: ModelStore, bundles) -> None:
        bundle = bundles()
        for name in ("../escape", "a/b", "", ".."):
            with pytest.raises(ProdmlError):
                store.push(bundle, name)

    # -- never overwrite ------------------------------------------------------------------------

    def test_an_existing_version_is_never_overwritten(self, store, bundles, raw, clock, tmp_path) -> None:
        clock("20250101T000000Z")
        planted_dir = bundles(seed=1)
        incoming = bundles(seed=2)
        # another complete version already sits at the id the next push will get
        version = f"20250101T000000Z-{bundle_mod.manifest_digest(incoming)[:8]}"
        planted = ModelRef(model_name=MODEL, version=version, store_type="raw", uri="raw://")
        for rel, data in tree(planted_dir).items():
            if rel != MANIFEST:
                raw.write(planted, rel, data)
        raw.write(planted, MANIFEST, (planted_dir / MANIFEST).read_bytes())
        with pytest.raises(StoreError):
            store.push(incoming, MODEL)
        kept = store.resolve(MODEL, version)
        assert kept.digest == bundle_mod.manifest_digest(planted_dir)
        assert tree(store.pull(kept, tmp_path / "pulled")) == tree(planted_dir)

    def test_pushing_identical_content_twice_is_idempotent(self, store, bundles, clock) -> None:
        bundle = bundles()
        assert store.push(bundle, MODEL) == store.push(bundle, MODEL)
        assert len(store.versions(MODEL)) == 1

    @pytest.mark.parametrize("change", ["same-size content", "other size", "unlisted file", "missing file"])
    def test_a_modified_local_bundle_is_not_pushed(self, store, bundles, change: str) -> None:
        bundle = bundles()
        target = bundle / "saved_model" / "1" / "variables" / "variables.index"
        if change == "same-size content":  # only hashing the content finds this one
            data = target.read_bytes()
            target.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
        elif change == "other size":
            target.write_bytes(b"changed after the manifest was written")
        elif change == "unlisted file":
            (bundle / "saved_model" / "1" / "notes.txt").write_text("added after the manifest")
        else:
            target.unlink()
        with pytest.raises(BundleError):
            store.push(bundle, MODEL)
        assert store.versions(MODEL) == []
        with pytest.raises(StoreError):
            store.resolve(MODEL)

    # -- refuse what does not match the manifest --------------------------------------------------

    def _assert_refused(self, store, ref, tmp_path: Path, match: str) -> None:
        dest = tmp_path / "refused"
        before = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(BundleError, match=match):
            store.pull(ref, dest)
        assert not dest.exists(), "a refused pull must not leave the destination behind"
        assert sorted(p.name for p in tmp_path.iterdir()) == before, "no partial folders left"

    def test_a_tampered_file_is_refused(self, store, bundles, raw: RawAccess, tmp_path) -> None:
        ref = store.push(bundles(), MODEL)
        raw.write(ref, "model.keras", b"evil weights")
        self._assert_refused(store, ref, tmp_path, "model.keras")

    def test_a_replaced_manifest_is_refused(self, store, bundles, raw: RawAccess, tmp_path) -> None:
        bundle = bundles()
        ref = store.push(bundle, MODEL)
        (bundle / "model.keras").write_bytes(b"evil weights")
        write_manifest(bundle)  # a consistent forgery: files and manifest changed together
        raw.write(ref, "model.keras", b"evil weights")
        raw.write(ref, MANIFEST, (bundle / MANIFEST).read_bytes())
        self._assert_refused(store, ref, tmp_path, "digest|changed|manifest")

    def test_missing_and_unlisted_files_are_refused(self, store, bundles, raw, tmp_path) -> None:
        ref = store.push(bundles(), MODEL)
        raw.write(ref, "saved_model/1/extra.bin", b"not in the manifest")
        self._assert_refused(store, ref, tmp_path, "extra.bin")
        raw.delete(ref, "saved_model/1/extra.bin")
        raw.delete(ref, "prodml.json")
        self._assert_refused(store, ref, tmp_path, "prodml.json")

    @pytest.mark.parametrize(
        "name", ["../../outside.txt", "{tmp}/absolute-outside.txt", "a/../../outside.txt"]
    )
    def test_names_escaping_the_destination_are_refused(self, store, bundles, raw, tmp_path, name) -> None:
        name = name.format(tmp=tmp_path)  # an absolute name inside this test's own folder
        ref = store.push(bundles(), MODEL)
        content = b"written outside the destination"
        pulled = store.pull(ref, tmp_path / "good")
        manifest = (pulled / MANIFEST).read_text() + f"{hashlib.sha256(content).hexdigest()}  {name}\n"
        if not name.startswith("/"):
            # the file is there too, so a store that trusts manifest names fetches and writes
            # it instead of failing for a missing file (an absolute name is only listed);
            # object stores whose servers refuse such keys cannot hold it, which is fine
            with contextlib.suppress(Exception):
                raw.write(ref, name, content)
        raw.write(ref, MANIFEST, manifest.encode())
        forged = store.resolve(MODEL, ref.version)  # a reader that trusts the new manifest digest
        dest = tmp_path / "inner" / "dest"
        before = set(tmp_path.rglob("*"))
        with pytest.raises(BundleError) as refused:
            store.pull(forged, dest)
        assert name in str(refused.value), "the error must name the file name it refuses"
        assert not dest.exists()
        written = sorted(str(p.relative_to(tmp_path)) for p in set(tmp_path.rglob("*")) - before)
        assert not written, f"a refused pull must write nothing anywhere; it wrote {written}"

    def test_a_version_without_manifest_is_invisible(self, store, two_versions, raw) -> None:
        first, second, *_ = two_versions
        raw.delete(second, MANIFEST)  # what an interrupted push looks like
        assert [v.version for v in store.versions(MODEL)] == [first.version]
        with pytest.raises(StoreError):
            store.resolve(MODEL, second.version)

    def test_refs_carry_no_secrets(self, store: ModelStore, bundles, config) -> None:
        from pydantic import SecretStr

        secrets = [
            value.get_secret_value()
            for name in type(config).model_fields
            if isinstance(value := getattr(config, name), SecretStr)
        ]
        ref = store.push(bundles(), MODEL)
        text = ref.to_json() + store.uri(ref)
        for secret in secrets:
            assert secret not in text

    # -- idempotent pushes ------------------------------------------------------------------------

    def test_an_identical_bundle_pushed_later_returns_the_stored_version(self, store, bundles, clock) -> None:
        bundle = bundles()
        clock("20250101T000000Z")
        first = store.push(bundle, MODEL)
        clock("20250101T000007Z")  # seconds later: another version id, the same content
        again = store.push(bundle, MODEL)
        assert again == first
        assert [v.version for v in store.versions(MODEL)] == [first.version]

    def test_two_pushes_of_one_bundle_at_once_both_get_the_version(self, store, bundles, clock) -> None:
        """Two pipelines exporting the same model in the same second must not collide."""
        bundle = bundles()
        results: list[object] = []
        barrier = threading.Barrier(2)

        def push() -> None:
            barrier.wait()
            try:
                results.append(store.push(bundle, MODEL))
            except BaseException as exc:  # reported below
                results.append(exc)

        threads = [threading.Thread(target=push) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(isinstance(r, ModelRef) for r in results), results
        assert results[0] == results[1]
        assert store.resolve(MODEL) == results[0]
        assert len(store.versions(MODEL)) == 1

    def test_an_incomplete_version_with_other_content_is_named(self, store, bundles, raw, clock) -> None:
        # a recent id: pushes clean up incomplete versions only once they are stale
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        clock(stamp)
        bundle = bundles()
        version = f"{stamp}-{bundle_mod.manifest_digest(bundle)[:8]}"
        leftover = ModelRef(model_name=MODEL, version=version, store_type="x", uri="x://")
        raw.write(leftover, "model.keras", b"what an interrupted push of other content left")
        with pytest.raises(StoreError, match=rf"{version}.*incomplete") as caught:
            store.push(bundle, MODEL)
        assert caught.value.hint, "say what to do about it"
        assert store.versions(MODEL) == []

    # -- latest: moves and their history ---------------------------------------------------------

    def test_push_without_latest_stores_but_does_not_move_it(self, store, bundles, clock) -> None:
        clock("20250101T000000Z")
        first = store.push(bundles(seed=1), MODEL, latest=False)
        with pytest.raises(StoreError):
            store.resolve(MODEL)  # nothing is latest yet
        assert store.resolve(MODEL, first.version) == first
        store.move_latest(MODEL, first.version, reason="promote")
        clock("20250102T000000Z")
        second = store.push(bundles(seed=2), MODEL, latest=False)
        assert store.resolve(MODEL) == first
        assert [v.latest for v in store.versions(MODEL)] == [False, True]
        assert second.version in [v.version for v in store.versions(MODEL)]

    def test_moves_are_recorded_oldest_first(self, store, two_versions) -> None:
        first, second, *_ = two_versions
        move = store.move_latest(MODEL, first.version, reason="rollback", run_id="run-7")
        assert isinstance(move, LatestMove)
        assert (move.from_version, move.to_version, move.reason) == (
            second.version,
            first.version,
            "rollback",
        )
        assert store.resolve(MODEL) == first
        history = store.latest_history(MODEL)
        assert [(m.from_version, m.to_version, m.reason) for m in history] == [
            (None, first.version, "export"),
            (first.version, second.version, "export"),
            (second.version, first.version, "rollback"),
        ]
        assert history[-1] == move
        assert history[-1].run_id == "run-7"
        assert all(m.model_name == MODEL for m in history)
        assert history[0].at <= history[1].at <= history[2].at

    def test_a_move_from_a_stale_latest_changes_nothing(self, store, two_versions) -> None:
        first, second, *_ = two_versions
        with pytest.raises(StoreError):
            store.move_latest(MODEL, first.version, reason="promote", expect=first.version)
        assert store.resolve(MODEL) == second
        assert len(store.latest_history(MODEL)) == 2

    def test_concurrent_moves_from_one_latest_have_one_winner(
        self, store, two_versions, bundles, clock
    ) -> None:
        first, second, *_ = two_versions
        clock("20250103T000000Z")
        third = store.push(bundles(seed=3), MODEL, latest=False)
        outcomes: dict[str, object] = {}
        barrier = threading.Barrier(2)

        def move(target: ModelRef) -> None:
            barrier.wait()
            try:
                outcomes[target.version] = store.move_latest(
                    MODEL, target.version, reason="promote", expect=second.version
                )
            except StoreError as exc:
                outcomes[target.version] = exc

        threads = [threading.Thread(target=move, args=(t,)) for t in (first, third)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [v for v, o in outcomes.items() if isinstance(o, LatestMove)]
        assert len(winners) == 1, outcomes
        assert store.resolve(MODEL).version == winners[0]
        assert [m.to_version for m in store.latest_history(MODEL)][-1] == winners[0]
        assert len(store.latest_history(MODEL)) == 3

    def test_moving_to_an_unknown_version_is_refused(self, store, two_versions) -> None:
        _, second, *_ = two_versions
        with pytest.raises(StoreError, match="20990101T000000Z-deadbeef"):
            store.move_latest(MODEL, "20990101T000000Z-deadbeef", reason="promote")
        with pytest.raises((StoreError, ValueError)):
            store.move_latest(MODEL, second.version, reason="because")  # type: ignore[arg-type]
        assert store.resolve(MODEL) == second
        assert len(store.latest_history(MODEL)) == 2

    def test_a_model_without_moves_has_an_empty_history(self, store) -> None:
        assert store.latest_history("never-pushed") == []

    # -- one file of a version -----------------------------------------------------------------

    def test_read_file_returns_one_verified_file(self, store, bundles, raw) -> None:
        bundle = bundles()
        ref = store.push(bundle, MODEL)
        assert store.read_file(ref, "prodml.json") == (bundle / "prodml.json").read_bytes()
        with pytest.raises(BundleError):
            store.read_file(ref, "not-in-the-bundle.txt")
        raw.write(ref, "prodml.json", b'{"name": "forged"}')
        with pytest.raises(BundleError):
            store.read_file(ref, "prodml.json")
