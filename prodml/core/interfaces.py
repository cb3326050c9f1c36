"""The four roles a prodml pipeline is made of, and the values they exchange.

fetch  -> :class:`DataSource`   features + label as a pandas DataFrame, no leakage
train  -> :class:`Trainer`      the user's Keras code -> a model bundle directory
export -> :class:`ModelStore`   bundle -> an immutable, versioned copy in object storage
serve  -> :class:`ModelServer`  stored version -> an HTTP endpoint (KServe V1/V2)

A fifth role, :class:`Runner`, maps the configured stages onto a way of executing them
(in-process, kfp.local, a Kubeflow cluster).

Each implementation is constructed with its own validated pydantic config object
(``Implementation(config)``) and must not import heavy SDKs at module import time.
Optional operations raise ``NotImplementedError`` naming the class.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

if TYPE_CHECKING:
    import pandas as pd

    from prodml.core.config import ProdmlConfig

Role = Literal["source", "trainer", "store", "server", "runner"]
ROLES: tuple[Role, ...] = ("source", "trainer", "store", "server", "runner")


class Value(BaseModel):
    """Base of the frozen value types passed between stages (and written as JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    def to_json(self) -> str:
        """Serialise as indented JSON."""
        return self.model_dump_json(indent=2)

    def write(self, path: Path) -> Path:
        """Write as JSON to ``path`` (atomically) and return it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: Path):
        """Read a value written by :meth:`write`."""
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


class DatasetSchema(Value):
    """What the fetch stage knows about the training frame, recorded in the bundle."""

    feature_names: tuple[str, ...]
    label: str
    dtypes: Mapping[str, str] = Field(
        default_factory=dict, description="numpy dtype name per column (features and label)"
    )
    rows: int = 0
    sha256: str = Field("", description="fingerprint of the frame's content")
    feature_refs: tuple[str, ...] = Field(
        (), description="Feast `view:feature` refs the features came from (empty for files)"
    )
    entity_keys: tuple[str, ...] = Field(
        (), description="Feast join keys a serving request may carry instead of features"
    )


class TrainSpec(Value):
    """What the trainer is told about the task; the user's code sees a subset of it."""

    model_name: str
    schema_: DatasetSchema = Field(alias="schema")
    config_digest: str = ""
    project: Mapping[str, Any] | None = Field(
        None,
        description="the whole config without its secrets (ProdmlConfig.public_dict()), for "
        "trainers that start work elsewhere (a cluster training job builds its store from it)",
    )

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.schema_.feature_names

    @property
    def label(self) -> str:
        return self.schema_.label


class TrainResult(Value):
    """A finished training run: where the bundle is and how well the model did."""

    bundle_dir: Path
    metrics: Mapping[str, float] = Field(default_factory=dict)
    epochs: int = 0


class ModelRef(Value):
    """One immutable model version in a store."""

    model_name: str
    version: str
    store_type: str
    uri: str = Field(description="storage URI of the version folder (s3://, https://, file://)")
    digest: str = Field("", description="sha256 of the bundle's MANIFEST.sha256")


#: Why ``latest`` moved: an export (gate passed or no gate), an explicit promote, a rollback,
#: or an export that a gate held back and ``--force-promote`` let through.
MoveReason = Literal["export", "promote", "rollback", "force-promote"]
MOVE_REASONS: tuple[str, ...] = ("export", "promote", "rollback", "force-promote")


class LatestMove(Value):
    """One move of a model's ``latest`` pointer, as kept in the store's history."""

    at: datetime
    model_name: str
    from_version: str | None = Field(description="what latest named before (None: the first move)")
    to_version: str
    reason: MoveReason
    run_id: str | None = Field(None, description="the run that moved it (exports), when known")


class ModelVersion(Value):
    """An entry of :meth:`ModelStore.versions`."""

    version: str
    created_at: datetime
    size_bytes: int
    latest: bool = False


class Endpoint(Value):
    """Where a deployed model answers."""

    url: str
    protocol: str = Field("v1+v2", description="inference protocols served")
    model_name: str
    version: str
    details: Mapping[str, str] = Field(default_factory=dict)


class ServerStatus(Value):
    """What :meth:`ModelServer.status` reports."""

    model_name: str
    ready: bool
    url: str | None = None
    reason: str = ""


class RunSummary(Value):
    """What a runner reports after running the configured stages."""

    run_id: str
    runner: str
    stages: tuple[str, ...]
    outputs: Mapping[str, str] = Field(default_factory=dict)
    seconds: Mapping[str, float] = Field(default_factory=dict)
    endpoint: Endpoint | None = None


class SecretEnv(Value):
    """An environment variable of a pipeline pod, set from one key of a Kubernetes Secret."""

    env: str = Field(description="the variable's name inside the pod")
    secret_name: str = Field(description="the Kubernetes Secret holding the value")
    secret_key: str = Field(description="the Secret's key whose value the variable gets")


class KServeStorage(Value):
    """How KServe's storage initializer reads one model version from a store.

    The values of ``secret_keys`` are never part of what is rendered: ``secret_values`` is
    filled only when asked for (to create the Secret on a cluster), as SecretStr.
    """

    storage_uri: str = Field(description="the predictor's storageUri (s3://, https://...blob...)")
    secret_annotations: Mapping[str, str] = Field(
        default_factory=dict,
        description="annotations on the storage Secret that KServe reads (S3 endpoint, region, ...)",
    )
    secret_keys: Mapping[str, str] = Field(
        default_factory=dict,
        description="{key of the storage Secret: environment variable its value is read from}",
    )
    service_account_annotations: Mapping[str, str] = Field(
        default_factory=dict, description="annotations on the predictor's ServiceAccount (workload identity)"
    )
    secret_values: Mapping[str, SecretStr] | None = Field(
        None, description="the Secret's values, only when requested with ``with_values=True``"
    )


class Preflight:
    """The pre-flight every role offers: cheap checks before any stage runs.

    ``prodml validate`` and the start of ``prodml run`` call :meth:`preflight` on the
    backends of the stages about to run, so a missing file, an unresolvable credential, a
    store that does not answer or a taken port is reported in a second, not after training.
    """

    def preflight(self, *, offline: bool) -> list[str]:
        """What would make this backend's stage fail, one sentence each (default: nothing).

        Check only what is cheap: files it reads, credentials it resolves, and - unless
        ``offline`` - whether the service it talks to answers (short timeouts). Change
        nothing, and import a heavy SDK only when the check itself needs it.
        """
        return []


class DataSource(Preflight, abc.ABC):
    """Where training features and labels come from (fetch stage).

    ``training_frame`` returns one row per training example: the feature columns in
    :attr:`feature_names` order, then the label column. Values must never come from after
    the example's own timestamp (no leakage from the future).
    """

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    @abc.abstractmethod
    def label(self) -> str:
        """Name of the label column."""

    @property
    @abc.abstractmethod
    def feature_names(self) -> Sequence[str]:
        """Feature column names, in the order the model receives them."""

    @abc.abstractmethod
    def training_frame(self) -> pd.DataFrame:
        """Build the training frame: features (in order) then the label."""

    def schema(self, frame: pd.DataFrame) -> DatasetSchema:
        """Describe ``frame`` for the bundle metadata (dtypes, rows, content hash)."""
        from prodml.core.bundle import frame_fingerprint

        return DatasetSchema(
            feature_names=tuple(self.feature_names),
            label=self.label,
            dtypes={c: str(frame[c].dtype) for c in frame.columns},
            rows=len(frame),
            sha256=frame_fingerprint(frame),
            feature_refs=tuple(self.feature_refs),
            entity_keys=tuple(self.entity_keys),
        )

    @property
    def feature_refs(self) -> Sequence[str]:
        """Feature-store refs of the features (``view:feature``); empty for plain files."""
        return ()

    @property
    def entity_keys(self) -> Sequence[str]:
        """Join keys that identify an entity in the online store; empty for plain files."""
        return ()

    def online_features(self, entity_rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
        """Read the latest feature values for ``entity_rows`` from an online store."""
        raise NotImplementedError(f"{type(self).__name__} does not support online_features")


class Trainer(Preflight, abc.ABC):
    """Runs the user's model code on a training frame and writes a model bundle."""

    def __init__(self, config: Any) -> None:
        self.config = config

    @abc.abstractmethod
    def train(self, frame: pd.DataFrame, spec: TrainSpec, out_dir: Path) -> TrainResult:
        """Train on ``frame`` and write a complete, verified bundle to ``out_dir``.

        ``out_dir`` must not exist; it appears (atomically) only when the bundle is whole.
        """

    def cluster_manifests(self, project: ProdmlConfig) -> list[dict[str, Any]]:
        """Kubernetes objects the train step creates when it runs on a cluster (default: none).

        Rendered without data (placeholders where the run fills in values), so
        ``prodml compile`` and ``prodml k8s manifests --check`` can validate them against the
        cluster's schemas before anything runs.
        """
        return []

    def uses_store(self, project: ProdmlConfig) -> bool:
        """Whether the train step itself needs the model store (and so its credentials in a pod).

        True for a trainer that hands the bundle over through the store, like a cluster
        training job whose chief pushes it; default False.
        """
        return False

    def evaluation_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of a fetched ``frame`` that :meth:`train` evaluates on (held out from fitting).

        A model gate (``gate:``) re-scores the current ``latest`` on these rows when its
        recorded evaluation used other rows.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support evaluation_rows")

    def evaluate(
        self, bundle_dir: Path, rows: pd.DataFrame, *, metrics_of: Path | None = None
    ) -> dict[str, float]:
        """Metrics of the bundle's model on ``rows`` (features then label), by metric name.

        ``metrics_of`` names another bundle whose metric definitions to use, so that two
        models are measured alike.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support evaluate")


class ModelStore(Preflight, abc.ABC):
    """Keeps immutable, versioned model bundles and the ``latest`` pointer's history.

    Layout: ``<prefix>/<model>/versions/<version>/...`` plus ``<prefix>/<model>/latest``,
    a pointer written only after every file of the version is stored and verified, and
    ``<prefix>/<model>/history/``, one record per move of that pointer.

    Moving ``latest`` must be atomic: a compare-and-swap against the pointer the caller saw
    (conditional writes on object stores, rename under a lock on a filesystem). A backend
    that cannot do that keeps the defaults of :meth:`move_latest` and
    :meth:`latest_history`, which refuse, naming the class.
    """

    #: ``expect`` default of :meth:`move_latest`: move from whatever latest is now
    CURRENT: ClassVar[object] = object()

    def __init__(self, config: Any) -> None:
        self.config = config

    @abc.abstractmethod
    def push(self, bundle_dir: Path, model_name: str, *, latest: bool = True) -> ModelRef:
        """Store ``bundle_dir`` as a version of ``model_name``; with ``latest``, make it latest.

        A push that meets a complete stored version with identical content returns that
        version (no upload); one that meets different or incomplete content under the same
        version id raises StoreError saying which and what to do. ``latest=False`` stores
        the version without moving the pointer (a gated export).
        """

    @abc.abstractmethod
    def pull(self, ref: ModelRef, dest: Path) -> Path:
        """Download ``ref`` into ``dest``, verify it against its manifest, return the path."""

    @abc.abstractmethod
    def resolve(self, model_name: str, version: str = "latest") -> ModelRef:
        """Turn ``"latest"`` or a version id into a :class:`ModelRef` (StoreError if none)."""

    @abc.abstractmethod
    def versions(self, model_name: str) -> list[ModelVersion]:
        """All versions of ``model_name``, newest first."""

    @abc.abstractmethod
    def uri(self, ref: ModelRef) -> str:
        """The storage URI of the version that a KServe predictor can read."""

    # -- capabilities generic code asks for (cluster runners and servers) -----------------

    def pod_environment(self, secret_name: str) -> list[SecretEnv]:
        """Environment variables a pipeline pod needs to use this store, each from ``secret_name``.

        The variables are what this store's client reads when the config carries no
        credential (the pipeline's config never does); the Secret must hold these keys.
        Return ``[]`` when the store needs no credential in a pod.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support pod_environment")

    def reachable_from_cluster(self) -> bool:
        """Whether pods on a Kubernetes cluster can reach this store as configured.

        False for a folder on this machine or a loopback endpoint; generic code warns or
        refuses (``server.storage_endpoint`` may name the address pods use instead).
        """
        raise NotImplementedError(f"{type(self).__name__} does not support reachable_from_cluster")

    def kserve_storage(
        self, ref: ModelRef, *, endpoint: str | None = None, with_values: bool = False
    ) -> KServeStorage:
        """How a KServe predictor reads ``ref``: storageUri, Secret keys and annotations.

        Args:
            ref: the version to serve.
            endpoint: the store's endpoint as pods reach it, when it differs from the
                config's (``server.storage_endpoint``); stores without one ignore it.
            with_values: also resolve the Secret's values (from the config, else the
                environment), to create the Secret; never rendered.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support kserve_storage")

    def move_latest(
        self,
        model_name: str,
        version: str,
        *,
        reason: MoveReason,
        run_id: str | None = None,
        expect: str | object | None = CURRENT,
    ) -> LatestMove:
        """Point ``latest`` at the stored ``version`` in one atomic step; record the move.

        Args:
            model_name: the model.
            version: a complete stored version id.
            reason: why (``export``, ``promote``, ``rollback``, ``force-promote``).
            run_id: the run that moved it, when a run did.
            expect: the version the caller believes is latest now (``None``: none yet). When
                latest has moved since, nothing changes and StoreError says so. The default
                moves from whatever latest is at the moment of the swap.

        Returns:
            The move, as appended to :meth:`latest_history`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not support move_latest: it cannot move `latest` atomically"
        )

    def latest_history(self, model_name: str) -> list[LatestMove]:
        """Every recorded move of ``model_name``'s ``latest``, oldest first."""
        raise NotImplementedError(f"{type(self).__name__} does not support latest_history")

    def read_file(self, ref: ModelRef, name: str) -> bytes:
        """One file of a stored version (``prodml.json``), checked against its manifest.

        The default pulls the whole version (which verifies every file); stores that can
        read one object override it, so showing a version's metadata does not download its
        model files.
        """
        import tempfile

        from prodml.core.bundle import read_manifest
        from prodml.core.errors import BundleError

        with tempfile.TemporaryDirectory(prefix="prodml-read-") as tmp:
            folder = Path(self.pull(ref, Path(tmp) / "bundle"))
            if name not in read_manifest(folder):
                raise BundleError(f"{ref.model_name} {ref.version} has no file {name!r}")
            return (folder / name).read_bytes()


class ModelServer(Preflight, abc.ABC):
    """Puts a stored model version behind an HTTP endpoint."""

    def __init__(self, config: Any) -> None:
        self.config = config

    @abc.abstractmethod
    def deploy(self, ref: ModelRef, store: ModelStore, source: DataSource | None = None) -> Endpoint:
        """Serve ``ref`` (fetched from ``store``); return once it answers requests.

        ``source`` is the pipeline's data source; servers that look features up at
        inference time (entity keys in, features from an online store) use its
        :meth:`DataSource.online_features`.
        """

    @abc.abstractmethod
    def status(self, model_name: str) -> ServerStatus:
        """Whether ``model_name`` is deployed and ready."""

    @abc.abstractmethod
    def undeploy(self, model_name: str) -> None:
        """Stop serving ``model_name``."""

    def predict(self, endpoint: Endpoint, rows: Sequence[Sequence[float]]) -> list[Any]:
        """Send feature ``rows`` to ``endpoint`` (as :meth:`deploy` returned it); one answer per row.

        Optional: runners use it to show a sample prediction after the serve stage.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support predict")

    def serve_foreground(self, ref: ModelRef, store: ModelStore, source: DataSource | None = None) -> None:
        """Serve ``ref`` from this process until interrupted (``prodml serve``).

        Optional: without it, ``prodml serve`` deploys and prints the endpoint.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support serve_foreground")

    def manifests(
        self, store: ModelStore, model_name: str, *, version: str | None = None, offline: bool = False
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The Kubernetes objects a deploy of ``model_name`` would apply, and notes on them.

        For servers that deploy to a cluster (``prodml k8s manifests``, and the checks of
        ``prodml compile``). ``version``: render for that id without asking the store;
        ``offline``: do not ask the store at all (a placeholder stands for the version).
        """
        raise NotImplementedError(f"{type(self).__name__} does not support manifests")

    def update(
        self,
        ref: ModelRef,
        store: ModelStore,
        source: DataSource | None = None,
        *,
        canary_percent: int | None = None,
    ) -> Endpoint | None:
        """Move a running server of this project's model to ``ref`` with no failed request.

        Called after ``latest`` moved (promote, rollback, an export the gate let in). The
        new version must be loaded and ready before the old one stops taking requests.

        Args:
            ref: the version to serve now.
            store: where ``ref`` is read from.
            source: the pipeline's data source (for servers that look features up).
            canary_percent: send only this share of requests to ``ref`` (servers that
                can split traffic); None moves all of it.

        Returns:
            The endpoint now serving ``ref``, or None when no server of this model runs
            (nothing to move; the next deploy serves ``ref``).
        """
        raise NotImplementedError(f"{type(self).__name__} does not support update")


class Runner(Preflight, abc.ABC):
    """Executes the configured stages (in-process, through kfp.local, on a cluster)."""

    #: False when the stages run elsewhere (pods on a cluster): the pre-flight then checks
    #: only the files that go into the image, not this machine's credentials, stores or ports
    stages_run_here: bool = True

    def __init__(self, config: Any) -> None:
        self.config = config

    @abc.abstractmethod
    def run(self, config: ProdmlConfig, *, start_at: str | None = None) -> RunSummary:
        """Run ``config.stages`` (from ``start_at`` when resuming) and summarise."""

    def compile(self, config: ProdmlConfig, output: Path) -> Path:
        """Write the pipeline definition for ``config`` to ``output``."""
        raise NotImplementedError(f"{type(self).__name__} does not support compile")
