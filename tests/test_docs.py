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


ACTIVATE = re.compile(r"^(?:\.|source) \.venv/bin/activate\b", re.M)
BASH_BLOCK = re.compile(r"^```bash[^\n]*\n(.*?)^```", re.M | re.S)


def as_in_this_environment(script: str, bin_dir: str) -> str:
    """A doc's commands with `.venv` meaning this test's environment (a fresh clone's .venv)."""
    script = ACTIVATE.sub(f"export PATH={bin_dir}:$PATH", script)
    return re.sub(r"(?<![\w/])\.venv/bin/", f"{bin_dir}/", script)


def path_without(bin_dir: str) -> str:
    """$PATH without the environment holding prodml: as in a shell that has not activated it."""
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bin_dir)


#: the pages a newcomer follows command by command, in a shell where nothing is activated yet
FIRST_HOUR = ("README.md", "docs/getting-started.md")


@pytest.mark.parametrize("doc", [REPO / name for name in FIRST_HOUR], ids=lambda p: p.name)
def test_every_bash_block_activates_the_venv_before_bare_prodml(doc: Path) -> None:
    # a reader pastes one block into a fresh shell: `prodml` must be on PATH by then
    for block in BASH_BLOCK.findall(doc.read_text(encoding="utf-8")):
        activated = False
        for line in block.splitlines():
            activated = activated or bool(ACTIVATE.match(line))
            if re.match(r"\s*prodml\b", line):
                assert activated, f"{doc.name}: `{line.strip()}` runs before `. .venv/bin/activate`"


@pytest.mark.parametrize("where, script", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_runnable_commands_in_docs_run(where: str, script: str) -> None:
    bin_dir = str(Path(sys.executable).parent)
    if where.startswith(FIRST_HOUR):
        # as a newcomer pastes it: prodml is not on PATH until the block activates .venv
        env = {**os.environ, "PATH": path_without(bin_dir)}
    else:  # the other pages assume the reader works in the activated environment
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PRODML_DISABLE_PLUGIN_AUTOLOAD", None)
    script = as_in_this_environment(script, bin_dir)
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


SERVED = re.compile(r"^```bash served\n(.*?)^```", re.M | re.S)
DEMO_OUTPUT = re.compile(r"^<!-- demo-output:.*?-->\n((?:    .*\n)+)", re.M)
#: what differs from machine to machine in a run's output: times, ids, paths, ports
VARYING = [
    (r"\d{8}T\d{6}Z-[0-9a-f]+", "ID"),
    (r"(?:file://)?/\S+", "PATH"),
    (r"http://127\.0\.0\.1:\d+", "URL"),
    (r"\d+\.\d+s\b", "TIME"),
    (r"\d+\.\d+", "NUMBER"),
]


def shape(line: str) -> str:
    for pattern, name in VARYING:
        line = re.sub(pattern, name, line)
    return re.sub(r"\s+", " ", line.strip())


def numbers(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", line)]


def served_blocks() -> list[tuple[str, str]]:
    return [
        (doc.name, match.group(1))
        for doc in (REPO / "README.md", REPO / "docs" / "getting-started.md")
        for match in SERVED.finditer(doc.read_text(encoding="utf-8"))
    ]


def test_docs_show_served_commands() -> None:
    assert {name for name, _ in served_blocks()} == {"README.md", "getting-started.md"}


@pytest.mark.slow
@pytest.mark.kserve
def test_demo_output_and_the_served_commands_are_as_documented(tmp_path: Path) -> None:
    """`make demo`'s output is getting-started's, and the docs' commands against a served model work."""
    import yaml

    from prodml.testing.services import free_port

    bin_dir = str(Path(sys.executable).parent)
    port = free_port()
    config = yaml.safe_load((REPO / "config" / "local.yaml").read_text(encoding="utf-8"))
    config["source"]["path"] = str(REPO / "examples/quickstart/data/train.csv")
    config["trainer"]["model"] = str(REPO / "examples/quickstart/model.py") + ":build_model"
    config["store"]["root"] = str(tmp_path / "models")
    config["server"].update(port=port, state_dir=str(tmp_path / "serving"))
    config["runner"]["work_dir"] = str(tmp_path / "work")
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": path_without(bin_dir)}
    run = subprocess.run(
        [sys.executable, "-m", "prodml", "run", "-c", str(path), "--keep-serving"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    try:
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stderr == ""  # a normal run shows prodml's lines only
        documented = [
            line.strip()
            for line in DEMO_OUTPUT.search((REPO / "docs/getting-started.md").read_text())
            .group(1)
            .splitlines()
        ]
        kept = documented.pop(-2)  # --keep-serving here: the server is kept, not stopped
        assert kept == "server stopped (run with --keep-serving to leave quickstart running)"
        actual = run.stdout.strip().splitlines()
        assert [shape(line) for line in actual] == [shape(line) for line in documented], run.stdout
        # the same seed, data and model code: the documented sample predictions (3 decimals)
        sample = next(line for line in actual if line.startswith("sample prediction"))
        doc_sample = next(line for line in documented if line.startswith("sample prediction"))
        assert numbers(sample)[:3] == pytest.approx(numbers(doc_sample)[:3], abs=0.05)

        for name, block in served_blocks():
            script = as_in_this_environment(block, bin_dir)
            for documented_config in ("config/local.yaml", "/tmp/prodml-readme-demo/prodml.yaml"):
                script = script.replace(documented_config, str(path))
            script = script.replace("prodml-readme-demo", "quickstart")
            script = script.replace("localhost:8080", f"127.0.0.1:{port}")
            script = script.replace("curl -s ", "curl -sS --fail-with-body ")  # a 4xx fails the block
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=env, cwd=REPO
            )
            assert done.returncode == 0, f"{name}:\n{script}\n{done.stdout}\n{done.stderr}"
            assert "error" not in done.stdout.lower() and "Traceback" not in done.stderr, done.stdout
            assert done.stdout.count('"predictions"') + done.stdout.count('"outputs"') >= 2, done.stdout
    finally:
        from prodml.core.config import load_config
        from prodml.core.plugins import default_registry

        loaded = load_config(path)
        default_registry().create("server", loaded.server).undeploy("quickstart")


@pytest.mark.parametrize("name", ["local", "feast", "minio", "azure"])
def test_shipped_configs_keep_runs_beside_the_models(name: str) -> None:
    from prodml.core.config import load_config

    config = load_config(REPO / "config" / f"{name}.yaml")
    # every quickstart config runs in the repository's .prodml/, as the docs say
    assert Path(config.runner.work_dir) == REPO / ".prodml"
    if config.store.type == "local":
        assert Path(config.store.root) == REPO / ".prodml" / "models"
