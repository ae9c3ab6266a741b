"""Reliability and security of plugin loading under faults: plugins that exit, are interrupted, are slow or patch
pml_anchors; strict mode that stays strict; misspelt plugin names; lazy references that `validate` must fail; and
code that the current directory or a relative plugins folder would smuggle in.

Real files (plugins-dir plugins, fake ``*.dist-info`` folders) and in-process plugins, no mocks of the loader.
"""

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest

import pml_anchors
from pml_anchors import MethodSpec, PluginLoadError, PluginLoadWarning, UnknownMethodError, hookimpl
from pml_anchors.cli import main
from pml_anchors.losses.base import AnchorLoss
from pml_anchors.plugin import lazy, manager
from pml_anchors.plugin.settings import ENV_DISABLE, ENV_LOAD, ENV_PLUGINS_DIR, ENV_STRICT

# the `folder` fixture (tests/conftest.py): an isolated registry + a plugins folder with folder_method.py, whose
# method is folder_cosine


def report() -> dict:
    return {r["name"]: r for r in pml_anchors.get_plugins()}


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PML_ANCHORS_")}
    env.update(extra)
    return env


# -- sys.exit() and KeyboardInterrupt ---------------------------------------------------------------------------
class ExitingHook:
    @hookimpl
    def register_methods(self, register):
        raise SystemExit("bye")


def test_sys_exit_while_importing_or_registering_fails_that_plugin_only(pml_registry, folder, capsys):
    (folder / "exits.py").write_text("import sys\n\nsys.exit(3)\n")
    pml_registry.add_plugin(ExitingHook(), name="exiting-hook")
    with pytest.warns(PluginLoadWarning) as caught:
        assert [s.name for s in pml_anchors.list_methods()] == ["folder_cosine"]  # the others still load
    messages = "\n".join(str(w.message) for w in caught)
    assert "skipping plugin exits (" in messages and "skipping plugin exiting-hook: SystemExit" in messages
    plugins = report()
    assert plugins["exits"]["status"] == "failed"
    assert plugins["exits"]["error"] == f"SystemExit(3): it called sys.exit() (at {folder / 'exits.py'}:3)"
    assert plugins["exiting-hook"]["status"] == "failed" and "SystemExit('bye')" in plugins["exiting-hook"]["error"]
    assert main(["plugins"]) == 0  # the command survives and reports it
    out = capsys.readouterr().out
    assert "exits  [failed]" in out and "error: SystemExit(3): it called sys.exit()" in out


def test_keyboard_interrupt_names_the_plugin_stops_the_command_and_keeps_nothing_half_loaded(folder, capsys):
    (folder / "ctrl_c.py").write_text("raise KeyboardInterrupt\n")
    pml_anchors.reset()
    label = rf"ctrl_c \({folder / 'ctrl_c.py'}\)"
    with pytest.raises(
        KeyboardInterrupt,
        match=rf"interrupted while loading plugin {label}: KeyboardInterrupt while importing it \(at ",
    ):
        pml_anchors.list_methods()
    with pytest.raises(KeyboardInterrupt, match="ctrl_c"):  # not a half-loaded registry: it loads again
        pml_anchors.get_plugins()
    assert main(["plugins"]) == 130  # as a shell reports a command stopped by Ctrl-C
    assert "pml-anchors plugins: interrupted while loading plugin ctrl_c" in capsys.readouterr().err
    assert main(["validate"]) == 130
    assert "pml-anchors validate: interrupted while loading plugin ctrl_c" in capsys.readouterr().err
    (folder / "ctrl_c.py").unlink()
    assert [s.name for s in pml_anchors.list_methods()] == ["folder_cosine"]  # the same manager, complete


def test_keyboard_interrupt_in_a_hook_names_the_plugin(pml_registry):
    class Interrupting:
        @hookimpl
        def register_methods(self, register):
            raise KeyboardInterrupt

    pml_registry.add_plugin(Interrupting(), name="interrupting")
    with pytest.raises(
        KeyboardInterrupt, match="loading plugin interrupting: KeyboardInterrupt while running its hooks"
    ):
        pml_anchors.list_methods()


