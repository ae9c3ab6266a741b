"""``pml-anchors plugins``: the installed plugins, their status, hooks and methods (or pins for pip).

Besides each plugin's status it shows what the loader noticed about the settings (a name in
``PML_ANCHORS_LOAD_PLUGINS``/``PML_ANCHORS_DISABLE_PLUGINS`` that matches no plugin: on stderr, so ``--json`` and
``--requirements`` stay clean) and a plugin whose import is slow. Interrupted while a plugin loads (Ctrl-C, or a
plugin raising ``KeyboardInterrupt``), it names that plugin and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from ..plugin import hookspecs, manager
from ..plugin.api import get_plugin_manager, get_plugins


def add_parser(subparsers: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=run)


def _hook_names() -> list[str]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"  # the attribute pluggy's HookspecMarker sets
    return sorted(name for name, value in vars(hookspecs).items() if hasattr(value, marker))


def run(args: argparse.Namespace) -> int:
    if args.hook is not None and args.hook not in _hook_names():
        raise ValueError(f"unknown hook {args.hook!r}; hooks: {', '.join(_hook_names())}")
    try:
        with warnings.catch_warnings():  # failures are part of the report below
            warnings.simplefilter("ignore")
            reports = get_plugins(all=args.all or args.requirements)
    except KeyboardInterrupt as exc:  # Ctrl-C still stops the command; say which plugin was loading
        print(f"pml-anchors plugins: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    _add_dataset_clashes(reports)
    for note in get_plugin_manager().notes:  # the settings themselves (e.g. a misspelt plugin name)
        print(f"pml-anchors plugins: warning: {note}", file=sys.stderr)
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
        if r["datasets"]:
            print(f"    datasets: {', '.join(r['datasets'])}")
        if r["hooks"]:
            print(f"    hooks: {', '.join(r['hooks'])}")
        seconds = r.get("load_seconds")
        if seconds is not None and seconds > manager.SLOW_IMPORT_SECONDS and r["source"] != "core":
            print(f"    import: {seconds:.1f} s (slow: every command that lists or uses methods pays it)")
        if r["error"]:
            label = "note" if r["status"] in SWITCHED_OFF else "error"  # switched off, not broken
            print(f"    {label}: {r['error']}")
        for conflict in r.get("conflicts") or []:
            print(f"    conflict: {conflict}")
    return 0


def _add_dataset_clashes(reports: list[dict]) -> None:
    """Add to ``conflicts`` each plugin dataset named like a built-in one (the plugin registry sees clashes between
    plugins only). The built-in table is imported (with torch) only when a plugin registers a dataset."""
    if not any(r["datasets"] for r in reports):
        return
    from ..app.data.registry import DATASETS
    from ..app.data.sources import builtin_clashes

    clashes = builtin_clashes(DATASETS)
    for r in reports:
        r["conflicts"] = [*r["conflicts"], *clashes.get(r["name"], [])]


#: statuses of a plugin that was not loaded on purpose (the user's settings, or a folder refused for safety)
SWITCHED_OFF = ("disabled", "skipped", "refused")
#: statuses of a plugin whose code is loaded and running (``tampered``: it also patched pml_anchors)
LOADED = ("ok", "tampered")


def _print_requirements(reports: list[dict]) -> int:
    """``dist==version`` for each loaded distribution; a comment for what pip cannot pin (a file, a failed load)."""
    for r in reports:
        if r["status"] == "tampered":
            print(f"# {r['name']} is loaded but replaced attributes of pml_anchors (tampered)")
        if r["status"] in LOADED and r["source"] in ("core", "entry_point") and r["version"]:
            print(f"{r['name']}=={r['version']}")
        elif r["status"] in LOADED:
            where = f": {r['module']}" if r["source"] == "plugins_dir" else ""
            print(f"# {r['name']} ({r['source']}{where}) is not an installed distribution; pin it by hand")
        elif r["status"] != "disabled":
            label = " ".join(x for x in (r["name"], r["version"]) if x)
            print(f"# {label} was not loaded ({r['status']})")
    return 0
