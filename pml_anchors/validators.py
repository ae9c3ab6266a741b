"""Argument validators shared by the core and the plugins.

Each returns the value (ints as ``int``, reals as ``float``) or raises a ``TypeError`` for a value of the wrong type
(``bool`` is never accepted as a number) or a ``ValueError`` for one out of range; both messages name the argument,
what was expected and what was given::

    from pml_anchors.validators import check_real, optional_int, positive_int

    self.sub_centers = positive_int(sub_centers, "sub_centers")
    self.beta = check_real(beta, "beta", minimum=0.0)
    self.warmup_epochs = optional_int(warmup_epochs, "warmup_epochs", minimum=0)  # None or an int >= 0

Nothing here imports torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_real",
    "check_seed",
    "naming_rejected_options",
    "optional_bool",
    "optional_int",
    "optional_real",
    "positive_int",
]


def _int_phrase(minimum: int | None) -> str:
    if minimum == 1:
        return "a positive int"
    return "an int" if minimum is None else f"an int >= {minimum}"


def _checked_int(value: Any, name: str, minimum: int | None, expected: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value}")
    return int(value)


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (any integral type but ``bool``), at least ``minimum``."""
    return _checked_int(value, name, minimum, _int_phrase(minimum))


def optional_int(value: Any, name: str, *, minimum: int | None = None) -> int | None:
    """``None``, or ``value`` checked as by :func:`check_int`."""
    return None if value is None else _checked_int(value, name, minimum, "None or " + _int_phrase(minimum))


def positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` >= 1."""
    return check_int(value, name, minimum=1)


def check_seed(seed: Any) -> int | None:
    """A random seed: ``None`` (torch's global generator) or an int."""
    return optional_int(seed, "seed")


@dataclass(frozen=True)
class _Range:
    """Bounds of a real number: inclusive unless ``open_min`` / ``open_max``."""

    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False
    open_max: bool = False

    def phrase(self) -> str:
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.open_min else '>='} {self.minimum:g}")
        if self.maximum is not None:
            bounds.append(f"{'<' if self.open_max else '<='} {self.maximum:g}")
        return "a finite number" + (" " + " and ".join(bounds) if bounds else "")

    def holds(self, number: float) -> bool:
        low, high = self.minimum, self.maximum
        above = low is None or (number > low if self.open_min else number >= low)
        below = high is None or (number < high if self.open_max else number <= high)
        return math.isfinite(number) and above and below


def _checked_real(value: Any, name: str, bounds: _Range, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if not bounds.holds(float(value)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def check_real(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """``value`` as a finite ``float`` (any real type but ``bool``) within ``[minimum, maximum]``; either bound is
    exclusive with ``open_min`` / ``open_max``."""
    bounds = _Range(minimum, maximum, open_min, open_max)
    return _checked_real(value, name, bounds, bounds.phrase())


def optional_real(value: Any, name: str, **bounds: Any) -> float | None:
    """``None``, or ``value`` checked as by :func:`check_real` (the same keyword bounds)."""
    allowed = _Range(**bounds)
    return None if value is None else _checked_real(value, name, allowed, "None or " + allowed.phrase())


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is ``True`` or ``False``; ``1`` or ``"yes"`` are refused."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def optional_bool(value: Any, name: str) -> bool | None:
    """``None``, ``True`` or ``False``."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, got {value!r}")
    return value


def check_choice(value: Any, name: str, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


@contextmanager
def naming_rejected_options(what: str, options: Mapping[str, Any]) -> Iterator[None]:
    """Restate a ``TypeError`` about one of ``options`` (e.g. "unexpected keyword argument 'pooling'") raised in the
    block so that it names ``what`` was given them (``"backbone 'small_cnn'"``); any other error passes unchanged."""
    try:
        yield
    except TypeError as exc:
        if not any(f"'{option}'" in str(exc) for option in options):
            raise
        raise TypeError(f"{what}: {exc} (got options {sorted(options)})") from exc
