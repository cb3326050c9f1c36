"""The plugin registry with a real third-party package installed from tests/plugin_pkg."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import ConfigDict

from prodml import hookimpl
from prodml.core.config import PluginConfig, load_config_dict
from prodml.core.errors import ConfigError, MissingDependencyError, PluginError
from prodml.core.interfaces import DataSource, ModelStore
from prodml.core.plugins import AUTOLOAD_ENV, BUILTIN_PLUGINS, Backend, Command, Registry

HERE = Path(__file__).parent
REPO = HERE.parent


@pytest.fixture(scope="module")
def hello_site(pip_site) -> Path:
    """prodml-hello installed for real into a site folder."""
    site = pip_site(HERE / "plugin_pkg")
    assert list(site.glob("prodml_hello-*.dist-info"))
    return site


def run_prodml(
    args: list[str], site: Path | None, env_extra: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != AUTOLOAD_ENV}
    if site:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "prodml", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def test_builtins_are_registered_through_the_prodml_entry_point_group() -> None:
    import tomllib

    # pyproject.toml, not the installed metadata: an editable install made before a built-in
    # was added still lists the old set (harmless: built-ins are registered from the tuple)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["entry-points"]["prodml"] == dict(BUILTIN_PLUGINS)


def test_builtin_roles_listed() -> None:
    registry = Registry(autoload=False)
    assert {"csv", "feast"} <= set(registry.types("source"))
    assert {"local", "s3", "azure_blob"} <= set(registry.types("store"))
    assert "keras" in registry.types("trainer")
    assert "kserve" in registry.types("server")
    assert {"local", "kfp-local", "kfp"} <= set(registry.types("runner"))
    assert all(b.distribution == "prodml" for b in registry)


def test_installed_plugin_is_listed_and_selected_by_config(hello_site: Path, tmp_path: Path) -> None:
    listing = run_prodml(["plugins"], hello_site)
    assert listing.returncode == 0, listing.stderr
    hello = [line for line in listing.stdout.splitlines() if line.strip().startswith("hello")]
    assert hello and "prodml-hello" in hello[0]

    (tmp_path / "p.yaml").write_text("project: demo\nsource: {type: hello, rows: 5}\nstages: [fetch]\n")
    ok = run_prodml(["validate", "-c", str(tmp_path / "p.yaml")], hello_site)
    assert ok.returncode == 0, ok.stderr
    assert "source   hello" in ok.stdout

    frame = subprocess.run(
        [
            sys.executable,
            "-c",
            "from prodml.core.config import load_config; from prodml.core.plugins import default_registry;"
            f"c = load_config({str(tmp_path / 'p.yaml')!r});"
            "print(len(default_registry().create('source', c.source).training_frame()))",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(hello_site), AUTOLOAD_ENV: ""},
    )
    assert frame.stdout.strip() == "5", frame.stderr


def test_autoload_off_really_disables_entry_points(hello_site: Path, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("project: demo\nsource: {type: hello}\nstages: [fetch]\n")
    off = run_prodml(["validate", "-c", str(tmp_path / "p.yaml")], hello_site, {AUTOLOAD_ENV: "1"})
    assert off.returncode == 2
    assert "source type 'hello' is not installed; installed: csv, feast" in off.stderr
    assert "Traceback" not in off.stderr
    listing = run_prodml(["plugins"], hello_site, {AUTOLOAD_ENV: "1"})
    assert "hello" not in listing.stdout
    assert "csv" in listing.stdout


class _Csv2Config(PluginConfig):
    """A second 'csv' (test plugin)."""

    type: Literal["csv"]


class _Dup:
    @hookimpl
    def prodml_backends(self):
        return [Backend("source", "csv", _Csv2Config, DataSource)]


def test_duplicate_type_names_both_providers() -> None:
    with pytest.raises(PluginError) as info:
        Registry(autoload=False, plugins={"my-dup": _Dup()}).types("source")
    message = str(info.value)
    assert "source type 'csv' is provided twice" in message
    assert "prodml (csv)" in message and "my-dup" in message


class _LooseConfig(PluginConfig):
    """Allows anything (wrong)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["loose"]


class _Loose:
    @hookimpl
    def prodml_backends(self):
        return [Backend("source", "loose", _LooseConfig, DataSource)]


