"""``pml-anchors train`` under ``torchrun`` (gloo on CPU): two nodes on this machine train like one process, a killed
worker ends the job naming its rank, and a restarted job resumes from its checkpoint.

Each test runs real ``python -m torch.distributed.run`` processes (c10d rendezvous on 127.0.0.1) on the digits
set, with a BatchNorm-free backbone (``lenetpp``: BatchNorm statistics are per process, so only a model without it
can equal one process) and one thread per process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fault_plugins import PLUGIN

import pml_anchors
from pml_anchors.app.launch import GlobalBatchSampler
from pml_anchors.app.torchrun_env import TorchrunEnv, detect
from pml_anchors.cli import main
from pml_anchors.plugin.settings import ENV_PLUGINS_DIR

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not sys.platform.startswith("linux"),
    reason="needs torch.distributed and Linux",
)

DATA = ["--dataset", "digits", "--limit", "128", "--test-limit", "100", "--device", "cpu", "--no-progress"]
DATA += ["--threads", "1", "--backbone", "lenetpp", "--batch-size", "32", "--seed", "3"]
#: what a distributed run must reproduce (float tolerance: DDP sums the gradients in another order)
METRICS = ("precision_at_1", "mean_average_precision_at_r", "r_precision", "nearest_anchor_accuracy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, plugins: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "TORCHELASTIC", "MASTER_"))}
    env.pop("LOCAL_RANK", None)
    env.update(OMP_NUM_THREADS="1", TMPDIR=str(tmp_path), TORCH_ELASTIC_SHUTDOWN_TIMEOUT="5")
    if plugins is not None:
        env["PML_ANCHORS_PLUGINS_DIR"] = str(plugins)
    return env


def _torchrun(launcher: list[str], train: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "pml_anchors.cli", "train", *train]
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def _two_nodes(train: list[str], env: dict[str, str], tmp_path: Path) -> list[subprocess.Popen]:
    """Two ``torchrun --nnodes 2 --nproc-per-node 1`` against one c10d endpoint: two nodes on this machine."""
    port = _free_port()
    launcher = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
    launcher += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test-{port}"]
    return [_torchrun(launcher, train, env, tmp_path / f"node{n}.log") for n in range(2)]


def _stop(processes: list[subprocess.Popen]) -> None:
    """End torchrun processes still running: SIGTERM first, so that each agent ends its workers (SIGKILL would
    orphan them), then SIGKILL."""
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait(processes: list[subprocess.Popen], timeout: float, logs: list[Path]) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(0.0, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun did not finish:\n" + "\n".join(log.read_text()[-3000:] for log in logs))
    finally:
        _stop(processes)


def _one_process(argv: list[str], capsys) -> dict:
    capsys.readouterr()
    assert main(["train", *argv, "--no-output", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_detect_reads_torchruns_environment():
    assert detect({}) is None
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "10.0.0.1"}
    env.update(MASTER_PORT="29500", TORCHELASTIC_RESTART_COUNT="2", TORCHELASTIC_MAX_RESTARTS="3")
    env["TORCHELASTIC_RUN_ID"] = "job7"
    found = detect(env)
    assert found == TorchrunEnv(1, 2, 0, 1, "10.0.0.1", 29500, restart_count=2, max_restarts=3, run_id="job7")
    assert found.restarted
    plain = detect({"RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1"})  # not torchrun's
    assert plain is not None and plain.local_rank == 3 and plain.restart_count == 0 and not plain.restarted
    with pytest.raises(ValueError, match="WORLD_SIZE, MASTER_PORT not set"):
        detect({"RANK": "0", "MASTER_ADDR": "h"})
    with pytest.raises(ValueError, match="RANK must be an integer, got 'x'"):
        detect({**env, "RANK": "x"})
    with pytest.raises(ValueError, match="RANK 2 is not below WORLD_SIZE 2"):
        detect({**env, "RANK": "2"})


def test_global_batch_sampler_gives_each_rank_its_slice_of_the_single_process_batches():
    """The shards of every global batch, concatenated in rank order, are PML's shuffled loader's batch."""
    torch.manual_seed(11)
    loader = torch.utils.data.DataLoader(range(50), batch_size=12, shuffle=True, drop_last=True)
    expected = [batch.tolist() for batch in loader]
    shards = []
    for rank in range(3):
        torch.manual_seed(11)  # every process: the same epoch seed
        sampler = GlobalBatchSampler(50, 12, 3, rank)
        shards.append([b.tolist() for b in torch.utils.data.DataLoader(range(50), batch_size=4, sampler=sampler)])
        assert len(sampler) == 4 * 4
    assert [sum((s[k] for s in shards), []) for k in range(len(expected))] == expected
    with pytest.raises(ValueError, match="rank must be below world = 3, got 3"):
        GlobalBatchSampler(50, 12, 3, 3)


def test_two_torchrun_nodes_train_like_one_process(tmp_path, capsys):
    """``torchrun --nnodes 2 --nproc-per-node 1`` twice on this machine: rank 0 writes results.json and
    checkpoint.pt, the other rank nothing, and the metrics are those of one process on the same batches."""
    argv = ["--method", "proxy_anchor", *DATA, "--epochs", "2"]
    out = tmp_path / "run"
    nodes = _two_nodes([*argv, "--output", str(out)], _env(tmp_path), tmp_path)
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    try:
        single = _one_process(argv, capsys)  # meanwhile
        codes = _wait(nodes, 240, logs)
    finally:
        _stop(nodes)
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "results.json"]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_batch_size"] == 32 and results["restart_count"] == 0
    assert results["replica_max_abs_diff"] <= 1e-6
    for key in METRICS:
        assert results[key] == pytest.approx(single[key], abs=1e-4), key
    losses = [h["loss"] for h in results["history"]]
    assert losses == pytest.approx([h["loss"] for h in single["history"]], rel=1e-4)
    printed = [log.read_text() for log in logs]
    assert sum('"world_size": 2' in text for text in printed) == 0  # no --json: the summary line, once
    assert sum(f"wrote {out / 'results.json'}" in text for text in printed) == 1  # rank 0's only


@pytest.fixture
def faulty(pml_registry, tmp_path, monkeypatch):
    """The ``faulty`` method (tests/fault_plugins.py) in a plugins folder, loaded here and by every worker."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "faulty.py").write_text(PLUGIN)
    monkeypatch.setenv(ENV_PLUGINS_DIR, str(plugins))
    pml_anchors.reset()
    pids = tmp_path / "pids"
    pids.mkdir()
    return plugins, pids


