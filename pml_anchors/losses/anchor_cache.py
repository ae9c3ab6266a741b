"""The cache of per-forward transforms of fixed anchors (normalised copy, squared norms, dtype casts)."""

from __future__ import annotations

from typing import Any

__all__ = ["AnchorCache"]

_MISSING = object()


class AnchorCache:
    """Values by name, each valid for one key (the anchors' version, storage, device, dtype, shape and the inputs'
    device and dtype).

    A small object rather than a ``dict`` attribute of the loss: PML's logging presets walk every ``dict`` and
    ``nn.Module`` attribute of a loss for record-keeper (``recursive_types=[torch.nn.Module, dict]``) and cannot
    walk the ``(key, value)`` pairs held here.
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        #: name -> (key, value)
        self.entries: dict[str, tuple[tuple[Any, ...], Any]] = {}

    def get(self, name: str, key: tuple[Any, ...], default: Any = _MISSING) -> Any:
        """The value cached as ``name`` for ``key``; ``default`` (or :data:`MISSING`) if there is none for it."""
        hit = self.entries.get(name)
        return hit[1] if hit is not None and hit[0] == key else default

    def put(self, name: str, key: tuple[Any, ...], value: Any) -> None:
        self.entries[name] = (key, value)

    def clear(self) -> None:
        self.entries.clear()

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"AnchorCache({sorted(self.entries)})"


#: what :meth:`AnchorCache.get` returns for a miss
MISSING = _MISSING
