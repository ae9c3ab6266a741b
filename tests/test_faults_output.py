"""Fault injection: the ``--output`` folder. One run at a time (a lock naming its owner), a finished run is never
overwritten by accident, an unusable or full folder is found before training, and a failed write leaves no
temporary file behind."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import namedtuple

import pytest
import torch

from pml_anchors.app import output_folder
from pml_anchors.app.output_folder import LOCK_NAME
from pml_anchors.cli import main

ARGV = ["train", "--method", "toy_fixed", "--epochs", "1", "--limit", "64", "--test-limit", "60", "--no-progress"]


def _lock(folder, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": 0}))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_folder_in_use_is_refused_at_once_naming_the_owner(toys, tmp_path, capsys):
    out = tmp_path / "run"
    _lock(out, os.getpid())  # a live run holds it
    started = time.perf_counter()
    assert main([*ARGV, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"is in use by another run (pid {os.getpid()} on host {socket.gethostname()}" in err
    assert time.perf_counter() - started < 5 and not (out / "checkpoint.pt").exists()
    _lock(out, 12345, host="another-host")  # another host's lock cannot be checked: refused too
    assert main([*ARGV, "--output", str(out)]) == 2
    assert "pid 12345 on host another-host" in capsys.readouterr().err


def test_a_dead_runs_lock_is_taken_over_and_released(toys, tmp_path):
    out = tmp_path / "run"
    _lock(out, _dead_pid())
    with pytest.warns(RuntimeWarning, match="taking over the lock of run pid"):
        assert main([*ARGV, "--output", str(out)]) == 0
    assert (out / "results.json").exists() and not (out / LOCK_NAME).exists()  # released at the end


def test_a_finished_run_is_replaced_only_on_request(toys, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ARGV, "--output", str(out)]) == 0
    before = (out / "results.json").read_text()
    capsys.readouterr()
    assert main([*ARGV, "--output", str(out)]) == 2
    assert "already holds a run (results.json, checkpoint.pt): pass --resume" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before
    assert main([*ARGV, "--output", str(out), "--overwrite"]) == 0
    assert main(["train", "--resume", str(out / "checkpoint.pt"), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text())["epochs"] == 2


def test_an_unusable_folder_is_refused_before_training(toys, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main([*ARGV, "--output", str(blocker / "run")]) == 2  # cannot be created
    assert "cannot create the output folder" in capsys.readouterr().err


def test_a_full_disk_is_found_before_training(toys, tmp_path, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    trained = []
    monkeypatch.setattr("pml_anchors.app.session.train", lambda session: trained.append(session))
    assert main([*ARGV, "--output", str(tmp_path / "run")]) == 2
    assert "has 0.0 MiB free, but this run's checkpoints need about" in capsys.readouterr().err
    assert trained == []


def test_a_failed_write_leaves_no_temporary_file(toys, tmp_path, capsys, monkeypatch):
    def disk_full(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", disk_full)
    assert main([*ARGV, "--output", str(out)]) == 2
    assert re.search(r"error: .*cannot write .*checkpoint\.pt: No space left on device", capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == []  # no partial checkpoint, no .tmp, no lock


def test_write_atomically_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        output_folder.write_atomically(target, half_then_fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
