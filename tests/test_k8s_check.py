"""prodml.core.cluster_check beyond the rendered manifests: dispatch, and the RBAC the docs grant."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from prodml.core import cluster_check

REPO = Path(__file__).resolve().parents[1]

#: what the serve step's client does (prodml/plugins/servers/_cluster.py), as RBAC verbs:
#: create, replace (= update) on a conflict, read back, wait (get), undeploy (delete)
SERVE_STEP_NEEDS = {
    ("serving.kserve.io", "inferenceservices"): {"create", "get", "update", "delete"},
    ("", "secrets"): {"create", "update"},
    ("", "serviceaccounts"): {"create", "update"},
}


def role_from_doc(doc: Path) -> dict:
    """The Role that the doc's `kubectl create role prodml-serve ...` command creates."""
    text = doc.read_text(encoding="utf-8").replace("\\\n", " ")
    [command] = [line for line in text.splitlines() if "create role prodml-serve" in line]
    args = shlex.split(command)
    verbs = next(a.split("=", 1)[1] for a in args if a.startswith("--verb=")).split(",")
    resources = next(a.split("=", 1)[1] for a in args if a.startswith("--resource=")).split(",")
    rules = []
    for resource in resources:
        name, _, group = resource.partition(".")
        rules.append({"apiGroups": [group], "resources": [name], "verbs": verbs})
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "prodml-serve", "namespace": "kubeflow"},
        "rules": rules,
    }


@pytest.mark.parametrize("doc", ["kind.md", "aks.md"])
def test_the_documented_role_is_valid_and_covers_what_the_serve_step_does(doc: str) -> None:
    role = role_from_doc(REPO / "docs" / doc)
    assert cluster_check.check_objects([role]) == []
    granted = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    for key, verbs in SERVE_STEP_NEEDS.items():
        assert verbs <= granted.get(key, set()), f"{doc}: {key} lacks {verbs - granted.get(key, set())}"
    text = (REPO / "docs" / doc).read_text(encoding="utf-8")
    assert re.search(
        r"create rolebinding prodml-serve --role=prodml-serve\s+\\?\s*"
        r"--serviceaccount=kubeflow:pipeline-runner",
        text,
    )


def test_objects_of_api_groups_are_checked_by_their_own_schema() -> None:
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "b"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}],
    }
    assert cluster_check.check_objects([binding]) == []
    binding["roleRef"]["nme"] = binding["roleRef"].pop("name")
    [problem] = cluster_check.check_objects([binding])
    assert "roleRef" in problem.path or "roleRef" in problem.message


def test_an_unknown_custom_resource_is_named_with_the_known_ones() -> None:
    [problem] = cluster_check.check_objects(
        [{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}]
    )
    assert (
        "example.com/v1 Widget" in problem.message
        and "InferenceService (serving.kserve.io/v1beta1)" in problem.message
    )
