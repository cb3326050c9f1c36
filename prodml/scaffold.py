"""``prodml init DIR``: scaffold a project that ``prodml run -c DIR/prodml.yaml`` runs as is.

The files come from the repository's examples (``prodml/scaffold_data`` links to them), so
the scaffold and the examples are the same tested code and data, never two copies.
"""

from __future__ import annotations

import re
import shlex
import shutil
from argparse import Namespace
from importlib import resources
from pathlib import Path

from prodml.core.errors import ProdmlError

CONFIG = """\
# prodml project `{project}` — run it with:  prodml run -c {config_path}
#
# project: the name the model is stored and served under.
project: {project}

# source: where training data comes from. `type` picks the backend (`prodml plugins` lists
# them); every other key belongs to that backend (docs/config-reference.md).
{source}

# trainer: your model code. `model` is file.py:function, relative to this file.
trainer:
  type: keras
  model: model.py:build_model
  epochs: 5
  seed: 42
  params: {{units: 32, learning_rate: 0.01}}

# store: where versioned model bundles go. For S3/MinIO or Azure, change this block only:
#   store: {{type: s3, bucket: models, endpoint_url: "http://127.0.0.1:9000"}}
#   store: {{type: azure_blob, container: models,
#            connection_string: "${{env:AZURE_STORAGE_CONNECTION_STRING}}"}}
store:
  type: local
  root: .prodml/models

# server: KServe's model server on this machine (V1 and V2 protocols).
server:
  type: kserve
  mode: local
  port: 8080

# runner: how the stages run — local (in-process), kfp-local (Kubeflow Pipelines, locally),
# kfp (a Kubeflow cluster; see docs/kind.md).
runner:
  type: local

stages: [fetch, train, export, serve]
"""

CSV_SOURCE = """\
source:
  type: csv
  path: data/train.csv
  label: target"""

FEAST_SOURCE = """\
source:
  type: feast
  repo_path: feature_repo
  feature_service: house_price_model
  entity_df: feature_repo/data/house_sales.parquet
  label: target"""

README = """\
# {project}

Scaffolded by `prodml init`. Run everything (fetch, train, export, serve):

    prodml run -c {config_path}

Files: `prodml.yaml` (the pipeline), `model.py` (your model code: edit `build_model`),
`data/train.csv` (sample training data; regenerate with `python make_data.py --out data/train.csv`){feast}.
"""


def project_name(directory: Path) -> str:
    """A valid project name from a folder name (lowercase, digits, '-')."""
    name = re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-")
    return (name or "prodml-project")[:63].strip("-") or "prodml-project"


def _copy_tree(source: resources.abc.Traversable, dest: Path) -> list[Path]:
    written = []
    dest.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name == "__pycache__":
            continue
        target = dest / item.name
        if item.is_dir():
            written += _copy_tree(item, target)
        else:
            with resources.as_file(item) as path:
                shutil.copyfile(path, target)
            written.append(target)
    return written


def init_project(directory: Path, *, feast: bool = False, force: bool = False) -> list[Path]:
    """Write a runnable project into ``directory`` and return the files written.

    Raises:
        ProdmlError: ``directory`` exists and is not empty (unless ``force``).
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()) and not force:
        raise ProdmlError(
            f"{directory} is not empty; refusing to overwrite files there",
            hint="choose a new folder, or pass --force to write into it anyway",
        )
    data = resources.files("prodml") / "scaffold_data"
    written = _copy_tree(data / "quickstart", directory)
    if feast:
        repo = directory / "feature_repo"
        written += _copy_tree(data / "feast_repo", repo)
        # git refuses a symlinked .gitignore in our package, so this one is written here
        (repo / ".gitignore").write_text("# Feast state made on first use\n.feast/\n.feast-duckdb/\n")
        written.append(repo / ".gitignore")
    project = project_name(directory)
    config_path = directory / "prodml.yaml"
    # quoted, so the command can be pasted into a shell whatever the folder is called
    command_path = shlex.quote(str(config_path))
    config_path.write_text(
        CONFIG.format(
            project=project, config_path=command_path, source=FEAST_SOURCE if feast else CSV_SOURCE
        ),
        encoding="utf-8",
    )
    feast_note = ", `feature_repo/` (a Feast feature repository; prodml applies it itself)" if feast else ""
    (directory / "README.md").write_text(
        README.format(project=project, config_path=command_path, feast=feast_note), encoding="utf-8"
    )
    (directory / ".gitignore").write_text(".prodml/\n__pycache__/\n", encoding="utf-8")
    return [config_path, directory / "README.md", directory / ".gitignore", *written]


def init_command(args: Namespace) -> int:
    """``prodml init DIR [--feast] [--force]``."""
    directory = Path(args.directory)
    init_project(directory, feast=args.feast, force=args.force)
    config = directory / "prodml.yaml"
    print(f"created a prodml project in {directory}")
    print(f"  next: prodml run -c {shlex.quote(str(config))}")
    return 0
