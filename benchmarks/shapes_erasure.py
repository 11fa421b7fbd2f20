"""Erase Shapes-world concepts with each method and print a table.

    python benchmarks/shapes_erasure.py --methods uce trce-t --concepts circle red --per-tier 64

Columns: method, concept, target rate per tier (original -> erased), preservation
(other values' adherence relative to the original), erase seconds, peak memory.
Results are also written as JSON (``--out``) so the README/closing notes quote them.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from erasekit.concepts.packs import get_concept
from erasekit.eval.shapes_erasure import measure_erasure
from erasekit.generation import SamplingSettings
from erasekit.methods.base import get_method
from erasekit.models.delta import apply_delta, revert_delta
from erasekit.models.loading import load_pipeline, resolve_model_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", nargs="+", default=["uce", "trce-t"])
    ap.add_argument("--concepts", nargs="+", default=["circle", "red"])
    ap.add_argument("--per-tier", type=int, default=64)
    ap.add_argument("--preserve", type=int, default=96)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/shapes_erasure.json"))
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown here")
    a = ap.parse_args()
    pipe = load_pipeline("shapes")
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    rows, console = [], Console()
    for concept in a.concepts:
        base = measure_erasure(pipe, concept, a.per_tier, a.preserve, settings)
        for method in a.methods:
            info = get_method(method)
            t0 = time.perf_counter()
            delta = info.erase(pipe, get_concept(concept), info.config_cls.for_world("shapes"))
            seconds = time.perf_counter() - t0
            apply_delta(pipe, delta)
            erased = measure_erasure(pipe, concept, a.per_tier, a.preserve, settings)
            revert_delta(pipe, delta)
            rows.append({
                "method": method, "concept": concept, "original": base, "erased": erased,
                "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "changed_tensors": len(delta.tensors),
                "changed_parameters": sum(t.numel() for t in delta.tensors.values()),
                "iterations": delta.manifest.metrics.get("iterations"),
            })
    for r in rows:
        attribute = r["original"]["attribute"]
        key = attribute if attribute in ("shape", "color") else "both"
        r["preservation"] = r["erased"]["preservation_adherence"][key] / max(1e-9, r["original"]["preservation_adherence"][key])
    write_tables(rows, settings, a, console)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": vars(settings), "rows": rows}, indent=2))
    tmp.replace(a.out)


def write_tables(rows, settings, a, console) -> None:
    """Preservation = the other values' adherence on the target's own attribute, erased / original."""
    table = Table(title=f"Shapes world erasure ({a.per_tier} images per tier, {settings.steps} DDIM steps, "
                        f"guidance {settings.guidance_scale})")
    for col in ("method", "concept", "explicit", "synonym", "implicit", "preservation", "seconds", "peak MB"):
        table.add_column(col)
    for r in rows:
        o, e = r["original"]["target_rate"], r["erased"]["target_rate"]
        pres = r["preservation"]
        table.add_row(r["method"], r["concept"], *(f"{o[t]:.2f}->{e[t]:.2f}" for t in ("explicit", "synonym", "implicit")),
                      f"{pres:.2f}", f"{r['seconds']:.2f}", f"{r['peak_rss_mb']:.0f}")
    console.print(table)
    if a.markdown:
        lines = ["| method | concept | explicit | synonym | implicit | preservation | seconds | peak MB |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            o, e = r["original"]["target_rate"], r["erased"]["target_rate"]
            lines.append(f"| {r['method']} | {r['concept']} | " + " | ".join(
                f"{o[t]:.2f} → {e[t]:.2f}" for t in ("explicit", "synonym", "implicit"))
                + f" | {r['preservation']:.2f} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