# -- strict mode ------------------------------------------------------------------------------------------------
def test_strict_mode_stays_strict_after_the_first_failure(folder, monkeypatch, capsys):
    (folder / "bad_import.py").write_text("import not_a_real_package_xyz\n")
    monkeypatch.setenv(ENV_STRICT, "1")
    pml_anchors.reset()
    for _ in range(2):  # every access raises, never the plugins loaded before the failure
        with pytest.raises(PluginLoadError, match="bad_import .*not_a_real_package_xyz"):
            pml_anchors.list_methods()
    with pytest.raises(PluginLoadError, match="bad_import"):
        pml_anchors.get_method("folder_cosine")
    with pytest.raises(PluginLoadError, match="bad_import"):
        pml_anchors.get_plugins()
    assert main(["methods"]) == 2 and "bad_import" in capsys.readouterr().err
    monkeypatch.delenv(ENV_STRICT)
    pml_anchors.reset()  # starts over, reading the variables again
    with pytest.warns(PluginLoadWarning, match="bad_import"):
        assert pml_anchors.get_method("folder_cosine").plugin == "folder_method"


# -- slow imports -----------------------------------------------------------------------------------------------
def test_import_time_is_recorded_and_a_slow_plugin_named(folder, monkeypatch, capsys):
    monkeypatch.setattr(manager, "SLOW_IMPORT_SECONDS", 0.2)
    (folder / "sleepy.py").write_text("import time\n\ntime.sleep(0.3)\n")
    with pytest.warns(
        PluginLoadWarning, match=r"plugin sleepy \(.*sleepy.py\) took \d+\.\d s to import \(more than 0.2 s\)"
    ):
        pml_anchors.list_methods()
    plugins = report()
    assert plugins["sleepy"]["status"] == "ok" and plugins["sleepy"]["load_seconds"] >= 0.3
    assert isinstance(plugins["folder_method"]["load_seconds"], float)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "sleepy  [ok]" in out and "    import: 0." in out and "(slow: every command" in out


# -- lazy references: listed as ok, failed by validate ----------------------------------------------------------
LAZY_PARTS = """
from pml_anchors import MethodSpec, hookimpl


@hookimpl
def register_initializers(register):
    register("ghost_ring", "not_a_real_module_xyz.rings:ring")


@hookimpl
def register_methods(register):
    register(MethodSpec(name="exits_on_import", loss="exiting_loss_module_xyz:Loss"))
"""


