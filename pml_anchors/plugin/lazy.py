"""Lazy ``"module:attr"`` references: how a plugin names a loss, an initializer or hooks without importing them.

Nothing here imports torch or PML.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["accepts_keyword", "describe_object", "is_lazy_path", "lazy_exports", "resolve_object"]


def describe_object(obj: Any) -> Any:
    """A JSON-friendly description of a spec field (class → ``module:Qualname``)."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [describe_object(o) for o in obj]
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return f"{obj.__module__}:{obj.__qualname__}"
    return repr(obj)


def resolve_object(ref: Any, *, what: str = "object") -> Any:
    """Import ``"package.module:attr.sub"`` strings; return anything else unchanged."""
    if not isinstance(ref, str):
        return ref
    if ":" not in ref:
        raise ValueError(f"{what}: expected 'module:attribute', got {ref!r}")
    module_name, _, attr_path = ref.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"{what}: cannot import {ref!r}: {exc}") from exc
    return obj


def is_lazy_path(value: Any) -> bool:
    if not isinstance(value, str) or value.count(":") != 1:
        return False
    module_name, attr = value.split(":")
    return all(p.isidentifier() for p in module_name.split(".")) and all(p.isidentifier() for p in attr.split("."))


def accepts_keyword(cls: type, param: str) -> bool:
    """Whether ``cls(...)`` accepts keyword ``param`` (following ``**kwargs`` up the MRO)."""
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        try:
            params = inspect.signature(vars(klass)["__init__"]).parameters
        except (TypeError, ValueError):
            return False
        if param in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


def lazy_exports(module: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` (PEP 562) that imports ``exports[name]`` (a module path) on first access and
    returns its ``name``: a plugin package exports its loss classes by name while importing it stays cheap::

        __getattr__ = lazy_exports(__name__, {"CNCMLoss": "pml_anchors_ncm.ncm_loss"})
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
