"""What a run shows while it trains: one progress bar on a terminal, short lines in a log file, or nothing.

PML's trainer draws a tqdm bar per epoch and its tester one per evaluation (unlabelled, e.g. ``2/2``): five bars per
method in a two-epoch bench, tens of kilobytes of carriage returns in a log file. The command line turns them off
(``TQDM_DISABLE``, which tqdm reads when it is imported: :func:`pml_anchors.cli.options.setup_output`) and shows a
:class:`RunProgress` instead, fed by the session's own hooks:

* ``"bar"`` (stderr is a terminal): one bar per run over all of its iterations, labelled with the run, its epoch
  and loss; it is removed when the run ends. With ``epoch_lines`` each epoch's line is printed above it.
* ``"lines"`` (stderr is a file or a pipe, or ``TQDM_DISABLE`` is set): no bar; with ``epoch_lines`` one short line
  per epoch (``train``); the caller prints one line per run (``bench``).
* ``"off"`` (``--no-progress``): nothing.

Only a :class:`RunProgress` passed to :func:`pml_anchors.app.session.build` (or ``run``, ``bench``) shows anything:
the library itself leaves PML's bars alone.
"""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any, TextIO

__all__ = ["MODES", "RunProgress", "epoch_line"]

MODES = ("bar", "lines", "off")


def epoch_line(entry: dict[str, Any], epochs: int) -> str:
    """``epoch 2/10: loss 0.4123, 1.3 s, P@1 0.9844`` for a history entry (seconds: training time so far)."""
    parts = [f"epoch {entry['epoch']}/{epochs}:"]
    if entry.get("loss") is not None:
        parts.append(f"loss {entry['loss']:.4f},")
    parts.append(f"{entry['seconds']:.1f} s")
    if entry.get("precision_at_1") is not None:
        parts[-1] += ","
        split = "validation " if entry.get("evaluated_on") == "validation" else ""  # --select-epoch: not the test split
        parts.append(f"{split}P@1 {entry['precision_at_1']:.4f}")
    return " ".join(parts)


class RunProgress:
    """The progress of one run, in one of :data:`MODES`, on ``stream`` (stderr by default).

    :param label: how the run is named (``"c_ncm"``, ``"[3/12] c_ncm"``).
    :param epochs: the run's last epoch.
    :param epoch_lines: print a line per epoch (above the bar, or alone in ``"lines"`` mode).
    :param header: a line to print when training starts (e.g. where the run is written), unless the mode is
        ``"off"``.
    """

    def __init__(
        self,
        mode: str,
        label: str,
        epochs: int,
        *,
        epoch_lines: bool = False,
        header: str | None = None,
        stream: TextIO | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.label, self.epochs, self.epoch_lines = mode, label, int(epochs), epoch_lines
        self.stream = stream
        self.header = header
        self._bar: Any = None
        self._epoch = 0
        self._last_refresh = 0.0

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def iteration(self, trainer: Any, loss: float) -> None:
        """After each optimizer step (the session's end-of-iteration hook)."""
        if self.header is not None and self.mode != "off":
            self._say(self.header)
            self.header = None
        if self.mode != "bar":
            return
        if self._bar is None:
            self._open(trainer)
        self._bar.update(1)
        now, new_epoch = time.monotonic(), trainer.epoch != self._epoch
        self._epoch = trainer.epoch
        if new_epoch or now - self._last_refresh > 0.2:  # the postfix only: tqdm redraws at most every 0.1 s anyway
            self._last_refresh = now
            self._bar.set_postfix_str(f"epoch {trainer.epoch}/{self.epochs}, loss {loss:.4f}", refresh=False)

    def _open(self, trainer: Any) -> None:
        tqdm = importlib.import_module("tqdm")  # (no type stubs)
        first = int(getattr(trainer, "epoch", 1) or 1)
        per_epoch = int(getattr(trainer, "iterations_per_epoch", 0) or 0)
        total = per_epoch * max(1, self.epochs - first + 1) or None
        # disable=False: TQDM_DISABLE (set to silence PML's own bars) must not hide this one
        self._bar = tqdm.tqdm(
            total=total, desc=self.label, leave=False, disable=False, file=self._out(), dynamic_ncols=True, unit="it"
        )

    def evaluating(self) -> None:
        """Before an evaluation inside the training loop (``eval_every_epoch``)."""
        if self._bar is not None:
            self._bar.set_postfix_str(f"epoch {self._epoch}/{self.epochs}, evaluating", refresh=True)

    def epoch(self, entry: dict[str, Any]) -> None:
        """After each epoch, with its history entry (epoch, seconds, loss and, when evaluated, the metrics)."""
        if not self.epoch_lines or self.mode == "off":
            return
        self._say(epoch_line(entry, self.epochs))

    def _say(self, line: str) -> None:
        if self._bar is not None:  # above the bar, which is drawn again below
            self._bar.write(line, file=self._out())
        else:
            print(line, file=self._out(), flush=True)

    def close(self) -> None:
        """When training ends (or fails): the bar is removed."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
