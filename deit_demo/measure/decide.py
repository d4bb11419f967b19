"""What should I ship? A recommendation under budgets, the Pareto front, and saved runs from different machines
compared.

`recommend` and `pareto_front` work on plain result rows, so they apply to a sweep just run (`sweep.run_sweep`), to a
saved file, or to rows made by hand. Accuracy is the model's published ImageNet top-1 (or the measured one of a model
trained here); a variant is trusted to keep it only when its answers agree with the original.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from deit_demo.measure.budget import OVER, UNCERTAIN, UNJUDGED, WITHIN, signed
from deit_demo.measure.results import accuracy_of, pair_name, results_payload, variant_name, write_json
from deit_demo.measure.sweep import SweepRow, SweepSettings
from deit_demo.variants.registry import ORIGINAL

# ------------------------------------------------------------------------------------------------------ decision


def row_dict(row) -> dict:
    """Any result row (SweepRow, BenchResult or a dict read from a file) as a plain dict with median_ms."""
    if isinstance(row, dict):
        return row
    return row.to_row()


@dataclass
class Recommendation:
    best: dict | None
    runners_up: list[dict]
    rejected: list[dict]  # {"pair", "why"}
    sentence: str
    budgets: dict
    uncertain: list[dict] = field(default_factory=list)  # {"pair", "why", "settle_images"}: the interval decides
    unjudged: list[dict] = field(default_factory=list)  # {"pair", "why"}: no labelled data, never presented as safe

    def to_dict(self) -> dict:
        return asdict(self)


def _accuracy_budget(r: dict, max_drop: float, uncertain: list, unjudged: list) -> list[str]:
    """Why a pair fails the accuracy budget ([] when its measured drop fits); uncertain and unjudged pairs listed."""
    verdict = r.get("accuracy_verdict") or UNJUDGED
    if verdict == WITHIN:
        return []
    if verdict == UNJUDGED and r.get("variant") == ORIGINAL:
        return []  # the reference itself: its drop is zero by definition, data or not
    note = r.get("accuracy_note") or "could not be judged: no labelled data (--eval-data FOLDER)"
    if verdict == UNCERTAIN:
        uncertain.append({"pair": pair_name(r), "why": note, "settle_images": r.get("settle_images")})
    elif verdict == UNJUDGED:
        unjudged.append({"pair": pair_name(r), "why": note})
    return [note]


def recommend(rows, *, budget_ms: float | None = None, budget_mb: float | None = None, min_top1: float | None = None,
              min_agreement: float = 0.99, max_drop: float | None = None, machine: dict | None = None,
              runners_up: int = 3) -> Recommendation:
    """The most accurate pair within the budgets (ties: the faster), the next best, and why every other pair lost.

    With `max_drop` (points), a pair qualifies only if its top-1 measured on its model's labelled set (the sweep's
    `accuracy_verdict`, see `measure.budget`) is within that many points of its model's original; pairs that could
    not be judged are named and never recommended, lossy or not (the original excepted: it is the reference)."""
    rows = [row_dict(r) for r in rows]
    uncertain, unjudged = [], []
    random = any(r.get("weights") == "random" for r in rows)
    tasks = [r.get("task", "ImageNet-1k") for r in rows]
    task = "ImageNet-1k" if "ImageNet-1k" in tasks else (tasks[0] if tasks else "ImageNet-1k")
    candidates, rejected = [], []
    for r in rows:
        why = []
        if r.get("task", "ImageNet-1k") != task:
            why.append(f"measured on another task ({r.get('task')}): its accuracy does not compare with {task}'s")
        elif r.get("status") != "ok" or r.get("median_ms") is None:
            why.append(f"{r.get('status', 'failed')}: {r.get('reason') or 'not timed'}")
        else:
            # measured on labelled data: that decides, not the agreement on a few check inputs
            measured = max_drop is not None and r.get("accuracy_verdict") in (WITHIN, UNCERTAIN, OVER)
            if max_drop is not None:
                why += _accuracy_budget(r, max_drop, uncertain, unjudged)
            elif r.get("lossy"):
                why.append("computes less on purpose (token merging): its accuracy is not published; measure its cost "
                           "first (sweep --max-drop POINTS, or tune)")
            if r.get("published_top1") is None:
                why.append("no published accuracy")
            if budget_ms is not None and r["median_ms"] > budget_ms:
                why.append(f"{r['median_ms']:.1f} ms is over the {budget_ms:g} ms budget")
            if budget_mb is not None and r.get("size_bytes", 0) / 1e6 > budget_mb:
                why.append(f"{r['size_bytes'] / 1e6:.0f} MB is over the {budget_mb:g} MB budget")
            if min_top1 is not None and (r.get("published_top1") or 0) < min_top1:
                why.append(f"top-1 {r.get('published_top1')}% is under the {min_top1:g}% minimum")
            if not random and not measured and r.get("top1_agreement") is not None and \
                    r["top1_agreement"] < min_agreement:
                why.append(f"its answers agree with the original on only {r['top1_agreement']:.0%} of the check "
                           "inputs, so the published accuracy may not hold")
        if why:
            rejected.append({"pair": pair_name(r), "why": "; ".join(why)})
        else:
            candidates.append(r)
    candidates.sort(key=lambda r: (-r["published_top1"], r["median_ms"]))
    best = candidates[0] if candidates else None
    for r in candidates[1 + runners_up:]:
        rejected.append({"pair": pair_name(r), "why": f"less accurate or slower than the pick and the runners-up "
                                                      f"({accuracy_of(r):.2f}%, {r['median_ms']:.1f} ms)"})
    where = f" on {machine['cpu']} ({machine.get('usable_cpus', '?')} CPUs)" if machine else ""
    limits = ", ".join(f for f in (f"{budget_ms:g} ms" if budget_ms else "", f"{budget_mb:g} MB" if budget_mb else "",
                                   f"top-1 >= {min_top1:g}%" if min_top1 else "",
                                   f"at most {max_drop:g} top-1 point{'' if max_drop == 1 else 's'} under the original"
                                   if max_drop is not None else "") if f) or "no budget"
    if best is None:
        sentence = f"Nothing fits ({limits}){where}: see why each pair lost, and loosen a budget."
    else:
        size_mb = best.get("size_bytes", 0) / 1e6
        sentence = (f"Ship {best['model']} as {variant_name(best)}: {_accuracy_words(best, task)} at "
                    f"{best['median_ms']:.1f} ms per call (batch {best.get('batch_size', 1)}, threads="
                    f"{best.get('threads', '?')}), {size_mb:.1f} MB, within {limits}{where}.")
        if random:
            sentence += " (Random weights: answer agreement was not used, it is noise without trained weights.)"
    if uncertain:
        sentence += " Uncertain (the interval decides, not the point estimate): " + "; ".join(
            f"{u['pair']} (about {u['settle_images']} labelled images would settle it)" if u["settle_images"] else
            u["pair"] for u in uncertain) + "."
    if unjudged:
        why = unjudged[0]["why"].removeprefix("could not be judged: ")
        sentence += (" Not judged against the accuracy budget, so not recommended: "
                     f"{', '.join(u['pair'] for u in unjudged)} ({why}).")
    busy = sorted({r["disturbed"] for r in rows if r.get("disturbed")})
    if busy:  # a recommendation from a disturbed timing is not stated as a fact
        sentence += (f" ⚠ Measured while the server was busy ({'; '.join(busy)[:200]}): the latencies may be slow "
                     "and spread, so rerun when the server is idle before relying on this.")
    return Recommendation(best=best, runners_up=candidates[1:1 + runners_up], rejected=rejected, sentence=sentence,
                          budgets={"budget_ms": budget_ms, "budget_mb": budget_mb, "min_top1": min_top1,
                                   "min_agreement": min_agreement, "max_drop": max_drop},
                          uncertain=uncertain, unjudged=unjudged)


def _accuracy_words(row: dict, task: str) -> str:
    """The pick's accuracy: measured here with its interval and change on named data, or the published figure."""
    if row.get("top1") is not None and row.get("n_images"):
        low, high = row["top1_ci95"]
        change = f", {signed(-row['top1_drop'])} points against the original" \
            if row.get("top1_drop") is not None else ""
        return (f"top-1 {100 * row['top1']:.2f}% [{100 * low:.2f}, {100 * high:.2f}] measured on {row['eval_data']} "
                f"({row['n_images']} images{change})")
    source = "measured" if "measured" in row.get("accuracy_source", "") else "published"
    return f"{row['published_top1']:.1f}% {task} top-1 ({source})"


