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
    assert "not loaded (not listed in PML_ANCHORS_LOAD_PLUGINS)" in out.stderr


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


def run_json(python, code, **env):
    """Run ``code`` (which prints one JSON document last) in the plugin environment; return it parsed."""
    out = run(python, code, **env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_text_report_shows_each_status_error_and_conflict(plugin_python):
    out = cli(plugin_python, "plugins")
    assert out.returncode == 0, out.stderr
    blocks = {}  # plugin name -> its lines
    for line in out.stdout.splitlines():
        if not line.startswith(" "):
            name = line.split()[0]
            blocks[name] = [line]
        else:
            blocks[name].append(line.strip())
    assert blocks["pml-anchors-fixture-broken"][0] == "pml-anchors-fixture-broken 0.3.1  [failed]"
    assert any(
        line.startswith("error: ImportError: fixture plugin is broken on purpose")
        for line in blocks["pml-anchors-fixture-broken"]
    )
    assert blocks["pml-anchors-fixture-future"][0] == "pml-anchors-fixture-future 2.0.0  [incompatible]"
    assert "error: implements unknown hook(s) register_schedulers" in "\n".join(blocks["pml-anchors-fixture-future"])
    assert blocks["pml-anchors-fixture-good"][:3] == [
        "pml-anchors-fixture-good 1.0.0  [ok]",
        "methods: fixture_proxy_anchor",
        "initializers: corners",
    ]
    for mine, other in (("dup-a", "dup-b 0.2.0"), ("dup-b", "dup-a 0.1.0")):
        lines = blocks[f"pml-anchors-fixture-{mine}"]
        assert lines[0].endswith("[ok]") and "methods: shared_name" in lines
        assert (
            f"conflict: method 'shared_name' is also provided by pml-anchors-fixture-{other}; use the qualified "
            f"name 'pml-anchors-fixture-{mine}:shared_name'"
        ) in lines
    assert "pml-anchors-ncm" not in blocks  # built-ins only with --all


def test_json_report_of_incompatible_and_conflicting_plugins(plugin_python):
    plugins = report(plugin_python)
    future = plugins["pml-anchors-fixture-future"]
    assert future["methods"] == [] and future["hooks"] == ["register_methods", "register_schedulers"]
    assert future["version"] == "2.0.0" and "it was written for another pml-anchors version" in future["error"]
    assert plugins["pml-anchors-fixture-dup-a"]["conflicts"] == [
        "method 'shared_name' is also provided by pml-anchors-fixture-dup-b 0.2.0; use the qualified name "
        "'pml-anchors-fixture-dup-a:shared_name'"
    ]
    assert len(plugins["pml-anchors-fixture-dup-b"]["conflicts"]) == 1
    assert all(not r["conflicts"] for name, r in plugins.items() if "dup" not in name)
    assert all(
        r["status"] == "ok" for name, r in plugins.items() if name.startswith("pml-anchors-") and "fixture" not in name
    )


def test_get_loss_of_each_affected_method_explains_and_the_host_keeps_working(plugin_python):
    code = (
        "import json, warnings, torch, pml_anchors\nwarnings.simplefilter('ignore')\nout = {}\n"
        "for name in ['future_method', 'shared_name', 'broken_method']:\n"
        "    try:\n        pml_anchors.get_loss(name, 3, 4)\n"
        "    except Exception as e:\n        out[name] = [type(e).__name__, str(e)]\n"
        "loss = pml_anchors.get_loss('proxy_anchor', 3, 4)\n"  # a built-in method still works end to end
        "value = loss(torch.randn(6, 4, requires_grad=True), torch.arange(6) % 3)\n"
        "value.backward()\nout['proxy_anchor'] = bool(torch.isfinite(value))\n"
        "out['methods'] = sorted(s.name for s in pml_anchors.list_methods())\n"
        "print(json.dumps(out))\n"
    )
    out = run_json(plugin_python, code)
    kind, message = out["future_method"]
    assert kind == "UnknownMethodError" and "unknown method 'future_method'" in message
    assert "Plugin pml-anchors-fixture-future 2.0.0 is incompatible with this pml-anchors version" in message
    assert "register_schedulers" in message
    kind, message = out["shared_name"]
    assert kind == "DuplicateMethodError" and "'pml-anchors-fixture-dup-a:shared_name'" in message
    assert (
        out["broken_method"][0] == "UnknownMethodError"
        and "fixture-broken 0.3.1 failed to load" in out["broken_method"][1]
    )
    assert out["proxy_anchor"] is True
    assert {"cam", "c_ncm", "e_ncm", "fsc", "proxy_anchor", "reponet", "fixture_proxy_anchor", "shared_name"} <= set(
        out["methods"]
    )
    assert "future_method" not in out["methods"]


def test_env_vars_in_one_process(plugin_python):
    """Each variable is read again at every load (``pml_anchors.plugin.api.reset``), so one process tries them all."""
    scenarios = {
        "strict_all": {"PML_ANCHORS_STRICT_PLUGINS": "1"},
        "strict_incompatible": {
            "PML_ANCHORS_STRICT_PLUGINS": "1",
            "PML_ANCHORS_DISABLE_PLUGINS": "pml-anchors-fixture-broken,pml-anchors-fixture-dup-b",
        },
        "strict_duplicates": {
            "PML_ANCHORS_STRICT_PLUGINS": "yes",
            "PML_ANCHORS_DISABLE_PLUGINS": "pml-anchors-fixture-broken,pml-anchors-fixture-future",
        },
        "strict_clean": {
            "PML_ANCHORS_STRICT_PLUGINS": "1",
            "PML_ANCHORS_DISABLE_PLUGINS": "pml-anchors-fixture-broken,pml-anchors-fixture-future,PML_Anchors.Fixture_Dup_B",
        },
        "not_strict": {"PML_ANCHORS_STRICT_PLUGINS": "0"},
        "allow_by_underscored_name": {"PML_ANCHORS_LOAD_PLUGINS": "pml_anchors_fixture_good, pml-anchors-ncm"},
        "disable_good": {"PML_ANCHORS_DISABLE_PLUGINS": "pml-anchors-fixture-good"},
    }
    code = (
        "import io, json, os, sys, contextlib, warnings\nimport pml_anchors\nfrom pml_anchors.plugin import settings\n"
        "from pml_anchors.cli import main\nwarnings.simplefilter('ignore')\n"
        f"scenarios = {scenarios!r}\nout = {{}}\n"
        "for key, env in scenarios.items():\n"
        "    for var in (settings.ENV_LOAD, settings.ENV_DISABLE, settings.ENV_STRICT):\n"
        "        os.environ.pop(var, None)\n"
        "    os.environ.update(env)\n"
        "    pml_anchors.reset()\n"
        "    try:\n        names = sorted(s.name for s in pml_anchors.list_methods())\n"
        "        result = {'methods': names}\n"
        "        try:\n            pml_anchors.get_method('fixture_pa')\n"
        "        except Exception as e:\n            result['fixture_pa'] = str(e)\n"
        "    except Exception as e:\n        result = {'error': [type(e).__name__, str(e)]}\n"
        "    pml_anchors.reset()\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
        "        result['cli'] = [main(['methods']), err.getvalue()]\n"
        "    out[key] = result\n"
        "print(json.dumps(out))\n"
    )
    out = run_json(plugin_python, code)
    kind, message = out["strict_all"]["error"]
    assert kind == "PluginLoadError" and "pml-anchors-fixture-broken 0.3.1" in message
    kind, message = out["strict_incompatible"]["error"]
    assert kind == "PluginLoadError" and "pml-anchors-fixture-future 2.0.0" in message and "unknown hook" in message
    kind, message = out["strict_duplicates"]["error"]
    assert kind == "DuplicateMethodError" and "method 'shared_name'" in message
    assert "pml-anchors-fixture-dup-a:shared_name" in message and "pml-anchors-fixture-dup-b:shared_name" in message
    for key in ("strict_all", "strict_incompatible", "strict_duplicates"):  # the CLI: a clean error, exit code 2
        code_, stderr = out[key]["cli"]
        assert code_ == 2 and stderr.startswith("pml-anchors methods: error: ") and "Traceback" not in stderr
    assert "error" not in out["strict_clean"] and "shared_name" in out["strict_clean"]["methods"]
    assert out["strict_clean"]["cli"][0] == 0
    assert "error" not in out["not_strict"] and out["not_strict"]["cli"][0] == 0  # "0" is not strict
    assert out["allow_by_underscored_name"]["methods"] == ["c_ncm", "e_ncm", "fixture_proxy_anchor"]
    assert "fixture_proxy_anchor" not in out["disable_good"]["methods"]
    assert (
        "Plugin pml-anchors-fixture-good 1.0.0 is not loaded (disabled by PML_ANCHORS_DISABLE_PLUGINS)"
        in out["disable_good"]["fixture_pa"]
    )
