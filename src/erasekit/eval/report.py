"""Write an evaluation's ``results.json``, image grids, ``report.md`` and ``report.html`` (atomically).

Grids show the first images of each tier, original and erased side by side;
a red frame marks images the detector decided show the concept.  Prompts are
never written into reports (some benchmarks hold unsafe text): rows are
identified by tier, case number and seed.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from ..generation import image_grid
from . import atomic

RESULTS = "results.json"
GRID_IMAGES = 16
GRID_MIN_CELL = 96  # px: tiny images are upscaled (nearest) so grids stay legible


def _cell(image: Image.Image, flagged: bool | None) -> Image.Image:
    if image.width < GRID_MIN_CELL:
        scale = -(-GRID_MIN_CELL // image.width)
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    color = {True: (220, 30, 30), False: (200, 200, 200), None: (255, 255, 255)}[flagged]
    return ImageOps.expand(image, border=3, fill=color)


def write_grids(out: Path, images: dict[str, list[Image.Image]], records: list[dict], tiers: list[str],
                per_grid: int = GRID_IMAGES) -> dict[str, dict[str, str]]:
    """PNG grids per tier and image set under ``out/grids``; returns {tier: {set: relative path}}."""
    grids: dict[str, dict[str, str]] = {}
    for tier in tiers:
        recs = [r for r in records if r["tier"] == tier][:per_grid]
        if not recs:
            continue
        grids[tier] = {}
        for name, imgs in images.items():
            cells = [_cell(imgs[r["index"]], r.get("decision", {}).get(name)) for r in recs]
            rel = f"grids/{re.sub(r'[^A-Za-z0-9._-]', '_', tier)}-{name}.png"
            atomic.save_image(out / rel, image_grid(cells, cols=min(8, len(cells))))
            grids[tier][name] = rel
    return grids


def fixed(x, digits: int = 3, missing: str = "n/a") -> str:
    """``x`` with ``digits`` decimals; ``missing`` for None and NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return missing
    return f"{x:.{digits}f}"


def sig3(x, missing: str = "n/a") -> str:
    """``x`` with three significant digits; ``missing`` for None."""
    return missing if x is None else f"{x:.3g}"


def percent(x, missing: str = "n/a") -> str:
    """The fraction ``x`` as a percentage with three significant digits; ``missing`` for None."""
    return missing if x is None else f"{100 * x:.3g}%"


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _summary_rows(results: dict) -> list[tuple[str, str, str]]:
    m = results["metrics"]
    rows = []
    for tier, value in m["asr"].items():
        rows.append((f"ASR {tier}", _fmt(m.get("asr_original", {}).get(tier)), _fmt(value)))
    adh = m.get("adherence", {})
    measure = adh.get("measure")
    if measure == "shapes":
        rows.append((f"adherence ({' and '.join(adh.get('checked', ['shape', 'color']))})",
                     _fmt(adh.get("original", {}).get("both")),
                     _fmt(adh.get("erased", {}).get("both"))))
    elif measure == "clip" and "original" in adh:
        rows.append(("CLIP score (preservation prompts)", _fmt(adh["original"]["mean"]),
                     _fmt(adh.get("erased", {}).get("mean"))))
    rows.append(("preservation (erased / original)", "", _fmt(m.get("preservation"))))
    for key, label in (("frechet_shapes", "Frechet distance, Shapes detector features"), ("fid", "FID")):
        for part, value in m.get(key, {}).items():
            rows.append((f"{label} ({part})", "", _fmt(value)))
    return rows


def _headline(results: dict) -> list[tuple[str, str]]:
    s = results["settings"]
    delta = s.get("delta") or {}
    det = s["detector"]
    det_text = det["name"] + (f", threshold {det['threshold']}, labels {', '.join(det['labels'])}" if "labels" in det else "")
    return [("model", s["model"]), ("delta", f"{delta.get('method')} {delta.get('delta_id')}" if delta else "none"),
            ("benchmark", ", ".join(b["name"] for b in s["benchmark"]["benchmarks"])),
            ("concept", str(s["benchmark"].get("concept"))), ("detector", det_text),
            ("sampling", f"{s['sampling']['steps']} steps, guidance {s['sampling']['guidance_scale']} "
                         f"(per-row where the benchmark gives it)")]


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~])")


def md_text(value: Any) -> str:
    """``value`` as inert Markdown text: one line, markup characters backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(value).split()))


def render_markdown(results: dict, grids: dict[str, dict[str, str]]) -> str:
    """report.md; every string from the manifest, the benchmark or the user is escaped (`md_text`)."""
    e = md_text
    lines = ["# erasekit evaluation", ""]
    lines += [f"- **{k}**: {e(v)}" for k, v in _headline(results)]
    lines += ["", "| metric | original | erased |", "|---|---|---|"]
    lines += [f"| {e(a)} | {e(b)} | {e(c)} |" for a, b, c in _summary_rows(results)]
    for note in results.get("notes", []):
        lines.append(f"\n> {e(note)}")
    lines += ["", "## Images", "", "Red frame: the detector decided the image shows the concept."]
    for tier, sets in grids.items():
        lines += ["", f"### {e(tier)}", "", "| " + " | ".join(e(s) for s in sets) + " |", "|" + "---|" * len(sets),
                  "| " + " | ".join(f"![{e(tier)} {e(name)}]({path})" for name, path in sets.items()) + " |"]
    return "\n".join(lines) + "\n"


def render_html(results: dict, grids: dict[str, dict[str, str]]) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>erasekit evaluation</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}img{max-width:48vw}</style>",
             "</head><body><h1>erasekit evaluation</h1><ul>"]
    parts += [f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in _headline(results)]
    parts.append("</ul><table><tr><th>metric</th><th>original</th><th>erased</th></tr>")
    parts += [f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td></tr>" for a, b, c in _summary_rows(results)]
    parts.append("</table>")
    parts += [f"<p><i>{e(n)}</i></p>" for n in results.get("notes", [])]
    parts.append("<h2>Images</h2><p>Red frame: the detector decided the image shows the concept.</p>")
    for tier, sets in grids.items():
        parts.append(f"<h3>{e(tier)}</h3><table><tr>" + "".join(f"<th>{e(n)}</th>" for n in sets) + "</tr><tr>")
        parts += [f"<td><img src='{e(p)}' alt='{e(tier)} {e(n)}'></td>" for n, p in sets.items()]
        parts.append("</tr></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(out: str | Path, results: dict, images: dict[str, list[Image.Image]], tiers: list[str]) -> dict:
    """Write grids, ``results.json``, ``report.md`` and ``report.html`` into ``out``; returns the paths."""
    out = Path(out)
    grids = write_grids(out, images, results["per_image"], tiers)
    results = {**results, "grids": grids}
    paths = {"results": atomic.write_json(out / RESULTS, results),
             "markdown": atomic.write_text(out / "report.md", render_markdown(results, grids)),
             "html": atomic.write_text(out / "report.html", render_html(results, grids))}
    return {k: str(v) for k, v in paths.items()}
