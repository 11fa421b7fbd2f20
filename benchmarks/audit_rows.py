"""Which stored robustness rows today's method presets still reproduce, checked by the delta's bytes.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/audit_rows.py --shard 0/2   # and 1/2 beside it
    python benchmarks/audit_rows.py --report                                      # the page from the records
    python benchmarks/audit_rows.py --report --fill                               # + erase_settings where verified

Every row under the robustness roots but the original and the controls names an erasure: its
method's ``shapes`` preset at the row's seed, with the row's ``method_overrides``. This script runs
that erasure again with today's code and compares the delta id (a hash of the delta's bytes) with
the id the row measured: the row's own ``delta_id`` for an unhardened row; for a hardened row, the
base erasure's id it records (``base_delta_id``), or else the id of the unhardened row beside it
(the base a hardened row reuses) when that row was measured under the same arithmetic. Delta ids
depend on the torch thread count: a row that records none is tried with one thread, then (a second
run of the script) with two where one thread gave another id; a row that records no seed is tried at
seed 0. They also depend on the CPU's arithmetic (`erasekit.models.arithmetic`): a row is compared
only with erasures run under its own signature, and the script runs only the rows measured under
this machine's (a row measured on another kind of CPU stays *not run* here). Rows and records from
before rows recorded it were all made on AMD EPYC machines (`LEGACY_ARITHMETIC`).

Each erasure is run once per (method, concept, seed, overrides, threads, arithmetic) and recorded in
``benchmarks/results/row-audit/erasures-<shard>.jsonl`` as it finishes, so a stopped run resumes.
``--report`` writes ``docs/experiments/row-audit.md``: per method, how many rows reproduce, and every
row that does not.  A row that does not reproduce was measured with other settings or other code
than today's preset; its numbers still describe the delta it measured.  ``--fill`` writes
``erase_settings`` (today's preset with the row's overrides), and the thread count and seed that
reproduced them, into rows that reproduce and lack them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

from erasekit.concepts.packs import get_concept
from erasekit.eval.robustness import erase_config, erase_settings, row_label
from erasekit.eval.robustness_table import stored_rows, unhardened_label
from erasekit.methods.base import get_method, list_methods
from erasekit.models.arithmetic import same_arithmetic, signature
from erasekit.world.atomic import write_json, write_text

ROOT = Path(__file__).resolve().parents[1]
ROOTS = [ROOT / "benchmarks" / "results" / name for name in ("robustness", "robustness-trust", "robustness-harden")]
RECORDS = ROOT / "benchmarks" / "results" / "row-audit"
PAGE = ROOT / "docs" / "experiments" / "row-audit.md"
EXPERIMENTS = ROOT / "benchmarks" / "experiments"
LEGACY_ARITHMETIC = "AMD EPYC / unknown"


def config_methods() -> dict[str, str | None]:
    """{erasure label: registered method} of every experiment config with method overrides (None where
    two configs give one label to different methods): ``trust-kv-cip`` is ``trust`` with a tag, not
    ``trust-kv``."""
    known: dict[str, str | None] = {}
    for path in sorted(EXPERIMENTS.rglob("*.json")):
        args = json.loads(path.read_text()).get("args")
        if not isinstance(args, dict) or not args.get("method_config"):
            continue
        for method in args.get("methods", []):
            label = row_label(method, None, args.get("harden_tag", ""), args["method_config"], args.get("method_tag"),
                              args.get("anchor"))
            known[label] = method if known.get(label, method) == method else None
    return known


def registered_method(base: str, overrides: dict | None, known: dict[str, str | None] | None = None) -> str | None:
    """The registered method a row's erasure label names: the label itself; for a row with method
    overrides, the method its experiment config names (``known``), else the longest registered name
    the label extends with ``-<tag>``."""
    names = list_methods()
    if base in names and not overrides:
        return base
    if overrides and known and base in known:
        return known[base]
    fits = [m for m in names if overrides and base.startswith(m + "-")]
    return max(fits, key=len) if fits else None


def expected_base_id(label: str, row: dict, beside_rows: dict[str, dict]) -> tuple[str | None, str]:
    """(the delta id of the row's erasure, where it was read); None when nothing records it.
    ``beside_rows``: the rows of the row's folder, keyed by label.  Only committed rows are read (the
    saved deltas are not in a checkout), so the page is the same in every checkout."""
    base = unhardened_label(label)
    if base is None:
        return row.get("delta_id"), "row"
    if row.get("base_delta_id"):
        return row["base_delta_id"], "row's base"
    beside = beside_rows.get(base)
    arithmetic = row.get("arithmetic", LEGACY_ARITHMETIC)
    if beside and same_arithmetic(beside.get("arithmetic", LEGACY_ARITHMETIC), arithmetic):
        return beside.get("delta_id"), "unhardened row beside it"
    return None, "not recorded"


def audit_rows() -> list[dict]:
    """One entry per stored method row: its erasure's key and the id to reproduce."""
    out, known = [], config_methods()
    for root in ROOTS:
        for folder, rows in stored_rows(root).items():
            for label, row in rows.items():
                if label == "original" or "control" in row:  # a control names no erasure (erasekit.eval.controls)
                    continue
                base = unhardened_label(label) or label
                overrides = row.get("method_overrides") or {}
                expected, source = expected_base_id(label, row, rows)
                out.append({"folder": str(folder), "label": label, "base": base,
                            "method": registered_method(base, overrides, known), "concept": row["concept"],
                            "seed": row.get("seed", 0), "seed_recorded": "seed" in row, "overrides": overrides,
                            "threads": row.get("torch_threads"), "expected": expected, "source": source,
                            "arithmetic": row.get("arithmetic", LEGACY_ARITHMETIC),
                            "has_settings": "erase_settings" in row, "anchor": row.get("anchor")})
    return out


