"""Checks a plugin's own tests run beside :func:`~pml_anchors.testing.check_method`, with the tolerances the
built-in methods meet: dtypes (float64 reference, float32, bfloat16 under autocast and as input) and a plugin
package that imports without torch (so that listing methods stays fast)."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

from .conformance import ConformanceError

__all__ = ["check_dtypes", "check_import_is_light"]


def _close(a: float, b: float, rtol: float) -> bool:
    return math.isfinite(a) and abs(a - b) <= rtol * abs(b)


def check_dtypes(
    loss: Any, embeddings: Any, labels: Any, *, rtol_float32: float = 1e-6, rtol_bfloat16: float = 2e-2
) -> dict[str, float]:
    """The loss on ``embeddings`` in float32, in bfloat16 (under CPU autocast, with a finite gradient, and as bf16
    input without autocast) against its float64 value; the anchors keep their dtype throughout.

    Checks that the loss computes in the embeddings' dtype on a cast copy of its anchors and returns float32 for
    float32 (and 16-bit) inputs. Raises :class:`ConformanceError` naming the failed check; returns the values.
    """
    import torch

    anchors = getattr(loss, "anchors", None)
    anchor_dtype = None if anchors is None else anchors.dtype
    reference = loss(embeddings.double(), labels)
    value32 = loss(embeddings.float(), labels)
    if reference.dtype != torch.float64 or value32.dtype != torch.float32:
        raise ConformanceError(f"float64/float32 embeddings gave {reference.dtype}/{value32.dtype} losses")
    ref = float(reference)
    if not _close(float(value32), ref, rtol_float32):
        raise ConformanceError(f"float32 loss {float(value32)} differs from float64 {ref} by more than {rtol_float32}")
    leaf = embeddings.float().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = loss(leaf, labels)
    autocast.backward()
    if not _close(float(autocast), ref, rtol_bfloat16):
        raise ConformanceError(f"bf16-autocast loss {float(autocast)} differs from {ref} by more than {rtol_bfloat16}")
    if leaf.grad is None or not torch.isfinite(leaf.grad).all():
        raise ConformanceError("bf16-autocast gradient is missing or not finite")
    bf16 = loss(embeddings.bfloat16(), labels)
    if not _close(float(bf16), ref, rtol_bfloat16):
        raise ConformanceError(f"bf16-input loss {float(bf16)} differs from {ref} by more than {rtol_bfloat16}")
    if anchors is not None and loss.anchors.dtype != anchor_dtype:
        raise ConformanceError(f"the anchors changed dtype from {anchor_dtype} to {loss.anchors.dtype}")
    return {"float64": ref, "float32": float(value32), "bfloat16_autocast": float(autocast), "bfloat16": float(bf16)}


def check_import_is_light(module: str, forbidden: tuple[str, ...] = ("torch",)) -> None:
    """Importing ``module`` in a fresh interpreter loads none of ``forbidden`` (a plugin's package names its loss
    as a lazy ``"module:Class"`` string, so ``pml-anchors methods`` imports no torch)."""
    code = (
        f"import sys, {module}\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        "print(','.join(loaded))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise ConformanceError(f"importing {module} failed:\n{done.stderr}")
    loaded = done.stdout.strip()
    if loaded:
        raise ConformanceError(f"importing {module} loaded {loaded}")
