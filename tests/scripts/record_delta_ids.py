"""Record the delta id of every registered method on small, fixed cases: the bit-identical guard.

A delta's id hashes the bytes of every tensor it changes (and of their originals), so
two code versions that compute the same edit produce the same id on one kind of CPU.  Another
CPU rounds differently (`erasekit.models.arithmetic`), so each case keeps its ids per arithmetic
signature, and a summary that does not depend on the CPU: per changed tensor, the L2 norm of the
change and how many entries changed.  ``tests/test_delta_ids.py`` recomputes every case: the same
tensors must change, the summary must agree within `RTOL`, and where this machine's signature
has an id, the id must be equal.  Each case is one method on one pipeline (a tiny SD-1/SD-2/SDXL
pipeline, or the shipped Shapes model) with one preset and a few overrides that keep it small (a
handful of iterations, trajectories and pool entries).

Record (after a deliberate change of what a method computes, or to add this machine's ids):

    PYTHONPATH=src OMP_NUM_THREADS=1 python tests/scripts/record_delta_ids.py

A case whose summary still agrees keeps the other machines' ids and gains this one's; a case whose
summary changed keeps only this machine's.  ``--check`` compares instead of writing (exit 1 on a
mismatch); ``--family sd1`` limits either to one pipeline family.  Everything runs on one CPU
thread, so the ids do not depend on the machine's core count.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "delta_ids.json"
# How far a summary may move between CPUs.  Another summation order (the cases on two threads instead of
# one) moved every summary by less than a tenth of this.
RTOL = 2e-2
FLOOR = 1e-5
FAMILIES = ("sd1", "sd2", "sdxl", "shapes")

# The concept every tiny-pipeline case erases (an object, so each method takes its object scope).
TINY_CONCEPT = dict(name="cat", kind="object", targets=["cat", "kitten"], anchor="dog",
                    templates=["a photo of {}", "{} in a garden"], preserve=["a photo of a house", "a red car"])

_FAST = dict(progress=False, lr=1e-3)
_TRCE_V = dict(iterations=2, margin=10.0, n_trajectories=2, n_uncond=2, n_steps=4, max_step=1, sample_batch=2)
_TRUST = dict(iterations=2, n_steps=4, pool_size=2, retain_pool_size=2)
# Overrides of the SD preset (the paper's defaults) per method on the tiny pipelines.  TRCE's stage 2
# gets a wide margin so its hinge is active on random weights (else its loss can be exactly 0).
TINY_OVERRIDES: dict[str, dict] = {
    "uce": {},
    "trce-t": dict(n_general=12),
    "trce-v": dict(**_FAST, **_TRCE_V),
    "trce": dict(**_FAST, **_TRCE_V, n_general=12),
    "esd-x": dict(**_FAST, iterations=2, n_steps=4),
    "esd-u": dict(**_FAST, iterations=2, n_steps=4),
    "kscu": dict(**_FAST, iterations=2, n_steps=4),
    "trust": dict(**_FAST, **_TRUST, scorer="forget"),
    "salun": dict(**_FAST, **_TRUST, saliency_samples=2),
    "salun++": dict(**_FAST, **_TRUST),
    "trust-kv": dict(**_FAST, **_TRUST),
}

_SHAPES_FAST = dict(progress=False)
# (method, preset, concept, overrides) on the Shapes model: each Shapes preset with its own learning
# rate, scope and sampling steps, and only the iteration / trajectory / pool counts cut down.
SHAPES_CASES: list[tuple[str, str, str, dict]] = [
    ("uce", "shapes", "shapes/blue", {}),
    ("trce-t", "shapes", "shapes/blue", dict(n_general=24)),
    ("trce-v", "shapes", "shapes/blue", dict(**_SHAPES_FAST, iterations=2, n_trajectories=2, n_uncond=2)),
    ("trce", "shapes", "shapes/blue", dict(**_SHAPES_FAST, iterations=2, n_trajectories=2, n_uncond=2, n_general=24)),
    ("esd-x", "shapes", "shapes/blue", dict(**_SHAPES_FAST, iterations=2)),
    ("esd-u", "shapes", "shapes/circle", dict(**_SHAPES_FAST, iterations=2)),
    ("esd-u", "shapes-retain", "shapes/blue",
     dict(**_SHAPES_FAST, iterations=2, preserve_pool_size=4, preserve_batch=2, sample_batch=2)),
    ("kscu", "shapes", "shapes/blue", dict(**_SHAPES_FAST, iterations_by_kind={"attribute": 3})),
    ("kscu", "shapes", "shapes/circle", dict(**_SHAPES_FAST, iterations_by_kind={"object": 3})),
    ("trust", "shapes", "shapes/blue", dict(**_SHAPES_FAST, iterations=2, pool_size=2, retain_pool_size=2)),
    ("trust", "shapes", "shapes/red-circle", dict(**_SHAPES_FAST, iterations=2, pool_size=2, retain_pool_size=2)),
    ("salun", "shapes", "shapes/blue",
     dict(**_SHAPES_FAST, iterations=2, pool_size=2, retain_pool_size=2, saliency_samples=2)),
    ("salun++", "shapes", "shapes/blue", dict(**_SHAPES_FAST, iterations=2, pool_size=2, retain_pool_size=2)),
    ("trust-kv", "shapes", "shapes/blue", dict(**_SHAPES_FAST, iterations=2, pool_size=2, retain_pool_size=2)),
]


def cases(family: str) -> list[dict]:
    """The cases of one pipeline family, in the order they run (one pipeline serves them all)."""
    if family == "shapes":
        return [dict(method=m, family=family, preset=p, concept=c, overrides=o) for m, p, c, o in SHAPES_CASES]
    from erasekit.methods.base import list_methods

    return [dict(method=m, family=family, preset="sd", concept=TINY_CONCEPT["name"], overrides=TINY_OVERRIDES[m])
            for m in list_methods()]


def pipeline(family: str):
    if family == "shapes":
        from erasekit.models.loading import load_pipeline

        return load_pipeline("shapes")
    from erasekit.models.tiny import tiny_pipeline

    return tiny_pipeline(family)


def concept_of(case: dict):
    from erasekit.concepts.packs import get_concept
    from erasekit.concepts.spec import ConceptSpec

    return get_concept(case["concept"]) if case["family"] == "shapes" else ConceptSpec(**TINY_CONCEPT)


@torch.no_grad()
def summary(pipe, delta) -> dict[str, list[float]]:
    """{tensor: [L2 norm of the change, changed entries]} in float64 against ``pipe``'s (original) weights."""
    from erasekit.models.delta import resolve_tensors

    live = resolve_tensors(pipe, delta.names)
    out = {}
    for name in delta.names:
        change = delta.tensors[name].double() - live[name].detach().cpu().double()
        out[name] = [float(change.norm()), int((change != 0).sum())]
    return out


