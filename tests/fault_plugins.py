"""A plugins-dir file for the fault tests of ``train --nproc`` (test code only: the package has no fault hook).

In-process plugins do not reach the spawned workers; a file in ``PML_ANCHORS_PLUGINS_DIR`` is loaded by each of
them. Its method, ``faulty``, is a cosine softmax over one-hot anchors whose loss also

* writes ``rank<R>.pid`` (its pid) into ``pid_dir`` at its first training step, so a test knows the workers,
  and ``fault.time`` (``time.time()``) just before the fault;
* sleeps ``step_seconds`` every step (a run that lasts until the test ends it);
* injects ``fault`` into rank ``fault_rank`` at its ``fault_step``-th step: ``"exit"`` (``os._exit(3)``, no
  traceback), ``"stop"`` (``SIGSTOP`` to itself: a stalled process) or ``"raise"`` (a ``RuntimeError``), in the
  job's attempt ``fault_attempt`` only (``TORCHELASTIC_RESTART_COUNT``, default 0: a restarted job runs clean).
"""

PLUGIN = '''
"""Test-only method for the --nproc fault tests (see tests/fault_plugins.py)."""
from __future__ import annotations

import os
import signal
import time

import torch.distributed as dist
import torch.nn.functional as F

from pml_anchors import MethodSpec, hookimpl
from pml_anchors.losses import AnchorLoss


class FaultyLoss(AnchorLoss):
    default_anchors = "one_hot"

    def __init__(
        self, num_classes, embedding_size=None, fault="none", fault_rank=1, fault_step=1, pid_dir=None,
        step_seconds=0.0, fault_attempt=0, **kwargs
    ):
        super().__init__(num_classes, embedding_size, **kwargs)
        self.fault, self.fault_rank, self.fault_step = fault, fault_rank, fault_step
        self.fault_attempt = fault_attempt
        self.pid_dir, self.step_seconds, self.steps = pid_dir, step_seconds, 0

    def get_logits(self, embeddings):
        return 10.0 * F.normalize(embeddings, dim=1) @ F.normalize(self.cast_anchors(embeddings), dim=1).T

    def anchor_losses(self, embeddings, labels, anchors, weights):
        rank = dist.get_rank() if dist.is_initialized() else 0
        self.steps += 1
        if self.pid_dir and self.steps == 1:
            path = os.path.join(self.pid_dir, f"rank{rank}.pid")
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)
        if self.step_seconds:
            time.sleep(self.step_seconds)
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if rank == self.fault_rank and self.steps == self.fault_step and self.fault != "none" and (
            attempt == self.fault_attempt
        ):
            if self.pid_dir:  # when the fault happened, for the tests' timings
                with open(os.path.join(self.pid_dir, "fault.time"), "w") as f:
                    f.write(repr(time.time()))
            if self.fault == "exit":
                os._exit(3)
            if self.fault == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            if self.fault == "raise":
                raise RuntimeError(f"injected fault in rank {rank}")
        logits = 10.0 * F.normalize(embeddings, dim=1) @ F.normalize(anchors, dim=1).T
        return {"loss": self.element_loss(F.cross_entropy(logits, labels, reduction="none") * weights)}


@hookimpl
def register_methods(register):
    register(MethodSpec(name="faulty", loss=FaultyLoss))
'''