def test_plugin_config_must_forbid_extra_keys() -> None:
    with pytest.raises(
        PluginError, match="must declare `type: Literal\\['loose'\\]` and model_config extra='forbid'"
    ):
        Registry(autoload=False, builtins=False, plugins={"loose": _Loose()}).types("source")


class _NeedsConfig(PluginConfig):
    """Needs a package that is not installed."""

    type: Literal["needy"]


class _NeedsStore(ModelStore):  # abstract on purpose: never built
    pass


class _Needy:
    @hookimpl
    def prodml_backends(self):
        return [
            Backend(
                "store",
                "needy",
                _NeedsConfig,
                _NeedsStore,
                requires=("prodml_surely_missing_sdk",),
                extra="needy",
            )
        ]


def test_missing_optional_dependency_of_an_unpackaged_plugin_names_the_module(tmp_path: Path) -> None:
    registry = Registry(autoload=False, builtins=False, plugins={"needy": _Needy()})
    config = _NeedsConfig(type="needy")
    with pytest.raises(MissingDependencyError) as info:
        registry.create("store", config)
    assert "store type 'needy' needs the Python package 'prodml_surely_missing_sdk'" in str(info.value)
    # registered as an object, not installed: there is no distribution whose extra to name
    assert info.value.hint == "pip install prodml_surely_missing_sdk"


def test_missing_dependency_of_a_builtin_names_prodmls_extra() -> None:
    from prodml.core.plugins import InstalledBackend

    backend = Backend("store", "s3", _NeedsConfig, _NeedsStore, requires=("prodml_no_boto",), extra="s3")
    error = InstalledBackend(backend, "s3", "prodml", "prodml").missing_dependency()
    assert error is not None and error.hint == "pip install 'prodml[s3]'"
    assert str(error).startswith("store type 's3' needs the Python package 'prodml_no_boto'")


def test_unknown_role_type_lists_choices_from_this_registry(tmp_path: Path) -> None:
    registry = Registry(autoload=False, builtins=False, plugins={"needy": _Needy()})
    with pytest.raises(
        ConfigError, match="store type 'ned' is not installed; installed: needy — did you mean 'needy'"
    ):
        load_config_dict(
            {"project": "x", "store": {"type": "ned"}, "stages": ["export"]},
            base_dir=tmp_path,
            registry=registry,
        )


# -- hooks that cannot work are refused, naming the plugin ----------------------------------------


class _Misspelled:
    @hookimpl
    def prodml_backend(self):  # the hook is prodml_backends
        return []


def test_misspelled_hook_is_an_error_naming_the_plugin() -> None:
    with pytest.raises(PluginError) as info:
        Registry(autoload=False, builtins=False, plugins={"typo-plugin": _Misspelled()})
    message = str(info.value)
    assert "plugin 'typo-plugin' implements unknown hook 'prodml_backend'" in message
    assert "did you mean 'prodml_backends'?" in message
    assert AUTOLOAD_ENV in message  # the way out for a user who did not write the plugin


class _Undecorated:
    def prodml_backends(self):  # forgot @hookimpl: pluggy would ignore it
        return [Backend("store", "needy", _NeedsConfig, _NeedsStore)]


def test_hook_without_hookimpl_is_an_error() -> None:
    with pytest.raises(PluginError, match="plugin 'bare' defines prodml_backends without @hookimpl"):
        Registry(autoload=False, builtins=False, plugins={"bare": _Undecorated()})


# -- commands added by plugins ---------------------------------------------------------------------


class _Commands:
    def __init__(self, *names: str) -> None:
        self.names = names

    @hookimpl
    def prodml_commands(self):
        return [Command(n, f"the {n} command", handler="prodml_surely_missing_mod:run") for n in self.names]


def test_commands_are_collected_without_importing_their_handlers() -> None:
    registry = Registry(autoload=False, builtins=False, plugins={"cmds": _Commands("hello")})
    installed = registry.commands()
    assert list(installed) == ["hello"]
    assert installed["hello"].distribution == "plugin 'cmds'"
    with pytest.raises(PluginError, match=r"command 'hello' of plugin 'cmds'.*prodml_surely_missing_mod:run"):
        installed["hello"].load()


def test_one_command_from_two_plugins_names_both() -> None:
    registry = Registry(
        autoload=False, builtins=False, plugins={"one": _Commands("hello"), "two": _Commands("hello")}
    )
    with pytest.raises(
        PluginError, match=r"command 'hello' is provided twice: by plugin 'one'.*plugin 'two'"
    ):
        registry.commands()


