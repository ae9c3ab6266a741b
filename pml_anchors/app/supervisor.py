"""Run one job's worker processes (``train --nproc``) with torch's elastic agent, so that a fault ends the job
instead of hanging it.

:func:`run_workers` starts ``N`` processes with ``torch.distributed.elastic``'s ``LocalElasticAgent``, the engine of
``torchrun`` (a standalone c10d rendezvous on this machine, start method *spawn*): every worker gets torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``, ``TORCHELASTIC_*``) and
``max_restarts`` restarts the whole group as ``torchrun --max-restarts`` does. On top of the agent:

* a worker that raises reports its traceback at once (:func:`report_failure`, through a pipe, before any cleanup
  that could block on a broken process group); one that dies without a word is seen by the agent (its exit status
  is read while it is a zombie, so that two failures in one monitoring interval are both named); one that stays
  stopped (``SIGSTOP``, a debugger) for longer than ``timeout`` counts as failed too, and a stopped worker is
  ended at once when another one failed (the agent's ``SIGTERM`` would wait for it to be continued). The agent
  ends every other worker (``SIGTERM``, ``SIGKILL`` after ``grace``) and :func:`run_workers` raises
  :class:`WorkerError`, one message naming the worker that caused it: ``worker rank 1 (pid 4242) was killed by
  signal SIGKILL`` rather than the error it caused in rank 0 (the agent's ``ChildFailedError`` turned into a line);
* no worker outlives the launcher: each asks the kernel for ``SIGKILL`` when its parent dies (Linux
  ``PR_SET_PDEATHSIG``; torch asks for ``SIGINT``, which a background job ignores) and also watches its parent pid
  from a thread (other systems). ``SIGTERM``/``SIGHUP`` to the launcher make the agent end the workers, then the
  launcher ends with the same signal; ``SIGINT`` (Ctrl-C) is a ``KeyboardInterrupt`` once the workers are ended;
* nothing is written to disk: the agent's log folder is ``os.devnull`` (no ``torchelastic_*`` folder, no error
  files), results come back through the agent's queues and reports through pipes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = ["WorkerError", "report_failure", "run_workers"]

#: seconds between two looks at the workers (the agent's monitor interval) and at the parent pid (worker)
POLL_S = 0.1
#: seconds the other workers get to exit on SIGTERM after a failure, before SIGKILL
GRACE_S = 3.0
#: after a failure: seconds to wait for the workers' reports (the failure often causes one in a peer)
SETTLE_S = 0.5
#: the signals torch's agent turns into an exception in the launcher (it restores nothing; run_workers does)
HANDLED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class WorkerError(ChildProcessError):
    """A worker of the job failed; every other worker has been ended.

    ``rank`` and ``pid`` name the worker that caused it (a worker that died or stopped comes before the peers
    that then failed waiting for it); ``failures`` lists every failure seen, ``(rank, pid, what)``.
    """

    def __init__(self, message: str, rank: int, pid: int | None, failures: list[tuple[int, int | None, str]]):
        super().__init__(message)
        self.rank, self.pid, self.failures = rank, pid, failures


# ---------------------------------------------------------------------------------------------------------------
# in the worker

_channel: Connection | None = None


def report_failure(exc: BaseException) -> None:
    """In a worker: tell the launcher now that ``exc`` ends this worker. Call it before a cleanup that may block
    (e.g. ``destroy_process_group`` after a peer died); later calls are no-ops. Outside a worker, a no-op."""
    global _channel
    channel, _channel = _channel, None
    if channel is None:
        return
    summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with contextlib.suppress(OSError):  # the launcher is gone: the parent watch ends this process
        channel.send(("error", summary, text))


def _bootstrap(target: Callable[..., Any], args: tuple, channels: list[Connection], launcher: int) -> Any:
    """A worker's entry point (the agent's function entrypoint): ``target(*args)``; an error goes back through
    ``channels[LOCAL_RANK]``, and the worker exits with status 1 (``SystemExit``: torch writes no error file)."""
    global _channel
    _die_with(launcher)
    local_rank = int(os.environ["LOCAL_RANK"])
    for i, channel in enumerate(channels):
        if i != local_rank:
            channel.close()
    _channel = channels[local_rank]
    try:
        value = target(*args)
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt and SystemExit too: the launcher hears of all
        report_failure(exc)
        sys.exit(1)
    if _channel is None:  # the target reported a failure and then returned
        sys.exit(1)
    _channel = None
    return value


def _die_with(launcher: int) -> None:
    """End this process when ``launcher`` (its parent) ends, however it ends."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # the kernel's way, even if this process hangs in C
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != launcher:  # it ended before prctl
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(launcher,), name="pml-anchors-parent-watch", daemon=True).start()


