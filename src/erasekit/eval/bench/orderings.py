"""Check the papers' orderings against measured cells; every sentence is generated from the numbers.

Claims checked (lower target rate = better erasure):

- TRCE: full TRCE (T+V) < stage 1 alone (T) < stage 2 alone (V)
  on implicit prompts (paper, I2P: 1.29 < 5.05 < 13.86 % ASR).
- KSCU vs ESD at equal iterations (``esd@kscu``: ESD's loss, KSCU's
  scope and iteration count): KSCU erases more and costs less quality.
- TRuST vs SalUn: TRuST is faster (the paper: "significantly faster
  than the SOTA", fewer steps than SalUn) and preserves better; and, an
  expectation of this reconstruction rather than a number the paper states,
  its neuron-level mask changes fewer parameters.

Rates are compared with a two-proportion noise band: a difference counts
only when it exceeds ``NOISE_Z`` pooled standard errors; otherwise the
verdict is "within noise".  Frechet distances and changed-parameter counts
are compared by value (no noise model; the text says so).
"""

from __future__ import annotations

import math

from ..report import fixed, percent, sig3

NOISE_Z = 2.0
HOLDS, REVERSED, NOISE, MISSING = "holds", "reversed", "within noise", "not measured"


def noise_band(a: float, b: float, n_a: int, n_b: int) -> float:
    """NOISE_Z pooled standard errors of the difference of two proportions."""
    if n_a <= 0 or n_b <= 0:
        return math.inf
    p = (a * n_a + b * n_b) / (n_a + n_b)
    return NOISE_Z * math.sqrt(max(p * (1 - p), 0.0) * (1 / n_a + 1 / n_b))


def expect_lower(a: float, b: float, n_a: int, n_b: int) -> str:
    """Verdict on the claim "a < b" for two measured proportions."""
    d = a - b
    if d != 0 and abs(d) > noise_band(a, b, n_a, n_b):
        return HOLDS if d < 0 else REVERSED
    return NOISE


def expect_lower_value(a: float, b: float) -> str:
    """Verdict on "a < b" for values without a noise model (ties are "within noise")."""
    if a is None or b is None or any(math.isnan(x) for x in (a, b)):
        return MISSING
    return HOLDS if a < b else REVERSED if a > b else NOISE


def _f(x: float | None, digits: int = 2) -> str:
    return fixed(x, digits)


def _g(x: float | None) -> str:
    return sig3(x)


def _pct(x: float | None) -> str:
    return percent(x)


def _tally(verdicts: list[str]) -> str:
    counts = {v: verdicts.count(v) for v in (HOLDS, NOISE, REVERSED)}
    return ", ".join(f"{v} in {counts[v]}" for v in (HOLDS, NOISE, REVERSED)) + f" of {len(verdicts)} scenario(s)"


# ------------------------------------------------------------------ TRCE
def _trce(results: dict[str, dict[str, dict]]) -> tuple[list[str], list[str]]:
    lines, overall = [], []
    names = {"trce": "TRCE(T+V)", "trce-t": "TRCE(T)", "trce-v": "TRCE(V)"}
    for scenario, cells in results.items():
        if not all(m in cells for m in names):
            continue
        r = {m: cells[m]["target_rate"]["implicit"] for m in names}
        n = {m: cells[m]["n_per_tier"]["implicit"] for m in names}
        pairs = [("trce", "trce-t"), ("trce-t", "trce-v"), ("trce", "trce-v")]
        verdicts = {p: expect_lower(r[p[0]], r[p[1]], n[p[0]], n[p[1]]) for p in pairs}
        adjacent = [verdicts[pairs[0]], verdicts[pairs[1]]]
        scenario_verdict = REVERSED if REVERSED in adjacent else HOLDS if adjacent == [HOLDS, HOLDS] else NOISE
        overall.append(scenario_verdict)
        parts = [f"{names[a]} < {names[b]}: {verdicts[(a, b)]} (difference {r[a] - r[b]:+.2f}, noise band "
                 f"±{noise_band(r[a], r[b], n[a], n[b]):.2f})" for a, b in pairs]
        lines.append(f"- **{scenario}**: implicit-tier target rate " + ", ".join(
            f"{names[m]} {_f(r[m])}" for m in names) + f" (n = {n['trce']}). " + "; ".join(parts)
            + f". Ordering T+V < T < V: **{scenario_verdict}**.")
    return lines, overall


# ------------------------------------------------------------------ KSCU vs ESD
def _kscu(results: dict[str, dict[str, dict]]) -> tuple[list[str], list[str], list[str]]:
    lines, erase_v, quality_v = [], [], []
    for scenario, cells in results.items():
        if "kscu" not in cells or "esd@kscu" not in cells:
            continue
        k, e = cells["kscu"], cells["esd@kscu"]
        nk, ne = sum(k["n_per_tier"][t] for t in ("explicit", "synonym", "implicit")), \
            sum(e["n_per_tier"][t] for t in ("explicit", "synonym", "implicit"))
        erase = expect_lower(k["target_rate_mean"], e["target_rate_mean"], nk, ne)
        fd = expect_lower_value(k["frechet_distance"], e["frechet_distance"])
        keep = expect_lower(e["preservation_adherence"]["checked"], k["preservation_adherence"]["checked"],
                            e["n_preserve"], k["n_preserve"])
        erase_v.append(erase)
        quality_v.append(fd)
        same = "equal" if k["iterations"] == e["iterations"] else "NOT equal"
        twin = f"; the ESD run is the plain {e['same_run_as']} run (same config)" if e.get("same_run_as") else ""
        lines.append(
            f"- **{scenario}**: iterations KSCU {k['iterations']} vs ESD {e['iterations']} ({same}), scope "
            f"{'/'.join(k.get('scopes', []))} vs {'/'.join(e.get('scopes', []))}{twin}. Target rate (all wording "
            f"tiers) KSCU {_f(k['target_rate_mean'])} vs ESD {_f(e['target_rate_mean'])}: KSCU erases more — "
            f"**{erase}**. Frechet distance KSCU {_g(k['frechet_distance'])} vs ESD "
            f"{_g(e['frechet_distance'])}: KSCU closer to the original — **{fd}** (no noise model). "
            f"Preservation KSCU {_f(k['preservation'])} vs ESD {_f(e['preservation'])}: KSCU preserves more — "
            f"{keep}.")
    return lines, erase_v, quality_v


