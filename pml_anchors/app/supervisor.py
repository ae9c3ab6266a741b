"""Run one job's worker processes (``train --nproc``) so that a fault ends the job instead of hanging it.

:func:`run_workers` starts ``N`` processes (start method *spawn*) and watches them:

* a worker that raises reports its traceback at once (:func:`report_failure`, before any cleanup that could block
  on a broken process group), and one that dies without a word is seen by its exit; one that stays stopped
  (``SIGSTOP``, a debugger) for longer than ``timeout`` counts as failed too. The first failure ends every other
  worker (``SIGTERM``, ``SIGKILL`` after a grace period) and raises :class:`WorkerError`, whose message names
  the worker that caused it: ``worker rank 1 (pid 4242) was killed by signal SIGKILL`` rather than the timeout
  it caused in rank 0;
* no worker outlives the launcher: each asks the kernel for ``SIGKILL`` when its parent dies (Linux
  ``PR_SET_PDEATHSIG``) and also watches its parent pid from a thread (other systems), so ``kill -9`` of the
  launcher ends the job; a ``SIGTERM`` or ``SIGHUP`` to the launcher first ends the workers, then the launcher
  with the same signal;
* results travel back through pipes: the launcher writes no file, so there is nothing to remove afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = ["WorkerError", "report_failure", "run_workers"]

#: seconds between two looks at the workers' states (launcher) and at the parent pid (worker)
POLL_S = 0.5
#: seconds the other workers get to exit on SIGTERM after a failure, before SIGKILL
GRACE_S = 3.0
#: seconds the workers get to exit after they all returned their values (at least; ``timeout`` if longer)
EXIT_S = 60.0
#: after a failure: seconds to wait for the other workers' reports (the failure often causes one in a peer)
SETTLE_S = 0.5

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
    _send(channel, ("error", summary, text))


def _send(channel: Connection, message: tuple) -> None:
    with contextlib.suppress(OSError):  # the launcher is gone: the parent watch ends this process
        channel.send(message)


def _bootstrap(target: Callable[..., Any], rank: int, args: tuple, channel: Connection, launcher: int) -> None:
    """A worker's entry point: ``target(rank, *args)``; its value (or its error) goes back through ``channel``."""
    global _channel
    _die_with(launcher)
    _channel = channel
    try:
        value = target(rank, *args)
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt and SystemExit too: the launcher hears of all
        report_failure(exc)
        sys.exit(1)
    if _channel is None:  # the target reported a failure and then returned
        sys.exit(1)
    _channel = None
    try:
        channel.send(("ok", value))
    except OSError:
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - e.g. a value that does not pickle
        _channel = channel
        report_failure(exc)
        sys.exit(1)


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
class _Worker:
    rank: int
    process: Any  # multiprocessing's SpawnProcess
    channel: Connection | None
    status: str = "running"  # "ok" (value received) or "error" (failure reported)
    value: Any = None
    exited: bool = False
    stopped_since: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def name(self) -> str:
        return f"worker rank {self.rank} (pid {self.pid})"


@dataclass
class _Failure:
    worker: _Worker
    kind: str  # "died" (exit or signal without a report), "stopped", "raised"
    what: str  # e.g. "exited with code 3"
    traceback: str = ""