def test_builtin_serve_predict_k8s_come_from_the_kserve_plugin_hook() -> None:
    from prodml import cli

    assert not {"serve", "predict", "k8s"} & set(cli.COMMANDS)
    installed = Registry(autoload=False).commands()
    assert {"serve", "predict", "k8s"} <= set(installed)
    providers = {c.plugin_name for n, c in installed.items() if n in ("serve", "predict", "k8s")}
    assert providers == {"kserve-commands"}


def test_plugin_command_named_like_a_core_one_is_refused(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from prodml import cli
    from prodml.core import plugins

    monkeypatch.setattr(
        plugins, "_default", Registry(autoload=False, builtins=False, plugins={"clash": _Commands("run")})
    )
    with pytest.raises(SystemExit) as helped:  # the help of every other command still works
        cli.main(["--help"])
    assert helped.value.code == 0
    assert "warning: plugin commands are not listed" in capsys.readouterr().err
    with pytest.raises(PluginError, match=r"plugin 'clash' .* adds command 'run', which is one of prodml's"):
        cli.plugin_commands(["hello"])


def test_help_imports_no_backend_module_and_no_pydantic() -> None:
    # nor urllib.request's http.client, ssl and email: together they cost more than the rest
    code = (
        "import sys\n"
        "from prodml.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'http', 'ssl', 'email')\n"
        "                or m.startswith(('prodml.plugins.stores', 'prodml.plugins.sources',\n"
        "                                 'prodml.plugins.trainers', 'prodml.plugins.servers.kserve',\n"
        "                                 'prodml.core.interfaces', 'prodml.core.config')))\n"
        "print('LOADED', loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "    serve " in done.stdout and "    k8s " in done.stdout
    assert done.stdout.splitlines()[-1] == "LOADED []"


# -- prodml plugins: columns stay aligned ----------------------------------------------------------


class _LongConfig(PluginConfig):
    """A backend with a long type name (test plugin)."""

    type: Literal["a-really-quite-long-store-type-name"]


class _Long:
    @hookimpl
    def prodml_backends(self):
        return [
            Backend(
                "store", "a-really-quite-long-store-type-name", _LongConfig, _NeedsStore, description="long"
            )
        ]


def test_plugins_listing_keeps_columns_aligned(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from prodml import cli
    from prodml.core import plugins

    registry = Registry(autoload=False, plugins={"a-plugin-with-a-long-distribution-name": _Long()})
    monkeypatch.setattr(plugins, "_default", registry)
    assert cli.main(["plugins"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    long_row = next(r for r in rows if "a-really-quite-long-store-type-name" in r)
    dist_col = long_row.index("plugin 'a-plugin-with-a-long-distribution-name'")
    desc_col = long_row.index("long", dist_col + len("plugin 'a-plugin-with-a-long-distribution-name'"))
    csv_row = next(r for r in rows if r.split()[0] == "csv")
    assert csv_row.index("prodml") == dist_col
    assert csv_row.index("local CSV file") == desc_col
    for row in rows:  # every row's second and third column start at the same place
        assert row[dist_col - 2 : dist_col] == "  " and row[dist_col] != " "
        assert row[desc_col - 2 : desc_col] == "  " and row[desc_col] != " "


# -- a real distribution with a broken entry point, a command, a missing dependency ----------------

NEEDS_PYPROJECT = """
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "prodml-needs"
version = "0.1.0"
dependencies = ["prodml"]

[project.optional-dependencies]
fast = ["prodml-needs-missing-sdk"]

[project.entry-points.prodml]
broken = "prodml_needs.broken"
needy = "prodml_needs.plugin"

[tool.setuptools.packages.find]
where = ["src"]
"""

NEEDS_PLUGIN = '''
from typing import Literal

from prodml.plugin import Backend, Command, ModelStore, PluginConfig, hookimpl


class NeedyStoreConfig(PluginConfig):
    """A store needing an SDK that is not installed."""

    type: Literal["needy"]


class NeedyStore(ModelStore):
    """Never built: its SDK is missing."""


@hookimpl
def prodml_backends():
    return [Backend("store", "needy", NeedyStoreConfig, NeedyStore,
                    requires=("prodml_needs_missing_sdk",), extra="fast")]


@hookimpl
def prodml_commands():
    return [Command("needs-hello", "print a greeting (test plugin)", handler="prodml_needs.cli:hello",
                    arguments=lambda p: p.add_argument("--name", default="world"), config=False)]
'''

NEEDS_CLI = """
def hello(args):
    print(f"hello {args.name}")
    return 0
"""


@pytest.fixture(scope="module")
def needs_site(pip_site, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """prodml-needs installed for real: one broken entry point, one store, one command."""
    pkg = tmp_path_factory.mktemp("prodml-needs")
    (pkg / "pyproject.toml").write_text(NEEDS_PYPROJECT)
    src = pkg / "src" / "prodml_needs"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "plugin.py").write_text(NEEDS_PLUGIN)
    (src / "cli.py").write_text(NEEDS_CLI)
    (src / "broken.py").write_text("import prodml_needs_sdk_that_is_not_there  # noqa: F401\n")
    return pip_site(pkg)


def test_a_broken_entry_point_is_named_and_hides_nothing(needs_site: Path, tmp_path: Path) -> None:
    listing = run_prodml(["plugins"], needs_site)
    assert listing.returncode == 1, listing.stderr  # listed, and reported by the exit status
    assert "csv" in listing.stdout and "kserve" in listing.stdout  # built-ins still there
    assert "entry point 'broken' = 'prodml_needs.broken' of distribution prodml-needs failed to import" in (
        listing.stdout
    )
    assert "ModuleNotFoundError: No module named 'prodml_needs_sdk_that_is_not_there'" in listing.stdout
    needy = next(line for line in listing.stdout.splitlines() if line.strip().startswith("needy"))
    assert "prodml-needs" in needy

    (tmp_path / "p.yaml").write_text("project: demo\nsource: {type: brokensrc}\nstages: [fetch]\n")
    bad = run_prodml(["validate", "-c", str(tmp_path / "p.yaml")], needs_site)
    assert bad.returncode == 2
    assert "source type 'brokensrc' is not installed; installed: csv, feast" in bad.stderr
    assert "searched the 'prodml' plugins of: prodml, prodml-needs" in bad.stderr
    assert "entry point 'broken' = 'prodml_needs.broken' of distribution prodml-needs" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_missing_dependency_hint_names_the_providing_distribution(needs_site: Path, tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("project: demo\nstore: {type: needy}\nstages: [export]\n")
    out = run_prodml(["validate", "-c", str(tmp_path / "p.yaml")], needs_site)
    assert out.returncode == 2
    fix = "pip install 'prodml-needs[fast]'"
    assert f"store type 'needy' needs 'prodml_needs_missing_sdk': {fix}" in out.stderr
    listing = run_prodml(["plugins"], needs_site)
    assert "[missing prodml_needs_missing_sdk: pip install 'prodml-needs[fast]']" in listing.stdout


def test_an_installed_plugins_command_runs_and_is_listed(needs_site: Path) -> None:
    helped = run_prodml(["--help"], needs_site)
    assert helped.returncode == 0, helped.stderr
    assert "needs-hello" in helped.stdout and "print a greeting (test plugin)" in helped.stdout
    ran = run_prodml(["needs-hello", "--name", "prodml"], needs_site)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "hello prodml"
    off = run_prodml(["needs-hello"], needs_site, {AUTOLOAD_ENV: "1"})
    assert off.returncode == 2 and "invalid choice: 'needs-hello'" in off.stderr


def test_entry_points_are_found_as_importlib_metadata_finds_them(
    needs_site: Path, hello_site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.metadata import distributions

    from prodml.core.plugins import prodml_entry_points

    # prodml reads the metadata folders itself (importing importlib.metadata would slow
    # `prodml --help` down); it must find what importlib.metadata finds, in path order
    monkeypatch.syspath_prepend(str(hello_site))
    monkeypatch.syspath_prepend(str(needs_site))
    expected = [
        (dist.metadata["name"], ep.name, ep.value)
        for dist in distributions()
        for ep in dist.entry_points
        if ep.group == "prodml"
    ]
    found = prodml_entry_points()
    assert sorted(found) == sorted(expected)
    assert ("prodml-needs", "broken", "prodml_needs.broken") in found
    assert ("prodml-hello", "hello", "prodml_hello.plugin") in found
    # in sys.path order, as imports look: the first folder on the path comes first
    assert [d for d, *_ in found].index("prodml-needs") < [d for d, *_ in found].index("prodml-hello")
