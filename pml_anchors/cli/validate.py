"""``pml-anchors validate [NAME ...] [--run]``: check installed methods without writing a test.

For each method (every registered one, or those named: a method name, alias or ``dist:method``, or a plugin
distribution for all of its methods) it resolves what registration leaves lazy (the loss class, the initializer,
the trainer hooks) and, with ``--run``, runs the conformance check every plugin's own tests run
(:func:`pml_anchors.testing.check_method`: forward/backward, anchors, ``state_dict``, PML's ``MetricLossOnly``
with the method's hooks, on the CPU). The initializers the checked plugins register as lazy ``"module:function"``
strings are imported too (a failure is a row of its own). A plugin that failed to load, is incompatible or tampered
with pml_anchors counts as a failure; so does a lazy reference whose module is missing or whose import raises
(``sys.exit()`` included). A method whose name another plugin registers too is a ``CLASH`` row (status
``conflict``): it works by its qualified name, but its short name is refused as ambiguous. The exit status is 1 when
anything failed or clashes, or when there is nothing to check (no method plugin loaded), so plugin CI and deployment
scripts can call it; 130 when interrupted while a plugin loads (the plugin is named).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any

from ..plugin.api import (
    build_trainer_hooks,
    get_method,
    get_plugin_manager,
    get_plugins,
    list_methods,
    resolve_initializer,
)
from ..plugin.lazy import is_lazy_path
from ..plugin.settings import normalize_dist_name
from ..testing.conformance import check_method
from .methods import no_methods_text


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check that installed methods resolve (and, with --run, pass the conformance check)",
        description="Resolve each method's loss class, initializer and trainer hooks; with --run also run the "
        "conformance check of pml_anchors.testing.check_method on the CPU (forward/backward, anchors, state_dict, a "
        "few iterations of PML's MetricLossOnly with the method's hooks). Exit status 1 if anything fails.",
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="a method (name, alias or dist:method) or a plugin distribution (all its methods); default: every method",
    )
    p.add_argument("--run", action="store_true", help="also run the conformance check (a few seconds per method)")
    p.add_argument("--num-classes", type=int, default=6, help="--run: classes of the check's loss (default 6)")
    p.add_argument(
        "--embedding-size",
        type=int,
        default=8,
        help="--run: embedding width of the check's loss (default 8; 0 lets the loss derive it, e.g. a polytope's)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is first imported: no bars from the trainer runs
    try:
        with warnings.catch_warnings():  # load failures are reported below, as failures
            warnings.simplefilter("ignore")
            plugins = {normalize_dist_name(r["name"]): r for r in get_plugins(all=True)}
            specs = list_methods()
    except KeyboardInterrupt as exc:  # Ctrl-C still stops the command; say which plugin was loading
        print(f"pml-anchors validate: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    for note in get_plugin_manager().notes:  # the settings themselves (e.g. a misspelt plugin name)
        print(f"pml-anchors validate: warning: {note}", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    chosen = [] if args.names else list(specs)
    # without names: every method, and every plugin that is broken (a switched-off one is not: that was chosen); a
    # conflict is reported on the methods concerned (status "conflict"), not as a failure of both plugins
    names = args.names or [n for n, r in plugins.items() if r["status"] in BROKEN]
    for name in names:
        plugin = plugins.get(normalize_dist_name(name))
        if plugin is None:
            try:
                chosen.append(get_method(name))
            except LookupError as exc:  # UnknownMethodError (close matches, failed plugins): add the plugin names
                raise LookupError(f"{exc} Plugins: {', '.join(sorted(plugins))}.") from exc
            continue
        if plugin["status"] != "ok":
            rows.append(_plugin_row(plugin))
        chosen += [s for s in specs if normalize_dist_name(s.plugin or "") == normalize_dist_name(name)]
    unique: dict[str, Any] = {}
    for spec in chosen:  # each method once, in the order first named
        unique.setdefault(spec.qualified_name, spec)
    providers: dict[str, list[str]] = {}  # short name -> the plugins registering it (for the conflicts)
    for spec in specs:
        providers.setdefault(spec.name, []).append(spec.plugin or "?")
    for spec in unique.values():
        row = _check(spec, args.run, args.num_classes, args.embedding_size or None)
        if row["status"] == "ok" and len(providers.get(spec.name, [])) > 1:
            others = ", ".join(p for p in providers[spec.name] if p != spec.plugin)
            row["status"] = "conflict"
            row["conflict"] = (
                f"the name {spec.name!r} is also registered by {others}: select this one as {spec.qualified_name!r}"
            )
        rows.append(row)
    named = (
        None if not args.names else {normalize_dist_name(n) for n in args.names if normalize_dist_name(n) in plugins}
    )
    rows += _lazy_initializer_rows(named, plugins)
    if not rows:  # nothing installed to check is not a pass: a deployment check must notice
        print(f"pml-anchors validate: nothing to check: {no_methods_text()}", file=sys.stderr)
        if args.json:
            print("[]")
        return 1
    failed = [r for r in rows if r["status"] == "failed"]
    conflicts = [r for r in rows if r["status"] == "conflict"]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 1 if failed or conflicts else 0
    for r in rows:
        where = f"[{r['plugin']}{' ' + r['version'] if r['version'] else ''}]"
        detail = {"ok": r.get("detail"), "conflict": f"{r.get('detail')}; {r.get('conflict')}"}.get(r["status"])
        name = r["method"] or r.get("initializer") or r["plugin"]
        label = {"ok": "ok", "conflict": "CLASH"}.get(r["status"], "FAILED")
        print(f"{label:6}  {name}  {where}  {detail if detail is not None else r['error']}")
    summary = f"{len(rows)} checked{' (with --run)' if args.run else ''}, {len(failed)} failed"
    if conflicts:
        summary += (
            f", {len(conflicts)} clashing (CLASH: a method name that more than one plugin registers; each works by its "
            "qualified name, but the short name is refused as ambiguous until one plugin is disabled with "
            "PML_ANCHORS_DISABLE_PLUGINS)"
        )
    print(summary, file=sys.stderr if failed or conflicts else sys.stdout)
    return 1 if failed or conflicts else 0


#: plugin statuses that count as failures (``disabled``, ``skipped`` and ``refused`` are not: the user's choice, or a
#: distribution found only through the current directory; named explicitly, they fail as "not loaded")
BROKEN = ("failed", "incompatible", "tampered")


def _plugin_row(plugin: dict[str, Any]) -> dict[str, Any]:
    """A failed row for a plugin that did not load, or loaded with a method name another plugin also uses."""
    problems = [plugin["error"]] if plugin["error"] else []
    problems += [f"conflict: {c}" for c in plugin["conflicts"]]
    error = "; ".join(problems) if plugin["status"] == "ok" else f"plugin is {plugin['status']}: {'; '.join(problems)}"
    return {"method": None, "plugin": plugin["name"], "version": plugin["version"], "status": "failed", "error": error}


def _check(spec: Any, run: bool, num_classes: int, embedding_size: int | None) -> dict[str, Any]:
    """Resolve ``spec``'s lazy parts (and run the conformance check): a row of the report."""
    row = {"method": spec.name, "plugin": spec.plugin, "version": spec.plugin_version, "status": "ok", "detail": ""}
    try:
        cls = spec.resolve_loss()
        if isinstance(spec.initializer, str):  # a registered name or a lazy "module:function"
            resolve_initializer(spec.initializer)
        hooks = build_trainer_hooks(spec)
        row["detail"] = f"loss {cls.__module__}.{cls.__qualname__}, hooks {type(hooks).__name__}"
        if run:
            report = check_method(spec, num_classes=num_classes, embedding_size=embedding_size)
            row["report"] = report
            row["detail"] += (
                f"; conformance passed (loss {report['loss']:.4g}, in PML's trainer {report['trainer_loss']:.4g})"
            )
            row["detail"] += _compile_text(report.get("compile"))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - every failure becomes a row, sys.exit() in a lazy module too
        row.update(status="failed", error=_error(exc))
    return row


