"""Erase Shapes-world concepts with each method and print a table.

    python benchmarks/shapes_erasure.py --methods uce trce-t --concepts circle red --per-tier 64
    python benchmarks/shapes_erasure.py --methods esd-u esd-u:shapes-retain --concepts blue

A method written ``name:preset`` runs with that named preset instead of the world's ``shapes`` preset.

Columns: method, concept, target rate per tier (original -> erased), preservation
(other values' adherence relative to the original), erase seconds, iterations, peak
memory, and for fine-tuning methods the trainer's overhead: seconds per iteration
divided by one bare forward+backward of the UNet (batch 1) with only the method's
scope trainable.
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
from erasekit.eval.measure import measure_erasure
from erasekit.generation import SamplingSettings
from erasekit.methods.base import get_method
from erasekit.models.delta import apply_delta, revert_delta
from erasekit.models.loading import load_pipeline, resolve_model_path


def bare_step_seconds(pipe, scope: str, reps: int = 5) -> float:
    """Seconds of one UNet forward+backward (batch 1, the empty prompt) with only ``scope`` trainable."""
    import torch

    from erasekit.models.scopes import get_scope
    from erasekit.models.text import encode_prompts

    unet = pipe.unet
    chosen = set(get_scope(scope).select(unet))
    flags = {n: p.requires_grad for n, p in unet.named_parameters()}
    emb = encode_prompts(pipe, [""])
    size = unet.config.sample_size
    z = torch.randn(1, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    try:
        for n, p in unet.named_parameters():
            p.requires_grad_(n in chosen)
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            unet(z, torch.tensor(500), encoder_hidden_states=emb).sample.pow(2).mean().backward()
            times.append(time.perf_counter() - t0)
            unet.zero_grad(set_to_none=True)
    finally:
        for n, p in unet.named_parameters():
            p.requires_grad_(flags[n])
    return sorted(times[1:])[len(times[1:]) // 2]


def method_config(method: str):
    """The config of ``method`` or ``method:preset`` (default: the world's ``shapes`` preset)."""
    name, _, preset = method.partition(":")
    cls = get_method(name).config_cls
    return cls.preset(preset) if preset else cls.for_world("shapes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", nargs="+", default=["uce", "trce-t"], help="method or method:preset")
    ap.add_argument("--concepts", nargs="+", default=["circle", "red"])
    ap.add_argument("--per-tier", type=int, default=64)
    ap.add_argument("--preserve", type=int, default=96)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/shapes_erasure.json"))
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown here")
    a = ap.parse_args()
    configs = {m: method_config(m) for m in a.methods}  # unknown methods or presets fail before any work
    pipe = load_pipeline("shapes")
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    rows, console = [], Console()
    for concept in a.concepts:
        base = measure_erasure(pipe, concept, a.per_tier, a.preserve, settings)
        for method in a.methods:
            info = get_method(method.partition(":")[0])
            t0 = time.perf_counter()
            delta = info.erase(pipe, get_concept(concept), configs[method])
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
                "scope": delta.manifest.metrics.get("scope"),
            })
            if rows[-1]["iterations"] and rows[-1]["scope"]:
                bare = bare_step_seconds(pipe, rows[-1]["scope"])
                rows[-1]["bare_step_seconds"] = bare
                rows[-1]["overhead"] = seconds / rows[-1]["iterations"] / bare
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
    for col in ("method", "concept", "explicit", "synonym", "implicit", "preservation", "seconds", "iters",
                "s/iter / bare f+b", "peak MB"):
        table.add_column(col)
    for r in rows:
        o, e = r["original"]["target_rate"], r["erased"]["target_rate"]
        pres = r["preservation"]
        table.add_row(r["method"], r["concept"], *(f"{o[t]:.2f}->{e[t]:.2f}" for t in ("explicit", "synonym", "implicit")),
                      f"{pres:.2f}", f"{r['seconds']:.2f}", str(r.get("iterations") or "-"),
                      f"{r['overhead']:.1f}" if r.get("overhead") else "-", f"{r['peak_rss_mb']:.0f}")
    console.print(table)
    if a.markdown:
        lines = ["| method | concept | explicit | synonym | implicit | preservation | seconds | iterations "
                 "| s/iter ÷ bare fwd+bwd | peak MB |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            o, e = r["original"]["target_rate"], r["erased"]["target_rate"]
            lines.append(f"| {r['method']} | {r['concept']} | " + " | ".join(
                f"{o[t]:.2f} → {e[t]:.2f}" for t in ("explicit", "synonym", "implicit"))
                + f" | {r['preservation']:.2f} | {r['seconds']:.1f} | {r.get('iterations') or '-'} | "
                + (f"{r['overhead']:.1f}" if r.get("overhead") else "-") + f" | {r['peak_rss_mb']:.0f} |")
        a.markdown.parent.mkdir(parents=True, exist_ok=True)
        a.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