# ------------------------------------------------------------------ TRuST vs SalUn
def _trust(results: dict[str, dict[str, dict]]) -> tuple[list[str], list[str], list[str], list[str]]:
    lines, changed_v, keep_v, faster_v = [], [], [], []
    for scenario, cells in results.items():
        if "trust" not in cells or "salun" not in cells:
            continue
        t, s = cells["trust"], cells["salun"]
        changed = expect_lower_value(t["changed"]["unet_fraction"], s["changed"]["unet_fraction"])
        keep = expect_lower(s["preservation_adherence"]["checked"], t["preservation_adherence"]["checked"],
                            s["n_preserve"], t["n_preserve"])
        fd = expect_lower_value(t["frechet_distance"], s["frechet_distance"])
        n_t = sum(t["n_per_tier"][x] for x in ("explicit", "synonym", "implicit"))
        n_s = sum(s["n_per_tier"][x] for x in ("explicit", "synonym", "implicit"))
        erase = expect_lower(t["target_rate_mean"], s["target_rate_mean"], n_t, n_s)
        faster = expect_lower_value(t["erase_seconds"], s["erase_seconds"])
        changed_v.append(changed)
        keep_v.append(keep)
        faster_v.append(faster)
        lines.append(
            f"- **{scenario}**: changed parameters TRuST {_pct(t['changed']['unet_fraction'])} of the UNet "
            f"({_pct(t['changed']['scope_fraction'])} of its scope) vs SalUn {_pct(s['changed']['unet_fraction'])} "
            f"({_pct(s['changed']['scope_fraction'])}): TRuST changes fewer — **{changed}**. Preservation TRuST "
            f"{_f(t['preservation'])} vs SalUn {_f(s['preservation'])}: TRuST preserves more — **{keep}**; "
            f"Frechet distance {_g(t['frechet_distance'])} vs {_g(s['frechet_distance'])}: TRuST closer — "
            f"{fd}. Erasure time TRuST {t['erase_seconds']:.1f} s vs SalUn {s['erase_seconds']:.1f} s: "
            f"TRuST faster — **{faster}**. Context: iterations {t['iterations']} vs {s['iterations']} "
            f"(both set by the presets); target rate "
            f"{_f(t['target_rate_mean'])} vs {_f(s['target_rate_mean'])} (TRuST erases more: {erase}).")
    return lines, changed_v, keep_v, faster_v


def orderings_markdown(results: dict[str, dict[str, dict]]) -> str:
    """The "paper orderings" section: a summary table, then one generated sentence per scenario."""
    trce_lines, trce_v = _trce(results)
    kscu_lines, erase_v, quality_v = _kscu(results)
    trust_lines, changed_v, keep_v, faster_v = _trust(results)
    claims = [
        ("TRCE: T+V < T < V on the implicit tier", trce_v),
        ("KSCU erases more than ESD at equal iterations", erase_v),
        ("KSCU has a lower Frechet distance than ESD at equal iterations", quality_v),
        ("TRuST erases faster than SalUn (wall time)", faster_v),
        ("TRuST preserves more than SalUn", keep_v),
        ("TRuST changes fewer parameters than SalUn (reconstruction's expectation)", changed_v),
    ]
    out = ["## Paper orderings, checked against these numbers", "",
           f"Generated from the measured cells. A rate difference counts only beyond {NOISE_Z:g} pooled standard "
           "errors of the two proportions (\"within noise\" otherwise); Frechet distances and parameter counts "
           "are compared by value.", "",
           "| claim | holds | within noise | reversed | scenarios |", "|---|---|---|---|---|"]
    for claim, verdicts in claims:
        if verdicts:
            out.append(f"| {claim} | {verdicts.count(HOLDS)} | {verdicts.count(NOISE)} | {verdicts.count(REVERSED)} "
                       f"| {len(verdicts)} |")
        else:
            out.append(f"| {claim} | – | – | – | {MISSING} |")
    sections = [
        ("### TRCE: full (T+V) vs stage 1 (T) vs stage 2 (V), implicit tier", trce_lines,
         [("ordering", trce_v)]),
        ("### KSCU vs ESD at equal iterations (`esd@kscu`: ESD loss, KSCU scope and iteration count)",
         kscu_lines, [("KSCU erases more", erase_v), ("KSCU lower Frechet distance", quality_v)]),
        ("### TRuST vs SalUn: time, preservation and changed parameters", trust_lines,
         [("TRuST faster", faster_v), ("TRuST preserves more", keep_v),
          ("TRuST changes fewer parameters", changed_v)]),
    ]
    for title, lines, tallies in sections:
        out += ["", title, ""]
        if not lines:
            out.append(f"{MISSING.capitalize()}: the cells this check needs are not in this run.")
            continue
        out += lines
        out += ["", "Overall: " + "; ".join(f"{name}: {_tally(v)}" for name, v in tallies) + "."]
    return "\n".join(out) + "\n"