def test_validate_fails_lazy_references_that_cannot_be_imported(folder, tmp_path, monkeypatch, capsys):
    (folder / "lazy_parts.py").write_text(LAZY_PARTS)
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "exiting_loss_module_xyz.py").write_text("import sys\n\nsys.exit(4)\n")
    monkeypatch.syspath_prepend(str(modules))
    pml_anchors.reset()
    assert main(["plugins"]) == 0
    assert "lazy_parts  [ok]" in capsys.readouterr().out  # loading stays lazy: nothing is imported to list it
    assert main(["validate", "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    (method,) = [r for r in rows if r["method"] == "exits_on_import"]
    assert method["status"] == "failed" and "SystemExit(4)" in method["error"]
    (initializer,) = [r for r in rows if r.get("initializer") == "ghost_ring"]
    assert initializer["status"] == "failed" and initializer["plugin"] == "lazy_parts"
    assert "'lazy_parts:ghost_ring'" in initializer["error"] and "not_a_real_module_xyz" in initializer["error"]
    assert [r["status"] for r in rows if r["method"] == "folder_cosine"] == ["ok"]
    assert main(["validate", "lazy_parts"]) == 1  # named: its methods and its lazy initializers
    out, err = capsys.readouterr()
    assert "FAILED  ghost_ring  [lazy_parts]  initializer 'lazy_parts:ghost_ring'" in out
    assert "2 checked, 2 failed" in err


# -- misspelt plugin names --------------------------------------------------------------------------------------
def test_names_that_match_no_plugin_warn_with_the_closest_one(folder, monkeypatch, capsys):
    monkeypatch.setenv(ENV_LOAD, "pml-anchors-ncmm")
    monkeypatch.setenv(ENV_DISABLE, "folder_methd")
    pml_anchors.reset()
    with pytest.warns(PluginLoadWarning) as caught:
        assert [s.name for s in pml_anchors.list_methods()] == ["folder_cosine"]  # the typo disabled nothing
    messages = "\n".join(str(w.message) for w in caught)
    assert (
        "PML_ANCHORS_LOAD_PLUGINS names 'pml-anchors-ncmm', which matches no installed plugin; did you mean "
        "'pml-anchors-ncm'? Installed: " in messages
    )
    assert "pml-anchors-cam" in messages and "pml-anchors-proxy-anchor" in messages
    assert "PML_ANCHORS_DISABLE_PLUGINS names 'folder_methd', which matches no installed plugin; did you mean " in (
        messages
    )
    assert "'folder_method'?" in messages
    with pytest.raises(UnknownMethodError, match="'pml-anchors-ncmm', which matches no installed plugin"):
        pml_anchors.get_method("c_ncm")
    assert main(["plugins"]) == 0
    err = capsys.readouterr().err
    assert "pml-anchors plugins: warning: PML_ANCHORS_LOAD_PLUGINS names 'pml-anchors-ncmm'" in err
    monkeypatch.setenv(ENV_STRICT, "1")  # strict: an allowlisted plugin that is not there is an error
    monkeypatch.delenv(ENV_DISABLE)
    pml_anchors.reset()
    with pytest.raises(PluginLoadError, match="did you mean 'pml-anchors-ncm'"):
        pml_anchors.list_methods()


# -- core integrity ---------------------------------------------------------------------------------------------
TAMPER = """
from pml_anchors.losses.base import AnchorLoss


def validate_inputs(self, *args, **kwargs):  # checks nothing
    return None


AnchorLoss.validate_inputs = validate_inputs
"""


@pytest.fixture
def restore_anchor_loss(monkeypatch):
    """Put AnchorLoss.validate_inputs back after a test whose plugin replaces it."""
    monkeypatch.setattr(AnchorLoss, "validate_inputs", AnchorLoss.__dict__["validate_inputs"])


def test_a_plugin_that_patches_pml_anchors_is_reported_tampered(folder, monkeypatch, restore_anchor_loss, capsys):
    (folder / "tamper.py").write_text(TAMPER)
    pml_anchors.reset()
    with pytest.warns(PluginLoadWarning, match="plugin tamper .* replaced attributes of pml_anchors itself"):
        assert [s.name for s in pml_anchors.list_methods()] == ["folder_cosine"]
    plugins = report()
    assert plugins["tamper"]["status"] == "tampered"
    assert plugins["tamper"]["replaced"] == ["pml_anchors.losses.base.AnchorLoss.validate_inputs"]
    assert plugins["folder_method"]["status"] == "ok" and plugins["folder_method"]["replaced"] == []
    assert main(["plugins"]) == 0
    assert "tamper  [tampered]" in capsys.readouterr().out
    assert main(["validate"]) == 1  # a tampered plugin fails validation
    assert "plugin is tampered: replaced attributes of pml_anchors itself" in capsys.readouterr().out
    monkeypatch.setenv(ENV_STRICT, "1")
    pml_anchors.reset()
    with pytest.raises(PluginLoadError, match="tamper .*AnchorLoss.validate_inputs"):
        pml_anchors.list_methods()


def test_patching_from_a_hook_is_reported_too(pml_registry, monkeypatch):
    monkeypatch.setattr(lazy, "describe_object", lazy.describe_object)  # restored after the test

    class Patcher:
        @hookimpl
        def register_methods(self, register):
            lazy.describe_object = lambda obj: "patched"
            register(MethodSpec(name="patched", loss="toy_loss:ToyCosineLoss"))

    pml_registry.add_plugin(Patcher(), name="patcher")
    with pytest.warns(PluginLoadWarning, match="patcher"):
        assert pml_anchors.get_method("patched")
    record = report()["patcher"]
    assert record["status"] == "tampered" and record["replaced"] == ["pml_anchors.plugin.lazy.describe_object"]


def test_patching_a_module_first_imported_by_the_plugin_is_reported(folder, tmp_path):
    """In a fresh `pml-anchors` process pml_anchors.losses is not imported before the plugins: the plugin's own
    function found on AnchorLoss gives it away; a plugin that only subclasses AnchorLoss is fine."""
    (folder / "tamper.py").write_text(TAMPER)
    argv = [sys.executable, "-m", "pml_anchors.cli", "plugins", "--json"]
    env = clean_env(**{ENV_LOAD: "", ENV_PLUGINS_DIR: str(folder)})
    out = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    plugins = {r["name"]: r for r in json.loads(out.stdout)}
    assert plugins["tamper"]["status"] == "tampered"
    assert plugins["tamper"]["replaced"] == ["pml_anchors.losses.base.AnchorLoss.validate_inputs"]
    assert plugins["folder_method"]["status"] == "ok"


# -- code from the current directory ----------------------------------------------------------------------------
EVIL = """
import pathlib

pathlib.Path(__file__).with_name("ran").write_text("code from the current directory ran")

from pml_anchors import MethodSpec, hookimpl


@hookimpl
def register_methods(register):
    register(MethodSpec(name="evil", loss="toy_loss:ToyCosineLoss"))
"""


def fake_distribution(where, name="evil-plugin", module="evil_plugin_xyz"):
    """A ``*.dist-info`` with a ``pml_anchors`` entry point, and its module, in folder ``where``."""
    info = where / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[pml_anchors]\n{name} = {module}\n")
    (where / f"{module}.py").write_text(EVIL)
    return info


def test_entry_points_found_only_through_the_current_directory_are_refused(pml_registry, tmp_path, monkeypatch):
    info = fake_distribution(tmp_path)
    ncm = metadata.distribution("pml-anchors-ncm")  # a source checkout's *.egg-info copy of an installed plugin
    egg_info = tmp_path / "pml_anchors_ncm.egg-info"
    egg_info.mkdir()
    (egg_info / "PKG-INFO").write_text(ncm.read_text("METADATA"))
    (egg_info / "entry_points.txt").write_text(ncm.read_text("entry_points.txt"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # what `python -m` does: the current directory first on sys.path
    monkeypatch.setenv(ENV_LOAD, "evil-plugin,pml-anchors-ncm")
    pml_anchors.reset()
    try:
        with pytest.warns(PluginLoadWarning) as caught:
            names = [s.name for s in pml_anchors.list_methods()]
        assert "evil" not in names and "c_ncm" in names
        assert not (tmp_path / "ran").exists() and "evil_plugin_xyz" not in sys.modules
        (warning,) = [str(w.message) for w in caught]  # the copied egg-info is no reason to warn
        assert "not loading plugin evil-plugin 1.0" in warning and str(info) in warning
        plugins = report()
        assert plugins["evil-plugin"]["status"] == "refused"
        assert (
            f"found only through the current directory {os.path.realpath(tmp_path)}" in plugins["evil-plugin"]["error"]
        )
        assert plugins["pml-anchors-ncm"]["status"] == "ok" and plugins["pml-anchors-ncm"]["version"] == ncm.version

        monkeypatch.setattr(sys, "path", [sys.path[0], str(tmp_path), *sys.path[1:]])  # PYTHONPATH=. : trusted
        pml_anchors.reset()
        assert "evil" in [s.name for s in pml_anchors.list_methods()]
        assert report()["evil-plugin"]["status"] == "ok" and (tmp_path / "ran").exists()
    finally:
        sys.modules.pop("evil_plugin_xyz", None)


def test_python_m_in_a_folder_holding_a_dist_info_does_not_run_it(tmp_path):
    fake_distribution(tmp_path)
    argv = [sys.executable, "-m", "pml_anchors.cli", "plugins", "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    plugins = {r["name"]: r for r in json.loads(out.stdout)}
    assert plugins["evil-plugin"]["status"] == "refused" and not (tmp_path / "ran").exists()


def test_a_relative_plugins_dir_is_refused(folder, monkeypatch, capsys):
    monkeypatch.chdir(folder.parent)
    monkeypatch.setenv(ENV_PLUGINS_DIR, folder.name)  # "plugins": whatever folder of that name is here
    pml_anchors.reset()
    with pytest.warns(PluginLoadWarning, match=f"{ENV_PLUGINS_DIR} names 'plugins', a relative path: refused"):
        assert pml_anchors.list_methods() == []
    record = report()["plugins"]
    assert record["status"] == "failed" and record["source"] == "plugins_dir"
    assert "Use an absolute path, or `pml-anchors --plugins-dir plugins`" in record["error"]
    pml_anchors.reset()
    with pytest.warns(PluginLoadWarning, match="relative path"):  # the flag makes it absolute for the command
        assert main(["--plugins-dir", folder.name, "methods"]) == 0
    assert "folder_cosine  [folder_method]" in capsys.readouterr().out
    monkeypatch.setenv(ENV_PLUGINS_DIR, folder.name)
    monkeypatch.setenv(ENV_STRICT, "1")
    pml_anchors.reset()
    with pytest.raises(PluginLoadError, match="relative path"):
        pml_anchors.list_methods()
