"""Documentation that cannot drift: the generated config reference and runnable commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prodml.core.plugins import Registry
from prodml.core.reference import generate

REPO = Path(__file__).parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = re.compile(r"^```bash runnable\n(.*?)^```", re.M | re.S)


def test_config_reference_is_generated_from_the_code() -> None:
    committed = (REPO / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert committed == generate(), "run: python -m prodml.core.reference > docs/config-reference.md"


def test_every_config_field_is_described() -> None:
    registry = Registry(autoload=False)
    missing = [
        f"{installed.backend.role}.{installed.backend.type}: {name}"
        for installed in registry
        for name, field in installed.backend.config.model_fields.items()
        if name != "type" and not field.description
    ]
    assert missing == []


def runnable_blocks() -> list[tuple[str, str]]:
    blocks = []
    for doc in DOCS:
        for i, match in enumerate(RUNNABLE.finditer(doc.read_text(encoding="utf-8"))):
            blocks.append((f"{doc.relative_to(REPO)}#{i + 1}", match.group(1)))
    return blocks


BLOCKS = runnable_blocks()


def test_docs_have_runnable_blocks() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("where, script", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_runnable_commands_in_docs_run(where: str, script: str) -> None:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PRODML_DISABLE_PLUGIN_AUTOLOAD", None)
    # `source .venv/bin/activate` in a doc means "the project's environment": this one
    script = script.replace("source .venv/bin/activate", f"export PATH={bin_dir}:$PATH")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, (
        f"{where} failed:\n{script}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    assert "Traceback" not in done.stderr