def _watch_parent(launcher: int) -> None:
    while os.getppid() == launcher:
        time.sleep(POLL_S)
    os._exit(1)


# ---------------------------------------------------------------------------------------------------------------
# in the launcher


@dataclass
class _Failure:
    rank: int
    pid: int | None
    kind: str  # "died" (exit or signal without a report), "stopped", "raised"
    what: str  # e.g. "exited with code 3"
    traceback: str = ""


class _Reports:
    """The workers' failure reports, read from their pipes by a thread while the agent runs."""

    def __init__(self, receivers: list[Connection]):
        self.receivers = receivers
        self.received: dict[int, tuple[str, str]] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, name="pml-anchors-worker-reports", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        open_ = dict(enumerate(self.receivers))
        while open_ and not self.done.is_set():
            for ready in wait(list(open_.values()), timeout=POLL_S):
                rank = next(r for r, c in open_.items() if c is ready)
                try:
                    message = open_[rank].recv()
                except (EOFError, OSError):
                    del open_[rank]
                    continue
                with self.lock:
                    self.received.setdefault(rank, (message[1], message[2]))

    def clear(self) -> None:
        with self.lock:
            self.received.clear()

    def snapshot(self) -> dict[int, tuple[str, str]]:
        with self.lock:
            return dict(self.received)

    def close(self) -> None:
        self.done.set()
        self.thread.join()


def _agent_class() -> type:
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    class WatchfulAgent(LocalElasticAgent):
        """torch's local agent, plus: a worker stopped for over ``stall_timeout`` seconds fails, a stopped worker is
        ended when another fails, exit statuses are read before the agent reaps them, and shutting down continues
        stopped workers so that ``SIGTERM`` reaches them."""

        def __init__(self, spec: Any, *, stall_timeout: float, grace: float, reports: _Reports, **kwargs: Any):
            super().__init__(spec, shutdown_timeout=max(1, round(grace)), **kwargs)
            self.stall_timeout, self.grace, self.reports = stall_timeout, grace, reports
            self.exits: dict[int, tuple[int, int]] = {}  # rank -> (pid, exit code or -signal)
            self.stopped: dict[int, tuple[int, str]] = {}  # rank -> (pid, what)
            self.stopped_since: dict[int, float] = {}  # pid -> monotonic time first seen stopped
            self.pids: dict[int, int] = {}  # rank -> pid, of the current attempt

        def _start_workers(self, worker_group: Any) -> dict[int, Any]:
            self.exits, self.stopped, self.stopped_since = {}, {}, {}
            self.reports.clear()
            pids = super()._start_workers(worker_group)
            self.pids = {w.global_rank: pids[w.local_rank] for w in worker_group.workers}
            return pids

        def _monitor_workers(self, worker_group: Any) -> Any:
            self._watch()
            return super()._monitor_workers(worker_group)

        def _watch(self) -> None:
            now = time.monotonic()
            states = {rank: _process_stat(pid) for rank, pid in self.pids.items()}
            for rank, (state, status) in states.items():
                if state == "Z" and status is not None and rank not in self.exits:
                    self.exits[rank] = (self.pids[rank], status)
            failed = any(code != 0 for _, code in self.exits.values())
            for rank, (state, _) in states.items():
                pid = self.pids[rank]
                if state not in ("T", "t"):
                    self.stopped_since.pop(pid, None)
                    continue
                since = self.stopped_since.setdefault(pid, now)
                if now - since > self.stall_timeout:
                    what = (
                        "stopped responding: its process has been stopped (SIGSTOP or a debugger) "
                        f"for over {self.stall_timeout:g} s"
                    )
                elif failed:
                    what = "stopped responding: its process is stopped (SIGSTOP or a debugger)"
                else:
                    continue
                self.stopped.setdefault(rank, (pid, what))
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)  # a stopped process acts on nothing else

        def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM, timeout: int = 30) -> None:
            for pid in self.pids.values():  # POSIX: a stopped process acts on SIGTERM once it runs again
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
            super()._shutdown(death_sig, max(1, min(timeout, round(self.grace))))

    return WatchfulAgent


