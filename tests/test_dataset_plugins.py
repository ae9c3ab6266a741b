"""Datasets from plugins: the ``register_datasets`` hook, in-process and plugins-dir plugins, name clashes, the
listing, and a CLI run on a plugin's dataset whose checkpoint records the plugin (real plugins, no mocks)."""

import json
import sys

import pytest
import torch
from dataset_toys import BUILDER, FOLDER_PLUGIN
from training_toys import single_thread  # noqa: F401 - autouse fixture

import pml_anchors
from pml_anchors import DuplicateMethodError, InvalidMethodSpec, PluginLoadWarning, hookimpl
from pml_anchors.app.checkpoints import load_checkpoint
from pml_anchors.app.data import DATASETS, DatasetSplits, available_datasets, load_dataset, register_dataset
from pml_anchors.app.data import registry as data_registry
from pml_anchors.cli import main
from pml_anchors.plugin.settings import ENV_STRICT


def builder_module(tmp_path, monkeypatch, name):
    """A fresh module ``name`` holding ``build_blobs``, importable but not imported."""
    (tmp_path / f"{name}.py").write_text(BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def dataset_plugin(*datasets):
    class Plugin:
        @hookimpl
        def register_datasets(self, register):
            for name, builder in datasets:
                register(name, builder)

    return Plugin()


def reports() -> dict:
    return {r["name"]: r for r in pml_anchors.get_plugins()}


def test_hook_register_datasets(pml_registry, tmp_path, monkeypatch):
    module = builder_module(tmp_path, monkeypatch, "blobs_lazy_builder")
    pml_registry.add_plugin(dataset_plugin(("blobs", f"{module}:build_blobs")), name="blob-plugin")
    assert "blobs" in available_datasets() and {"digits", "mnist"} <= set(available_datasets())
    assert [e.qualified_name for e in pml_anchors.list_datasets()] == ["blob-plugin:blobs"]
    assert module not in sys.modules  # registered and listed: the builder is still not imported
    splits = load_dataset("blobs", seed=3)
    assert module in sys.modules and isinstance(splits, DatasetSplits)
    assert (splits.num_classes, splits.input_shape, len(splits.train), len(splits.test)) == (4, (1, 8, 8), 36, 12)
    assert splits.info["dataset_plugin"] == "blob-plugin" and splits.info["dataset_plugin_version"] is None
    again = load_dataset("blob-plugin:BLOBS", seed=3, num_classes=4)  # qualified; the short name in any case
    assert torch.equal(again.train_labels, splits.train_labels)
    report = reports()["blob-plugin"]
    assert report["status"] == "ok" and report["datasets"] == ["blobs"] and report["hooks"] == ["register_datasets"]
    with pytest.raises(TypeError, match=r"dataset 'blob-plugin:blobs': .*'colour'"):
        load_dataset("blobs", colour="red")  # an option the builder does not take names the dataset
    assert "blobs" not in DATASETS  # the plugin's dataset is the plugin's, not written into the built-in table


@pytest.mark.parametrize(
    ("name", "builder", "error"),
    [
        ("Blobs", "m:f", "dataset name must be a lower-case identifier such as 'cub200', got 'Blobs'"),
        ("my-blobs", "m:f", "got 'my-blobs'"),
        ("blobs", 42, "dataset 'blobs' builder must be a callable or a lazy 'package.module:function' string"),
        ("blobs", "not a path", "got 'not a path'"),
    ],
)
def test_invalid_registrations_fail_the_plugin_alone(pml_registry, name, builder, error):
    pml_registry.add_plugin(dataset_plugin(("good", "m:f"), (name, builder)), name="bad-data")
    with pytest.warns(PluginLoadWarning, match="bad-data"):
        assert pml_anchors.list_datasets() == []  # all or nothing: "good" is not registered either
    report = reports()["bad-data"]
    assert report["status"] == "failed" and InvalidMethodSpec.__name__ in report["error"] and error in report["error"]


def test_the_same_name_twice_from_one_plugin_is_an_error(pml_registry):
    pml_registry.add_plugin(dataset_plugin(("blobs", "m:f"), ("blobs", "m:g")), name="twice")
    with pytest.warns(PluginLoadWarning, match="registered dataset 'blobs' twice"):
        assert pml_anchors.list_datasets() == []


def test_a_clash_with_a_builtin_is_ambiguous_and_qualified_names_resolve(pml_registry, tmp_path, monkeypatch, capsys):
    module = builder_module(tmp_path, monkeypatch, "blobs_as_digits")
    pml_registry.add_plugin(dataset_plugin(("digits", f"{module}:build_blobs")), name="shadow")
    with pytest.raises(DuplicateMethodError) as caught:
        load_dataset("digits")
    message = str(caught.value)
    assert "dataset 'digits' is ambiguous: it is provided by pml-anchors (built-in), shadow" in message
    assert "'pml-anchors:digits' or 'shadow:digits'" in message
    builtin = load_dataset("pml-anchors:digits")
    assert builtin.name == "digits" and builtin.num_classes == 10 and "dataset_plugin" not in builtin.info
    theirs = load_dataset("shadow:digits")
    assert theirs.name == "blobs" and theirs.info["dataset_plugin"] == "shadow"
    names = available_datasets()
    assert {"pml-anchors:digits", "shadow:digits"} <= set(names) and "digits" not in names
    assert main(["plugins", "--json"]) == 0
    (shadow,) = [r for r in json.loads(capsys.readouterr().out) if r["name"] == "shadow"]
    assert shadow["datasets"] == ["digits"]
    assert shadow["conflicts"] == [
        "dataset 'digits' is also a built-in dataset of pml-anchors; use the qualified name 'shadow:digits' "
        "(the built-in one: 'pml-anchors:digits')"
    ]


def test_a_clash_between_plugins_is_listed_and_strict_mode_raises(pml_registry, tmp_path, monkeypatch, capsys):
    module = builder_module(tmp_path, monkeypatch, "blobs_twice")
    pml_registry.add_plugin(dataset_plugin(("blobs", f"{module}:build_blobs")), name="first")
    pml_registry.add_plugin(dataset_plugin(("blobs", f"{module}:build_blobs")), name="second")
    with pytest.raises(DuplicateMethodError, match=r"provided by first, second\. Use a qualified name"):
        load_dataset("blobs")
    assert load_dataset("second:blobs").info["dataset_plugin"] == "second"
    assert {"first:blobs", "second:blobs"} <= set(available_datasets())
    assert reports()["first"]["conflicts"] == [
        "dataset 'blobs' is also provided by second; use the qualified name 'first:blobs'"
    ]
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "first  [ok]\n    datasets: blobs\n    hooks: register_datasets\n    conflict: dataset 'blobs'" in out

    monkeypatch.setenv(ENV_STRICT, "1")
    pml_anchors.reset()
    pml_registry.add_plugin(dataset_plugin(("blobs", "m:f")), name="third")
    pml_registry.add_plugin(dataset_plugin(("blobs", "m:f")), name="fourth")
    with pytest.raises(DuplicateMethodError, match=r"several plugins: dataset 'blobs': third:blobs, fourth:blobs$"):
        pml_anchors.list_datasets()


def test_unknown_names_say_what_exists_and_which_plugin_failed(pml_registry):
    class Broken:
        @hookimpl
        def register_datasets(self, register):
            raise RuntimeError("the dataset index is missing")

    pml_registry.add_plugin(Broken(), name="broken-data")
    with pytest.warns(PluginLoadWarning, match="broken-data"):
        with pytest.raises(ValueError, match=r"Unknown dataset 'blbos'\. Available: .*digits.*") as caught:
            load_dataset("blbos")
    assert "Plugin broken-data failed to load and may provide it: RuntimeError: the dataset index is missing" in str(
        caught.value
    )
    with pytest.raises(ValueError, match=r"Unknown dataset 'nobody:digits'"):
        load_dataset("nobody:digits")  # a qualified name never falls back to another provider
    with pytest.raises(ValueError, match="dataset must be a non-empty name"):
        load_dataset("")


def test_a_builder_that_fails_to_import_or_returns_the_wrong_thing_is_named(pml_registry):
    def not_splits(**kwargs):
        return {"train": []}

    pml_registry.add_plugin(
        dataset_plugin(("ghost", "no_such_module_xyz:build"), ("wrong", not_splits)), name="odd-data"
    )
    with pytest.raises(ImportError, match=r"dataset 'odd-data:ghost': cannot import 'no_such_module_xyz:build'"):
        load_dataset("ghost")
    with pytest.raises(
        TypeError, match=r"dataset 'odd-data:wrong': its builder returned dict, expected a DatasetSplits"
    ):
        load_dataset("wrong")


def test_register_dataset_still_works_in_process(pml_registry, tmp_path, monkeypatch):
    monkeypatch.setattr(data_registry, "DATASETS", dict(DATASETS))  # restored after the test
    namespace: dict = {}
    exec(BUILDER, namespace)  # noqa: S102 - the test's own builder source
    register_dataset("local_blobs", namespace["build_blobs"])
    assert "local_blobs" in available_datasets()
    splits = load_dataset("local_blobs", train_per_class=2)
    assert torch.bincount(splits.train_labels).tolist() == [2, 2, 2, 2] and "dataset_plugin" not in splits.info
    with pytest.raises(ValueError, match="dataset 'local_blobs' is already registered"):
        register_dataset("local_blobs", namespace["build_blobs"])
    with pytest.raises(ValueError, match="lower-case identifier"):
        register_dataset("Local", namespace["build_blobs"])
    with pytest.raises(TypeError, match="builder must be callable"):
        register_dataset("other", "module:attr")


def test_folder_plugin_dataset_trains_from_the_cli_and_the_checkpoint_names_it(folder, tmp_path, capsys):
    (folder / "blob_data.py").write_text(FOLDER_PLUGIN)
    pml_anchors.reset()
    assert main(["plugins"]) == 0
    assert f"blob_data  [ok]\n    file: {folder / 'blob_data.py'}\n    datasets: blobs\n" in capsys.readouterr().out
    out = tmp_path / "run"
    argv = ["train", "--method", "folder_cosine", "--dataset", "blobs", "--epochs", "1", "--batch-size", "16"]
    argv += ["--train-per-class", "3", "--threads", "1", "--no-progress", "--output", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "blobs" and results["dataset_plugin"] == "blob_data"
    assert results["train_per_class"] == 3 and results["train_size"] == 12 and results["test_size"] == 12
    assert {"name": "blob_data", "datasets": ["blobs"]}.items() <= next(
        p for p in results["plugins"] if p["name"] == "blob_data"
    ).items()
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["data_info"] == {"dataset_plugin": "blob_data", "dataset_plugin_version": None}
    assert checkpoint["config"]["dataset"] == "blobs" and checkpoint["config"]["train_per_class"] == 3
    capsys.readouterr()
    # the checkpoint's config names the plugin's dataset, which loads again
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "blobs"
