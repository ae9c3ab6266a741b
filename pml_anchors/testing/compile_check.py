"""Does a loss compile whole, and does its training step wait for the device? :func:`compile_report`.

What :func:`~pml_anchors.testing.check_method` reports under ``"compile"`` (a report, not a pass/fail check: a
method with graph breaks or host syncs works, only slower on an accelerator):

* ``graph_breaks``: how many times ``torch._dynamo.explain`` splits the loss's forward (0: ``torch.compile(loss,
  fullgraph=True)`` works and a whole training step can be captured in a CUDA graph), and ``break_reasons``, the
  first line of each reason with the file and line that caused it;
* ``host_reads``: the breaks that read a tensor's value back to Python (``.item()``, ``.tolist()``, ``int(t)``,
  ``if t:``, a data-dependent shape such as ``nonzero``): each is a host-device synchronisation per step on an
  accelerator, found on the CPU;
* ``cuda_syncs``: with a CUDA GPU, the synchronisations ``torch.cuda.set_sync_debug_mode`` counts in one forward and
  backward on it, after a warm-up call (``None`` without a GPU).
"""

from __future__ import annotations

import copy
import re
import warnings
from typing import Any

__all__ = ["compile_report"]

#: Break reasons that come from reading a tensor's value on the host.
_HOST_READ = re.compile(
    r"item\(\)|tolist|data-dependent|dynamic shape operator|generic_jump TensorVariable|scalar|__bool__|nonzero",
    re.IGNORECASE,
)


def compile_report(loss: Any, embeddings: Any, labels: Any) -> dict[str, Any]:
    """``{"graph_breaks", "break_reasons", "host_reads", "cuda_syncs"}`` of ``loss(embeddings, labels)`` (see the
    module docstring); ``graph_breaks`` is ``None`` (and ``error`` says why) if dynamo could not trace it at all."""
    import torch
    import torch._dynamo  # about a second to import: only when a report is asked for

    report: dict[str, Any] = {"graph_breaks": None, "break_reasons": [], "host_reads": None}
    try:
        explained = torch._dynamo.explain(loss)(embeddings.detach(), labels)
    except (RuntimeError, TypeError, ValueError, AttributeError, NotImplementedError, AssertionError) as error:
        report["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    else:
        reasons = []
        for item in explained.break_reasons:
            frame = item.user_stack[-1] if item.user_stack else None
            where = f" ({frame.filename}:{frame.lineno})" if frame is not None else ""
            reasons.append(item.reason.splitlines()[0] + where)
        report["graph_breaks"] = explained.graph_break_count
        report["break_reasons"] = reasons
        report["host_reads"] = sum(1 for r in reasons if _HOST_READ.search(r))
    report["cuda_syncs"] = _cuda_syncs(loss, embeddings, labels) if torch.cuda.is_available() else None
    return report


def _cuda_syncs(loss: Any, embeddings: Any, labels: Any) -> int:
    """Synchronisations in one forward + backward of a CUDA copy of ``loss``, after one warm-up call."""
    import torch

    gpu = copy.deepcopy(loss).cuda()
    x = embeddings.detach().cuda().requires_grad_(True)
    y = labels.cuda()
    gpu(x, y).backward()  # warm-up: lazily built state, library handles
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            gpu(x, y).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(1 for w in caught if "synchroniz" in str(w.message).lower())
