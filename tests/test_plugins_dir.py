"""One-off plugins from a folder: PML_ANCHORS_PLUGINS_DIR and `pml-anchors --plugins-dir` (real files, no mocks)."""

import json
import os
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from folder_plugins import PLUGIN
from training_toys import single_thread  # noqa: F401 - autouse fixture

import pml_anchors
from pml_anchors import PluginLoadError, PluginLoadWarning
from pml_anchors.cli import main
from pml_anchors.plugin.settings import ENV_DISABLE, ENV_LOAD, ENV_PLUGINS_DIR, ENV_STRICT
from pml_anchors.testing import check_method

# the `folder` fixture (tests/conftest.py): an isolated registry + a plugins folder with folder_method.py (PLUGIN)


def report() -> dict:
    return {r["name"]: r for r in pml_anchors.get_plugins()}


def test_folder_plugin_registers_a_working_method(folder):
    assert [s.qualified_name for s in pml_anchors.list_methods()] == ["folder_method:folder_cosine"]
    loss = pml_anchors.get_loss("folder_cosine", 5, 8)
    assert type(loss).__module__ == "pml_anchors_plugins_dir.folder_method"
    embeddings = torch.randn(10, 8, requires_grad=True)
    value = loss(embeddings, torch.arange(10) % 5)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(embeddings.grad).all() and loss.anchors.grad is not None
    assert torch.equal(pickle.loads(pickle.dumps(loss)).anchors, loss.anchors)  # the module can be found by name
    check_method("folder_cosine")
    record = report()["folder_method"]
    assert record["source"] == "plugins_dir" and record["status"] == "ok"
    assert record["module"] == str(folder / "folder_method.py") and record["methods"] == ["folder_cosine"]
    assert not any(name.startswith("_helper") for name in report())


def test_broken_files_fail_alone_and_strict_mode_raises(folder, monkeypatch):
    (folder / "bad_syntax.py").write_text("def broken(:\n")
    (folder / "bad_import.py").write_text("import not_a_real_package_xyz\n")
    with pytest.warns(PluginLoadWarning) as caught:
        assert pml_anchors.get_method("folder_cosine").plugin == "folder_method"
    plugins = report()
    assert plugins["bad_syntax"]["status"] == "failed" and "SyntaxError" in plugins["bad_syntax"]["error"]
    assert plugins["bad_import"]["status"] == "failed" and "not_a_real_package_xyz" in plugins["bad_import"]["error"]
    assert plugins["bad_import"]["source"] == "plugins_dir"
    messages = " ".join(str(w.message) for w in caught)
    assert f"bad_import ({folder / 'bad_import.py'})" in messages and "bad_syntax" in messages
    with pytest.raises(pml_anchors.UnknownMethodError, match="Plugin bad_import .* failed to load"):
        pml_anchors.get_method("bad_method")

    monkeypatch.setenv(ENV_STRICT, "1")
    pml_anchors.reset()
    with pytest.raises(PluginLoadError, match="bad_import .*No module named 'not_a_real_package_xyz'"):
        pml_anchors.list_methods()


def test_disable_by_stem(folder, monkeypatch):
    monkeypatch.setenv(ENV_DISABLE, "folder-method")  # compared like distribution names: - and _ are equal
    assert pml_anchors.list_methods() == []
    assert report()["folder_method"]["status"] == "disabled"


def test_allowlist_does_not_apply_to_an_explicit_folder(folder, monkeypatch):
    monkeypatch.setenv(ENV_LOAD, "")  # no installed plugin at all
    assert pml_anchors.get_method("folder_cosine").plugin == "folder_method"


def test_duplicate_names_fail_clearly(folder, tmp_path, monkeypatch):
    second = tmp_path / "second"
    second.mkdir()
    (second / "folder_method.py").write_text(PLUGIN)  # the same stem in another folder
    (second / "pml_anchors.py").write_text(PLUGIN)  # the core's name ("pml-anchors")
    monkeypatch.setenv(ENV_PLUGINS_DIR, os.pathsep.join([str(folder), str(second)]))
    with pytest.warns(PluginLoadWarning, match="already used"):
        methods = pml_anchors.list_methods()
    assert [s.qualified_name for s in methods] == ["folder_method:folder_cosine"]  # the first folder wins
    by_file = {r["module"]: r for r in pml_anchors.get_plugins()}
    assert by_file[str(folder / "folder_method.py")]["status"] == "ok"
    dup = by_file[str(second / "folder_method.py")]
    assert dup["status"] == "failed"
    assert (
        dup["error"] == f"plugin name 'folder_method' is already used by folder_method ({folder / 'folder_method.py'})"
    )
    core = by_file[str(second / "pml_anchors.py")]
    assert core["status"] == "failed" and "plugin name 'pml_anchors' is already used by pml-anchors" in core["error"]