class _Signalled(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def run_workers(
    target: Callable[..., Any], args: tuple, nprocs: int, *, timeout: float, grace: float = GRACE_S
) -> list[Any]:
    """Run ``target(rank, *args)`` in ``nprocs`` spawned processes; the value each returned, by rank.

    ``target`` must be importable (a module-level function) and its values picklable. The first failure ends
    every worker and raises :class:`WorkerError`; a worker stopped for over ``timeout`` seconds is a failure.
    ``SIGTERM`` or ``SIGHUP`` to this process (when their action is the default one) ends the workers, then this
    process with the same signal. Workers still running after they all returned their values get ``timeout``
    seconds (at least a minute) to exit before they are ended (a ``RuntimeWarning``: the values are complete).
    """
    context = multiprocessing.get_context("spawn")
    workers: list[_Worker] = []
    with _ending_on_signals():
        try:
            for rank in range(nprocs):
                receive, send = context.Pipe(duplex=False)
                process = context.Process(
                    target=_bootstrap, args=(target, rank, args, send, os.getpid()), name=f"pml-anchors-rank-{rank}"
                )
                workers.append(_Worker(rank, process, receive))
                process.start()
                send.close()  # the worker holds the only write end: EOF when it is gone
            failures = _supervise(workers, timeout)
            if failures:
                _stop(workers, grace)
                _drain(workers, failures)
                raise _error(failures, timeout)
            _await_exits(workers, timeout)
            return [w.value for w in workers]
        finally:
            _stop(workers, grace)
            for w in workers:
                if w.channel is not None:
                    w.channel.close()
                with contextlib.suppress(ValueError):  # a process that never started
                    w.process.close()


def _supervise(workers: Sequence[_Worker], timeout: float) -> list[_Failure]:
    """Watch until every worker returned its value (``[]``) or one failed (the failures seen)."""
    failures: list[_Failure] = []
    while not failures and any(w.status != "ok" for w in workers):
        _handle(workers, _wait(workers, POLL_S), failures)
        now = time.monotonic()
        for w in workers:
            state = None if w.exited or w.status != "running" else _process_state(w.pid)
            if state not in ("T", "t"):
                w.stopped_since = None
            elif w.stopped_since is None:
                w.stopped_since = now
            elif now - w.stopped_since > timeout:
                what = (
                    f"stopped responding: its process has been stopped (SIGSTOP or a debugger) for over {timeout:g} s"
                )
                failures.append(_Failure(w, "stopped", what))
    if failures:  # the failure often makes a peer fail too: hear of it, then name the one that failed first
        deadline = time.monotonic() + SETTLE_S
        while (left := deadline - time.monotonic()) > 0 and _handle(workers, _wait(workers, left), failures):
            pass
        for w in workers:
            if not w.exited and w.status == "running" and _process_state(w.pid) in ("T", "t"):
                if not any(f.worker is w for f in failures):
                    what = "stopped responding: its process is stopped (SIGSTOP or a debugger)"
                    failures.append(_Failure(w, "stopped", what))
    return failures


def _wait(workers: Sequence[_Worker], timeout: float) -> list[Any]:
    waitables = [w.channel for w in workers if w.channel is not None]
    waitables += [w.process.sentinel for w in workers if not w.exited]
    return wait(waitables, timeout=timeout) if waitables else []


def _handle(workers: Sequence[_Worker], ready: list[Any], failures: list[_Failure]) -> bool:
    """Take in the reports and exits in ``ready``; whether there were any."""
    for w in workers:
        if w.channel is not None and w.channel in ready:
            _receive(w, failures)
    for w in workers:
        if not w.exited and w.process.sentinel in ready:
            while w.channel is not None:  # what it sent before exiting
                _receive(w, failures)
            w.process.join()
            w.exited = True
            if w.status == "running":
                failures.append(_Failure(w, "died", _exit_text(w.process.exitcode)))
    return bool(ready)


def _receive(w: _Worker, failures: list[_Failure]) -> None:
    assert w.channel is not None
    try:
        message = w.channel.recv()
    except (EOFError, OSError):
        w.channel.close()
        w.channel = None
        return
    if message[0] == "ok":
        w.status, w.value = "ok", message[1]
    else:
        w.status = "error"
        failures.append(_Failure(w, "raised", f"raised {message[1]}", message[2]))


def _drain(workers: Sequence[_Worker], failures: list[_Failure]) -> None:
    """The reports the workers sent before they were ended."""
    for w in workers:
        while w.channel is not None and w.channel.poll():
            _receive(w, failures)


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


def _error(failures: list[_Failure], timeout: float) -> WorkerError:
    """One message: the worker that caused the failure first (a death or a stop before the errors it caused in
    its peers), then what the others reported, then the first error's traceback."""
    order = {"died": 0, "stopped": 0, "raised": 1}
    ranked = sorted(failures, key=lambda f: order[f.kind])  # stable: by time within a kind
    first = ranked[0]
    lines = [f"{first.worker.name} {_first_line(first.what)}"]
    seen = {id(first.worker)}
    for f in ranked[1:]:
        if id(f.worker) not in seen:
            seen.add(id(f.worker))
            lines.append(f"  also {f.worker.name} {_first_line(f.what)}")
    if any(f.kind == "stopped" or "timed out" in f.what.lower() for f in failures):
        lines.append(f"  (a collective waits at most --timeout {timeout:g} s for the other workers)")
    lines.append("every other worker of the job has been ended")
    raised = next((f for f in ranked if f.traceback), None)
    if raised is not None:
        lines += ["", f"{raised.worker.name}'s traceback:", raised.traceback.rstrip()]
    return WorkerError(
        "\n".join(lines), first.worker.rank, first.worker.pid, [(f.worker.rank, f.worker.pid, f.what) for f in failures]
    )


def _first_line(text: str, limit: int = 400) -> str:
    line = text.strip().splitlines()[0] if text.strip() else text
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _await_exits(workers: Sequence[_Worker], timeout: float) -> None:
    """Every worker returned its value: let them exit (they tear down the process group and the interpreter)."""
    deadline = time.monotonic() + max(timeout, EXIT_S)
    for w in workers:
        w.process.join(max(0.0, deadline - time.monotonic()))
    for w in workers:
        code = w.process.exitcode
        if code is None or code != 0:
            what = "did not exit in time and was ended" if code is None else _exit_text(code)
            warnings.warn(
                f"{w.name} {what} after it finished its work; the results are complete", RuntimeWarning, stacklevel=3
            )


def _stop(workers: Sequence[_Worker], grace: float) -> None:
    """End every worker still running: SIGTERM (and SIGCONT, for a stopped one), then SIGKILL after ``grace``."""
    alive = [w for w in workers if _started(w) and w.process.is_alive()]
    resume = getattr(signal, "SIGCONT", None)  # POSIX: a stopped process acts on SIGTERM once it runs again
    for w in alive:
        with contextlib.suppress(OSError):
            w.process.terminate()
            if resume is not None:
                os.kill(w.process.pid, resume)
    deadline = time.monotonic() + grace
    for w in alive:
        w.process.join(max(0.0, deadline - time.monotonic()))
    for w in alive:
        if w.process.is_alive():
            w.process.kill()
        w.process.join()
        w.exited = True


def _started(w: _Worker) -> bool:
    try:
        return w.process.pid is not None
    except ValueError:  # closed
        return False


def _process_state(pid: int | None) -> str | None:
    """The state letter of ``/proc/PID/stat`` (``T``: stopped, ``t``: stopped by a debugger); ``None`` if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 1 :].split()
    return fields[0] if fields else None


@contextlib.contextmanager
def _ending_on_signals() -> Iterator[None]:
    """While the workers run: SIGTERM and SIGHUP (when their action is the default, which would end this
    process at once and leave the workers to the parent-death signal) raise :class:`_Signalled`, so that the
    workers are ended first; the signal is then delivered again, with its default action."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if not caught:  # a second signal while the workers are being ended changes nothing
            caught.append(signum)
            raise _Signalled(signum)

    names = ("SIGTERM", "SIGHUP")
    previous = {
        sig: signal.signal(sig, handler)
        for sig in (getattr(signal, n) for n in names if hasattr(signal, n))
        if signal.getsignal(sig) is signal.SIG_DFL
    }
    try:
        yield
    except _Signalled as exc:
        for sig, old in previous.items():
            signal.signal(sig, old)
        previous = {}
        signal.raise_signal(exc.signum)
        raise SystemExit(128 + exc.signum) from None  # only if the default action did not end the process
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