def thread_counts(entry: dict, records: dict[str, list[dict]]) -> list[int]:
    """The thread counts to compare a row's erasure at: its recorded count; else one thread, and two
    once one thread has been run and gave another id."""
    if entry["threads"]:
        return [entry["threads"]]
    one = record_for(records, entry, 1)
    return [1, 2] if one is not None and one["delta_id"] != entry["expected"] else [1]


def erasure_key(entry: dict, threads: int) -> str:
    """The erasure a row names: method, concept, seed, overrides, threads (and the anchor, where one replaced it)."""
    anchor = [entry["anchor"]] if entry.get("anchor") else []
    return json.dumps([entry["method"], entry["concept"], entry["seed"], entry["overrides"], threads, *anchor],
                      sort_keys=True)


def record_for(records: dict[str, list[dict]], entry: dict, threads: int) -> dict | None:
    """The recorded erasure of ``entry`` at ``threads`` made under the row's own arithmetic, if any."""
    return next((r for r in records.get(erasure_key(entry, threads), [])
                 if same_arithmetic(r.get("arithmetic", LEGACY_ARITHMETIC), entry["arithmetic"])), None)


def load_records() -> dict[str, list[dict]]:
    """{erasure key: every record of it (one per arithmetic it was run under)}."""
    records: dict[str, list[dict]] = {}
    for path in sorted(RECORDS.glob("erasures-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records.setdefault(record["key"], []).append(record)
    return records


def run(shard: int, shards: int) -> None:
    from erasekit.models.loading import load_pipeline

    records, here = load_records(), signature()
    todo = []
    for entry in audit_rows():
        if entry["method"] is None or entry["expected"] is None or not same_arithmetic(entry["arithmetic"], here):
            continue
        for threads in thread_counts(entry, records):
            key = erasure_key(entry, threads)
            if record_for(records, entry, threads) is None and key not in todo:
                todo.append(key)
    mine = [k for i, k in enumerate(sorted(todo)) if i % shards == shard]
    print(f"{len(todo)} erasures to run, {len(mine)} in shard {shard}/{shards}", flush=True)
    pipe = load_pipeline("shapes")
    out = RECORDS / f"erasures-{shard}.jsonl"
    RECORDS.mkdir(parents=True, exist_ok=True)
    before = torch.get_num_threads()
    for n, key in enumerate(mine, 1):
        method, concept, seed, overrides, threads, *anchor = json.loads(key)
        spec = get_concept(concept).with_anchor(anchor[0]) if anchor else get_concept(concept)
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        try:
            delta = get_method(method).erase(pipe, spec, erase_config(method, seed, overrides))
        finally:
            torch.set_num_threads(before)
        record = {"key": key, "delta_id": delta.delta_id, "arithmetic": here, "seconds": round(time.perf_counter() - t0, 1)}
        with out.open("a", encoding="utf-8") as f:  # one line per finished erasure: a stop loses at most one
            f.write(json.dumps(record) + "\n")
        print(f"[{n}/{len(mine)}] {method} {concept} {anchor or ''} seed {seed} {overrides or ''} threads {threads}: "
              f"{delta.delta_id} ({record['seconds']} s)", flush=True)


def _shown(folder: str) -> str:
    """A row folder as the page names it: under the results folder when it is there."""
    path = Path(folder)
    results = ROOT / "benchmarks" / "results"
    return str(path.relative_to(results)) if path.is_relative_to(results) else str(path)


def verdict(entry: dict, records: dict[str, list[dict]]) -> tuple[str, int | None]:
    """(verdict, threads that reproduced) of one row."""
    if entry["method"] is None:
        return "no registered method", None
    if entry["expected"] is None:
        return "erasure id not recorded", None
    tried = thread_counts(entry, records)
    got = [record_for(records, entry, t) for t in tried]
    if any(g is None for g in got):
        return "not run yet", None
    for t, g in zip(tried, got):
        if g["delta_id"] == entry["expected"]:
            return "reproduces", t
    return "does not reproduce", None


def report(fill: bool) -> str:
    records = load_records()
    entries = audit_rows()
    judged = [(e, *verdict(e, records)) for e in entries]
    methods = sorted({e["base"] for e in entries})
    lines = ["# Stored robustness rows against today's presets", "",
             "Generated by `python benchmarks/audit_rows.py --report` from the erasures it ran again "
             "(`benchmarks/results/row-audit/`). A row *reproduces* when today's code, with its method's "
             "`shapes` preset at the row's seed and its `method_overrides`, gives the delta id the row measured "
             "(for a hardened row, its base erasure's id, recorded in the row or read from the unhardened row "
             "beside it). A row that does not was measured with other "
             "settings or other code; its numbers describe the delta it measured, not today's preset. Delta ids "
             "depend on the torch thread count (the row's recorded count, else one thread, then two) and on "
             "the CPU's arithmetic: a row is compared only with erasures run under its own signature (CPU model / "
             "torch kernel level), and *not run* counts rows no machine of that kind has checked yet. *Id not "
             "recorded*: a row from before rows recorded their delta id, or a hardened row that records no base id "
             "and has no unhardened row beside it measured under its arithmetic.", "",
             "Rows per arithmetic: " + "; ".join(f"{a}: {n}" for a, n in sorted(Counter(
                 e["arithmetic"] for e in entries).items())) + ".", "",
             "| erasure (row label) | rows | reproduce | do not reproduce | id not recorded | not run |", "|---|---|---|---|---|---|"]
    for m in methods:
        mine = [j for j in judged if j[0]["base"] == m]
        count = {v: sum(1 for j in mine if j[1] == v) for v in
                 ("reproduces", "does not reproduce", "erasure id not recorded", "not run yet")}
        lines.append(f"| {m} | {len(mine)} | {count['reproduces']} | {count['does not reproduce']} | "
                     f"{count['erasure id not recorded']} | {count['not run yet']} |")
    stale = [j for j in judged if j[1] == "does not reproduce"]
    lines += ["", f"Rows that do not reproduce ({len(stale)}):", "",
              "| folder | row | erasure | seed | id compared (from) |", "|---|---|---|---|---|"]
    for e, _, _ in sorted(stale, key=lambda j: (j[0]["folder"], j[0]["label"])):
        seed = f"{e['seed']}" + ("" if e["seed_recorded"] else " (not recorded; 0 assumed)")
        lines.append(f"| {_shown(e['folder'])} | {e['label']} | {e['method']} "
                     f"{json.dumps(e['overrides']) if e['overrides'] else ''} | {seed} | {e['expected']} ({e['source']}) |")
    if fill:
        fill_settings(judged)
    return "\n".join(lines) + "\n"


def fill_settings(judged: list[tuple[dict, str, int | None]]) -> int:
    """Write ``erase_settings``, the thread count that reproduced the row and its seed into every row that
    reproduces and records no settings; returns how many rows were written."""
    written = 0
    for e, v, threads in judged:
        if v == "reproduces" and not e["has_settings"]:
            path = Path(e["folder"]) / f"{e['label']}.json"
            row = json.loads(path.read_text())
            config = erase_config(e["method"], e["seed"], e["overrides"])
            row["erase_settings"] = erase_settings(config, get_concept(e["concept"]).kind)
            row.setdefault("torch_threads", threads)
            row.setdefault("seed", e["seed"])  # verified: the erasure at this seed gave the row's id
            write_json(path, row)
            written += 1
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shard", default="0/1", help="I/N: run the I-th of N interleaved parts of the erasures")
    ap.add_argument("--report", action="store_true", help="write the page from the records (runs nothing)")
    ap.add_argument("--fill", action="store_true", help="with --report: erase_settings into verified rows")
    a = ap.parse_args()
    if a.report:
        write_text(PAGE, report(a.fill))
        print(f"wrote {PAGE}")
        return
    i, _, n = a.shard.partition("/")
    if not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        ap.error(f"--shard takes I/N with 0 <= I < N, got {a.shard!r}")
    run(int(i), int(n))


if __name__ == "__main__":
    main()