def test_name_used_by_an_entry_point_fails(pml_registry, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_LOAD, "pml-anchors-ncm")
    (tmp_path / "pml_anchors_ncm.py").write_text(PLUGIN)
    monkeypatch.setenv(ENV_PLUGINS_DIR, str(tmp_path))
    with pytest.warns(PluginLoadWarning, match="'pml_anchors_ncm' is already used by pml-anchors-ncm"):
        assert pml_anchors.get_method("c_ncm").plugin == "pml-anchors-ncm"
    assert "folder_cosine" not in [s.name for s in pml_anchors.list_methods()]


def test_missing_folder_warns_and_is_reported(folder, tmp_path, monkeypatch):
    missing = str(tmp_path / "nope")
    monkeypatch.setenv(ENV_PLUGINS_DIR, os.pathsep.join([missing, str(folder)]))
    with pytest.warns(PluginLoadWarning, match=f"{ENV_PLUGINS_DIR} names '{missing}', which is not a directory"):
        assert pml_anchors.get_method("folder_cosine")
    record = report()[missing]
    assert record["status"] == "failed" and record["source"] == "plugins_dir"
    monkeypatch.setenv(ENV_STRICT, "1")
    pml_anchors.reset()
    with pytest.raises(PluginLoadError, match="not a directory"):
        pml_anchors.list_methods()


def folder_records(records):
    """The plugins-dir entries of ``plugins --json``: it also lists any third-party distribution installed here."""
    return [r for r in records if r["source"] == "plugins_dir"]


def test_cli_flag_lists_and_reports_the_plugin(pml_registry, folder, monkeypatch, capsys):
    monkeypatch.setenv(ENV_PLUGINS_DIR, "")  # only the flag names the folder
    pml_anchors.reset()
    assert main(["--plugins-dir", str(folder), "methods"]) == 0
    assert "folder_cosine  [folder_method]" in capsys.readouterr().out
    assert os.environ[ENV_PLUGINS_DIR] == str(folder)  # what worker processes inherit
    assert main(["--plugins-dir", str(folder), "plugins", "--json"]) == 0
    (record,) = folder_records(json.loads(capsys.readouterr().out))
    assert record["name"] == "folder_method" and record["source"] == "plugins_dir"
    assert main(["plugins"]) == 0
    assert f"folder_method  [ok]\n    file: {folder / 'folder_method.py'}\n" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["--plugins-dir", str(folder / "nope"), "methods"])
    assert exc.value.code == 2 and "is not a directory" in capsys.readouterr().err


def test_cli_flag_in_a_fresh_process(folder, monkeypatch):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PML_ANCHORS_")}
    env[ENV_LOAD] = ""  # installed plugins are irrelevant here
    argv = [sys.executable, "-m", "pml_anchors.cli", "--plugins-dir", str(folder), "plugins", "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    (record,) = folder_records(json.loads(out.stdout))
    assert (record["name"], record["status"], record["methods"]) == ("folder_method", "ok", ["folder_cosine"])


def test_cli_train_with_a_folder_plugin(pml_registry, folder, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(ENV_PLUGINS_DIR, "")
    pml_anchors.reset()
    out = tmp_path / "run"
    tiny = ["--epochs", "1", "--limit", "64", "--test-limit", "120", "--batch-size", "32", "--device", "cpu"]
    argv = ["--plugins-dir", str(folder), "train", "--method", "folder_cosine", "--dataset", "digits", *tiny]
    assert main([*argv, "--no-progress", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["method"], results["qualified_method"]) == ("folder_cosine", "folder_method:folder_cosine")
    assert 0.0 <= results["precision_at_1"] <= 1.0
    capsys.readouterr()


def test_warnings_are_not_raised_for_a_clean_folder(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginLoadWarning)
        assert pml_anchors.list_methods()