def pareto_front(rows) -> list[dict]:
    """Timed rows with an accuracy (measured on labelled data, else published; a lossy pair only when measured) that
    no other row beats on both latency and accuracy, fastest first."""
    rows = [row_dict(r) for r in rows]
    rows = [r for r in rows if r.get("median_ms") is not None and accuracy_of(r) is not None
            and (not r.get("lossy") or r.get("top1") is not None)]
    front, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: (r["median_ms"], -accuracy_of(r))):
        if accuracy_of(r) > best:
            front.append(r)
            best = accuracy_of(r)
    return front


# ------------------------------------------------------------------------------------------------------ files


def save_sweep(path: Path | str, rows: list[SweepRow], settings: SweepSettings, recommendation: Recommendation) -> dict:
    return write_json(path, results_payload(rows, kind="sweep", settings=asdict(settings),
                                            recommendation=recommendation.to_dict()))


def compare(payloads: list[dict]) -> tuple[list[dict], list[dict]]:
    """(latency rows, machine rows): each timed (model, variant, batch) with its median per file and the speed-up of
    each file against the first. Thread counts usually differ between machines, so they are shown, not matched;
    only when a file holds a thread sweep do threads become part of the key."""
    def timed(payload):
        return [r for r in payload["rows"] if r.get("median_ms") is not None]

    swept = any(len({r.get("threads") for r in timed(p) if (r["model"], r["variant"], r.get("batch_size", 1)) == key})
                > 1 for p in payloads for key in {(r["model"], r["variant"], r.get("batch_size", 1)) for r in timed(p)})
    keys: dict[tuple, dict] = {}
    for index, payload in enumerate(payloads):
        for r in timed(payload):
            key = (r["model"], r["variant"], r.get("batch_size", 1)) + ((r.get("threads"),) if swept else ())
            keys.setdefault(key, {})[index] = r
    latency = []
    for key, found in keys.items():
        row = {"model": key[0], "variant": key[1], "batch": key[2],
               "threads": " / ".join(str(found[i].get("threads", "?")) if i in found else "-"
                                     for i in range(len(payloads)))}
        for index, payload in enumerate(payloads):
            row[f"{payload['label']} ms"] = f"{found[index]['median_ms']:.2f}" if index in found else ""
            if index and 0 in found and index in found:
                row[f"speed-up {payload['label']} vs {payloads[0]['label']}"] = \
                    f"{found[0]['median_ms'] / found[index]['median_ms']:.2f}x"
        latency.append(row)
    machines = [{"file": p["label"], "cpu": p["machine"].get("cpu"), "usable CPUs": p["machine"].get("usable_cpus"),
                 "ISA": " ".join(p["machine"].get("isa", [])), "torch": p["machine"].get("torch"),
                 "platform": p["machine"].get("platform")} for p in payloads]
    return latency, machines


