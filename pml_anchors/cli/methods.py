"""``pml-anchors methods``: the registered methods, with their plugin, description and paper."""

from __future__ import annotations

import argparse
import json
import sys

from ..plugin.api import get_plugins, list_methods
from ..plugin.settings import normalize_dist_name


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("methods", help="list registered methods")
    p.add_argument("--plugin", metavar="DIST", help="only the methods of this plugin distribution")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
