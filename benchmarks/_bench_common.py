"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this imports as a
top-level module): the shared command-line options, device setup and sync, timing in interleaved rounds, the
run's metadata and the JSON results file."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def add_common_args(parser: argparse.ArgumentParser, *, repeats: int, warmup: int, threads: int | None = None) -> None:
    """The options every script shares: ``--repeats``, ``--warmup``, ``--threads``, ``--device``, ``--seed`` and
    ``--json`` (the defaults for the first three are the script's)."""
    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed rounds (default {repeats})")
    parser.add_argument(
        "--warmup", type=int, default=warmup, help=f"untimed steps per contestant first (default {warmup})"
    )
    threads_default = "torch's" if threads is None else threads
    parser.add_argument(
        "--threads", type=int, default=threads, help=f"torch.set_num_threads (default: {threads_default})"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", nargs="?", const="-", metavar="FILE", help="write JSON results to FILE ('-' or none: stdout)"
    )


#: ``--lse-path`` choices: the size limits of ``pml_anchors.losses.logsumexp.NATIVE_MAX_ENTRIES`` they set.
LSE_PATHS = {"auto": None, "kernel": 0, "torch": 1 << 62}


def add_lse_path_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lse-path",
        choices=list(LSE_PATHS),
        default="auto",
        help="how small linear/cosine log-sum-exps run: auto (torch's operations up to the shipped "
        "NATIVE_MAX_ENTRIES, the hand-written kernel beyond), kernel or torch everywhere (unchunked)",
    )


def set_lse_path(path: str) -> None:
    """Apply ``--lse-path``: set both device types' limits of ``NATIVE_MAX_ENTRIES`` (``auto`` keeps them)."""
    limit = LSE_PATHS[path]
    if limit is not None:
        from pml_anchors.losses import logsumexp

        logsumexp.NATIVE_MAX_ENTRIES = dict.fromkeys(logsumexp.NATIVE_MAX_ENTRIES, limit)


def setup_device(name: str, threads: int | None) -> torch.device:
    """``torch.device(name)`` after ``torch.set_num_threads(threads)`` (when given); exits if CUDA is asked for
    but absent."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    return device


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock milliseconds of ``fn()``, CUDA work included."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """``items`` starting at position ``round_index`` (mod len): round r of an interleaved benchmark, so that load
    changes during a round do not always hit the same contestant."""
    shift = round_index % len(items)
    return [*items[shift:], *items[:shift]]


def run_meta(device: torch.device, **extra: Any) -> dict[str, Any]:
    """Where and how the numbers were measured: device, threads, versions, the command line, plus ``extra``."""
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **extra,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }


def write_results(path: str, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``{"meta": ..., "results": rows}`` as JSON to ``path``, or to stdout when ``path`` is ``"-"``."""
    payload = json.dumps({"meta": meta, "results": rows}, indent=1)
    if path == "-":
        print(payload, flush=True)
    else:
        with open(path, "w") as fh:
            fh.write(payload + "\n")