def _compile_text(compiled: dict[str, Any] | None) -> str:
    """``; compiles whole`` or ``; 3 graph breaks (2 host reads)`` (docs/compile.md): what the step costs on a GPU."""
    if not compiled:
        return ""
    if compiled.get("graph_breaks") is None:
        return f"; does not compile ({compiled.get('error', 'dynamo could not trace it')})"
    breaks, reads = compiled["graph_breaks"], compiled.get("host_reads") or 0
    text = "; compiles whole" if breaks == 0 else f"; {breaks} graph break{'s' * (breaks != 1)} ({reads} host reads)"
    syncs = compiled.get("cuda_syncs")
    return text + ("" if syncs is None else f", {syncs} CUDA syncs per step")


def _lazy_initializer_rows(plugins: set[str] | None, reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A failed row for each initializer registered as a lazy ``"module:function"`` string (by the plugins named,
    or by every plugin) that cannot be imported; the ones that resolve add no row (they are not methods)."""
    rows = []
    for entry in get_plugin_manager().registry().initializers.values():
        if not is_lazy_path(entry.function):
            continue
        if plugins is not None and normalize_dist_name(entry.plugin) not in plugins:
            continue
        try:
            entry.resolve()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a row of the report
            report = reports.get(normalize_dist_name(entry.plugin), {})
            rows.append(
                {
                    "method": None,
                    "initializer": entry.name,
                    "plugin": entry.plugin,
                    "version": report.get("version"),
                    "status": "failed",
                    "error": f"initializer {entry.qualified_name!r} ({entry.function}): {_error(exc)}",
                }
            )
    return rows


def _error(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): importing it called sys.exit()"
    return f"{type(exc).__name__}: {exc}"
