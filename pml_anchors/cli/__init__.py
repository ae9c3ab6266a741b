"""The ``pml-anchors`` command line.

Each sub-command lives in a module with ``add_parser(subparsers)`` (defining its options) and a
``run(args) -> int`` function. Building the parser imports neither torch nor any plugin, so
``pml-anchors --help`` stays fast; plugins load only when a command touches the registry.
``--plugins-dir DIR`` (before the command) prepends ``DIR`` to ``PML_ANCHORS_PLUGINS_DIR`` for every command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence

#: sub-command name -> module providing add_parser(subparsers) and run(args)
COMMANDS = {
    "plugins": "pml_anchors.cli",
    "methods": "pml_anchors.cli",
    "validate": "pml_anchors.cli_validate",
    "new-plugin": "pml_anchors.authoring",
    "train": "pml_anchors.cli_train",
    "eval": "pml_anchors.cli_train",
    "bench": "pml_anchors.cli_train",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

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
    for name, module_name in COMMANDS.items():
        module = sys.modules[__name__] if module_name == __name__ else importlib.import_module(module_name)
        adder = getattr(module, f"add_{name.replace('-', '_')}_parser", None) or module.add_parser
        adder(subparsers)
    return parser


def _directory(value: str) -> str:
    if not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a directory")
    return os.path.abspath(value)


def _add_plugins_dirs(dirs: Sequence[str]) -> None:
    """Prepend ``dirs`` to ``PML_ANCHORS_PLUGINS_DIR``: the registry, and every worker process started
    from this one (``train --nproc``), read it when they load plugins."""
    from .plugins import ENV_PLUGINS_DIR

    current = os.environ.get(ENV_PLUGINS_DIR)
    os.environ[ENV_PLUGINS_DIR] = os.pathsep.join([*dirs, *([current] if current else [])])


# -- plugins ------------------------------------------------------------------------------------
def add_plugins_parser(subparsers) -> None:
    p = subparsers.add_parser("plugins", help="list installed plugins, their status and methods")
    p.add_argument("--all", action="store_true", help="include the core and the built-in method plugins")
    p.add_argument("--hook", metavar="NAME", help="only plugins that implement this hook (e.g. register_initializers)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--requirements",
        action="store_true",
        help="print the loaded plugin distributions as pip requirements (dist==version, core included), to pin a "
        "run's plugins; --all is implied",
    )
    p.set_defaults(func=run_plugins)


def _hook_names() -> list[str]:
    from . import hookspecs

    marker = f"{hookspecs.PROJECT_NAME}_spec"  # the attribute pluggy's HookspecMarker sets
    return sorted(name for name, value in vars(hookspecs).items() if hasattr(value, marker))


def run_plugins(args) -> int:
    import warnings

    from .plugins import get_plugins

    if args.hook is not None and args.hook not in _hook_names():
        raise ValueError(f"unknown hook {args.hook!r}; hooks: {', '.join(_hook_names())}")
    with warnings.catch_warnings():  # failures are part of the report below
        warnings.simplefilter("ignore")
        reports = get_plugins(all=args.all or args.requirements)
    if args.hook is not None:
        reports = [r for r in reports if args.hook in r["hooks"]]
    if args.requirements:
        return _print_requirements(reports)
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0
    if not reports:
        print("no plugins installed (use --all to include built-ins)")
        return 0
    for r in reports:
        version = f" {r['version']}" if r["version"] else ""
        print(f"{r['name']}{version}  [{r['status']}]")
        if r["source"] == "plugins_dir" and r["module"]:
            print(f"    file: {r['module']}")
        if r["methods"]:
            print(f"    methods: {', '.join(r['methods'])}")
        if r["initializers"]:
            print(f"    initializers: {', '.join(r['initializers'])}")
        if r["hooks"]:
            print(f"    hooks: {', '.join(r['hooks'])}")
        if r["error"]:
            label = "note" if r["status"] in ("disabled", "skipped") else "error"  # switched off, not broken
            print(f"    {label}: {r['error']}")
        for conflict in r.get("conflicts") or []:
            print(f"    conflict: {conflict}")
    return 0


def _print_requirements(reports: list[dict]) -> int:
    """``dist==version`` for each loaded distribution; a comment for what pip cannot pin (a file, a failed load)."""
    for r in reports:
        if r["status"] == "ok" and r["source"] in ("core", "entry_point") and r["version"]:
            print(f"{r['name']}=={r['version']}")
        elif r["status"] == "ok":
            where = f": {r['module']}" if r["source"] == "plugins_dir" else ""
            print(f"# {r['name']} ({r['source']}{where}) is not an installed distribution; pin it by hand")
        elif r["status"] != "disabled":
            label = " ".join(x for x in (r["name"], r["version"]) if x)
            print(f"# {label} was not loaded ({r['status']})")
    return 0


# -- methods ------------------------------------------------------------------------------------
def add_methods_parser(subparsers) -> None:
    p = subparsers.add_parser("methods", help="list registered methods")
    p.add_argument("--plugin", metavar="DIST", help="only the methods of this plugin distribution")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_methods)


def run_methods(args) -> int:
    from .plugins import get_plugins, normalize_dist_name
    from .registry import list_methods

    specs = list_methods()
    if args.plugin is not None:
        key = normalize_dist_name(args.plugin)
        known = {normalize_dist_name(r["name"]) for r in get_plugins(all=True)}
        if key not in known:
            raise LookupError(f"no plugin {args.plugin!r}; plugins: {', '.join(sorted(known))}")
        specs = [s for s in specs if normalize_dist_name(s.plugin or "") == key]
    if args.json:
        print(json.dumps([s.as_dict() for s in specs], indent=2))
        return 0
    if not specs:
        print(
            "no methods registered: no plugin loaded (see `pml-anchors plugins --all`, and PML_ANCHORS_LOAD_PLUGINS / "
            "PML_ANCHORS_DISABLE_PLUGINS)",
            file=sys.stderr,
        )
    for s in specs:
        aliases = f" (aliases: {', '.join(s.aliases)})" if s.aliases else ""
        version = f" {s.plugin_version}" if s.plugin_version else ""
        print(f"{s.name}{aliases}  [{s.plugin}{version}]")
        if s.description:
            print(f"    {s.description}")
        if s.paper:
            print(f"    paper: {s.paper}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plugins_dir:
        _add_plugins_dirs(args.plugins_dir)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from .errors import PluginError

    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, LookupError, FileNotFoundError, PluginError) as exc:  # PluginLoadError when strict
        print(f"pml-anchors {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`pml-anchors methods | head`): stop quietly, like other tools
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not raise again
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
