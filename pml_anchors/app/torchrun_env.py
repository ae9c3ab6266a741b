"""The environment ``torchrun`` (``python -m torch.distributed.run``, torch's elastic agent) gives each worker process.

The agent starts every worker with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT`` (the ``env://`` rendezvous of ``torch.distributed.init_process_group``) and the ``TORCHELASTIC_*``
variables: ``TORCHELASTIC_RESTART_COUNT`` (0 on the first attempt, ``k`` after the ``k``-th restart that
``--max-restarts`` allows), ``TORCHELASTIC_MAX_RESTARTS`` and ``TORCHELASTIC_RUN_ID`` (``--rdzv-id``). Other
launchers that set the ``env://`` variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) are read the
same way; ``LOCAL_RANK`` then defaults to ``RANK`` and the restart count to 0.

Stdlib only: the command line reads it before torch is imported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ENV_KEYS", "TorchrunEnv", "detect"]

#: the ``env://`` variables a worker needs; ``RANK`` or ``TORCHELASTIC_RUN_ID`` alone marks a launched worker
ENV_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class TorchrunEnv:
    """One worker's place in a job started by ``torchrun`` (or by ``train --nproc``, which runs torch's agent)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    restart_count: int = 0
    max_restarts: int = 0
    run_id: str = ""

    @property
    def restarted(self) -> bool:
        """Whether this is a restart of the job (``--max-restarts``): it resumes from the last checkpoint."""
        return self.restart_count > 0


def _int(environ: Mapping[str, str], key: str, default: int | None = None, *, minimum: int = 0) -> int:
    text = environ.get(key)
    if text is None or not text.strip():
        if default is None:
            raise ValueError(f"torchrun environment: {key} is not set")
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"torchrun environment: {key} must be an integer, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"torchrun environment: {key} must be >= {minimum}, got {value}")
    return value


def detect(environ: Mapping[str, str] | None = None) -> TorchrunEnv | None:
    """The worker's :class:`TorchrunEnv`, or ``None`` outside a launched job (neither ``RANK`` nor
    ``TORCHELASTIC_RUN_ID`` set). A job whose variables are incomplete or not numbers is a ``ValueError`` naming
    the variable, not a silent single-process run."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ and "TORCHELASTIC_RUN_ID" not in environ:
        return None
    missing = [key for key in ENV_KEYS if not environ.get(key, "").strip()]
    if missing:
        raise ValueError(
            f"torchrun environment: {', '.join(missing)} not set (a launched worker needs {', '.join(ENV_KEYS)}; "
            "start the job with torchrun, or unset RANK to train in one process)"
        )
    world = _int(environ, "WORLD_SIZE", minimum=1)
    rank = _int(environ, "RANK")
    if rank >= world:
        raise ValueError(f"torchrun environment: RANK {rank} is not below WORLD_SIZE {world}")
    local_rank = _int(environ, "LOCAL_RANK", rank)
    local_world = _int(environ, "LOCAL_WORLD_SIZE", 1 if "LOCAL_RANK" not in environ else local_rank + 1, minimum=1)
    return TorchrunEnv(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        local_world_size=max(local_world, local_rank + 1),
        master_addr=environ["MASTER_ADDR"].strip(),
        master_port=_int(environ, "MASTER_PORT", minimum=1),
        restart_count=_int(environ, "TORCHELASTIC_RESTART_COUNT", 0),
        max_restarts=_int(environ, "TORCHELASTIC_MAX_RESTARTS", 0),
        run_id=environ.get("TORCHELASTIC_RUN_ID", ""),
    )
