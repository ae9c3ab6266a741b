"""End to end with real distributions pip-installed into a temporary virtualenv.

Fixture plugins (tests/fixture_dists): one that raises on import, one that works, two that register
the same method name, one that implements a hook this version does not know.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from pml_anchors.testing import make_plugin_env

FIXTURES = Path(__file__).parent / "fixture_dists"
ALL = ["broken", "good", "dup-a", "dup-b", "future"]


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory):
    env_dir = tmp_path_factory.mktemp("plugin-env")
    return make_plugin_env(env_dir, *[FIXTURES / f"pml-anchors-fixture-{n}" for n in ALL])


def run(python, code, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PML_ANCHORS_")}
    clean.update(env)
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=clean, timeout=300)
    return out


def cli(python, *args, **env):
    return run(python, f"import sys; from pml_anchors.cli import main; sys.exit(main({list(args)!r}))", **env)


def report(python, **env):
    out = cli(python, "plugins", "--all", "--json", **env)
    assert out.returncode == 0, out.stderr
    return {r["name"]: r for r in json.loads(out.stdout)}


def test_plugins_report_each_status(plugin_python):
    plugins = report(plugin_python)
    broken = plugins["pml-anchors-fixture-broken"]
    assert broken["status"] == "failed" and broken["version"] == "0.3.1"
    assert "ImportError" in broken["error"] and "broken on purpose" in broken["error"]
    assert plugins["pml-anchors-fixture-good"]["status"] == "ok"
    assert plugins["pml-anchors-fixture-good"]["methods"] == ["fixture_proxy_anchor"]
    assert plugins["pml-anchors-fixture-good"]["initializers"] == ["corners"]
    assert plugins["pml-anchors-fixture-good"]["hooks"] == ["register_initializers", "register_methods"]
    assert plugins["pml-anchors-fixture-future"]["status"] == "incompatible"
    assert "register_schedulers" in plugins["pml-anchors-fixture-future"]["error"]
    assert plugins["pml-anchors-fixture-dup-a"]["methods"] == ["shared_name"]
    assert plugins["pml-anchors-fixture-dup-b"]["methods"] == ["shared_name"]
    assert plugins["pml-anchors"]["status"] == "ok" and "simplex" in plugins["pml-anchors"]["initializers"]


def test_broken_plugin_warns_with_name_and_version_and_others_work(plugin_python):
    code = (
        "import warnings, pml_anchors\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    loss = pml_anchors.get_loss('fixture_pa', num_classes=5, embedding_size=8)\n"
        "print(type(loss).__name__)\n"
        "print([str(x.message) for x in w if issubclass(x.category, pml_anchors.PluginLoadWarning)])\n"
    )
    out = run(plugin_python, code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "ProxyAnchorLoss"
    assert "pml-anchors-fixture-broken 0.3.1" in lines[1]


def test_unknown_method_error_names_the_failed_plugin(plugin_python):
    code = (
        "import warnings, pml_anchors\nwarnings.simplefilter('ignore')\n"
        "try:\n    pml_anchors.get_loss('broken_method', 3, 4)\n"
        "except pml_anchors.UnknownMethodError as e:\n    print(e)\n"
    )
    out = run(plugin_python, code)
    assert "unknown method 'broken_method'" in out.stdout
    assert "pml-anchors-fixture-broken 0.3.1 failed to load" in out.stdout
    assert "broken on purpose" in out.stdout


def test_duplicate_method_short_name_is_ambiguous_qualified_names_resolve(plugin_python):
    code = (
        "import warnings, pml_anchors\nwarnings.simplefilter('ignore')\n"
        "try:\n    pml_anchors.get_method('shared_name')\n"
        "except pml_anchors.DuplicateMethodError as e:\n    print('ERR', e)\n"
        "print(type(pml_anchors.get_loss('pml-anchors-fixture-dup-a:shared_name', 3, 4)).__name__)\n"
        "print(type(pml_anchors.get_loss('pml-anchors-fixture-dup-b:shared_name', 3, 4)).__name__)\n"
    )
    out = run(plugin_python, code)
    assert out.returncode == 0, out.stderr
    err, a, b = out.stdout.splitlines()
    assert "pml-anchors-fixture-dup-a 0.1.0" in err and "pml-anchors-fixture-dup-b 0.2.0" in err
    assert (a, b) == ("ProxyAnchorLoss", "NormalizedSoftmaxLoss")


def test_load_plugins_allowlist(plugin_python):
    plugins = report(plugin_python, PML_ANCHORS_LOAD_PLUGINS="pml-anchors-fixture-good")
    assert plugins["pml-anchors-fixture-good"]["status"] == "ok"
    assert plugins["pml-anchors-fixture-broken"]["status"] == "skipped"
    assert plugins["pml-anchors-fixture-dup-a"]["status"] == "skipped"
    out = run(
        plugin_python,
        "import pml_anchors; print(pml_anchors.get_method('shared_name'))",
        PML_ANCHORS_LOAD_PLUGINS="pml-anchors-fixture-good",
    )
    assert "is not loaded (not listed in PML_ANCHORS_LOAD_PLUGINS)" in out.stderr


def test_load_plugins_empty_loads_none(plugin_python):
    plugins = report(plugin_python, PML_ANCHORS_LOAD_PLUGINS="")
    statuses = {name: r["status"] for name, r in plugins.items() if name != "pml-anchors"}
    assert statuses and set(statuses.values()) == {"skipped"}
    assert plugins["pml-anchors"]["status"] == "ok"  # the core geometries stay
    out = run(plugin_python, "import pml_anchors; print(len(pml_anchors.list_methods()))", PML_ANCHORS_LOAD_PLUGINS="")
    assert out.stdout.strip() == "0"


def test_disable_plugins_blocklist(plugin_python):
    plugins = report(plugin_python, PML_ANCHORS_DISABLE_PLUGINS="pml-anchors-fixture-broken,pml_anchors_fixture_dup_b")
    assert plugins["pml-anchors-fixture-broken"]["status"] == "disabled"
    assert plugins["pml-anchors-fixture-dup-b"]["status"] == "disabled"
    out = run(
        plugin_python,
        "import warnings, pml_anchors\nwarnings.simplefilter('error', pml_anchors.PluginLoadWarning)\n"
        "print(pml_anchors.get_method('shared_name').plugin)",
        PML_ANCHORS_DISABLE_PLUGINS="pml-anchors-fixture-broken,pml-anchors-fixture-dup-b,pml-anchors-fixture-future",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pml-anchors-fixture-dup-a"


def test_strict_mode_raises(plugin_python):
    out = run(plugin_python, "import pml_anchors; pml_anchors.list_methods()", PML_ANCHORS_STRICT_PLUGINS="1")
    assert out.returncode != 0
    assert "PluginLoadError" in out.stderr and "pml-anchors-fixture-broken" in out.stderr


def test_plain_listing_hides_builtins_and_help_imports_no_plugin(plugin_python):
    out = cli(plugin_python, "plugins", "--json")
    names = {r["name"] for r in json.loads(out.stdout)}
    assert "pml-anchors" not in names and "pml-anchors-fixture-good" in names
    code = (
        "import sys\nfrom pml_anchors.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('pml_anchors_fixture') or m == 'torch'))\n"
    )
    out = run(plugin_python, code)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_import_is_lazy(plugin_python):
    code = (
        "import sys, pml_anchors\n"
        "print(sorted(m for m in sys.modules if m.startswith('pml_anchors_') or m in ('torch', 'pytorch_metric_learning')))\n"
    )
    out = run(plugin_python, code)
    assert out.stdout.strip() == "[]"
