"""What the three model stores share: the layout, the ``latest`` pointer, push and pull.

Layout under the store's prefix (the same for every backend)::

    <prefix>/<model>/versions/<version>/<file>      immutable, never overwritten
    <prefix>/<model>/versions/<version>/MANIFEST.sha256   written last: marks it complete
    <prefix>/<model>/latest                          {"version": ..., "digest": ...}

A push verifies the local bundle, uploads every file with a create-only (conditional)
write, checks what landed, writes the manifest (also create-only) and only then moves the
``latest`` pointer. A version without its manifest is an interrupted push: never listed,
never resolved, never pulled. A pull downloads into a staging folder beside ``dest``,
checks every file against the manifest (whose hash must equal ``ModelRef.digest``) and
renames the folder into place, so ``dest`` appears whole or not at all.

Backends implement a handful of object primitives on :class:`ObjectStore`.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from prodml.core import bundle as bundle_mod
from prodml.core.bundle import (
    MANIFEST,
    parse_manifest,
    safe_relpath,
    verify_bundle,
)
from prodml.core.errors import BundleError, ProdmlError, StoreError
from prodml.core.interfaces import ModelRef, ModelStore, ModelVersion
from prodml.core.logs import register_secret
from prodml.plugins.stores._progress import TransferProgress

log = logging.getLogger("prodml.stores")

LATEST = "latest"
VERSIONS = "versions"
#: ``20261129T173000Z-1a2b3c4d`` as made by :func:`prodml.core.bundle.new_version_id`
VERSION_PATTERN = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{8}$")
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class VersionExists(Exception):
    """A create-only write found the object already there (raised by backend primitives)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object, as a listing reports it."""

    key: str
    size: int
    modified: datetime | None = None


def check_model_name(name: str) -> str:
    """``name`` if it is usable as one path component of a store key, else StoreError."""
    if not isinstance(name, str) or not MODEL_NAME_PATTERN.match(name) or name in (".", ".."):
        raise StoreError(
            f"model name {name!r} cannot be used in a store path",
            hint="use letters, digits, '.', '_' and '-' (at most 128, starting with a letter or digit)",
        )
    return name


def check_version(version: str, model_name: str) -> str:
    """``version`` if it is a well-formed version id, else StoreError."""
    if not isinstance(version, str) or not VERSION_PATTERN.match(version):
        raise StoreError(
            f"{version!r} is not a version id of model {model_name!r}",
            hint="version ids look like 20261129T173000Z-1a2b3c4d; `prodml models -c FILE` lists them",
        )
    return version


def version_time(version: str) -> datetime | None:
    """The creation time encoded in a version id (None when it is not one)."""
    match = VERSION_PATTERN.match(version)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def new_version(bundle_dir: Path) -> str:
    """The id of a new version (looked up at call time so tests can pin the clock)."""
    return bundle_mod.new_version_id(bundle_dir)


def pointer_bytes(version: str, digest: str) -> bytes:
    """Content of the ``latest`` pointer."""
    body = {"version": version, "digest": digest, "updated_at": datetime.now(UTC).isoformat()}
    return (json.dumps(body, indent=2) + "\n").encode()


def parse_pointer(data: bytes, where: str) -> str:
    """The version a ``latest`` pointer names (JSON, or a bare version id)."""
    text = data.decode("utf-8", errors="replace").strip()
    try:
        version = json.loads(text)["version"] if text.startswith("{") else text
    except (ValueError, KeyError, TypeError):
        version = None
    if not isinstance(version, str) or not VERSION_PATTERN.match(version):
        raise StoreError(
            f"the latest pointer {where} is unreadable: {text[:80]!r}",
            hint="push the model again to rewrite it",
        )
    return version


def join_key(*parts: str) -> str:
    """Join key parts with '/', ignoring empty parts and stray slashes."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def register_config_secrets(config: Any) -> None:
    """Mask every SecretStr of a store config in logs (configs built without load_config too)."""
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, SecretStr):
            register_secret(value.get_secret_value())


def run_parallel(pool: ThreadPoolExecutor, tasks: Iterable[Callable[[], Any]]) -> list[Any]:
    """Run ``tasks`` on ``pool``; on the first failure cancel the rest and raise it."""
    return run_parallel_futures([pool.submit(task) for task in tasks])


