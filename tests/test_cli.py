"""The CLI's contract: exit codes, output, no tracebacks, and a fast start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
HEAVY = ("tensorflow", "keras", "feast", "kfp", "kserve", "boto3", "botocore", "azure", "torch")


def prodml(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prodml", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def heavy_modules_after(argv: list[str]) -> list[str]:
    """Run prodml's main in a fresh interpreter and list heavy SDKs it imported."""
    code = (
        "import sys, json\n"
        "from prodml.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_imports_no_heavy_sdk() -> None:
    assert heavy_modules_after(["--help"]) == []


def test_validate_and_plugins_import_no_heavy_sdk() -> None:
    assert heavy_modules_after(["plugins"]) == []
    assert heavy_modules_after(["validate", "-c", "config/local.yaml"]) == []


def test_version() -> None:
    from prodml import __version__

    out = prodml("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"prodml {__version__}"


def test_validate_ok_prints_summary_with_secrets_masked(tmp_path: Path) -> None:
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"
    (tmp_path / "data.csv").write_text("x,y\n1,2\n")  # the pre-flight checks that it exists
    (tmp_path / "c.yaml").write_text(
        "project: demo\n"
        "source: {type: csv, path: data.csv, label: y}\n"
        "store: {type: s3, bucket: models, access_key_id: AKIDEXAMPLE,\n"
        '  secret_access_key: "${env:T_SECRET}"}\n'
        "stages: [fetch]\n"
    )
    out = prodml("validate", "-c", str(tmp_path / "c.yaml"), env={"T_SECRET": secret})
    assert out.returncode == 0, out.stderr
    assert "valid" in out.stdout.splitlines()[0]
    assert "source   csv" in out.stdout
    assert str(tmp_path / "data.csv") in out.stdout
    assert secret not in out.stdout + out.stderr
    assert "**********" in out.stdout


def test_validate_bad_config_exit_2_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "project: demo\nsource: {type: cvs, path: d.csv, label: y}\nstages: [fetch]\n"
    )
    out = prodml("validate", "-c", str(tmp_path / "c.yaml"))
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.startswith("error: source type 'cvs' is not installed")
    assert "did you mean 'csv'?" in out.stderr
    assert "Traceback" not in out.stderr


def test_validate_missing_file_exit_2() -> None:
    out = prodml("validate", "-c", "nope/none.yaml")
    assert out.returncode == 2
    assert "config file not found (nope/none.yaml)" in out.stderr


def test_plugins_lists_every_role_with_its_distribution() -> None:
    out = prodml("plugins")
    assert out.returncode == 0, out.stderr
    roles = [line.rstrip(":") for line in out.stdout.splitlines() if not line.startswith(" ")]
    # the roles, then the commands plugins add (the kserve plugin's serve, predict, k8s)
    assert roles == ["source", "trainer", "store", "server", "runner", "commands"]
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("  ")]
    assert rows[0][:2] == ["csv", "prodml"]
    assert ["serve", "prodml"] in [row[:2] for row in rows]


def test_no_command_prints_help() -> None:
    out = prodml()
    assert out.returncode == 0
    assert "validate" in out.stdout and "compile" in out.stdout


