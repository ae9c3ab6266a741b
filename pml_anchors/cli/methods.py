"""``pml-anchors methods``: the registered methods, with their plugin, description and paper.

A short name that several plugins register is ambiguous (``--method`` refuses it): such methods are listed by their
qualified names and marked ``AMBIGUOUS``. With no method registered (the core alone provides none) it says which
method plugins are installed but not loaded, and how to install the built-in ones (:mod:`pml_anchors.plugin.builtins`).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..plugin.api import get_plugins, list_methods
from ..plugin.builtins import install_hint
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
    providers: dict[str, list[str]] = {}  # every registered short name -> the plugins that register it
    for s in list_methods():
        providers.setdefault(s.name, []).append(s.plugin or "?")
    ambiguous = {name: plugins for name, plugins in providers.items() if len(plugins) > 1}
    if args.json:
        print(json.dumps([{**s.as_dict(), "ambiguous": s.name in ambiguous} for s in specs], indent=2))
        return 0
    if not specs:
        print(no_methods_text(), file=sys.stderr)
    for s in specs:
        aliases = f" (aliases: {', '.join(s.aliases)})" if s.aliases else ""
        version = f" {s.plugin_version}" if s.plugin_version else ""
        if s.name in ambiguous:  # the short name selects nothing: print the name that does
            others = ", ".join(p for p in ambiguous[s.name] if p != s.plugin)
            print(f"{s.qualified_name}{aliases}  [{s.plugin}{version}]  AMBIGUOUS: {s.name!r} is also in {others}")
        else:
            print(f"{s.name}{aliases}  [{s.plugin}{version}]")
        if s.description:
            print(f"    {s.description}")
        if s.paper:
            print(f"    paper: {s.paper}")
    if ambiguous and specs:
        names = ", ".join(repr(n) for n in sorted(ambiguous))
        print(
            f"note: {names} {'is' if len(ambiguous) == 1 else 'are'} registered by several plugins, so the short name "
            "is refused as ambiguous: use the qualified names above (--method plugin:name), or disable one plugin "
            "with PML_ANCHORS_DISABLE_PLUGINS",
            file=sys.stderr,
        )
    return 0


def no_methods_text() -> str:
    """What to say when no method is registered (the core provides none): the method plugins that are there but not
    loaded, and how to install the built-in ones."""
    idle = [r for r in get_plugins(all=True) if r["source"] != "core" and r["status"] != "ok"]
    lines = ["no methods registered: the core provides none, and no method plugin is loaded."]
    if idle:
        lines.append("Installed but not loaded (see `pml-anchors plugins --all`):")
        lines += [f"    {r['name']}: {r['status']} ({r['error']})" for r in idle]
    else:
        lines.append("No method plugin is installed.")
    return "\n".join([*lines, f"{install_hint()}."])