def run_parallel_futures(futures: list[Future]) -> list[Any]:
    """Results of ``futures`` in order; on the first failure cancel the rest and raise it."""
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    for future in done:
        if future.exception() is not None:
            for other in pending:
                other.cancel()
            wait(pending)
            raise future.exception()  # type: ignore[misc]
    return [f.result() for f in futures]


class ObjectStore(ModelStore):
    """Push, pull, resolve and versions over a few object primitives.

    Subclasses set :attr:`store_type` and implement the ``_`` methods below; every
    primitive raises :class:`StoreError` (with the endpoint and the fix) for failures the
    user can act on, and :class:`VersionExists` when a create-only write finds an object.
    """

    store_type: str = ""
    #: files at least this big go up in parts (multipart / blocks) and come down in ranges
    large_file_bytes: int = 1 << 62
    #: size of those parts (backends set both from their config)
    part_bytes: int = 16 << 20
    #: most parts one object may have
    max_parts: int = 10_000

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        register_config_secrets(config)
        self._prepared = False

    # -- primitives -------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return getattr(self.config, "prefix", "") or ""

    @property
    def concurrency(self) -> int:
        return int(getattr(self.config, "max_concurrency", 4) or 1)

    @abc.abstractmethod
    def describe(self) -> str:
        """Where this store is, for messages (``s3 bucket 'x' at http://...``); no secrets."""

    @abc.abstractmethod
    def _location(self, key: str) -> str:
        """The URI of ``key`` (a folder or an object)."""

    def _prepare(self) -> None:
        """Check access (and create the bucket/container when configured) before a push."""

    @abc.abstractmethod
    def _read(self, key: str) -> bytes | None:
        """The bytes of a small object, or None when it does not exist."""

    @abc.abstractmethod
    def _write(self, key: str, data: bytes, *, overwrite: bool) -> None:
        """Store a small object; with ``overwrite=False`` raise VersionExists if present."""

    def _begin_upload(self, key: str) -> Any:
        """Start a create-only upload in parts; return what the other part calls need."""
        raise NotImplementedError(f"{type(self).__name__} does not upload in parts")

    def _upload_part(self, upload: Any, number: int, data: bytes) -> Any:
        """Store part ``number`` (from 1) with an integrity check; return what completing needs."""
        raise NotImplementedError(f"{type(self).__name__} does not upload in parts")

    def _complete_upload(self, upload: Any, parts: list[Any]) -> None:
        """Assemble the parts, create-only (VersionExists when the object is there)."""
        raise NotImplementedError(f"{type(self).__name__} does not upload in parts")

    def _abort_upload(self, upload: Any) -> None:
        """Discard an unfinished upload (best effort)."""

    @abc.abstractmethod
    def _read_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of object ``key`` from ``offset`` (called from worker threads)."""

    def _stream_range(self, key: str, offset: int, length: int) -> Iterator[bytes]:
        """``length`` bytes of ``key`` from ``offset`` as chunks of one streamed request.

        Backends override it to stream; this default reads the range in one piece.
        """
        yield self._read_range(key, offset, length)

    @abc.abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursively)."""

    @abc.abstractmethod
    def _delete(self, keys: list[str]) -> None:
        """Delete objects (missing ones are fine)."""

    def _abort_stale_uploads(self, prefix: str, older_than: datetime) -> None:
        """Abort unfinished multipart uploads under ``prefix`` begun before ``older_than``."""

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """Turn SDK exceptions raised inside the block into StoreError (backends override)."""
        yield

    # -- layout -------------------------------------------------------------------------

    def model_key(self, model_name: str) -> str:
        return join_key(self.prefix, check_model_name(model_name))

    def version_key(self, model_name: str, version: str) -> str:
        return join_key(self.model_key(model_name), VERSIONS, check_version(version, model_name))

    def latest_key(self, model_name: str) -> str:
        return join_key(self.model_key(model_name), LATEST)

    # -- the ModelStore API -----------------------------------------------------------------

    def uri(self, ref: ModelRef) -> str:
        """The storage URI of the version folder (what a KServe storageUri points at)."""
        return self._location(self.version_key(ref.model_name, ref.version))

    def _ref(self, model_name: str, version: str, digest: str) -> ModelRef:
        return ModelRef(
            model_name=model_name,
            version=version,
            store_type=self.store_type,
            uri=self._location(self.version_key(model_name, version)),
            digest=digest,
        )

    def push(self, bundle_dir: Path, model_name: str) -> ModelRef:
        """Upload ``bundle_dir`` as a new immutable version, then point ``latest`` at it."""
        bundle_dir = Path(bundle_dir)
        check_model_name(model_name)
        # file list now; contents are hashed once, while they are uploaded (_upload_version)
        # the file list only: contents are hashed while each file uploads
        manifest = verify_bundle(bundle_dir, contents=False)
        manifest_bytes = (bundle_dir / MANIFEST).read_bytes()
        digest = hashlib.sha256(manifest_bytes).hexdigest()
        version = new_version(bundle_dir)
        vkey = self.version_key(model_name, version)
        with self._translate(f"push {model_name} to"):
            if not self._prepared:
                self._prepare()
                self._prepared = True
            existing = self._read(join_key(vkey, MANIFEST))
            if existing is not None:
                if hashlib.sha256(existing).hexdigest() != digest:
                    raise StoreError(
                        f"version {version} of {model_name!r} already exists in {self.describe()} "
                        "with different content; stored versions are never overwritten",
                        hint="push again in a second (version ids carry the time)",
                    )
                log.info("version %s of %s is already stored; moving latest to it", version, model_name)
            else:
                self._cleanup(model_name)
                self._upload_version(bundle_dir, manifest, manifest_bytes, model_name, version)
            self._write(self.latest_key(model_name), pointer_bytes(version, digest), overwrite=True)
        log.info("pushed %s version %s to %s", model_name, version, self.describe())
        return self._ref(model_name, version, digest)

    def _upload_version(
        self,
        bundle_dir: Path,
        manifest: dict[str, str],
        manifest_bytes: bytes,
        model_name: str,
        version: str,
    ) -> None:
        vkey = self.version_key(model_name, version)
        sizes = {rel: (bundle_dir / rel).stat().st_size for rel in manifest}
        small = [rel for rel in manifest if sizes[rel] < self.large_file_bytes]
        large = [rel for rel in manifest if sizes[rel] >= self.large_file_bytes]
        label = f"push {model_name} {version}"
        uploaded: list[str] = []
        hashes: dict[str, str] = {}
        try:
            try:
                with (
                    TransferProgress(label, sum(sizes.values())) as progress,
                    ThreadPoolExecutor(self.concurrency, thread_name_prefix="prodml-push") as pool,
                ):

                    def put(rel: str) -> None:
                        data = (bundle_dir / rel).read_bytes()
                        hashes[rel] = hashlib.sha256(data).hexdigest()
                        self._write(join_key(vkey, rel), data, overwrite=False)
                        uploaded.append(rel)
                        progress.add(len(data))

                    run_parallel(pool, [lambda rel=rel: put(rel) for rel in small])
                    for rel in large:  # one at a time, its parts in parallel on the same pool
                        hashes[rel] = self._put_in_parts(
                            join_key(vkey, rel), bundle_dir / rel, sizes[rel], progress, pool
                        )
                        uploaded.append(rel)
            except VersionExists:
                raise StoreError(
                    f"version {version} of {model_name!r} already has files in {self.describe()} "
                    "(left by an interrupted push); stored versions are never overwritten",
                    hint="push again in a second (version ids carry the time)",
                ) from None
            changed = sorted(rel for rel, digest in manifest.items() if hashes.get(rel) != digest)
            if changed:
                raise BundleError(
                    f"bundle {bundle_dir} does not match its {MANIFEST}: changed {', '.join(changed[:10])}; "
                    "nothing was published",
                    hint="the bundle was modified after it was written; export it again from a clean run",
                )
            self._check_landed(vkey, sizes)
            try:
                self._write(join_key(vkey, MANIFEST), manifest_bytes, overwrite=False)
            except VersionExists:
                uploaded.clear()  # the other push's version is complete: leave it alone
                raise StoreError(
                    f"version {version} of {model_name!r} was completed by another push meanwhile "
                    f"in {self.describe()}; stored versions are never overwritten",
                    hint="push again",
                ) from None
        except BaseException:
            # without its manifest the version is invisible; still, tidy what this push wrote
            if uploaded:
                with contextlib.suppress(Exception):
                    self._delete([join_key(vkey, rel) for rel in uploaded])
            raise

    def part_size(self, size: int) -> int:
        """Part size for an object of ``size`` bytes (bigger when it would need too many)."""
        return max(self.part_bytes, -(-size // self.max_parts))

    def _put_in_parts(
        self, key: str, path: Path, size: int, progress: TransferProgress, pool: ThreadPoolExecutor
    ) -> str:
        """Upload a big file in parts; return its sha256.

        The file is read once, in order, here: each part is hashed into the file's sha256
        while the parts before it are on the wire (each part's MD5 is computed by the thread
        that sends it). Parallel parts beat one request at a time on some servers and lose
        on others, so this measures: part 1 goes alone, the next ``concurrency`` parts go
        together, and the faster way sends the rest. At most ``concurrency + 1`` parts are
        in memory at a time.
        """
        part_size = self.part_size(size)
        count = -(-size // part_size)
        upload = self._begin_upload(key)
        digest = hashlib.sha256()
        futures: list[Future] = []
        # probe only when there is a rest to choose a way for
        probing = self.concurrency > 1 and count >= 2 * self.concurrency + 2
        limit = 1 if probing else self.concurrency
        timer: dict[str, float] = {}

        def send(number: int, data: bytes) -> Any:
            result = self._upload_part(upload, number, data)
            progress.add(len(data))
            return result

        def room(most: int) -> None:
            """Wait until fewer than ``most`` parts are in flight; raise the first failure."""
            while True:
                running = [f for f in futures if not f.done()]
                failed = next((f for f in futures if f.done() and f.exception()), None)
                if failed is not None:
                    raise failed.exception()  # type: ignore[misc]
                if len(running) < most:
                    return
                wait(running, return_when=FIRST_COMPLETED)

        try:
            with open(path, "rb") as fh:
                for number, offset in enumerate(range(0, size, part_size), start=1):
                    if probing and number == 1:
                        timer["alone"] = time.perf_counter()
                    if probing and number == 2:
                        room(1)  # part 1 done: one request's rate
                        timer["alone"] = time.perf_counter() - timer["alone"]
                        timer["together"] = time.perf_counter()
                        limit = self.concurrency
                    if probing and number == self.concurrency + 2:
                        room(1)  # the parallel batch done
                        together = time.perf_counter() - timer["together"]
                        parallel = together * 1.1 < timer["alone"] * self.concurrency
                        limit = self.concurrency if parallel else 1
                        log.debug(
                            "%s: one part at a time %.0f MB/s, %d at once %.0f MB/s; the rest %s",
                            self._location(key),
                            part_size / timer["alone"] / 1e6,
                            self.concurrency,
                            part_size * self.concurrency / together / 1e6,
                            "in parallel" if parallel else "one at a time",
                        )
                    data = fh.read(min(part_size, size - offset))
                    if len(data) != min(part_size, size - offset):
                        raise BundleError(f"{path} changed while it was being uploaded (short read)")
                    digest.update(data)
                    room(limit)
                    futures.append(pool.submit(send, number, data))
                    del data
            parts = run_parallel_futures(futures)
            self._complete_upload(upload, parts)
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)
            with contextlib.suppress(Exception):
                self._abort_upload(upload)
            raise
        return digest.hexdigest()

    def _get_in_parts(
        self, key: str, path: Path, size: int, progress: TransferProgress, pool: ThreadPoolExecutor
    ) -> str:
        """Download a big object into ``path``, hashing it on the way; return its sha256.

        One streamed GET is the plain way; parallel ranged GETs are faster on some servers and
        slower on others (a local SeaweedFS served one stream at twice the rate of eight
        ranges). So, as the model server picks its inference path by measuring, this
        measures: the first stretch comes by one stream, the next by parallel ranges, and the
        faster way fetches the rest. Bytes are hashed and appended in order by two threads of
        their own (:class:`_Sink`) while the next ones are on the wire; the file is never read
        back. Objects too small to be worth the probe come by one stream.
        """
        digest = hashlib.sha256()
        stretch = self.part_size(size) * self.concurrency
        with open(path, "wb") as fh, _Sink(fh, digest, progress) as sink:
            offset = 0
            parallel = False
            if self.concurrency > 1 and size >= 3 * stretch:
                started = time.perf_counter()
                self._stream_into(key, 0, stretch, sink)
                streamed = time.perf_counter() - started
                started = time.perf_counter()
                self._ranges_into(key, stretch, stretch, sink, pool)
                ranged = time.perf_counter() - started
                offset = 2 * stretch
                parallel = ranged * 1.1 < streamed  # parallel must win clearly: it costs more requests
                log.debug(
                    "%s: one stream %.0f MB/s, %d ranges %.0f MB/s; the rest by %s",
                    self._location(key),
                    stretch / streamed / 1e6,
                    self.concurrency,
                    stretch / ranged / 1e6,
                    "ranges" if parallel else "one stream",
                )
            if parallel:
                self._ranges_into(key, offset, size - offset, sink, pool)
            else:
                self._stream_into(key, offset, size - offset, sink)
        return digest.hexdigest()

    def _stream_into(self, key: str, offset: int, length: int, sink: _Sink) -> None:
        """``length`` bytes of ``key`` from ``offset`` by one streamed request, into ``sink``."""
        got = 0
        for chunk in self._stream_range(key, offset, length):
            got += len(chunk)
            sink.put(chunk)
        if got != length:
            raise StoreError(f"short read of {self._location(key)}: {got} of {length} bytes at {offset}")

    def _ranges_into(self, key: str, offset: int, length: int, sink: _Sink, pool: ThreadPoolExecutor) -> None:
        """``length`` bytes of ``key`` from ``offset`` by parallel ranged GETs, in order into ``sink``.

        At most ``concurrency + 1`` ranges are requested or waiting at a time.
        """
        part_size = self.part_size(offset + length)
        offsets = iter(range(offset, offset + length, part_size))
        pending: collections.deque[Future] = collections.deque()
        end = offset + length

        def fetch(at: int) -> bytes:
            want = min(part_size, end - at)
            data = self._read_range(key, at, want)
            if len(data) != want:
                raise StoreError(f"short read of {self._location(key)}: {len(data)} of {want} bytes at {at}")
            return data

        def submit_next() -> None:
            at = next(offsets, None)
            if at is not None:
                pending.append(pool.submit(fetch, at))

        try:
            for _ in range(self.concurrency + 1):
                submit_next()
            while pending:
                data = pending.popleft().result()
                submit_next()
                sink.put(data)
                del data
        except BaseException:
            for future in pending:
                future.cancel()
            wait(list(pending))
            raise

    def _check_landed(self, vkey: str, sizes: dict[str, int]) -> None:
        """Every file is there with its size (content was checked per request)."""
        found = {info.key[len(vkey) + 1 :]: info.size for info in self._list(vkey + "/")}
        problems = [
            f"{rel}: {found.get(rel, 'missing')} bytes instead of {size}"
            for rel, size in sizes.items()
            if found.get(rel) != size
        ]
        if problems:
            raise StoreError(
                f"upload to {self.describe()} did not land intact: {'; '.join(problems[:5])}",
                hint="the version was not published; push again",
            )

    def _cleanup(self, model_name: str) -> None:
        """Remove what interrupted pushes of ``model_name`` left (unfinished, stale)."""
        ttl = float(getattr(self.config, "stale_upload_seconds", 3600))
        cutoff = datetime.now(UTC) - timedelta(seconds=ttl)
        self._abort_stale_uploads(join_key(self.model_key(model_name), VERSIONS) + "/", cutoff)
        for version, info in self._scan(model_name).items():
            created = version_time(version)
            if not info["complete"] and created is not None and created <= cutoff:
                log.info("removing incomplete version %s of %s (interrupted push)", version, model_name)
                self._delete(info["keys"])

    def _scan(self, model_name: str) -> dict[str, dict[str, Any]]:
        """Versions found under the model's folder: keys, size, completeness, manifest time."""
        base = join_key(self.model_key(model_name), VERSIONS) + "/"
        found: dict[str, dict[str, Any]] = {}
        for info in self._list(base):
            version, _, rel = info.key[len(base) :].partition("/")
            if not VERSION_PATTERN.match(version) or not rel:
                continue
            entry = found.setdefault(version, {"keys": [], "size": 0, "complete": False, "modified": None})
            entry["keys"].append(info.key)
            entry["size"] += info.size
            if rel == MANIFEST:
                entry["complete"] = True
                entry["modified"] = info.modified
        return found

    def _latest_version(self, model_name: str) -> str | None:
        key = self.latest_key(model_name)
        data = self._read(key)
        return None if data is None else parse_pointer(data, self._location(key))

    def resolve(self, model_name: str, version: str = "latest") -> ModelRef:
        """``latest`` or a version id -> ModelRef of a complete stored version."""
        with self._translate(f"resolve {model_name} in"):
            if version == LATEST:
                found = self._latest_version(model_name)
                if found is None:
                    raise StoreError(
                        f"no model {model_name!r} in {self.describe()}: nothing has been pushed yet",
                        hint="run the export stage (prodml run -c FILE) first",
                    )
                version = found
            check_version(version, model_name)
            manifest = self._read(join_key(self.version_key(model_name, version), MANIFEST))
            if manifest is None:
                available = [v.version for v in self.versions(model_name)][:5]
                raise StoreError(
                    f"version {version} of model {model_name!r} is not in {self.describe()} "
                    "(missing or incomplete)",
                    hint=f"available: {', '.join(available)}" if available else "push the model first",
                )
        return self._ref(model_name, version, hashlib.sha256(manifest).hexdigest())

    def versions(self, model_name: str) -> list[ModelVersion]:
        """Complete versions of ``model_name``, newest first; ``latest`` marked."""
        with self._translate(f"list {model_name} in"):
            scanned = self._scan(model_name)
            latest = self._latest_version(model_name) if scanned else None
        out = []
        for version, info in scanned.items():
            if not info["complete"]:
                continue
            created = version_time(version) or info["modified"] or datetime.now(UTC)
            out.append(
                ModelVersion(
                    version=version, created_at=created, size_bytes=info["size"], latest=version == latest
                )
            )
        return sorted(out, key=lambda v: v.version, reverse=True)

    def pull(self, ref: ModelRef, dest: Path) -> Path:
        """Download ``ref`` into the folder ``dest`` (created), verified against its manifest.

        An existing ``dest`` is accepted only when it already holds exactly this version.
        """
        dest = Path(dest)
        vkey = self.version_key(ref.model_name, ref.version)
        with self._translate(f"pull {ref.model_name} from"):
            manifest_bytes = self._read(join_key(vkey, MANIFEST))
            if manifest_bytes is None:
                raise StoreError(
                    f"version {ref.version} of model {ref.model_name!r} is not in {self.describe()} "
                    "(missing or incomplete)",
                    hint="`prodml models -c FILE` lists the stored versions",
                )
            digest = hashlib.sha256(manifest_bytes).hexdigest()
            if ref.digest and digest != ref.digest:
                raise BundleError(
                    f"the manifest of {ref.model_name} {ref.version} in {self.describe()} changed after it "
                    "was published (digest mismatch); refusing it",
                    hint="the stored version was modified; push the model again",
                )
            entries = parse_manifest(manifest_bytes.decode("utf-8"), source=self._location(vkey))
            if existing := _existing_bundle(dest, digest):
                return existing
            listing = {info.key[len(vkey) + 1 :]: info.size for info in self._list(vkey + "/")}
            unlisted = []
            for rel in listing:
                safe_relpath(rel)  # refuses names that would escape dest
                if rel != MANIFEST and rel not in entries:
                    unlisted.append(rel)
            missing = [rel for rel in entries if rel not in listing]
            if unlisted or missing:
                raise BundleError(
                    f"{ref.model_name} {ref.version} in {self.describe()} does not match its manifest: "
                    + "; ".join(
                        [*(f"missing {m}" for m in missing), *(f"unlisted {u}" for u in unlisted)][:10]
                    ),
                    hint="the stored version was modified; push the model again",
                )
            with staging(dest) as tmp:
                label = f"pull {ref.model_name} {ref.version}"
                hashes = self._download(vkey, {rel: listing[rel] for rel in entries}, tmp, label)
                # every byte written was hashed on its way in: compare with the manifest
                changed = sorted(rel for rel, digest in entries.items() if hashes.get(rel) != digest)
                if changed:
                    raise BundleError(
                        f"{ref.model_name} {ref.version} from {self.describe()} failed verification, "
                        f"refusing it: changed {', '.join(changed[:10])}",
                        hint="the stored version was modified or damaged; push the model again",
                    )
                (tmp / MANIFEST).write_bytes(manifest_bytes)
        log.info("pulled %s %s into %s", ref.model_name, ref.version, dest)
        return dest

    def _download(self, vkey: str, sizes: dict[str, int], folder: Path, label: str) -> dict[str, str]:
        """Download the files ``sizes`` names into ``folder``; return their sha256 digests."""
        hashes: dict[str, str] = {}
        with (
            TransferProgress(label, sum(sizes.values())) as progress,
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="prodml-pull") as pool,
        ):

            def get(rel: str) -> None:
                data = self._read(join_key(vkey, rel))
                if data is None:
                    raise BundleError(f"{rel} disappeared from {self._location(vkey)} during the pull")
                hashes[rel] = hashlib.sha256(data).hexdigest()
                target = inside(folder, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                progress.add(len(data))

            small = [rel for rel, size in sizes.items() if size < self.large_file_bytes]
            run_parallel(pool, [lambda rel=rel: get(rel) for rel in small])
            for rel, size in sizes.items():
                if size >= self.large_file_bytes:  # one at a time, its ranges in parallel
                    target = inside(folder, rel)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    hashes[rel] = self._get_in_parts(join_key(vkey, rel), target, size, progress, pool)
        return hashes


class _Sink:
    """Hashes and appends chunks in order, each on a thread of its own.

    hashlib and file writes release the GIL on big buffers, so the hash, the write and the
    next network read run at the same time; the producer only queues (at most ``depth``
    chunks wait per thread).
    """

    def __init__(self, fh: Any, digest: Any, progress: TransferProgress, depth: int = 8) -> None:
        self._error: BaseException | None = None
        self._queues: list[queue.Queue[bytes | None]] = [queue.Queue(maxsize=depth) for _ in range(2)]
        self._threads = [
            threading.Thread(target=self._run, args=(q, work), name=f"prodml-{name}", daemon=True)
            for q, work, name in zip(
                self._queues, (digest.update, self._writer(fh, progress)), ("hash", "write"), strict=True
            )
        ]

    @staticmethod
    def _writer(fh: Any, progress: TransferProgress) -> Callable[[bytes], None]:
        def write(chunk: bytes) -> None:
            fh.write(chunk)
            progress.add(len(chunk))

        return write

    def _run(self, chunks: queue.Queue[bytes | None], work: Callable[[bytes], Any]) -> None:
        while (chunk := chunks.get()) is not None:
            if self._error is None:
                try:
                    work(chunk)
                except BaseException as exc:  # reported to the producer by put/close
                    self._error = exc

    def put(self, chunk: bytes) -> None:
        if self._error is not None:
            raise self._error
        for chunks in self._queues:
            chunks.put(chunk)

    def __enter__(self) -> _Sink:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        for chunks in self._queues:
            chunks.put(None)
        for thread in self._threads:
            thread.join()
        if self._error is not None and exc_type is None:
            raise self._error


def inside(root: Path, rel: str) -> Path:
    """``root / rel`` after checking it cannot leave ``root``."""
    target = (root / safe_relpath(rel)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise BundleError(f"refusing file name {rel!r}: it would escape {root}")
    return target


def _existing_bundle(dest: Path, digest: str) -> Path | None:
    """``dest`` when it already holds the verified bundle with ``digest``; error if it holds else."""
    if not dest.exists():
        return None
    if dest.is_dir() and not any(dest.iterdir()):
        return None
    if dest.is_dir() and (dest / MANIFEST).is_file() and bundle_mod.manifest_digest(dest) == digest:
        with contextlib.suppress(BundleError):
            verify_bundle(dest)
            return dest
    raise StoreError(
        f"cannot pull into {dest}: it exists and does not hold this version",
        hint="pull into a new folder, or remove it first",
    )


@contextlib.contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """A temporary folder beside ``dest`` that becomes ``dest`` if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if dest.is_dir():
            dest.rmdir()  # only an empty folder gets here (checked before)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def store_error(message: str, *, hint: str | None = None) -> ProdmlError:
    """A StoreError whose message has every registered secret masked."""
    from prodml.core.logs import redact

    return StoreError(redact(message), hint=hint)