def test_a_killed_torchrun_worker_ends_the_job_naming_its_rank(tmp_path, faulty):
    """Two nodes; rank 1's worker is killed (SIGKILL) while training: both torchrun processes end with an error
    within a minute (the peer's collective fails at once, not after --timeout), torchrun's naming rank 1."""
    plugins, pids = faulty
    kwargs = json.dumps({"pid_dir": str(pids), "step_seconds": 0.05})
    argv = ["--method", "faulty", *DATA, "--epochs", "1000", "--no-output", "--loss-kwargs", kwargs]
    nodes = _two_nodes([*argv, "--timeout", "120"], _env(tmp_path, plugins), tmp_path)
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    try:
        deadline = time.monotonic() + 120
        while not (pids / "rank1.pid").exists():
            assert time.monotonic() < deadline and all(p.poll() is None for p in nodes), logs[0].read_text()
            time.sleep(0.05)
        killed = time.monotonic()
        os.kill(int((pids / "rank1.pid").read_text()), signal.SIGKILL)
        codes = _wait(nodes, 60, logs)
        ended = time.monotonic() - killed
    finally:
        _stop(nodes)
    assert all(code != 0 for code in codes)
    assert ended < 60, f"{ended:.1f} s"
    text = "\n".join(log.read_text() for log in logs)
    assert "rank      : 1 (local_rank: 0)" in text and "Signal 9 (SIGKILL)" in text
    print(f"killed rank 1: both torchrun nodes ended {ended:.1f} s later")


def test_a_restarted_torchrun_job_resumes_from_its_checkpoint(tmp_path, faulty, capsys):
    """``torchrun --max-restarts 1``: rank 1 dies at the first step of epoch 2 (attempt 0 only). The restarted
    workers resume from epoch 1's checkpoint and end with the results of an uninterrupted run."""
    plugins, pids = faulty
    kwargs = {"pid_dir": str(pids), "fault": "exit", "fault_step": 5}  # 128 items / 32: 4 steps an epoch
    argv = ["--method", "faulty", *DATA, "--epochs", "3", "--loss-kwargs", json.dumps(kwargs)]
    out = tmp_path / "run"
    launcher = ["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"]
    log = tmp_path / "torchrun.log"
    job = _torchrun(launcher, [*argv, "--output", str(out)], _env(tmp_path, plugins), log)
    try:
        uninterrupted = _one_process(argv, capsys)  # meanwhile; its loss never faults (no torchrun, no rank 1)
        codes = _wait([job], 240, [log])
    finally:
        _stop([job])
    assert codes == [0], log.read_text()[-3000:]
    assert (pids / "fault.time").exists()  # the fault happened
    results = json.loads((out / "results.json").read_text())
    assert results["restart_count"] == 1 and results["epochs"] == 3
    assert [h["epoch"] for h in results["history"]] == [1, 2, 3]  # epoch 1 from the checkpoint, 2-3 trained again
    for key in METRICS:
        assert results[key] == pytest.approx(uninterrupted[key], abs=1e-4), key
    assert [h["loss"] for h in results["history"]] == pytest.approx(
        [h["loss"] for h in uninterrupted["history"]], rel=1e-4
    )
    assert not list(out.glob(".*.tmp"))
