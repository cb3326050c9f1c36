"""What the three model stores share: the layout, the ``latest`` pointer, push and pull.

Layout under the store's prefix (the same for every backend)::

    <prefix>/<model>/versions/<version>/<file>      immutable, never overwritten
    <prefix>/<model>/versions/<version>/MANIFEST.sha256   written last: marks it complete
    <prefix>/<model>/latest                          {"version", "digest", "seq", "move"}
    <prefix>/<model>/history/<seq>.json              one LatestMove per move of latest

A push verifies the local bundle, uploads every file with a create-only (conditional)
write, checks what landed, writes the manifest (also create-only) and only then moves the
``latest`` pointer. A push meeting a complete version with the same content returns it.

``latest`` moves by compare-and-swap: the new pointer is written only if the pointer is
still the one read (``If-Match`` on its ETag, or ``If-None-Match: *`` for the first), and
it carries the move itself and a sequence number, so the move is recorded in the same
atomic write. The history record (``history/<seq>.json``, create-only) is written after it;
a mover that died in between is repaired by the next move, and :meth:`latest_history`
merges the pointer's own record meanwhile. A backend whose server ignores the condition is
detected (a deliberately stale condition must fail) and refuses to move ``latest``.

A version without its manifest is an interrupted push: never listed, never resolved,
never pulled. A pull downloads into a staging folder beside ``dest``,
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
from prodml.core.interfaces import MOVE_REASONS, LatestMove, ModelRef, ModelStore, ModelVersion
from prodml.core.logs import register_secret
from prodml.plugins.stores._progress import TransferProgress

log = logging.getLogger("prodml.stores")

LATEST = "latest"
VERSIONS = "versions"
HISTORY = "history"
HISTORY_PATTERN = re.compile(r"^(\d{10})\.json$")
#: an object written and then conditionally overwritten once per store, to check the server
#: really enforces conditional writes before trusting them with ``latest``
CAS_CHECK = ".prodml-conditional-write-check"
#: ``20261129T173000Z-1a2b3c4d`` as made by :func:`prodml.core.bundle.new_version_id`
VERSION_PATTERN = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{8}$")
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class VersionExists(Exception):
    """A create-only write found the object already there (raised by backend primitives)."""


class WriteConflict(Exception):
    """A conditional write found the object changed since it was read (or present/absent)."""


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


def pointer_bytes(version: str, digest: str, *, seq: int = 0, move: LatestMove | None = None) -> bytes:
    """Content of the ``latest`` pointer: the version, and the move that set it (numbered)."""
    body: dict[str, Any] = {
        "version": version,
        "digest": digest,
        "updated_at": datetime.now(UTC).isoformat(),
    }
    if move is not None:
        body["seq"] = seq
        body["move"] = move.model_dump(mode="json")
    return (json.dumps(body, indent=2) + "\n").encode()


@dataclass(frozen=True)
class PointerState:
    """The ``latest`` pointer as read for a compare-and-swap."""

    version: str | None
    tag: str | None
    seq: int = 0
    move: LatestMove | None = None


def parse_pointer_state(found: tuple[bytes, str] | None, where: str) -> PointerState:
    """PointerState of a tagged pointer read (a pointer from before moves were numbered: seq 0)."""
    if found is None:
        return PointerState(None, None)
    data, tag = found
    version = parse_pointer(data, where)
    seq, move = 0, None
    try:
        body = json.loads(data)
        if isinstance(body, dict) and isinstance(body.get("seq"), int) and body.get("move"):
            seq, move = body["seq"], LatestMove.model_validate(body["move"])
    except ValueError:
        pass
    return PointerState(version, tag, seq, move)


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
        #: the way big downloads are fetched, once measured (None: not yet): True for
        #: parallel ranges, False for one stream. Measured on the first big pull of this
        #: store and kept, so later pulls pay nothing for the choice
        self._ranged_pulls: bool | None = None

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
        """Store part ``number`` (from 1) with an integrity check; return what completing needs.

        Called from worker threads: the check (e.g. the part's MD5) is computed there, so the
        parts in flight are hashed in parallel while the reader moves on.
        """
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

    def _read_tagged(self, key: str) -> tuple[bytes, str] | None:
        """The bytes of a small object and its entity tag, or None when it does not exist."""
        raise NotImplementedError(f"{type(self).__name__} does not support conditional writes")

    def _write_if(self, key: str, data: bytes, *, tag: str | None) -> None:
        """Replace ``key`` only if its entity tag is still ``tag`` (None: only if absent).

        Raises:
            WriteConflict: the object changed (or appeared, or vanished) since it was read.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support conditional writes")

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

    def history_key(self, model_name: str, seq: int) -> str:
        return join_key(self.model_key(model_name), HISTORY, f"{seq:010d}.json")

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

    def push(self, bundle_dir: Path, model_name: str, *, latest: bool = True) -> ModelRef:
        """Upload ``bundle_dir`` as a new immutable version; with ``latest``, point latest at it.

        A complete stored version with the same content (same manifest digest) is returned
        as it is, whenever it was pushed: pushing a bundle twice stores it once.
        """
        bundle_dir = Path(bundle_dir)
        check_model_name(model_name)
        # the file list only: contents are hashed while each file uploads
        manifest = verify_bundle(bundle_dir, contents=False)
        manifest_bytes = (bundle_dir / MANIFEST).read_bytes()
        digest = hashlib.sha256(manifest_bytes).hexdigest()
        with self._translate(f"push {model_name} to"):
            if not self._prepared:
                self._prepare()
                self._prepared = True
            ref = self._find_identical(model_name, digest)
            if ref is not None:
                log.info("%s is already stored as version %s of %s", bundle_dir, ref.version, model_name)
            else:
                version = new_version(bundle_dir)
                vkey = self.version_key(model_name, version)
                existing = self._read(join_key(vkey, MANIFEST))
                if existing is not None and hashlib.sha256(existing).hexdigest() != digest:
                    raise StoreError(
                        f"version {version} of {model_name!r} already exists in {self.describe()} "
                        "with different content; stored versions are never overwritten",
                        hint="push again in a second (version ids carry the time)",
                    )
                if existing is None:
                    self._cleanup(model_name)
                    self._upload_version(bundle_dir, manifest, manifest_bytes, model_name, version)
                ref = self._ref(model_name, version, digest)
                log.info("pushed %s version %s to %s", model_name, version, self.describe())
        if latest and self._current_latest(model_name) != ref.version:
            self.move_latest(model_name, ref.version, reason="export")
        return ref

    def _find_identical(self, model_name: str, digest: str) -> ModelRef | None:
        """A complete stored version whose manifest has ``digest`` (ids end with its first 8 hex)."""
        for version, info in sorted(self._scan(model_name).items()):
            if not info["complete"] or not version.endswith("-" + digest[:8]):
                continue
            stored = self._read(join_key(self.version_key(model_name, version), MANIFEST))
            if stored is not None and hashlib.sha256(stored).hexdigest() == digest:
                return self._ref(model_name, version, digest)
        return None

    def _current_latest(self, model_name: str) -> str | None:
        with self._translate(f"read the latest pointer of {model_name} in"):
            return self._latest_version(model_name)

    def _stored_sha256(self, key: str, size: int) -> str | None:
        """sha256 of a stored object (None when it is gone), read in parts when it is big."""
        if size < self.large_file_bytes:
            data = self._read(key)
            return None if data is None else hashlib.sha256(data).hexdigest()
        digest = hashlib.sha256()
        step = self.part_size(size)
        for offset in range(0, size, step):
            digest.update(self._read_range(key, offset, min(step, size - offset)))
        return digest.hexdigest()

    def _meets_existing(self, vkey: str, rel: str, size: int, expected: str, model_name: str) -> None:
        """A create-only write of ``rel`` found an object: fine if it holds the same bytes.

        That is another push of the same bundle, running now or interrupted earlier; its
        files are this push's files. Different bytes are refused, naming the file.
        """
        if self._stored_sha256(join_key(vkey, rel), size) == expected:
            return
        version = vkey.rsplit("/", 1)[-1]
        ttl = int(float(getattr(self.config, "stale_upload_seconds", 3600)))
        raise StoreError(
            f"version {version} of {model_name!r} in {self.describe()} is an incomplete version whose "
            f"{rel} differs from this bundle's (an interrupted push, or a write behind prodml's back); "
            "stored versions are never overwritten",
            hint=f"push again in a second (version ids carry the time); pushes remove incomplete "
            f"versions older than {ttl} s, or delete {self._location(vkey)} yourself",
        )

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
            with (
                TransferProgress(label, sum(sizes.values())) as progress,
                ThreadPoolExecutor(self.concurrency, thread_name_prefix="prodml-push") as pool,
            ):

                def put(rel: str) -> None:
                    data = (bundle_dir / rel).read_bytes()
                    hashes[rel] = hashlib.sha256(data).hexdigest()
                    try:
                        self._write(join_key(vkey, rel), data, overwrite=False)
                    except VersionExists:
                        self._meets_existing(vkey, rel, len(data), hashes[rel], model_name)
                    else:
                        uploaded.append(rel)
                    progress.add(len(data))

                run_parallel(pool, [lambda rel=rel: put(rel) for rel in small])
                for rel in large:  # one at a time, its parts in parallel on the same pool
                    try:
                        hashes[rel] = self._put_in_parts(
                            join_key(vkey, rel), bundle_dir / rel, sizes[rel], progress, pool
                        )
                    except VersionExists:
                        self._meets_existing(vkey, rel, sizes[rel], manifest[rel], model_name)
                        hashes[rel] = manifest[rel]
                    else:
                        uploaded.append(rel)
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
                stored = self._read(join_key(vkey, MANIFEST))
                if stored != manifest_bytes:
                    raise StoreError(
                        f"version {version} of {model_name!r} was completed by another push meanwhile "
                        f"in {self.describe()} with different content; stored versions are never "
                        "overwritten",
                        hint="push again in a second (version ids carry the time)",
                    ) from None
                # the same bundle, pushed at the same time by someone else: the same version
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
        """Upload a big file in parts, ``concurrency`` at a time; return its sha256.

        The file is read once, in order, here, and each part is hashed into the file's
        sha256 while the parts before it are on the wire; each part's MD5 is computed by
        the thread that sends it. Parts always overlap (at least two in flight when
        ``concurrency`` allows): one part at a time leaves the server idle between a
        part's answer and the next part's first byte. (An earlier version measured one
        part alone against two together and could pick one at a time: on a server that
        was busy anyway two were not twice as fast, and the rest then went serially, 1.8x
        slower than one PUT of the file.) At most ``concurrency + 1`` parts are in memory.
        """
        part_size = self.part_size(size)
        upload = self._begin_upload(key)
        digest = hashlib.sha256()
        futures: list[Future] = []
        limit = self.concurrency

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
                    data = fh.read(min(part_size, size - offset))
                    if len(data) != min(part_size, size - offset):
                        raise BundleError(f"{path} changed while it was being uploaded (short read)")
                    room(limit)
                    futures.append(pool.submit(send, number, data))
                    digest.update(data)  # while this part (and the ones before) are on the wire
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
        slower on others (a local SeaweedFS served one stream at about twice the rate of
        ranges, while one stream from a distant server is capped by its latency). So, as
        the model server picks its inference path by measuring, this measures once per
        store: on the first pull of an object big enough to be worth it, the first stretch
        comes by one stream, the next by parallel ranges, and the faster way fetches the
        rest; later pulls go the measured way at once (the probe's slower half cost a
        512 MB pull from SeaweedFS a tenth of its time, every time, when it was measured on
        every pull). Bytes are hashed and appended in order by two threads of their own
        (:class:`_Sink`) while the next ones are on the wire; the file is never read back.
        Objects too small to be worth the probe come by one stream.
        """
        digest = hashlib.sha256()
        stretch = self.part_size(size) * self.concurrency
        with open(path, "wb") as fh, _Sink(fh, digest, progress) as sink:
            offset = 0
            parallel = False
            if self.concurrency > 1 and size >= 3 * stretch:
                if self._ranged_pulls is None:
                    offset = 2 * stretch
                    self._ranged_pulls = self._probe_ranges(key, stretch, sink, pool)
                parallel = self._ranged_pulls
            if parallel:
                self._ranges_into(key, offset, size - offset, sink, pool)
            else:
                self._stream_into(key, offset, size - offset, sink)
        return digest.hexdigest()

    def _probe_ranges(self, key: str, stretch: int, sink: _Sink, pool: ThreadPoolExecutor) -> bool:
        """Fetch ``2 * stretch`` bytes, half by one stream, half by ranges; True if ranges won."""
        started = time.perf_counter()
        self._stream_into(key, 0, stretch, sink)
        streamed = time.perf_counter() - started
        started = time.perf_counter()
        self._ranges_into(key, stretch, stretch, sink, pool)
        ranged = time.perf_counter() - started
        parallel = ranged * 1.1 < streamed  # parallel must win clearly: it costs more requests
        log.debug(
            "%s: one stream %.0f MB/s, %d ranges %.0f MB/s; the rest by %s (and later pulls of this store)",
            self._location(key),
            stretch / streamed / 1e6,
            self.concurrency,
            stretch / ranged / 1e6,
            "ranges" if parallel else "one stream",
        )
        return parallel

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

    # -- moving latest -------------------------------------------------------------------

    def move_latest(
        self,
        model_name: str,
        version: str,
        *,
        reason: str,
        run_id: str | None = None,
        expect: str | object | None = ModelStore.CURRENT,
    ) -> LatestMove:
        """Point ``latest`` at ``version`` by compare-and-swap; see :meth:`ModelStore.move_latest`."""
        if reason not in MOVE_REASONS:
            raise StoreError(
                f"unknown reason {reason!r} for moving latest; one of: {', '.join(MOVE_REASONS)}"
            )
        key = self.latest_key(model_name)
        with self._translate(f"move latest of {model_name} in"):
            target = self.resolve(model_name, version)
            self._check_conditional_writes()
            for _attempt in range(8):
                state = parse_pointer_state(self._read_tagged(key), self._location(key))
                if expect is not ModelStore.CURRENT and state.version != expect:
                    raise self._moved_meanwhile(model_name, expect, state.version)
                self._record_move(model_name, state)  # repairs a mover that died after its swap
                move = LatestMove(
                    at=datetime.now(UTC),
                    model_name=model_name,
                    from_version=state.version,
                    to_version=target.version,
                    reason=reason,  # type: ignore[arg-type]
                    run_id=run_id,
                )
                body = pointer_bytes(target.version, target.digest, seq=state.seq + 1, move=move)
                try:
                    self._write_if(key, body, tag=state.tag)
                except WriteConflict:
                    if expect is not ModelStore.CURRENT:
                        now = parse_pointer_state(self._read_tagged(key), self._location(key)).version
                        raise self._moved_meanwhile(model_name, expect, now) from None
                    continue  # someone else moved it between our read and write: read again
                self._record_move(model_name, PointerState(target.version, None, state.seq + 1, move))
                log.info("latest of %s: %s -> %s (%s)", model_name, state.version, target.version, reason)
                return move
        raise StoreError(
            f"could not move latest of {model_name!r} in {self.describe()}: other moves kept changing it",
            hint="try again when the other promotes/exports are done",
        )

    def _moved_meanwhile(self, model_name: str, expected: object, found: str | None) -> StoreError:
        return StoreError(
            f"latest of {model_name!r} in {self.describe()} is {found or 'unset'}, not "
            f"{expected or 'unset'}: it was moved meanwhile, so nothing was changed",
            hint="`prodml models history -c FILE` shows the moves; run the command again",
        )

    def _record_move(self, model_name: str, state: PointerState) -> None:
        """Write the history record of the pointer's move when it is not there yet."""
        if state.move is None or state.seq <= 0:
            return
        key = self.history_key(model_name, state.seq)
        # VersionExists: already recorded (by the mover itself, or by an earlier repair)
        with contextlib.suppress(VersionExists):
            self._write(key, (state.move.model_dump_json(indent=2) + "\n").encode(), overwrite=False)

    def _check_conditional_writes(self) -> None:
        """Refuse to move latest when the server ignores a stale write condition."""
        if getattr(self, "_conditional_writes_checked", False):
            return
        key = join_key(self.prefix, CAS_CHECK)
        self._write(key, b"prodml checks that conditional writes are enforced\n", overwrite=True)
        found = self._read_tagged(key)
        if found is None:
            raise StoreError(f"{self.describe()} lost an object it had just written ({key})")
        stale = _stale_tag(found[1])
        try:
            self._write_if(key, b"this write must be refused\n", tag=stale)
        except WriteConflict:
            self._conditional_writes_checked = True
            return
        raise StoreError(
            f"{self.describe()} ({type(self).__name__}) does not enforce conditional writes "
            "(a write with a stale If-Match was accepted), so it cannot move `latest` atomically; "
            "refusing to move it",
            hint="use a server that honours If-Match on PUT (AWS S3, MinIO, SeaweedFS, Azure Blob)",
        )

    def latest_history(self, model_name: str) -> list[LatestMove]:
        """Every recorded move of latest, oldest first (see :meth:`ModelStore.latest_history`)."""
        base = join_key(self.model_key(model_name), HISTORY) + "/"
        with self._translate(f"read the history of {model_name} in"):
            keys = {}
            for info in self._list(base):
                match = HISTORY_PATTERN.match(info.key[len(base) :])
                if match:
                    keys[int(match.group(1))] = info.key
            moves: dict[int, LatestMove] = {}
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="prodml-history") as pool:
                for seq, data in zip(keys, pool.map(self._read, keys.values()), strict=True):
                    if data is None:
                        continue
                    try:
                        moves[seq] = LatestMove.model_validate_json(data)
                    except ValueError:
                        log.warning("skipping unreadable history record %s", self._location(keys[seq]))
            pointer = self._read(self.latest_key(model_name))
            if pointer is not None:
                state = parse_pointer_state((pointer, ""), self._location(self.latest_key(model_name)))
                if state.move is not None and state.seq not in moves:
                    moves[state.seq] = state.move  # its mover died before writing the record
        return [moves[seq] for seq in sorted(moves)]

    def read_file(self, ref: ModelRef, name: str) -> bytes:
        """One file of a stored version: its manifest must match ``ref.digest``, the file its manifest."""
        vkey = self.version_key(ref.model_name, ref.version)
        with self._translate(f"read {name} of {ref.model_name} from"):
            manifest = self._read(join_key(vkey, MANIFEST))
            if manifest is None:
                raise StoreError(
                    f"version {ref.version} of model {ref.model_name!r} is not in {self.describe()} "
                    "(missing or incomplete)",
                    hint="`prodml models -c FILE` lists the stored versions",
                )
            if ref.digest and hashlib.sha256(manifest).hexdigest() != ref.digest:
                raise BundleError(
                    f"the manifest of {ref.model_name} {ref.version} in {self.describe()} changed after "
                    "it was published (digest mismatch); refusing it",
                    hint="the stored version was modified; push the model again",
                )
            entries = parse_manifest(manifest.decode("utf-8"), source=self._location(vkey))
            if name not in entries:
                raise BundleError(f"{ref.model_name} {ref.version} has no file {name!r}")
            data = self._read(join_key(vkey, name))
        if data is None or hashlib.sha256(data).hexdigest() != entries[name]:
            raise BundleError(
                f"{name} of {ref.model_name} {ref.version} in {self.describe()} does not match its "
                f"{MANIFEST}; refusing it",
                hint="the stored version was modified; push the model again",
            )
        return data

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


def _stale_tag(tag: str) -> str:
    """An entity tag of the same shape as ``tag`` that is certainly not the current one."""
    stale = re.sub(r"[0-9A-Za-z]", "0", tag)
    return stale if stale != tag else re.sub(r"[0-9A-Za-z]", "1", tag)


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
