"""The ``pml-anchors`` command line (:func:`main`); one module per command, see :mod:`pml_anchors.cli.main`."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
