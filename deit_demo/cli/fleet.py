"""`--each-kind`: a sweep, benchmark or card on one node of each kind of a Ray cluster, and `nodes`, which lists the
kinds. Prints a table and a recommendation per kind; writes a results file per kind and the combined one."""

from __future__ import annotations

import sys
from pathlib import Path

from deit_demo.cli.common import emit, lab_for

COLUMNS = ["model", "variant", "batch_size", "threads", "median_ms", "p90_ms", "size_bytes", "status", "reason"]


def cmd_nodes(args) -> int:
    from deit_demo.present.report import to_markdown
    from deit_demo.service import node_kinds

    args.model, args.weights, args.store = "deit_tiny", "random", None
    lab = lab_for(args)
    try:
        kinds = node_kinds(lab)
    finally:
        lab.close()
    emit(args, to_markdown([{"kind": k.name, "nodes": len(k.nodes), "id": k.key,
                             "note": "this front end's node (serves visitors)" if k.serves else ""} for k in kinds]))
    return 0


def run_each_kind(args, job: str, settings, model: str | None = None) -> int:
    """The job on every kind of node; the tables and recommendations per kind; the files."""
    from deit_demo.present.report import to_markdown
    from deit_demo.service import DeitDemoError, run_fleet, save_fleet

    if not args.cluster:
        raise DeitDemoError("--each-kind runs on a cluster's kinds of node: add --cluster local|HOST:PORT.")
    lab = lab_for(args)
    seen: set[str] = set()

    def rows_came(kind, rows) -> None:
        if kind.name not in seen:
            seen.add(kind.name)
            print(f"{kind.name}: first rows in", file=sys.stderr)

    try:
        print(f"running the {job} on one node of each kind of {args.cluster}...", file=sys.stderr)
        outcome = run_fleet(lab, job, settings, model=model, weights=args.weights, on_rows=rows_came,
                            deadline_s=args.deadline)
    finally:
        lab.close()
    for result in outcome.kinds:
        emit(args, f"\n## {result.kind.name}  ({len(result.kind.nodes)} node(s); {result.seconds:.0f} s)")
        if result.payload is None:
            emit(args, f"no result: {result.error}")
            continue
        rows = result.payload.get("rows") or []
        table = [{c: _cell(r.get(c)) for c in COLUMNS} for r in rows]
        emit(args, to_markdown(table, COLUMNS) if table else "(a card: see its files)")
    emit(args, "")
    for line in outcome.recommendations():
        emit(args, f"recommendation {line}")
    stem = Path(args.json).with_suffix("") if args.json and args.json != "-" else Path(f"{job}_each_kind")
    for path in save_fleet(outcome, stem):
        print(f"wrote {path}", file=sys.stderr)
    return 0 if all(r.payload is not None for r in outcome.kinds) else 1


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "" if value is None else str(value)[:80]
