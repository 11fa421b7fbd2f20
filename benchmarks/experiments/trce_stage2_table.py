"""Full TRCE (T + V) against TRCE-T under both built-in attacks: the table, from the robustness rows.

    PYTHONPATH=src python benchmarks/robustness.py --concept red --methods trce-t trce \
        --tier-prompts 8 --preservation-prompts 96 --resurgence-steps 0 \
        --out benchmarks/results/robustness/trce-stage2/red          # likewise for circle
    PYTHONPATH=src python benchmarks/experiments/trce_stage2_table.py

Reads ``benchmarks/results/robustness/trce-stage2/<concept>/{original,trce-t,trce}.json`` (and setting
variants of full TRCE, ``trce-<tag>.json``, measured with ``--method-config JSON --harden-tag=-<tag>``) and
writes ``summary.md`` there and the block between ``<!-- trce-stage2:start -->`` and
``<!-- trce-stage2:end -->`` of ``docs/experiments/trce.md``.  Rates carry 95% Wilson intervals.
"Kept" is the other values' adherence as a fraction of the original model's; the paper's claim
holds on a concept when stage 2 makes neither attack more successful and at least one less, with
kept no more than 0.02 below TRCE-T's; each row of full TRCE is judged on its own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from erasekit.eval.atomic import write_text
from erasekit.eval.metrics import wilson_interval

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "robustness" / "trce-stage2"
DOC = ROOT / "docs" / "experiments" / "trce.md"
START, END = "<!-- trce-stage2:start -->", "<!-- trce-stage2:end -->"
BAR = 0.02


def _rate(value: float, n: int) -> str:
    k = round(value * n)
    lo, hi = wilson_interval(k, n)
    return f"{value:.2f} [{lo:.2f}, {hi:.2f}]"


def _full_trce_rows(folder: Path) -> list[str]:
    """``trce`` and its setting variants (``trce-<tag>``, from ``--method-config``), trce-t excluded."""
    names = [p.stem for p in sorted(folder.glob("trce*.json")) if p.stem != "trce-t"]
    return sorted(names, key=lambda n: (n != "trce", n))


def table(results: Path = RESULTS) -> str:
    lines = ["| concept | method | setting | plain | Ring-A-Bell-style | UnlearnDiffAtk-style | adherence | kept | "
             "kept gap to trce-t | claim |", "|---|---|---|---|---|---|---|---|---|---|"]
    for folder in sorted(p for p in results.iterdir() if p.is_dir()):
        names = ["original", "trce-t", *_full_trce_rows(folder)]
        rows = {m: json.loads((folder / f"{m}.json").read_text()) for m in names if (folder / f"{m}.json").exists()}
        if "original" not in rows or "trce-t" not in rows or "trce" not in rows:
            continue
        base = rows["original"]["adherence"]
        kept = {m: r["adherence"] / base for m, r in rows.items()}
        t = rows["trce-t"]
        attacks = ("ringabell", "unlearndiff")
        for m, r in rows.items():
            n, n_pres = r["n_cases"], r.get("n_preserve", 96)
            setting = ", ".join(f"{k}={v}" for k, v in (r.get("method_overrides") or {}).items()) or "preset"
            verdict = "- | - |"
            if m not in ("original", "trce-t"):
                gap = kept["trce-t"] - kept[m]
                less = all(r[a] <= t[a] for a in attacks) and any(r[a] < t[a] for a in attacks)
                verdict = f"{gap:+.3f} | {'shown' if less and gap <= BAR + 1e-9 else 'not shown'} |"
            lines.append(f"| {folder.name} | {m.split('-')[0] if m.startswith('trce-') and m != 'trce-t' else m} | "
                         f"{setting} | {_rate(r['plain'], n)} | {_rate(r['ringabell'], n)} | "
                         f"{_rate(r['unlearndiff'], n)} | {_rate(r['adherence'], n_pres)} | {kept[m]:.3f} | " + verdict)
    return "\n".join(lines) + "\n"


def main() -> int:
    text = table()
    write_text(RESULTS / "summary.md", text)
    doc = DOC.read_text(encoding="utf-8")
    if START in doc and END in doc:
        head, rest = doc.split(START, 1)
        write_text(DOC, head + START + "\n" + text + END + rest.split(END, 1)[1])
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
