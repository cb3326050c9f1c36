"""The shipped conformance suites catch real mistakes.

tests/conformance_fixtures holds a versioned-directory store and a JSON Lines source written
as a third-party plugin would (importing only prodml.plugin), and broken copies of them that
each make one mistake. The suites run against all of them in one separate pytest; each test
here checks that a suite test passes for the correct backend and fails for the broken one,
for the reason the mistake causes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

HERE = Path(__file__).parent
FIXTURES = HERE / "conformance_fixtures"
REPO = HERE.parent


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """{"TestClass::test_name[param]": (outcome, failure text)} of one run of suite_cases.py."""
    work = tmp_path_factory.mktemp("suites")
    (work / "pytest.ini").write_text("[pytest]\n")  # not prodml's own options or conftest
    report = work / "report.xml"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(FIXTURES), str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(work / "pytest.ini"),
            "--rootdir",
            str(work),
            "-p",
            "no:cacheprovider",
            "-q",
            f"--junitxml={report}",
            str(FIXTURES / "suite_cases.py"),
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    )
    assert report.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    found: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        key = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if failure is not None:
            found[key] = ("failed", f"{failure.get('message', '')}\n{failure.text or ''}")
        elif case.find("skipped") is not None:
            found[key] = ("skipped", "")
        else:
            found[key] = ("passed", "")
    return found


def outcome(outcomes: dict[str, tuple[str, str]], key: str) -> tuple[str, str]:
    assert key in outcomes, f"{key} did not run; ran: {sorted(outcomes)[:20]} ..."
    return outcomes[key]


def assert_caught(outcomes, good: str, broken: str, test: str, reason: str) -> None:
    """``test`` passes for the ``good`` class and fails for ``broken``, with ``reason`` in the failure."""
    assert outcome(outcomes, f"{good}::{test}") == ("passed", ""), outcome(outcomes, f"{good}::{test}")[1]
    status, text = outcome(outcomes, f"{broken}::{test}")
    assert status == "failed", f"the suite let {broken} pass {test}"
    assert reason in text, text[-2000:]


def test_the_correct_fixtures_pass_every_check(outcomes) -> None:
    mine = {k: v for k, v in outcomes.items() if k.split("::")[0] in ("TestDir", "TestLines")}
    assert len(mine) > 30
    failed = {k: v[1][-500:] for k, v in mine.items() if v[0] != "passed"}
    assert not failed, failed


def test_config_class_without_its_own_docstring(outcomes) -> None:
    # NoDocStoreConfig subclasses a documented class, so inspect.getdoc would find a docstring
    assert_caught(
        outcomes, "TestDir", "TestDirNoDoc", "test_config_class_documents_itself", "needs its own docstring"
    )


def test_pull_without_a_traversal_check(outcomes) -> None:
    assert_caught(
        outcomes,
        "TestDir",
        "TestDirTraversal",
        "test_names_escaping_the_destination_are_refused[../../outside.txt]",
        "outside.txt",  # the file it wrote outside the destination
    )


def test_push_without_verifying_the_bundle(outcomes) -> None:
    for change in ("same-size content", "unlisted file", "missing file"):
        assert_caught(
            outcomes,
            "TestDir",
            "TestDirUnverified",
            f"test_a_modified_local_bundle_is_not_pushed[{change}]",
            "DID NOT RAISE",
        )


@pytest.mark.parametrize("problem", ["missing", "text"])
def test_missing_or_text_values_in_a_sources_frame(outcomes, problem: str) -> None:
    assert_caught(
        outcomes,
        "TestLines",
        "TestLinesUnchecked",
        f"test_missing_and_text_values_are_refused[{problem}]",
        "DID NOT RAISE",
    )


def test_created_at_taken_from_mtime(outcomes) -> None:
    assert_caught(
        outcomes, "TestDir", "TestDirMtime", "test_versions_newest_first_with_latest_marked", "created_at"
    )


def test_a_repush_that_always_makes_a_new_version(outcomes) -> None:
    # pushed again seconds later, identical content must come back as the stored version
    assert_caught(
        outcomes,
        "TestDir",
        "TestDirAlwaysNew",
        "test_an_identical_bundle_pushed_later_returns_the_stored_version",
        "assert",
    )


def test_the_store_suite_does_not_care_how_helpers_are_imported(outcomes) -> None:
    # dirstore.py does `from prodml.plugin import new_version_id`; the suite used to replace
    # the module attribute, so pinning the clock missed such stores
    source = (FIXTURES / "dirstore.py").read_text(encoding="utf-8")
    assert "    new_version_id,\n" in source and "bundle_mod" not in source
    for test in (
        "test_new_versions_are_named_by_new_version_id",
        "test_an_existing_version_is_never_overwritten",
        "test_versions_newest_first_with_latest_marked",
        "test_pushing_identical_content_twice_is_idempotent",
    ):
        assert outcome(outcomes, f"TestDir::{test}") == ("passed", ""), test
