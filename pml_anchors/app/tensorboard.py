"""``pml-anchors train --tensorboard DIR``: PML's logging presets (record-keeper + TensorBoard) on a run.

PML's ``HookContainer`` records, every ``log_freq`` iterations, the losses, the loss weights, every recordable
attribute of the loss (``_record_these``: a method's hyper-parameters and :attr:`~pml_anchors.AnchorLoss.
anchor_geometry`), the models' and the optimizers' (their learning rates); :meth:`TensorBoardLog.record_epoch` adds
each epoch's mean loss, lr and evaluation metrics (group ``epoch``). TensorBoard's event files are written to
``DIR`` (``tensorboard --logdir DIR``; the evaluation's metrics under ``test/…``) and record-keeper's CSV records to ``DIR/records``. Needs the optional
packages record-keeper and tensorboard (``pip install "pml-anchors[tensorboard]"``).
"""

from __future__ import annotations

import math
import os
from typing import Any

__all__ = ["TensorBoardLog", "require_tensorboard"]


def require_tensorboard() -> None:
    """An ``ImportError`` saying what to install when record-keeper or tensorboard is missing."""
    try:
        import record_keeper  # noqa: F401 - PML's presets import it themselves; here only to say what is missing
        import tensorboard  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"--tensorboard needs the packages record-keeper and tensorboard ({exc}); install them with "
            "pip install 'pml-anchors[tensorboard]'"
        ) from exc


class TensorBoardLog:
    """PML's record-keeper, TensorBoard writer and ``HookContainer`` for one run, writing to ``folder``."""

    def __init__(self, folder: str | os.PathLike, log_freq: int = 50) -> None:
        require_tensorboard()
        from pytorch_metric_learning.utils import logging_presets

        self.folder = os.fspath(folder)
        self.record_keeper, _, self.writer = logging_presets.get_record_keeper(
            csv_folder=os.path.join(self.folder, "records"), tensorboard_folder=self.folder
        )
        self.hooks = logging_presets.get_hook_container(self.record_keeper, log_freq=log_freq, save_models=False)

    def end_of_iteration_hook(self, trainer: Any) -> None:
        """PML's ``HookContainer.end_of_iteration_hook``: losses, loss/model/optimizer records every ``log_freq``."""
        self.hooks.end_of_iteration_hook(trainer)

    def record_epoch(self, trainer: Any, entry: dict[str, Any]) -> None:
        """An epoch's numbers, written to disk now: its mean loss, lr and time under ``epoch/<name>``, and the
        evaluation's metrics (when the entry has them) under ``test/<name>``."""
        numbers = {
            key: float(value)
            for key, value in entry.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        }
        training = {key: numbers.pop(key) for key in ("epoch", "seconds", "loss", "lr") if key in numbers}
        groups = {"epoch": training, "test": numbers} if numbers else {"epoch": training}
        self.record_keeper.update_records(groups, trainer.get_global_iteration())
        self.flush()

    def record_test(self, trainer: Any, metrics: dict[str, Any]) -> None:
        """The evaluation after the last epoch (a run without ``eval_every_epoch``) under ``test/<name>``."""
        self.record_epoch(trainer, {k: v for k, v in metrics.items() if k not in ("epoch", "seconds", "loss", "lr")})

    def flush(self) -> None:
        self.record_keeper.save_records()
        self.writer.flush()

    def close(self) -> None:
        self.flush()
        self.writer.close()