def compare_warnings(payloads: list[dict]) -> list[str]:
    """One line for each way the overlaid files differ that changes their figures: threads, batch sizes, package
    versions, weights. Files written before the run block existed are read from their rows and machine block; a file
    that does not say (a browser's rows name no weights) is not held against the others."""
    def facts(payload: dict) -> dict[str, str]:
        rows, run = payload.get("rows", []), payload.get("run") or {}

        def seen(name: str) -> str:
            return ",".join(sorted({str(r[name]) for r in rows if r.get(name) not in (None, "")})) or "?"

        packages = run.get("packages") or {"torch": payload.get("machine", {}).get("torch", "?")}
        return {"threads": seen("threads"), "batch": seen("batch_size"), "weights": seen("weights"),
                "packages": ", ".join(f"{k} {v}" for k, v in sorted(packages.items()) if v != "not installed")}

    found = [(p["label"], facts(p)) for p in payloads]
    lines = []
    for name in ("threads", "batch", "packages", "weights"):
        if len({f[name] for _, f in found if f[name] != "?"}) > 1:  # "?": a file that does not say
            if name == "packages":  # only the packages that differ, else the line is unreadable
                versions = [dict(item.rsplit(" ", 1) for item in f["packages"].split(", ") if " " in item)
                            for _, f in found]
                differ = sorted({k for v in versions for k in v if len({w.get(k) for w in versions}) > 1})
                detail = "; ".join(f"{label}: " + ", ".join(f"{k} {v.get(k, '-')}" for k in differ)
                                   for (label, _), v in zip(found, versions))
            else:
                detail = "; ".join(f"{label}: {f[name]}" for label, f in found)
            lines.append(f"warning: the files differ in {name} ({detail}), so their figures do not compare alone.")
    return lines
