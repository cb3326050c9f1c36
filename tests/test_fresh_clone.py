"""A newcomer's first command: clone, then the README's demo command, exactly as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent


def readme_demo_command(readme: str) -> str:
    """The first command of the README's first code block (the demo), comment stripped."""
    block = re.search(r"^```bash\n(.*?)^```", readme, re.M | re.S)
    assert block, "the README must open with a ```bash block holding the two commands"
    first = block.group(1).splitlines()[0]
    return first.split("#", 1)[0].strip()


def test_readme_opens_with_demo_then_test() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^```bash\n(.*?)^```", readme, re.M | re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", ci, re.M), ".ci/run must call the README's test command"


@pytest.mark.slow
@pytest.mark.e2e
def test_fresh_clone_demo_ends_with_a_prediction(tmp_path: Path) -> None:
    clone = tmp_path / "prodml"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    command = readme_demo_command((clone / "README.md").read_text(encoding="utf-8"))
    assert command == "make demo"
    # a newcomer's shell: no virtualenv of ours on PATH, so `make` builds the clone's own .venv
    ours = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != ours)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(PATH=path)
    done = subprocess.run(
        ["bash", "-c", command], cwd=clone, capture_output=True, text=True, env=env, timeout=1800
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert re.search(r"sample prediction for the first \d+ rows: \[\[-?\d", done.stdout), output[-5000:]
    assert "server stopped" in done.stdout
    assert (clone / ".venv" / "bin" / "prodml").exists()
