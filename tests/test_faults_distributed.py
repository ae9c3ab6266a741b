"""``train --nproc``: a worker that dies or stalls, or a launcher that is killed, ends the whole job.

Measured before the launcher's supervision: a stopped worker froze the job for 1837 s (the 30-minute collective
timeout), and killing the launcher left its workers training (and writing files) with their
``/tmp/pml-anchors-launch-*`` folder behind. The faults come from a plugins-dir method (tests/fault_plugins.py),
which every spawned worker loads; each test gets its own ``TMPDIR`` and checks that nothing was left in it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fault_plugins import PLUGIN

import pml_anchors
import pml_anchors.app.launch as launch_module
from pml_anchors.app.launch import WorkerError
from pml_anchors.cli import main
from pml_anchors.plugin.settings import ENV_PLUGINS_DIR

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not sys.platform.startswith("linux"),
    reason="needs torch.distributed and Linux (/proc, PR_SET_PDEATHSIG)",
)

TINY = ["--dataset", "digits", "--limit", "64", "--test-limit", "60", "--device", "cpu", "--no-progress"]
TINY += ["--threads", "1", "--backbone-kwargs", '{"width": 8}', "--batch-size", "32", "--nproc", "2"]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 1 :].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the workers and multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 1 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _wait_until(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def job(pml_registry, tmp_path, monkeypatch):
    """The ``faulty`` method in a plugins folder (no other plugin loads, in this process or the workers), a private
    ``TMPDIR``, and a folder where the workers write their pids. Afterwards no worker it recorded may survive."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "faulty.py").write_text(PLUGIN)
    monkeypatch.setenv(ENV_PLUGINS_DIR, str(plugins))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    pids = tmp_path / "pids"
    pids.mkdir()
    pml_anchors.reset()
    state = SimpleNamespace(pids=pids, tmp=tmp, out=tmp_path / "run", extra=[])

    def workers() -> dict[int, int]:
        return {int(p.stem[4:]): int(p.read_text()) for p in pids.glob("rank*.pid")}

    def loss_kwargs(**kwargs) -> list[str]:
        return ["--loss-kwargs", json.dumps({"pid_dir": str(pids), **kwargs})]

    def fault_time() -> float:
        return float((pids / "fault.time").read_text())

    def leftovers() -> list[str]:
        return sorted(p.name for p in tmp.iterdir() if p.name.startswith(("pml-anchors", "pytorch-errorfile")))

    state.workers, state.loss_kwargs, state.fault_time, state.leftovers = workers, loss_kwargs, fault_time, leftovers
    yield state
    survivors = [pid for pid in dict.fromkeys([*workers().values(), *state.extra]) if _alive(pid)]
    for pid in survivors:  # never leave one running, whatever the test found
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes outlived the test: {survivors}"


def _fails_naming_rank_1(job, argv: list[str], monkeypatch, capsys) -> tuple[WorkerError, float]:
    """The CLI ends with exit status 2 and the error naming rank 1 (the WorkerError is seen on its way out)."""
    seen: list[WorkerError] = []
    real = launch_module.run_workers

    def spy(*args, **kwargs):
        try:
            return real(*args, **kwargs)
        except WorkerError as exc:
            seen.append(exc)
            raise

    monkeypatch.setattr(launch_module, "run_workers", spy)
    capsys.readouterr()
    assert main(argv) == 2
    ended = time.time() - job.fault_time()  # from the fault to the error, all workers ended
    (error,) = seen
    assert f"pml-anchors train: error: worker rank 1 (pid {error.pid})" in capsys.readouterr().err
    workers = job.workers()
    assert error.rank == 1 and error.pid == workers[1]
    assert not any(_alive(pid) for pid in workers.values())  # ended before the error was raised
    assert job.leftovers() == []
    return error, ended


def test_a_worker_that_dies_ends_the_job_at_once_naming_it(job, monkeypatch, capsys):
    """Rank 1 exits (os._exit(3), no traceback) in its first step: the job ends long before the 60 s timeout."""
    argv = ["train", "--method", "faulty", *TINY, "--epochs", "2", "--timeout", "60", *job.loss_kwargs(fault="exit")]
    argv += ["--no-output"]
    error, ended = _fails_naming_rank_1(job, argv, monkeypatch, capsys)
    assert str(error).startswith(f"worker rank 1 (pid {error.pid}) exited with code 3\n")
    assert "every other worker of the job has been ended" in str(error)
    assert ended < 20, f"{ended:.1f} s"
    print(f"dead worker: job ended {ended:.1f} s after the fault")


def test_a_stalled_worker_ends_the_job_within_the_timeout_naming_it(job, monkeypatch, capsys):
    """Rank 1 stops itself (SIGSTOP) in its first step: rank 0's collective gives up after --timeout 8 s (it used
    to wait 30 minutes), and the error names the stopped rank, not the one that timed out waiting for it."""
    argv = ["train", "--method", "faulty", *TINY, "--epochs", "2", "--timeout", "8", *job.loss_kwargs(fault="stop")]
    argv += ["--no-output"]
    error, ended = _fails_naming_rank_1(job, argv, monkeypatch, capsys)
    message = str(error)
    assert message.startswith(f"worker rank 1 (pid {error.pid}) stopped responding: its process ")
    assert "(SIGSTOP or a debugger)" in message and "--timeout 8 s" in message
    assert 7 < ended < 8 + 25, f"{ended:.1f} s"
    print(f"stopped worker: job ended {ended:.1f} s after the fault (--timeout 8)")


def test_a_worker_that_raises_ends_the_job_with_its_traceback(job, monkeypatch, capsys):
    argv = ["train", "--method", "faulty", *TINY, "--epochs", "2", "--timeout", "60", *job.loss_kwargs(fault="raise")]
    argv += ["--no-output"]
    error, ended = _fails_naming_rank_1(job, argv, monkeypatch, capsys)
    message = str(error)
    assert message.startswith(f"worker rank 1 (pid {error.pid}) raised RuntimeError: injected fault in rank 1\n")
    assert message.rstrip().endswith("RuntimeError: injected fault in rank 1")  # the worker's traceback
    assert ended < 20, f"{ended:.1f} s"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_the_launcher_ends_its_workers(job, sig):
    """The launcher (the CLI, in a subprocess) is killed once both workers train: none of them survives it (with
    SIGKILL the launcher can do nothing: the workers' parent-death signal ends them), nothing is left in TMPDIR
    and no results are written.

    It starts as a shell starts a background job (``pml-anchors train ... &``): with SIGINT ignored, which its
    workers inherit. The parent-death signal that torch's ``mp.spawn`` asks for is SIGINT, so they used to train on.
    """
    argv = ["train", "--method", "faulty", *TINY, "--epochs", "1000", "--output", str(job.out)]
    argv += job.loss_kwargs(step_seconds=0.05)
    log = job.tmp.parent / "launcher.log"
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "pml_anchors.cli", *argv], stdout=out, stderr=out, preexec_fn=_ignore_sigint
        )
    try:
        _wait_until(lambda: len(job.workers()) == 2 or launcher.poll() is not None, 120, "both workers training")
        assert launcher.poll() is None, log.read_text()
        children = _children(launcher.pid)  # the workers and the resource tracker
        job.extra += children
        assert set(job.workers().values()) <= set(children)
        launcher.send_signal(sig)
        assert launcher.wait(timeout=30) == -sig
        ended = _wait_until(lambda: not any(_alive(pid) for pid in children), 30, "every child of the launcher ended")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert job.leftovers() == []
    assert not (job.out / "results.json").exists()
    print(f"{sig.name} to the launcher: its children ended {ended:.1f} s after it")
