"""The cluster versions prodml documents are the ones it pins and checks against (issue 11, break 5)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prodml.core import versions

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "docs" / "kind.md", REPO / "docs" / "aks.md"]
#: version numbers these pages may mention that are not cluster pins: prodml's own image tag,
#: and KServe's default TF-Serving (named to say why prodml does not use it)
NOT_PINS = {"0.1.0", "2.6.2"}


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_every_version_in_the_cluster_docs_is_a_pinned_one(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    pinned = {v.removeprefix("v") for v in versions.PINNED.values()} | {
        versions.MINIO_IMAGE.rsplit(":", 1)[1]
    }
    found = set(re.findall(r"\bv?(\d+\.\d+\.\d+)\b", text))
    assert found - pinned - NOT_PINS == set(), f"{doc.name} names versions prodml does not pin"
    assert versions.KFP_BACKEND_VERSION in text and versions.KSERVE_VERSION in text
    assert versions.CERT_MANAGER_VERSION in text


def test_kind_md_installs_exactly_the_pinned_versions() -> None:
    text = (REPO / "docs" / "kind.md").read_text(encoding="utf-8")
    assert re.findall(r"PIPELINE_VERSION=(\S+)", text) == [versions.KFP_BACKEND_VERSION]
    assert re.findall(r"KSERVE_VERSION=(\S+)", text) == [versions.KSERVE_VERSION]
    helm_versions = re.findall(r"--version (\$\S+|v?\d\S*)", text)
    assert helm_versions and set(helm_versions) == {"$KSERVE_VERSION"}
    charts = re.findall(r"oci://ghcr.io/kserve/charts/(\S+)", text)
    assert charts == ["kserve-crd", "kserve-resources", "kserve-runtime-configs"]
    assert re.findall(r"deploymentMode=(\S+)", text) == [versions.KSERVE_DEPLOYMENT_MODE]
    cert_manager = re.findall(r"cert-manager/releases/download/([^/]+)/", text)
    assert cert_manager == [versions.CERT_MANAGER_VERSION]
    assert re.findall(r"--image=(\S+)", text) == [versions.MINIO_IMAGE]
    assert re.findall(r"TRAINING_OPERATOR_VERSION=(\S+)", text) == [versions.TRAINING_OPERATOR_VERSION]
    assert "minio:latest" not in text


def test_kind_md_shows_how_the_image_carries_plugins() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    text = (REPO / "docs" / "kind.md").read_text(encoding="utf-8")
    for arg in ("REQUIREMENTS", "EXTRA_PIP"):
        assert f"ARG {arg}" in dockerfile
    assert "--build-arg EXTRA_PIP=" in text and "config/requirements.txt" in text
    assert "prodml plugins" in dockerfile  # a plugin that does not load fails the build


def test_versions_are_well_formed_and_the_schema_data_matches_them() -> None:
    from importlib import resources

    from prodml.core import cluster_check

    for name, value in versions.PINNED.items():
        assert value and " " not in value, name
    assert re.fullmatch(
        r"quay\.io/minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", versions.MINIO_IMAGE
    )
    assert versions.KSERVE_DEPLOYMENT_MODE == "Standard"  # RawDeployment is deprecated since 0.17
    files = {p.name for p in resources.files(cluster_check.SCHEMA_PACKAGE).iterdir()}
    assert set(cluster_check.CRD_SCHEMAS.values()) | {cluster_check.KFP_PROTOS} <= files
    readme = (REPO / "prodml" / "core" / "cluster_schemas" / "README.md").read_text(encoding="utf-8")
    assert f"tag `{versions.KSERVE_VERSION}`" in readme and f"tag `{versions.KFP_BACKEND_VERSION}`" in readme
    assert f"tag `{versions.TRAINING_OPERATOR_VERSION}`" in readme
    tfjob = cluster_check.crd_schema("kubeflow.org/v1", "TFJob")
    assert tfjob is not None and "tfReplicaSpecs" in tfjob["properties"]["spec"]["properties"]
    schema = cluster_check.crd_schema("serving.kserve.io/v1beta1", "InferenceService")
    assert schema is not None and "canary" in schema["properties"]["spec"]["properties"]
