"""The ``pml-anchors`` command line: one module per command.

Each command module has ``add_parser(subparsers)`` (defining its options, with ``func=run``) and
``run(args) -> int``. Building the parser imports neither torch nor any plugin, so ``pml-anchors --help`` stays
fast: the commands that train import the application inside ``run``. ``--plugins-dir DIR`` (before the command)
prepends ``DIR`` to ``PML_ANCHORS_PLUGINS_DIR`` for every command.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence

from ..errors import PluginError, PluginLoadWarning
from ..plugin.settings import ENV_PLUGINS_DIR
from ..version import __version__

#: sub-command name -> module (in this package) providing add_parser(subparsers) and run(args)
COMMANDS = {
    "plugins": "plugins",
    "methods": "methods",
    "validate": "validate",
    "new-plugin": "new_plugin",
    "train": "train",
    "eval": "eval",
    "bench": "bench",
    "tune": "tune",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pml-anchors",
        description="Anchor- and proxy-based metric learning methods for pytorch-metric-learning, as plugins.",
    )
    parser.add_argument("--version", action="version", version=f"pml-anchors {__version__}")
    parser.add_argument(
        "--plugins-dir",
        action="append",
        type=_directory,
        metavar="DIR",
        help="also load every *.py file in DIR as a plugin (repeatable; see PML_ANCHORS_PLUGINS_DIR)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        importlib.import_module(f"{__package__}.{module_name}").add_parser(subparsers)
    return parser


def _directory(value: str) -> str:
    if not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a directory")
    return os.path.abspath(value)


def _add_plugins_dirs(dirs: Sequence[str]) -> None:
    """Prepend ``dirs`` to ``PML_ANCHORS_PLUGINS_DIR``: the registry, and every worker process started
    from this one (``train --nproc``), read it when they load plugins."""
    current = os.environ.get(ENV_PLUGINS_DIR)
    os.environ[ENV_PLUGINS_DIR] = os.pathsep.join([*dirs, *([current] if current else [])])


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Show the warnings of pml-anchors itself (a plugin that failed to load, a failed bench run, ...) as one line
    each, ``pml-anchors: warning: ...``, and each text once per command: the source line Python quotes under a
    warning is the loader's, which means nothing on the command line. Other packages' warnings are shown as Python
    shows them. (``warnings.formatwarning`` is replaced, not ``showwarning``: tests that record warnings still do.)"""
    original = warnings.formatwarning
    shown: set[str] = set()

    def one_line(
        message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
    ) -> str:
        if not (issubclass(category, PluginLoadWarning) or filename.startswith(_PACKAGE_DIR)):
            return original(message, category, filename, lineno, line)
        text = str(message).removeprefix("pml_anchors: ")
        if text in shown:
            return ""
        shown.add(text)
        return f"pml-anchors: warning: {text}\n"

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        if warnings.formatwarning is one_line:
            warnings.formatwarning = original


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plugins_dir:
        _add_plugins_dirs(args.plugins_dir)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    with _one_line_warnings():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C (or a plugin raising it while loading, named in the message)
        print(f"pml-anchors {args.command}: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 130  # 128 + SIGINT
    except BrokenPipeError:  # the reader went away (`pml-anchors methods | head`): stop quietly, like other tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not raise again
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it
    # PluginLoadError when strict; ImportError: an optional package a flag needs (e.g. --tensorboard); OSError: a file
    # that cannot be read or written (a full disk), named in its message
    except (ValueError, TypeError, LookupError, OSError, ImportError, PluginError) as exc:
        print(f"pml-anchors {args.command}: error: {exc}", file=sys.stderr)
        return 2
