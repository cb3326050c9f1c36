"""Operating local model servers: handover to a new version under load, servers per project folder,
``prodml status`` / ``prodml stop``, Ctrl-C during serve, and errors that carry the server's log.

Real KServe ModelServer processes on loopback ports; server state in a temporary
PRODML_STATE_HOME (never the user's ~/.cache).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prodml.core.errors import ServingError
from prodml.core.interfaces import ModelRef
from prodml.plugins.servers import _state
from prodml.testing.servers import in_process_predictions, train_tiny_bundle
from prodml.testing.trainers import regression_frame

pytestmark = [pytest.mark.slow, pytest.mark.kserve]

NAME = "tiny"
ROW = [0.5, -1.25, 3.0]
PRODML = [sys.executable, "-m", "prodml"]


@pytest.fixture
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PRODML_STATE_HOME of this test alone: list_servers sees only its servers."""
    home = tmp_path / "state-home"
    monkeypatch.setenv(_state.STATE_HOME_ENV, str(home))
    return home


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two versions of one model whose answers differ (other data, more epochs)."""
    root = tmp_path_factory.mktemp("versions")
    first = train_tiny_bundle(root / "v1" / "bundle", model_name=NAME)
    frame = regression_frame(rows=64)
    frame[frame.columns[-1]] = frame[frame.columns[-1]] + 50.0
    second = train_tiny_bundle(root / "v2" / "bundle", model_name=NAME, frame=frame, epochs=3)
    return first, second


@pytest.fixture(scope="module")
def store_and_refs(
    bundles: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, ModelRef, ModelRef]:
    from prodml.plugins.stores.local import LocalStore, LocalStoreConfig

    store = LocalStore(LocalStoreConfig(type="local", root=tmp_path_factory.mktemp("store")))
    return store, store.push(bundles[0], NAME), store.push(bundles[1], NAME)


def server_config(project: Path, **fields: Any) -> Any:
    """A kserve local config as if read from ``project/prodml.yaml``."""
    from prodml.plugins.servers.kserve import KServeServerConfig

    data = {"type": "kserve", "mode": "local", "port": 0, **fields}
    return KServeServerConfig.model_validate(data, context={"base_dir": project})


def post(url: str, body: dict[str, Any], model: str = NAME, timeout: float = 30) -> tuple[int, Any]:
    """One request on a new connection (as a load generator without keep-alive sends it)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(
            "POST", f"/v1/models/{model}:predict", json.dumps(body), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw.decode(errors="replace")


class Load:
    """A bounded loop of requests on loopback in a thread: (status, prediction) per request."""

    def __init__(self, url: str, limit: int = 200_000) -> None:
        self.url = url
        self.limit = limit
        self.answers: list[tuple[Any, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.answers) < self.limit:
            try:
                status, body = post(self.url, {"instances": [ROW]})
                value = body["predictions"][0][0] if status == 200 else body
            except Exception as exc:  # a refused or reset connection is a failed request
                status, value = "error", repr(exc)
            self.answers.append((status, value))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def wait_for(self, count: int, timeout: float = 120) -> None:
        target = len(self.answers) + count
        deadline = time.monotonic() + timeout
        while len(self.answers) < target and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        assert len(self.answers) >= target, f"the load loop made {len(self.answers)} requests only"


def expected(bundle: Path) -> float:
    return float(in_process_predictions(bundle, [ROW])[0][0])


def which(value: Any, first: float, second: float) -> str:
    """'v1' or 'v2' for a served prediction (the two are far apart)."""
    if isinstance(value, float) and np.isclose(value, first, rtol=1e-4, atol=1e-4):
        return "v1"
    if isinstance(value, float) and np.isclose(value, second, rtol=1e-4, atol=1e-4):
        return "v2"
    return f"neither: {value!r}"


# -- serving follows latest: handover under load ---------------------------------------------


def test_update_and_redeploy_move_a_loaded_server_without_a_failed_request(
    bundles: tuple[Path, Path],
    store_and_refs: tuple[Any, ModelRef, ModelRef],
    own_state: Path,
    tmp_path: Path,
) -> None:
    from prodml.plugins.servers.kserve import KServeServer

    store, ref1, ref2 = store_and_refs
    first, second = expected(bundles[0]), expected(bundles[1])
    assert abs(first - second) > 1e-2  # far apart next to the 1e-4 tolerance below
    backend = KServeServer(server_config(tmp_path / "project"))
    assert backend.update(ref2, store) is None  # nothing runs yet: nothing to move
    endpoint = backend.deploy(ref1, store)
    old_pid = int(endpoint.details["pid"])
    try:
        with Load(endpoint.url) as load:
            load.wait_for(20)
            moved = backend.update(ref2, store)
            after_update = len(load.answers)
            load.wait_for(20)
            # deploying again while it runs takes the same way (back to the first version here)
            before_redeploy = len(load.answers)
            again = backend.deploy(ref1, store)
            after_redeploy = len(load.answers)
            load.wait_for(20)
        answers = list(load.answers)
    finally:
        backend.undeploy(NAME)

    failed = [a for a in answers if a[0] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    served = [which(value, first, second) for _, value in answers]
    assert set(served) <= {"v1", "v2"}, sorted(set(served))
    assert moved is not None and moved.version == ref2.version and moved.url == endpoint.url
    assert again.version == ref1.version and again.url == endpoint.url
    assert served[0] == "v1"
    # requests sent after update() returned are answered by the new version only (the one
    # that may have been in flight at that moment is left out)
    assert set(served[after_update + 1 : before_redeploy]) == {"v2"}
    assert set(served[after_redeploy + 1 :]) == {"v1"}
    pids = {old_pid, int(moved.details["pid"]), int(again.details["pid"])}
    assert len(pids) == 3  # each move is a new process; the old ones are gone
    assert not any(_state.process_alive(pid) for pid in pids)
    assert _state.list_servers() == []


def test_update_of_a_model_served_nowhere_and_a_local_canary_are_refused_clearly(
    store_and_refs: tuple[Any, ModelRef, ModelRef], own_state: Path, tmp_path: Path
) -> None:
    from prodml.plugins.servers.kserve import KServeServer

    store, _, ref2 = store_and_refs
    backend = KServeServer(server_config(tmp_path / "project"))
    assert backend.update(ref2, store) is None
    with pytest.raises(ServingError, match=r"canary \(10% of requests\) needs server\.mode: cluster"):
        backend.update(ref2, store, canary_percent=10)


# -- errors carry the server's log ------------------------------------------------------------


def test_a_server_that_exits_before_it_is_ready_is_reported_with_its_log(
    store_and_refs: tuple[Any, ModelRef, ModelRef], own_state: Path, tmp_path: Path
) -> None:
    """The first wave's bug: `exited (code -15) before it was ready:` and nothing after the colon."""
    from prodml.plugins.servers.kserve import KServeServer

    store, ref1, _ = store_and_refs
    config = server_config(tmp_path / "project")
    backend = KServeServer(config)
    killed: list[int] = []

    def kill_once_it_logged() -> None:
        record = _state.record_path(config.resolved_state_dir(), tmp_path / "project", NAME)
        log = _state.log_path(config.resolved_state_dir(), tmp_path / "project", NAME)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            data = _state.read_record(record)
            if data and log.is_file() and "serving" in log.read_text(errors="replace"):
                os.killpg(int(data["pid"]), signal.SIGTERM)
                killed.append(int(data["pid"]))
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_once_it_logged)
    killer.start()
    try:
        with pytest.raises(ServingError) as caught:
            backend.deploy(ref1, store)
    finally:
        killer.join()
        backend.undeploy(NAME)
    message = str(caught.value)
    assert killed and "exited (code -15) before it was ready" in message
    tail = [line for line in message.splitlines() if line.startswith("  | ")]
    assert tail and any("serving" in line for line in tail), message
    assert "full log:" in message
    assert _state.list_servers() == []  # no record left behind


def test_a_port_held_by_another_program_is_named(
    store_and_refs: tuple[Any, ModelRef, ModelRef], own_state: Path, tmp_path: Path
) -> None:
    from prodml.plugins.servers.kserve import KServeServer

    store, ref1, _ = store_and_refs
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        backend = KServeServer(server_config(tmp_path / "project", port=port))
        with pytest.raises(ServingError, match=f"port {port} on 127.0.0.1 is in use by another program"):
            backend.deploy(ref1, store)
    assert _state.list_servers() == []


# -- two projects with one name; prodml status and prodml stop ----------------------------------


def cli(*args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([*PRODML, *args], capture_output=True, text=True, env=env, **kwargs)
    if check:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_bundle(tmp_path_factory.mktemp("demo") / "bundle", model_name="demo")


def init_project(parent: Path, bundle: Path) -> Path:
    """``prodml init parent/demo`` (project `demo`) serving ``bundle`` from its own store.

    The stages are ``[serve]`` and the port is any free one (not 8080): what is under test
    is serving, so the project's store gets a trained version instead of training one.
    """
    from prodml.plugins.stores.local import LocalStore, LocalStoreConfig

    folder = parent / "demo"
    cli("init", str(folder))
    config = folder / "prodml.yaml"
    text = config.read_text().replace("port: 8080", "port: 0")
    config.write_text(text.replace("stages: [fetch, train, export, serve]", "stages: [serve]"))
    LocalStore(LocalStoreConfig(type="local", root=folder / ".prodml" / "models")).push(bundle, "demo")
    return config


def test_two_projects_with_one_name_run_side_by_side_and_stop_separately(
    demo_bundle: Path, own_state: Path, tmp_path: Path
) -> None:
    config_a = init_project(tmp_path / "a", demo_bundle)
    config_b = init_project(tmp_path / "b", demo_bundle)
    cli("run", "-c", str(config_a), "--keep-serving")
    try:
        [server_a] = _state.list_servers()
        assert server_a.model == "demo" and server_a.config_file == str(config_a.resolve())

        # the same port as the running server of project a: refused, naming project a's folder
        config_b.write_text(config_b.read_text().replace("port: 0", f"port: {server_a.port}"))
        clash = cli("run", "-c", str(config_b), "--keep-serving", check=False)
        # refused before anything runs (the pre-flight, exit 2) or by the deploy itself (exit 1)
        assert clash.returncode in (1, 2), clash.stdout + clash.stderr
        assert f":{server_a.port}" in clash.stderr or f"port {server_a.port}" in clash.stderr
        assert "taken by the model server of 'demo'" in clash.stderr
        assert str(config_a.parent.resolve()) in clash.stderr and str(server_a.pid) in clash.stderr
        # deploy refuses it too, for callers that skip the pre-flight (the API, promote)
        from prodml.core.config import load_config
        from prodml.plugins.servers import _local

        with pytest.raises(
            ServingError, match=f"port {server_a.port} is taken by the model server of 'demo'"
        ):
            _local.check_port(load_config(config_b).server, "demo", server_a.port)
        assert _state.process_alive(server_a.pid)  # untouched

        config_b.write_text(config_b.read_text().replace(f"port: {server_a.port}", "port: 0"))
        cli("run", "-c", str(config_b), "--keep-serving")
        servers = {s.config_file: s for s in _state.list_servers()}
        assert set(servers) == {str(config_a.resolve()), str(config_b.resolve())}
        server_b = servers[str(config_b.resolve())]
        assert server_b.port != server_a.port and server_b.pid != server_a.pid

        for config in (config_a, config_b):  # each answers, found through its own project's record
            answer = json.loads(cli("predict", "-c", str(config), "--data", "[[1.0, 2.0, 3.0]]").stdout)
            assert len(answer["predictions"]) == 1

        status = cli("status").stdout
        lines = [line for line in status.splitlines() if line.startswith("demo ")]
        assert len(lines) == 2, status
        for server, config in ((server_a, config_a), (server_b, config_b)):
            [line] = [line for line in lines if str(config.resolve()) in line]
            assert server.url in line and str(server.pid) in line and " yes " in line

        ambiguous = cli("stop", "demo", check=False)
        assert ambiguous.returncode == 1 and "2 servers of 'demo' run" in ambiguous.stderr
        assert "--all" in ambiguous.stderr and _state.process_alive(server_a.pid)

        stopped = cli("stop", "-c", str(config_a))
        assert "stopped: demo" in stopped.stdout and str(config_a.resolve()) in stopped.stdout
        assert not _state.process_alive(server_a.pid)
        assert _state.process_alive(server_b.pid)
        assert post(server_b.url, {"instances": [[1.0, 2.0, 3.0]]}, model="demo")[0] == 200
        [left] = _state.list_servers()
        assert left.pid == server_b.pid

        kept = Path(left.record_file).read_text()
        assert "stopped: demo" in cli("stop", "demo", "--all").stdout
        assert not _state.process_alive(server_b.pid)
        # a record whose process is gone (what a SIGKILLed server leaves) is dropped by status
        Path(left.record_file).write_text(kept)
        assert "no local model servers are running" in cli("status").stdout
        assert not Path(left.record_file).exists()
        assert cli("stop", check=False).returncode == 2  # which one? says how to name it
    finally:
        for record in _state.list_servers(probe=False):
            _state.stop(record, grace=5)


# -- Ctrl-C during serve ------------------------------------------------------------------


def test_sigint_during_the_serve_stage_leaves_no_server(
    demo_bundle: Path, own_state: Path, tmp_path: Path
) -> None:
    config = init_project(tmp_path, demo_bundle)
    proc = subprocess.Popen(
        [*PRODML, "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    try:
        server_pid = None
        deadline = time.monotonic() + 600
        while server_pid is None and time.monotonic() < deadline and proc.poll() is None:
            records = list((own_state / "serving" / "servers").glob("demo-*.json"))
            data = _state.read_record(records[0]) if records else None
            if data:
                server_pid = int(data["pid"])
            time.sleep(0.02)
        assert server_pid is not None, "the serve stage never started a server"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    assert "interrupted during the serve stage" in out and "--from serve" in out
    assert not _state.process_alive(server_pid)
    assert _state.list_servers(prune=False) == []
    runs = config.parent / ".prodml" / "runs"
    record = json.loads((runs / (runs / "latest").read_text().strip() / "run.json").read_text())
    assert record["status"] == "interrupted" and record["interrupted_stage"] == "serve"
    assert record["stages"]["serve"]["status"] == "interrupted"
