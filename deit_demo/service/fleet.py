"""Decide across a fleet, as the Lab offers it: the kinds of node in the attached cluster, and a sweep, benchmark or
card run on one node of each kind (`cluster.fleet`), with a results file per kind, one combined file that `compare`
and the Decide tab overlay, and a recommendation per kind."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from deit_demo.core.errors import DeitDemoError
from deit_demo.measure.results import fleet_payload, write_json


@dataclass
class FleetOutcome:
    """Each kind's result (`cluster.fleet.KindResult`), and the files written for them."""

    job: str
    kinds: list
    files: list[Path] = field(default_factory=list)

    def recommendations(self) -> list[str]:
        """"on kind A: pt2e_int8, 26 ms" per kind, or why it has none."""
        lines = []
        for result in self.kinds:
            found = (result.payload or {}).get("recommendation", {})
            what = found.get("sentence") if found else ""
            lines.append(f"on {result.kind.name}: {what or result.error or 'no recommendation'}")
        return lines


def require_cluster(lab) -> None:
    if lab.config.cluster is None:
        raise DeitDemoError("This needs a cluster: --cluster local|HOST:PORT (docs/SCALING.md).")


def node_kinds(lab) -> list:
    """The kinds of node in the lab's cluster (CPU model, deciding ISA flags, CPUs, accelerator, labels)."""
    require_cluster(lab)  # attached when the lab was built
    from deit_demo.cluster.fleet import node_kinds as kinds

    return kinds()


def run_fleet(lab, job: str, settings, *, model: str | None = None, weights: str | None = None,
              cancel: threading.Event | None = None, on_rows=None, visitor: str | None = None,
              deadline_s: float = 3600.0) -> FleetOutcome:
    """`job` on one node of each kind (not the node that serves visitors, unless it is the only one), through the
    lab's door like every heavy job; the kinds run at once, each on a node of its own."""
    require_cluster(lab)
    from deit_demo.cluster.fleet import JobSpec, node_kinds, run_each_kind, workers

    spec = JobSpec(job, settings, model, weights or lab.config.weights_policy().weights_for(model or ""),
                   deadline_s)
    with lab.door.enter(visitor, f"a {job} across the cluster", cancel):
        kinds = workers(node_kinds())
        return FleetOutcome(job, run_each_kind(spec, kinds, on_rows=on_rows, cancel=cancel))


def save_fleet(outcome: FleetOutcome, stem: Path) -> list[Path]:
    """A results file per kind (`STEM_<kind>.json`) and the combined one (`STEM.json`); a kind with no payload (its
    node died, its deadline passed) is in the combined file as a part whose rows say why."""
    parts = []
    for result in outcome.kinds:
        part = result.payload or _failed_part(result, outcome.job)
        if outcome.job == "card":
            part = {**part, "rows": part.get("rows", [])}
        parts.append(part)
        path = stem.with_name(f"{stem.name}_{_slug(result.kind.slug)}.json")
        write_json(path, part)
        outcome.files.append(path)
    combined = stem.with_name(stem.name + ".json")
    write_json(combined, fleet_payload(parts, outcome.job))
    outcome.files.append(combined)
    return outcome.files


def _failed_part(result, job: str) -> dict:
    """What a kind whose job did not finish leaves: its rows so far (if any), and a row that says why."""
    from deit_demo.measure.results import RESULTS_SCHEMA

    rows = [dict(r) for r in result.rows_so_far]
    rows.append({"model": "-", "variant": "-", "status": "failed", "reason": f"{job} on this kind: {result.error}"})
    return {"schema": RESULTS_SCHEMA, "kind": job, "node_kind": result.kind.name, "node": result.node,
            "machine": {"cpu": result.kind.facts.get("cpu", "?"), "isa": result.kind.facts.get("isa", []),
                        "usable_cpus": result.kind.facts.get("cpus")}, "run": {}, "rows": rows,
            "error": result.error}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "kind"
