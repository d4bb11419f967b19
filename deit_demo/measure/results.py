"""Results files: the one JSON writer (``-`` = stdout), the CSV of benchmark rows, and saved files read back and
checked. Every file carries `schema`, a `machine` block and a `run` block (packages, commit, CPU flags, threads), so
runs from different machines, builds and settings can be placed."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from deit_demo.core.cpus import machine_info
from deit_demo.core.errors import DeitDemoError
from deit_demo.core.provenance import run_metadata

RESULTS_SCHEMA = "deit-demo-results/1"  # written into every results file, checked when one is read back
MAX_RESULTS_BYTES = 20 * 2**20
MAX_JSON_DEPTH = 12


def write_json(target: Path | str, payload: dict) -> dict:
    """`payload` as indented JSON into `target`, or on stdout when `target` is ``-``."""
    text = json.dumps(payload, indent=2, default=str)
    if str(target) == "-":
        print(text)
    else:
        Path(target).write_text(text)
    return payload


def results_payload(rows: list, *, machine: dict | None = None, **extra) -> dict:
    """A results file's content: schema, machine (this one unless given: a visitor's browser), the run's metadata
    (packages, commit, CPU flags, threads; no CPU flags for another machine's rows), the rows (objects with `to_row()`
    or dicts, raw samples included), and `extra`."""
    rows = [r if isinstance(r, dict) else r.to_row() for r in rows]
    run = run_metadata(rows)
    if machine is not None:  # measured elsewhere (a visitor's browser): this CPU's flags would not describe it
        run["cpu_flags"] = []
    return {"schema": RESULTS_SCHEMA, **extra, "machine": machine or machine_info(), "run": run, "rows": rows}


CSV_FIELDS = ["model", "variant", "batch_size", "threads", "status", "reason", "median_ms", "p10_ms", "p90_ms",
              "mean_ms", "stdev_ms", "iqr_ms", "throughput_ips", "size_bytes", "profiler_self_cpu_ms",
              "peak_rss_bytes", "weights", "top1_agreement", "max_abs_diff", "disturbed", "samples_ms"]


def save_csv(path: Path | str, results: list) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for result in results:
            row = result.to_row()
            row["samples_ms"] = " ".join(f"{s:.4f}" for s in row.get("samples_ms", []))
            writer.writerow(row)


def _depth(value, limit: int, level: int = 0) -> int:
    if level > limit:
        return level
    if isinstance(value, dict):
        return max([_depth(v, limit, level + 1) for v in value.values()] or [level])
    if isinstance(value, list):
        return max([_depth(v, limit, level + 1) for v in value] or [level])
    return level


def fleet_payload(parts: list[dict], job: str) -> dict:
    """One file for a job run on every kind of node: each kind's own payload (its machine, run and rows) under
    `parts`, and every row once more at the top, marked with its kind, so a reader that knows nothing of fleets still
    finds rows and a machine block. `expand` gives back the parts; `compare` and the Decide tab overlay them."""
    rows = [{**row, "node_kind": part.get("node_kind", "")} for part in parts for row in part.get("rows", [])]
    kinds = [part.get("node_kind", "") for part in parts]
    return {"schema": RESULTS_SCHEMA, "kind": "fleet", "job": job, "machine": {
        "cpu": f"{len(parts)} kinds of node", "kinds": kinds}, "run": run_metadata(rows), "rows": rows,
        "recommendations": {part.get("node_kind", ""): part.get("recommendation", {}).get("sentence", "")
                            for part in parts if part.get("recommendation")}, "parts": parts}


def expand(payload: dict) -> list[dict]:
    """A results file as the runs it holds: one, or each kind of node's for a fleet file (labelled with its kind)."""
    if payload.get("kind") != "fleet":
        return [payload]
    return [{**part, "label": f"{payload.get('label', 'fleet')}:{part.get('node_kind', '?')[:40]}"}
            for part in payload.get("parts", []) if isinstance(part, dict) and isinstance(part.get("machine"), dict)]


def load_results(path: Path | str, label: str | None = None) -> dict:
    """A saved results file (bench, sweep or tome-sweep JSON), checked: size, nesting, schema, machine, rows."""
    path = Path(path)
    name = label or path.name
    if not path.is_file():
        raise DeitDemoError(f"{name}: no such file.")
    if os.path.getsize(path) > MAX_RESULTS_BYTES:
        raise DeitDemoError(f"{name} is {os.path.getsize(path) / 2**20:.0f} MB; a results file is at most "
                            f"{MAX_RESULTS_BYTES // 2**20} MB.")
    try:
        payload = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise DeitDemoError(f"{name} is not a results file (not JSON: {str(err)[:80]}).") from None
    except RecursionError:
        raise DeitDemoError(f"{name} is nested too deeply to be a results file.") from None
    if _depth(payload, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise DeitDemoError(f"{name} is nested too deeply to be a results file.")
    if not isinstance(payload, dict) or payload.get("schema") != RESULTS_SCHEMA:
        found = payload.get("schema") if isinstance(payload, dict) else type(payload).__name__
        raise DeitDemoError(f"{name} is not a DeiT Lab results file (schema {found!r}, expected {RESULTS_SCHEMA!r}).")
    machine, rows = payload.get("machine"), payload.get("rows")
    if not isinstance(machine, dict) or "cpu" not in machine:
        raise DeitDemoError(f"{name} has no machine block, so its figures cannot be placed.")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "variant" in r and "model" in r for r in rows):
        raise DeitDemoError(f"{name} has no result rows (each needs a model and a variant).")
    payload["label"] = name
    return payload


# ------------------------------------------------------------------------------------------------------ names


def variant_name(row) -> str:
    """The variant as every table shows it: with its token-merging r where it has one (a row object or a dict)."""
    get = row.get if isinstance(row, dict) else (lambda name, default=None: getattr(row, name, default))
    return get("variant") + (f" (r={get('tome_r')})" if get("tome_r") is not None else "")


def pair_name(row: dict) -> str:
    name = f"{row['model']}/{variant_name(row)}"
    extras = [f"threads={row['threads']}" if row.get("threads") else "", f"batch {row['batch_size']}"
              if row.get("batch_size", 1) != 1 else ""]
    return name + "".join(f", {e}" for e in extras if e)


def accuracy_of(row: dict) -> float | None:
    """The top-1 (%) a chart and the frontier place a pair at: measured here on labelled data when it was (the
    accuracy budget), else the model's published figure."""
    if row.get("top1") is not None and row.get("n_images"):
        return 100 * row["top1"]
    return row.get("published_top1")
