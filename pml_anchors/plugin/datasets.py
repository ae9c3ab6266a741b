"""What the ``register_datasets`` hook registers: :class:`DatasetEntry`, one dataset builder of one plugin, and the
checks a registration passes (:func:`check_dataset`). Pure data: nothing here imports torch or a builder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidMethodSpec
from .lazy import describe_object, is_lazy_path, resolve_object

__all__ = ["DatasetEntry", "check_dataset", "is_dataset_name"]


def is_dataset_name(name: Any) -> bool:
    """A dataset name: a lower-case Python identifier (``load_dataset`` matches names in lower case)."""
    return isinstance(name, str) and name.isidentifier() and name == name.lower()


def check_dataset(name: Any, builder: Any, plugin: str) -> None:
    """Raise :class:`~pml_anchors.InvalidMethodSpec` naming ``plugin`` unless ``name`` is a dataset name and
    ``builder`` a callable or a lazy ``"module:function"`` string."""
    where = f"plugin {plugin!r}"
    if not is_dataset_name(name):
        raise InvalidMethodSpec(f"{where}: dataset name must be a lower-case identifier such as 'cub200', got {name!r}")
    if not (callable(builder) or is_lazy_path(builder)):
        raise InvalidMethodSpec(
            f"{where}: dataset {name!r} builder must be a callable or a lazy 'package.module:function' string, "
            f"got {builder!r}"
        )


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset a plugin registered: ``builder(*, data_root, protocol, seed, download, **kwargs)`` returns a
    ``pml_anchors.app.data.DatasetSplits``; a lazy ``"module:function"`` builder is imported by :meth:`resolve`,
    when the dataset is loaded."""

    name: str
    builder: Any
    plugin: str
    plugin_version: str | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"

    def resolve(self) -> Callable[..., Any]:
        """The builder, importing a lazy string now; an ``ImportError`` or ``InvalidMethodSpec`` names the dataset."""
        what = f"dataset {self.qualified_name!r}"
        builder = resolve_object(self.builder, what=what)
        if not callable(builder):
            raise InvalidMethodSpec(f"{what}: its builder {self.builder!r} is not callable: {builder!r}")
        return builder

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "qualified_name": self.qualified_name,
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "builder": describe_object(self.builder),
        }
