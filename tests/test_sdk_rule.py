"""The "needs an SDK" rule: skipped on a partial install, a failure under CI=true."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent

MODULES = {
    "test_a_importorskip.py": 'import pytest\npytest.importorskip("no_such_sdk_for_prodml")\n'
    "def test_never():\n    pass\n",
    "test_b_needs_sdk.py": "from prodml.testing.sdk import needs_sdk\n"
    'needs_sdk("no_such_sdk_for_prodml", extra="feast")\n'
    "def test_never():\n    pass\n",
    "test_c_inside.py": "import pytest\n"
    "def test_inner():\n"
    '    pytest.importorskip("no_such_sdk_for_prodml")\n'
    "def test_other_reason():\n"
    '    pytest.skip("not on this platform")\n'
    "def test_fine():\n"
    "    pass\n",
}


def run_suite(tmp_path: Path, ci: str | None) -> tuple[int, dict[str, int], str]:
    for name, text in MODULES.items():
        (tmp_path / name).write_text(text)
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    last = done.stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", last)}
    return done.returncode, counts, done.stdout


def test_a_missing_sdk_skips_on_a_developer_machine(tmp_path: Path) -> None:
    code, counts, out = run_suite(tmp_path, None)
    assert code == 0, out
    assert counts == {"passed": 1, "skipped": 4}, out


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_sdk_fails_under_ci(tmp_path: Path, ci: str) -> None:
    code, counts, out = run_suite(tmp_path, ci)
    assert code == 1, out
    # both module-level forms fail collection, the in-test one fails; other skips stay skips
    assert counts == {"failed": 1, "passed": 1, "skipped": 1, "errors": 2}, out
    assert "CI=true and a test needs" in out
