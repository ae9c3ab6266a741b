"""Best-epoch selection and early stopping on a validation fold, with the test split sealed until the end.

Musgrave et al. ("A Metric Learning Reality Check", ECCV 2020, Sec. 3) choose everything, the number of iterations
included, on validation folds of the training classes, and evaluate the test classes once. With
``TrainConfig.select_epoch`` a run does exactly that:

1. the training split is cut into ``folds`` seeded folds (:func:`~pml_anchors.app.data.validation.validation_split`:
   class-disjoint under ``open_set``, stratified under ``same_class``); the run trains on the other folds;
2. the test split is wrapped in a :class:`~pml_anchors.app.data.validation.SealedTestSplit`: any read of it during
   training raises;
3. after every epoch the model is evaluated on fold ``fold`` and :class:`EpochSelection` keeps a copy of the weights of
   the epoch with the best ``metric`` (ties keep the earlier epoch); with ``patience``, training stops once that many
   epochs in a row did not improve on it (early stopping);
4. after training the best epoch's weights are put back, the test split is unsealed and evaluated once.

``results.json`` gets a ``selection`` record (metric, fold, best epoch and value, the validation curve, whether and
when training stopped early, and that the test split was read once, after training), and the checkpoint keeps the
selection state and the best weights, so a resumed run selects exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..validators import check_int
from .data.validation import SealedTestSplit, seal_test_split, validation_split

__all__ = ["DEFAULT_SELECT_METRIC", "EpochSelection", "check_select_epoch", "selection_splits"]

#: the metric an epoch is selected on unless the config names another (PML's name; the field's headline metric)
DEFAULT_SELECT_METRIC = "mean_average_precision_at_r"
#: the keys of ``TrainConfig.select_epoch``
SELECT_KEYS = ("fold", "folds", "seed", "metric", "patience")
#: the modules whose weights a selected epoch restores
MODULES = ("trunk", "embedder", "loss")
SEALED_WHY = "the epoch is being selected on a validation fold"


def check_select_epoch(value: Any, seed: int) -> dict[str, Any] | None:
    """``None``, or ``TrainConfig.select_epoch`` completed with its defaults and checked: ``fold`` (0), ``folds`` (4),
    ``seed`` (the run's), ``metric`` (:data:`DEFAULT_SELECT_METRIC`), ``patience`` (``None``: no early stopping)."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - set(SELECT_KEYS):
        raise ValueError(f"select_epoch must be None or a dict with keys among {', '.join(SELECT_KEYS)}, got {value!r}")
    folds = check_int(value.get("folds", 4), "select_epoch folds", minimum=2)
    fold = check_int(value.get("fold", 0), "select_epoch fold", minimum=0)
    if fold >= folds:
        raise ValueError(f"select_epoch fold must be in 0..{folds - 1} (folds={folds}), got {fold}")
    metric = value.get("metric", DEFAULT_SELECT_METRIC)
    if not isinstance(metric, str) or not metric:
        raise TypeError(
            f"select_epoch metric must be a metric's name such as {DEFAULT_SELECT_METRIC!r}, got {metric!r}"
        )
    patience = value.get("patience")
    if patience is not None:
        patience = check_int(patience, "select_epoch patience (early stopping)", minimum=1)
    return {
        "fold": fold,
        "folds": folds,
        "seed": check_int(value.get("seed", seed), "select_epoch seed"),
        "metric": metric,
        "patience": patience,
    }


def selection_splits(splits: Any, choice: Mapping[str, Any]) -> tuple[Any, SealedTestSplit]:
    """``(validation splits, sealed test split)``: train on the other folds, evaluate fold ``choice["fold"]`` every
    epoch; the test split is returned sealed, for :meth:`EpochSelection.final_splits`."""
    sealed = seal_test_split(splits, SEALED_WHY)
    held_out = sealed.test
    assert isinstance(held_out, SealedTestSplit)
    return validation_split(sealed, choice["fold"], choice["folds"], choice["seed"]), held_out


def _copy_states(session: Any) -> dict[str, dict[str, torch.Tensor]]:
    return {name: copy.deepcopy(getattr(session, name).state_dict()) for name in MODULES}


@dataclasses.dataclass
class EpochSelection:
    """What is selected on the validation fold: the best epoch so far, its metric and a copy of its weights.

    :meth:`observe` is called after every epoch with that epoch's validation metrics and says whether to go on.
    """

    metric: str
    patience: int | None
    held_out: SealedTestSplit
    best_epoch: int | None = None
    best_value: float | None = None
    best_states: dict[str, dict[str, torch.Tensor]] | None = None
    #: epochs in a row since the best one
    stale: int = 0
    #: the epoch training stopped at because of ``patience`` (``None``: it did not stop early)
    stopped_at: int | None = None
    #: ``[epoch, value]`` of every validation evaluation
    curve: list[list[float]] = dataclasses.field(default_factory=list)

    @classmethod
    def from_choice(cls, choice: Mapping[str, Any], held_out: SealedTestSplit) -> EpochSelection:
        return cls(metric=choice["metric"], patience=choice["patience"], held_out=held_out)

    def observe(self, session: Any, epoch: int, metrics: Mapping[str, Any]) -> bool:
        """Record ``epoch``'s validation ``metrics``; keep its weights if it is the best so far. ``False``: stop."""
        value = metrics.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            numeric = sorted(k for k, v in metrics.items() if isinstance(v, float))
            raise ValueError(
                f"select_epoch metric {self.metric!r} is {value!r} on the validation fold; choose a metric the "
                f"evaluation reports: {', '.join(numeric)}"
            )
        self.curve.append([epoch, float(value)])
        if self.best_value is None or value > self.best_value:
            self.best_epoch, self.best_value, self.stale = epoch, float(value), 0
            self.best_states = _copy_states(session)
        else:
            self.stale += 1
        if self.patience is not None and self.stale >= self.patience:
            self.stopped_at = epoch
            return False
        return True

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def restore_best(self, session: Any) -> None:
        """Put the best epoch's weights into the session's trunk, embedder and loss."""
        if self.best_states is None:
            raise ValueError("no epoch was evaluated on the validation fold, so none can be selected (epochs=0?)")
        for name in MODULES:
            getattr(session, name).load_state_dict(self.best_states[name])

    @contextlib.contextmanager
    def best_weights(self, session: Any) -> Iterator[None]:
        """The best epoch's weights inside the block, the last epoch's again after it (the checkpoint keeps the last
        epoch's to resume from, and the best epoch's under ``selection``, which ``eval`` and ``load_trained`` use)."""
        last = _copy_states(session)
        self.restore_best(session)
        try:
            yield
        finally:
            for name in MODULES:
                getattr(session, name).load_state_dict(last[name])

    def final_splits(self, splits: Any) -> Any:
        """``splits`` with the test split unsealed, for the one evaluation after training."""
        return dataclasses.replace(splits, test=self.held_out.unseal())

    def state_dict(self) -> dict[str, Any]:
        """The selection state for a checkpoint (plain values and the best weights)."""
        return {
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "stale": self.stale,
            "stopped_at": self.stopped_at,
            "curve": [list(point) for point in self.curve],
            "best_states": self.best_states,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_epoch, self.best_value = state["best_epoch"], state["best_value"]
        self.stale, self.stopped_at = int(state["stale"]), state["stopped_at"]
        self.curve = [list(point) for point in state["curve"]]
        self.best_states = state["best_states"]

    def record(self, validation: Mapping[str, Any] | None, epochs_trained: int) -> dict[str, Any]:
        """``results.json``'s ``selection``: what was selected, on what, and when the test split was read."""
        fold = dict(validation or {})
        return {
            "metric": self.metric,
            "selected_on": f"validation fold {fold.get('fold')} of {fold.get('folds')} (seed {fold.get('seed')}) of "
            "the training split; the test split was sealed until training ended",
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "epochs_trained": epochs_trained,
            "patience": self.patience,
            "stopped_early": self.stopped,
            "stopped_at_epoch": self.stopped_at,
            "validation_curve": [list(point) for point in self.curve],
            "test_reads_while_training": self.held_out.reads,
            "test_evaluated": f"once, after training, with the weights of epoch {self.best_epoch}",
        }
