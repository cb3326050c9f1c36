"""`prodml init`: the scaffold is a project `prodml run` runs as is."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from prodml.core.config import load_config
from prodml.core.errors import ProdmlError
from prodml.scaffold import init_project, project_name

REPO = Path(__file__).parent.parent


def prodml(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prodml", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env={**os.environ, **(env or {})},
    )


def test_init_prints_a_next_command_that_pastes_into_a_shell(tmp_path: Path) -> None:
    out = prodml("init", "my proj", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    next_line = next(line for line in out.stdout.splitlines() if "next:" in line)
    command = next_line.split("next:", 1)[1].strip()
    assert shlex.split(command) == ["prodml", "run", "-c", "my proj/prodml.yaml"]
    # pasted as printed (with validate for run, to stay fast), the shell finds the config
    bin_dir = Path(sys.executable).parent
    pasted = command.replace("prodml run", f"{shlex.quote(sys.executable)} -m prodml validate --offline", 1)
    done = subprocess.run(
        ["bash", "-c", pasted],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("my proj/prodml.yaml: valid")
    # the project's own README and config comment carry the same pasteable command
    assert "prodml run -c 'my proj/prodml.yaml'" in (tmp_path / "my proj" / "README.md").read_text()


def test_scaffold_files_are_the_examples(tmp_path: Path) -> None:
    written = init_project(tmp_path / "demo")
    names = sorted(p.relative_to(tmp_path / "demo").as_posix() for p in written)
    assert names == [".gitignore", "README.md", "data/train.csv", "make_data.py", "model.py", "prodml.yaml"]
    assert (tmp_path / "demo" / "model.py").read_bytes() == (
        REPO / "examples/quickstart/model.py"
    ).read_bytes()
    assert (tmp_path / "demo" / "data/train.csv").read_bytes() == (
        REPO / "examples/quickstart/data/train.csv"
    ).read_bytes()


def test_scaffold_config_validates_and_points_inside_the_project(tmp_path: Path) -> None:
    init_project(tmp_path / "My Project", feast=True)
    config = load_config(tmp_path / "My Project" / "prodml.yaml")
    assert config.project == "my-project"
    assert config.source.type == "feast"
    assert config.source.repo_path == (tmp_path / "My Project" / "feature_repo").resolve()
    assert (config.source.repo_path / "feature_store.yaml").is_file()
    assert (config.source.repo_path / "data" / "house_sales.parquet").is_file()
    assert config.store.root == (tmp_path / "My Project" / ".prodml" / "models").resolve()


def test_init_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ProdmlError, match="is not empty"):
        init_project(tmp_path / "x")
    out = prodml("init", str(tmp_path / "x"))
    assert out.returncode == 1 and "pass --force" in out.stderr and "Traceback" not in out.stderr
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "name, expected", [("My_Proj", "my-proj"), ("--", "prodml-project"), ("a" * 80, "a" * 63)]
)
def test_project_name_is_always_valid(tmp_path: Path, name: str, expected: str) -> None:
    assert project_name(tmp_path / name) == expected


@pytest.mark.slow
@pytest.mark.kserve
def test_scaffolded_project_runs_as_is(tmp_path: Path) -> None:
    out = prodml("init", str(tmp_path / "proj"))
    assert out.returncode == 0, out.stderr
    config = tmp_path / "proj" / "prodml.yaml"
    # the only change: any free port, so the test cannot collide with a server already on 8080
    config.write_text(config.read_text().replace("port: 8080", "port: 0"))
    # the model server's state goes to the test's folder, never the user's ~/.cache
    state = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PRODML_STATE_HOME": str(tmp_path / "state")}
    run = prodml("run", "-c", str(config), cwd=tmp_path, env=state)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "sample prediction" in run.stdout
    assert (tmp_path / "proj" / ".prodml" / "models" / "proj" / "latest").exists()