@pytest.mark.parametrize("command", ["run", "compile", "serve", "predict", "models", "k8s", "init"])
def test_every_command_has_help(command: str) -> None:
    out = prodml(command, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: prodml" in out.stdout


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    # `prodml plugins | head -0`: the pipe is closed before prodml writes
    read_end, write_end = os.pipe()
    os.close(read_end)
    out = subprocess.run(
        [sys.executable, "-m", "prodml", "plugins"],
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    os.close(write_end)
    assert out.returncode == 141
    assert out.stderr == ""


def test_validate_offline_imports_no_heavy_sdk() -> None:
    # the pre-flight reads files and binds a port; it imports no SDK for that
    assert heavy_modules_after(["validate", "--offline", "-c", "config/feast.yaml"]) == []
    assert heavy_modules_after(["validate", "--offline", "-c", "config/azure.yaml"]) == []


HELD = (
    "import sys\n"
    "from prodml.core.logs import configure_console, hold_output\n"
    "import logging, warnings\n"
    "configure_console(int(sys.argv[1]))\n"
    "logging.getLogger('prodml.x').warning('ours')\n"
    "logging.getLogger('kfp.local').warning('theirs')\n"
    "warnings.warn('a library deprecation', DeprecationWarning, stacklevel=1)\n"
    "with hold_output('the step'):\n"
    "    print('\\x1b[1mstep noise\\x1b[0m')\n"
    "    if sys.argv[2] == 'fail':\n"
    "        raise SystemExit(3)\n"
    "print('our line')\n"
)


@pytest.mark.parametrize("verbosity", [0, 1])
def test_a_normal_run_shows_our_lines_and_v_shows_the_rest(verbosity: int) -> None:
    out = subprocess.run(
        [sys.executable, "-c", HELD, str(verbosity), "ok"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    if verbosity == 0:
        assert out.stdout == "our line\n"
        assert out.stderr == "WARNING prodml.x: ours\n"
    else:
        assert "step noise" in out.stdout and "our line" in out.stdout
        assert "WARNING kfp.local: theirs" in out.stderr and "a library deprecation" in out.stderr


def test_held_output_is_shown_when_the_block_fails() -> None:
    out = subprocess.run([sys.executable, "-c", HELD, "0", "fail"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 3
    assert out.stdout == ""
    assert "--- output of the step (shown because it failed) ---\nstep noise" in out.stderr
    assert "\x1b[" not in out.stderr  # colour codes removed


def test_packaging_metadata_is_current() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    # an SPDX string, not the table setuptools warns about three times per install
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"][0]


def test_a_warning_after_an_sdk_resets_the_filters_stays_off_the_console() -> None:
    code = (
        "import warnings\n"
        "from prodml.core.logs import configure_console\n"
        "configure_console(0)\n"
        "warnings.resetwarnings()\n"  # what an SDK may do on import
        "warnings.simplefilter('default')\n"
        "warnings.warn('late library deprecation', DeprecationWarning, stacklevel=1)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stderr == ""


def test_the_command_leaves_quickly_with_its_status_and_all_its_output(tmp_path: Path) -> None:
    """After TensorFlow was imported, `prodml` skips the interpreter's teardown (most of a
    second) but still exits with the command's status, every line written."""
    code = (
        "import sys, tensorflow; from prodml.cli import entry; "
        "sys.argv = ['prodml', *sys.argv[1:]]; raise SystemExit(entry())"
    )
    cases = [
        (["plugins"], 0, "stdout", "csv"),
        (["validate", "-c", str(tmp_path / "missing.yaml")], 2, "stderr", "config file not found"),
        (["no-such-command"], 2, "stderr", "invalid choice"),
    ]
    for argv, status, stream, text in cases:
        command = [sys.executable, "-c", code, *argv]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == status, (argv, done.stderr[-500:])
        assert text in getattr(done, stream), (argv, getattr(done, stream)[-500:])


#: what native code writes to fd 2, one os.write each (a multi-line record is one write)
NATIVE_WRITES = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796082471.954320    4642 port.cc:153] oneDNN custom operations are on.\n",
    b"I0000 00:00:1796083260.035470   18245 cpu_feature_guard.cc:227] This TensorFlow binary is"
    b" optimized.\nTo enable the following instructions: AVX2 FMA, rebuild TensorFlow.\n",
    b"W0000 00:00:1796083260.1   18245 x.cc:1] a native warning\n",
    b"2026-11-30 12:00:00.000001: I tensorflow/core/y.cc:42] tf info\n",
    b"E0000 00:00:1796083260.2   18245 z.cc:9] a native error\n",
    b"a plain line",
    b" in two writes\n",
    b"an unfinished line",
]
NATIVE = (
    "import os, sys\n"
    "from prodml.core.logs import native_log_filtered\n"
    "with native_log_filtered(int(sys.argv[1])):\n"
    f"    for data in {NATIVE_WRITES[:-3]!r}:\n"
    "        os.write(2, data)\n"
    "    sys.stderr.write('a python line\\n')\n"
    f"    for data in {NATIVE_WRITES[-3:]!r}:\n"
    "        os.write(2, data)\n"
    "sys.stderr.write('after the block\\n')\n"
)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_native_log_lines_below_the_level_are_dropped_and_every_other_line_kept(level: int) -> None:
    """TensorFlow >= 2.19 logs through absl on import, before it reads TF_CPP_MIN_LOG_LEVEL
    (on a CPU with oneDNN, two INFO lines and absl's preamble, twice): the filter applies the
    level to those records, and passes everything else as written."""
    out = subprocess.run([sys.executable, "-c", NATIVE, str(level)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    others = ["a python line", "a plain line in two writes", "an unfinished lineafter the block"]
    assert lines[-3:] == others
    native = lines[:-3]
    if level == 0:
        assert len(native) == 7 and native[0].startswith("WARNING: All log messages before absl")
    else:
        assert not any("absl::InitializeLog" in line or "To enable the following" in line for line in native)
        kept = {1: ["a native warning", "a native error"], 2: ["a native error"], 3: []}[level]
        assert [line.rsplit("] ", 1)[1] for line in native] == kept


def test_importing_tensorflow_the_trainers_way_prints_nothing() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from prodml.plugins.trainers import _tf; print(_tf.tf.__version__)"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