def summaries_agree(a: dict[str, list[float]], b: dict[str, list[float]]) -> bool:
    """The same tensors changed, each by a norm within `RTOL` (plus `FLOOR` of the whole change's norm, for
    tensors that barely moved) and an entry count within `RTOL` (plus two entries) of the other's."""
    if a.keys() != b.keys():
        return False
    floor = FLOOR * math.sqrt(sum(v[0] ** 2 for v in a.values()))
    return all(abs(a[n][0] - b[n][0]) <= RTOL * max(a[n][0], b[n][0]) + floor
               and abs(a[n][1] - b[n][1]) <= RTOL * max(a[n][1], b[n][1]) + 2 for n in a)


def erase(pipe, case: dict):
    from erasekit.methods.base import get_method

    info = get_method(case["method"])
    config = info.config_cls.preset(case["preset"], **case["overrides"])
    return info.erase(pipe, concept_of(case), config)


def compute(family: str, log=None) -> list[dict]:
    """Every case of ``family`` with its ``delta_id`` here and its summary, on one CPU thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe, out = pipeline(family), []
        for case in cases(family):
            t0 = time.perf_counter()
            delta = erase(pipe, case)
            out.append({**case, "delta_id": delta.delta_id, "summary": summary(pipe, delta)})
            if log:
                log(f"{family:6s} {case['method']:8s} {case['preset']:18s} {out[-1]['delta_id']}"
                    f"  ({time.perf_counter() - t0:.1f}s)")
        return out
    finally:
        torch.set_num_threads(before)


def stored_id(case: dict, here: str) -> str | None:
    """The id a stored case holds for arithmetic signature ``here``, if any."""
    from erasekit.models.arithmetic import same_arithmetic

    return next((i for sig, i in case["delta_ids"].items() if same_arithmetic(sig, here)), None)


def problems(stored: dict, fresh: dict, here: str) -> list[str]:
    """Why a freshly computed case is not the stored one ([] when it is)."""
    if not summaries_agree(stored["summary"], fresh["summary"]):
        only = sorted(stored["summary"].keys() ^ fresh["summary"].keys())
        return [f"{key(fresh)}: the change differs from the stored summary"
                + (f" (tensors changed in one only: {', '.join(only[:3])})" if only else "")]
    want = stored_id(stored, here)
    if want is not None and want != fresh["delta_id"]:
        return [f"{key(fresh)}: delta id {fresh['delta_id']}, stored {want} for {here}"]
    return []


def merged(stored: dict | None, fresh: dict, here: str) -> dict:
    """The case to store: a summary that still agrees keeps the other machines' ids beside this one's."""
    case = {k: v for k, v in fresh.items() if k not in ("delta_id", "summary")}
    if stored is not None and summaries_agree(stored["summary"], fresh["summary"]):
        return {**case, "delta_ids": {**stored["delta_ids"], here: fresh["delta_id"]}, "summary": stored["summary"]}
    return {**case, "delta_ids": {here: fresh["delta_id"]}, "summary": fresh["summary"]}


def key(case: dict) -> str:
    return f"{case['family']}/{case['method']}@{case['preset']}/{case['concept']}"


def main(argv: list[str] | None = None) -> int:
    from erasekit.models.arithmetic import signature

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--family", choices=FAMILIES, action="append")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = parser.parse_args(argv)
    families = args.family or list(FAMILIES)
    stored = {key(c): c for c in json.loads(args.out.read_text())["cases"]} if args.out.exists() else {}
    here = signature()
    fresh = [c for f in families for c in compute(f, log=lambda s: print(s, file=sys.stderr))]
    if args.check:
        bad = [p for c in fresh for p in (problems(stored[key(c)], c, here) if key(c) in stored
                                          else [f"{key(c)}: not stored"])]
        for p in bad:
            print(f"MISMATCH {p}")
        return 1 if bad else 0
    kept = {**stored, **{key(c): merged(stored.get(key(c)), c, here) for c in fresh}}
    ordered = sorted(kept.values(), key=lambda c: FAMILIES.index(c["family"]))
    doc = {"about": "delta ids of every method on fixed small cases, per arithmetic signature, and a summary of each "
                    "change; record with `PYTHONPATH=src OMP_NUM_THREADS=1 python tests/scripts/record_delta_ids.py`",
           "torch": torch.__version__, "cases": ordered}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"wrote {len(ordered)} cases to {args.out} (ids for {here})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
