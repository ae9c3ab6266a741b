"""``--download`` that fails (offline, a dead mirror, Ctrl-C) gives one clear error and leaves nothing behind."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from pml_anchors.app.data.downloads import DatasetDownloadError, guarded_download, network_reason
from pml_anchors.cli import main


@pytest.fixture
def offline(monkeypatch):
    """Every URL fails as on a machine without DNS (no real network is touched, online or not)."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _half_written(root):
    (root / "DS" / "raw").mkdir(parents=True)
    (root / "DS" / "raw" / "part.gz").write_bytes(b"\x1f\x8b half")
    raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))


def test_a_failed_download_removes_what_it_wrote_and_keeps_what_was_there(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetDownloadError, match=r"could not download DS into .*: no network connection") as err:
        guarded_download("DS", tmp_path, lambda: _half_written(tmp_path), prepare_hint="Lay out DS/raw by hand.")
    assert "Lay out DS/raw by hand." in str(err.value) and isinstance(err.value, OSError)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mine.txt"]


def test_a_root_the_download_created_is_removed_and_ctrl_c_cleans_up_too(tmp_path):
    root = tmp_path / "new"
    with pytest.raises(DatasetDownloadError):
        guarded_download("DS", root, lambda: _half_written(root))
    assert not root.exists()

    def interrupted():
        (root / "x").mkdir(parents=True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        guarded_download("DS", root, interrupted)
    assert not root.exists()


def test_the_cause_is_named_when_the_library_folds_it_into_its_own_message():
    folded = RuntimeError(
        "Error downloading x:\nTried https://a/, got:\n<urlopen error [Errno -2] Name or service not known>"
    )
    assert network_reason(folded) == "no network connection (Name or service not known)"
    assert network_reason(ValueError("bad checksum")) == "ValueError: bad checksum"


def test_mnist_download_offline_is_one_line_and_leaves_the_root_as_it_was(tmp_path, offline, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code = main(
        ["train", "--method", "c_ncm", "--dataset", "mnist", "--data-root", str(tmp_path), "--download", "--no-output"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert err.startswith(f"pml-anchors train: error: could not download MNIST into {tmp_path}: no network connection")
    assert "prepare_mnist_root" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt"]  # no empty MNIST/raw


def test_every_built_in_dataset_is_named_in_the_cli_help_and_documented():
    from pathlib import Path

    from pml_anchors.app.data.registry import DATASETS
    from pml_anchors.cli.options import DATASET_HELP

    docs = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    for name in set(DATASETS) - {"folder"}:  # an alias of imagefolder
        assert name in DATASET_HELP, name
        assert f"`{name}`" in docs, name