def run_workers(
    target: Callable[..., Any],
    args: tuple,
    nprocs: int,
    *,
    timeout: float,
    grace: float = GRACE_S,
    max_restarts: int = 0,
    verbose: bool = False,
) -> list[Any]:
    """Run ``target(*args)`` in ``nprocs`` processes under torch's elastic agent; the value each returned, by rank.

    Each process finds its rank in torchrun's environment (``RANK``, ...). ``target`` must be importable (a
    module-level function) and its values picklable. With ``max_restarts`` K, a failed group is restarted up to K
    times (``TORCHELASTIC_RESTART_COUNT`` tells the workers); then, or at once without restarts, the failure raises
    :class:`WorkerError`. A worker stopped for over ``timeout`` seconds is a failure. ``verbose`` shows the agent's
    log.
    """
    from torch.distributed.elastic.agent.server.api import WorkerSpec
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.rendezvous.registry import get_rendezvous_handler

    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in range(nprocs)]
    receivers, senders = [r for r, _ in pipes], [s for _, s in pipes]
    reports = _Reports(receivers)
    parameters = RendezvousParameters(  # torchrun --standalone: a c10d store on a free port of this machine
        backend="c10d", endpoint="localhost:0", run_id=f"pml-anchors-{uuid.uuid4().hex}", min_nodes=1, max_nodes=1
    )
    agent = None
    try:
        with _quiet_agent(verbose), _signal_handlers_restored():
            spec = WorkerSpec(
                role="pml-anchors",
                local_world_size=nprocs,
                rdzv_handler=get_rendezvous_handler(parameters),
                entrypoint=_bootstrap,
                args=(target, args, senders, os.getpid()),
                max_restarts=max_restarts,
                monitor_interval=POLL_S,
            )
            agent = _agent_class()(
                spec,
                logs_specs=DefaultLogsSpecs(log_dir=os.devnull),
                start_method="spawn",
                stall_timeout=timeout,
                grace=grace,
                reports=reports,
            )
            try:
                result = agent.run()
            except SignalException as exc:  # the agent has ended the workers
                _end_with(exc.sigval)
                raise  # not reached
            finally:
                spec.rdzv_handler.shutdown()
        if result is None or result.is_failed():
            deadline = time.monotonic() + SETTLE_S  # reports still in the pipes
            while time.monotonic() < deadline and not reports.snapshot():
                time.sleep(0.02)
            raise _error(agent, result, timeout)
        return [result.return_values[rank] for rank in range(nprocs)]
    finally:
        reports.close()
        for connection in (*receivers, *senders):
            connection.close()


