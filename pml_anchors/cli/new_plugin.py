"""``pml-anchors new-plugin NAME``: create a plugin project from the template (:mod:`pml_anchors.plugin.template`)."""

from __future__ import annotations

import argparse

from ..plugin.template import derive_names, new_plugin, next_steps


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "new-plugin",
        help="create a new plugin project from the template",
        description="Render the pml-anchors plugin template into DIR/pml-anchors-NAME/.",
    )
    p.add_argument(
        "name", metavar="NAME", help="plugin name, e.g. 'center-loss' (→ distribution pml-anchors-center-loss)"
    )
    p.add_argument("--dir", default=".", help="folder in which to create the project (default: current folder)")
    p.add_argument("--method", help="method name in the registry (default: NAME with '_' for '-')")
    p.add_argument("--description", help="one-line description (pyproject, MethodSpec.description)")
    p.add_argument("--author", help="author name for pyproject.toml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = derive_names(args.name, method=args.method, description=args.description, author=args.author)
    target = new_plugin(names, args.dir)
    print(next_steps(names, target))
    return 0
