"""Hyper-parameter search spaces, as a method declares them in :attr:`MethodSpec.search_space`. Pure data.

A search space maps a hyper-parameter name to a :class:`Param`: a float or int range (``log=True`` samples the
logarithm uniformly) or a tuple of categorical choices. A name is a keyword argument of the method's loss, or one of
the :data:`RESERVED` names of the training recipe:

``lr``
    the optimisers' learning rate (``TrainConfig.lr``, trunk and embedder, and the loss's base lr);
``weight_decay``
    the optimisers' weight decay (``TrainConfig.weight_decay``);
``loss_lr_multiplier``
    the lr multiplier of the loss's own trainable parameters (Proxy Anchor's proxies, CAM's anchors), replacing the
    method's ``lr_multipliers`` (``TrainConfig.loss_lr_multiplier``).

``pml-anchors tune`` samples every declared parameter with Optuna's TPE (Musgrave et al., "A Metric Learning Reality
Check", ECCV 2020: a Bayesian search with the same budget for every loss).

>>> from pml_anchors.plugin.search_space import log_uniform, uniform
>>> space = {"lr": log_uniform(1e-5, 1e-2), "margin": uniform(0.0, 0.5)}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KINDS",
    "RESERVED",
    "Param",
    "check_search_space",
    "choice",
    "integer",
    "log_uniform",
    "uniform",
]

KINDS = ("float", "int", "categorical")

#: search-space names that are not loss keyword arguments, and what they set
RESERVED: Mapping[str, str] = {
    "lr": "the optimisers' learning rate",
    "weight_decay": "the optimisers' weight decay",
    "loss_lr_multiplier": "the lr multiplier of the loss's own trainable parameters",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Param:
    """One hyper-parameter's range: ``kind`` ``"float"`` or ``"int"`` with ``low <= high`` (``log``: sampled on a
    log scale, ``low > 0``), or ``"categorical"`` with ``choices`` (a non-empty tuple of distinct ``None``, bool,
    int, float or str values). A bad range is a ``ValueError``/``TypeError`` saying what was expected."""

    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.log, bool):
            raise TypeError(f"log must be True or False, got {self.log!r}")
        if self.kind == "categorical":
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("a categorical parameter takes choices only, not low, high or log")
            if not isinstance(self.choices, tuple) or not self.choices:
                raise ValueError(f"choices must be a non-empty tuple, got {self.choices!r}")
            if not all(c is None or isinstance(c, (bool, int, float, str)) for c in self.choices):
                raise TypeError(f"choices must be None, bool, int, float or str values, got {self.choices!r}")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError(f"choices must be distinct, got {self.choices!r}")
            return
        if self.choices:
            raise ValueError(f"a {self.kind} parameter takes low and high, not choices")
        if not (_is_number(self.low) and _is_number(self.high)):
            raise TypeError(f"low and high must be finite numbers, got low={self.low!r}, high={self.high!r}")
        assert self.low is not None and self.high is not None  # for mypy: _is_number checked them
        if self.kind == "int" and not (isinstance(self.low, int) and isinstance(self.high, int)):
            raise TypeError(f"an int parameter needs int low and high, got low={self.low!r}, high={self.high!r}")
        if self.low > self.high:
            raise ValueError(f"low must be <= high, got low={self.low!r}, high={self.high!r}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got low={self.low!r}")

    def describe(self) -> str:
        """``float [1e-05, 0.01] log``, ``int [1, 10]``, ``one of ('a', 'b')``."""
        if self.kind == "categorical":
            return f"one of {self.choices!r}"
        return f"{self.kind} [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "categorical":
            return {"kind": self.kind, "choices": list(self.choices)}
        return {"kind": self.kind, "low": self.low, "high": self.high, "log": self.log}


def uniform(low: float, high: float) -> Param:
    """A float sampled uniformly in ``[low, high]``."""
    return Param("float", low, high)


def log_uniform(low: float, high: float) -> Param:
    """A float whose logarithm is sampled uniformly in ``[log low, log high]`` (``0 < low``)."""
    return Param("float", low, high, log=True)


def integer(low: int, high: int, *, log: bool = False) -> Param:
    """An int in ``[low, high]``."""
    return Param("int", low, high, log=log)


def choice(*choices: Any) -> Param:
    """One of ``choices``."""
    return Param("categorical", choices=tuple(choices))


def check_search_space(space: Any) -> dict[str, Param]:
    """``space`` as a dict of :class:`Param`, checked: a mapping from identifiers to :class:`Param` s. A bad entry is
    a ``ValueError``/``TypeError`` whose message starts with ``search_space[<name>]``."""
    if not isinstance(space, Mapping):
        raise TypeError(f"search_space must be a mapping of names to Param, got {type(space).__name__}")
    checked: dict[str, Param] = {}
    for name, param in space.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"search_space[{name!r}]: a name must be a loss keyword argument or one of {list(RESERVED)}"
            )
        if not isinstance(param, Param):
            raise TypeError(
                f"search_space[{name!r}]: expected a pml_anchors.plugin.search_space.Param (uniform, log_uniform, "
                f"integer, choice), got {param!r}"
            )
        if name in ("lr", "loss_lr_multiplier") and not (param.kind == "float" and param.low is not None):
            raise ValueError(f"search_space[{name!r}]: {RESERVED[name]} must be a float range, got {param.describe()}")
        if name in ("lr", "loss_lr_multiplier") and param.low is not None and param.low <= 0:
            raise ValueError(f"search_space[{name!r}]: {RESERVED[name]} must be > 0, got low={param.low!r}")
        if name == "weight_decay" and (param.kind != "float" or (param.low is not None and param.low < 0)):
            raise ValueError(f"search_space[{name!r}]: {RESERVED[name]} must be a float range >= 0")
        checked[name] = param
    return checked
