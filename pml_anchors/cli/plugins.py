"""``pml-anchors plugins``: the installed plugins, their status, hooks and methods (or pins for pip)."""

from __future__ import annotations

import argparse
import json
import warnings

from ..plugin import hookspecs
from ..plugin.api import get_plugins


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