def _end_with(signum: int) -> None:
    """After the agent ended the workers on ``signum``: Ctrl-C is a ``KeyboardInterrupt``; another signal ends this
    process as its default action would (the caller's status then says which signal)."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt("interrupted: every worker of the job has been ended")
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
    raise SystemExit(128 + int(signum))  # only if the default action did not end the process


@contextlib.contextmanager
def _signal_handlers_restored() -> Iterator[None]:
    """torch's agent installs handlers for :data:`HANDLED_SIGNALS` (raising ``SignalException``) and leaves them;
    put back what was there."""
    signals = [getattr(signal, name) for name in HANDLED_SIGNALS if hasattr(signal, name)]
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in signals} if main else {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _quiet_agent(verbose: bool) -> Iterator[None]:
    """The agent logs every failure with a traceback of its own (and warnings while it ends workers); the launcher
    says it in one :class:`WorkerError` instead. ``verbose`` keeps torch's log."""
    if verbose:
        yield
        return
    logs = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    handler = logging.NullHandler()
    propagate = [log.propagate for log in logs]
    for log in logs:
        log.addHandler(handler)
        log.propagate = False
    try:
        yield
    finally:
        for log, before in zip(logs, propagate):
            log.removeHandler(handler)
            log.propagate = before


def _error(agent: Any, result: Any, timeout: float) -> WorkerError:
    """One message: the worker that caused the failure first (a death or a stop before the errors it caused in
    its peers), then what the others reported, then the first error's traceback."""
    reports = agent.reports.snapshot()
    failures: dict[int, _Failure] = {}
    for rank, (pid, what) in agent.stopped.items():
        failures[rank] = _Failure(rank, pid, "stopped", what)
    exits = {rank: (pid, code) for rank, (pid, code) in agent.exits.items() if code != 0}
    for rank, failure in (result.failures if result is not None else {}).items():
        exits.setdefault(rank, (failure.pid, failure.exitcode))
    for rank, (pid, code) in exits.items():
        if rank not in failures and rank not in reports:
            failures[rank] = _Failure(rank, pid, "died", _exit_text(code))
    for rank, (summary, text) in reports.items():
        if rank not in failures:
            failures[rank] = _Failure(rank, agent.pids.get(rank), "raised", f"raised {summary}", text)
    if not failures:  # e.g. the rendezvous ended the group
        return WorkerError("the job's workers failed (no worker reported why)", -1, None, [])
    order = {"died": 0, "stopped": 0, "raised": 1}
    arrival = {rank: i for i, rank in enumerate(reports)}  # the first report is the cause, the later ones its effects
    ranked = sorted(failures.values(), key=lambda f: (order[f.kind], arrival.get(f.rank, -1), f.rank))
    first = ranked[0]
    lines = [f"{_name(first)} {_first_line(first.what)}"]
    lines += [f"  also {_name(f)} {_first_line(f.what)}" for f in ranked[1:]]
    if any(f.kind == "stopped" or "timed out" in f.what.lower() for f in ranked):
        lines.append(f"  (a collective waits at most --timeout {timeout:g} s for the other workers)")
    lines.append("every other worker of the job has been ended")
    raised = next((f for f in ranked if f.traceback), None)
    if raised is not None:
        lines += ["", f"{_name(raised)}'s traceback:", raised.traceback.rstrip()]
    return WorkerError("\n".join(lines), first.rank, first.pid, [(f.rank, f.pid, f.what) for f in ranked])


def _name(failure: _Failure) -> str:
    return f"worker rank {failure.rank} (pid {failure.pid})"


def _exit_text(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code >= 0:
        return f"exited with code {code} before it finished" if code == 0 else f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by signal {name}" + (" (also what the out-of-memory killer sends)" if name == "SIGKILL" else "")


def _first_line(text: str, limit: int = 400) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _process_stat(pid: int | None) -> tuple[str | None, int | None]:
    """``(state, exit code)`` from ``/proc/PID/stat``: the state letter (``T``: stopped, ``t``: stopped by a
    debugger, ``Z``: exited, not yet reaped) and, for a zombie, its exit code (``-signal`` when a signal ended it;
    field 52, Linux 3.5+); ``(None, None)`` if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None, None
    fields = stat[stat.rfind(")") + 1 :].split()
    if not fields:
        return None, None
    status = None
    if fields[0] == "Z" and len(fields) > 49:
        raw = int(fields[49])
        status = -(raw & 0x7F) if raw & 0x7F else (raw >> 8) & 0xFF
    return fields[0], status
