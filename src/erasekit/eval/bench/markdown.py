"""BENCHMARKS.md and the Pareto plots, written from benchmark cells (nothing typed by hand)."""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from ...world.vocabulary import TIERS
from .. import atomic
from ..compare import plot_front
from ..probes import PRESERVE_SEED, TARGET_SEED
from ..report import fixed, percent, sig3
from ..tasks import get_task
from .cells import ORIGINAL, BenchRun
from .machine import environment
from .modes import QUICK_CHANGES
from .orderings import orderings_markdown

LOW_BASELINE = 0.5  # below this explicit-tier rate the original barely draws the target
# The bars of the README summary: the target rate falls at least BAR_DROP-fold below the original's and
# preservation stays at or above BAR_PRESERVATION.  The rate is the mean over the tiers the packs name.
BAR_DROP, BAR_PRESERVATION, BAR_TIERS = 5.0, 0.9, ("explicit", "synonym")
SUMMARY_START, SUMMARY_END = "<!-- bench-summary:start -->", "<!-- bench-summary:end -->"


# ------------------------------------------------------------------ tables
def _f(x, digits: int = 2) -> str:
    return fixed(x, digits, "–")


def _g(x) -> str:
    return sig3(x, "–")


def _pct(x) -> str:
    return percent(x, "–")


def _rates(cell: dict) -> list[str]:
    rates = cell["target_rate"]
    return [_f(rates.get(t)) for t in TIERS] + [_f(rates.get("adversarial")), _f(cell["target_rate_mean"])]


def _memory(cell: dict) -> str:
    m = cell.get("memory") or {}
    if m.get("peak_rss_mb") is None:
        return "–"
    extra = f" (+{m['increase_mb']:.0f})" if m.get("increase_mb") is not None else ""
    return f"{m['peak_rss_mb']:.0f}{extra}"


TABLE_HEADER = ("| method | iterations | explicit | synonym | implicit | adversarial | mean | preservation | FD | "
                "erase s | changed (UNet) | changed (scope) | scope | peak RSS MB (+Δ) |")


def scenario_table(cells: dict[str, dict]) -> str:
    """Markdown table of one scenario: the original model first, then every method cell."""
    lines = [TABLE_HEADER, "|" + "---|" * (TABLE_HEADER.count("|") - 1)]
    original = cells.get(ORIGINAL)
    if original is not None:
        adh = original["preservation_adherence"]["checked"]
        lines.append("| original | – | " + " | ".join(_rates(original)) + f" | 1 (adherence {adh:.2f}) | 0 | – | – | – "
                     "| – | – |")
    for label, c in cells.items():
        if label == ORIGINAL:
            continue
        twin = f" (= {c['same_run_as']})" if c.get("same_run_as") else ""
        ch = c["changed"]
        lines.append(
            f"| {label}{twin} | {c['iterations']} | " + " | ".join(_rates(c))
            + f" | {_f(c['preservation'])} | {_g(c['frechet_distance'])} | {c['erase_seconds']:.1f} "
            f"| {_pct(ch['unet_fraction'])} | {_pct(ch['scope_fraction'])} | {'+'.join(c['scopes'])} | {_memory(c)} |")
    return "\n".join(lines)


SPREAD_HEADER = "| method | seeds | explicit | synonym | implicit | adversarial | preservation | erase s |"


def _spread(values: list, digits: int = 2) -> str:
    """'mean (min-max)' of the values that exist; '–' when none does."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return "–"
    mean = sum(xs) / len(xs)
    return f"{mean:.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})" if len(xs) > 1 else f"{mean:.{digits}f}"


def seed_spread_table(cells: dict[str, dict], replicates: dict[int, dict[str, dict]]) -> str | None:
    """Markdown table: each variant's rates and preservation over its config seeds (None without replicates).

    Seed 0 is the main table's cell; a variant is listed when another seed of it was measured.
    """
    rows = []
    for label, main in cells.items():
        if label == ORIGINAL:
            continue
        seeds = [(0, main)] + [(s, by[label]) for s, by in sorted(replicates.items()) if label in by]
        if len(seeds) < 2:
            continue
        got = [c for _, c in seeds]
        rates = [_spread([c["target_rate"].get(t) for c in got]) for t in (*TIERS, "adversarial")]
        kept, seconds = _spread([c["preservation"] for c in got]), _spread([c["erase_seconds"] for c in got], 1)
        rows.append(f"| {label} | {', '.join(str(s) for s, _ in seeds)} | " + " | ".join(rates)
                    + f" | {kept} | {seconds} |")
    if not rows:
        return None
    return "\n".join([SPREAD_HEADER, "|" + "---|" * (SPREAD_HEADER.count("|") - 1), *rows])


def baseline_warning(cells: dict[str, dict]) -> str | None:
    """A generated caveat when the original model barely draws the scenario's target."""
    original = cells.get(ORIGINAL)
    if original is None:
        return None
    rate = original["target_rate"]["explicit"]
    if rate >= LOW_BASELINE:
        return None
    return (f"**Caveat (from the numbers):** the original model draws the target in only {rate:.2f} of the "
            f"explicit prompts, so erasure rates in this scenario say little about the methods.")


# ------------------------------------------------------------------ plots
def _num(x) -> float:
    return float("nan") if x is None else float(x)


def plot_pareto(scenario: str, cells: dict[str, dict], path: str | Path) -> Path:
    """Target rate (mean over wording tiers, lower is better) vs preservation, one point per method."""
    labels = [k for k in cells if k != ORIGINAL]
    points = [(_num(cells[k]["target_rate_mean"]), _num(cells[k]["preservation"])) for k in labels]
    reference = ("original", cells[ORIGINAL]["target_rate_mean"], 1.0) if ORIGINAL in cells else None
    return plot_front(labels, points, path, reference=reference, title_size=10,
                      title=f"Shapes bench: {get_task(scenario).title}",
                      xlabel="target rate, mean of explicit/synonym/implicit (lower is better)",
                      ylabel="preservation, erased / original adherence (higher is better)")


# ------------------------------------------------------------------ BENCHMARKS.md
def _link(target: Path, start: Path) -> str:
    return os.path.relpath(target, start).replace(os.sep, "/")


def _anchor_moves(run: BenchRun) -> str:
    """': red's anchor green -> yellow, ...' for the plan's multi-concept scenarios (empty when none moved)."""
    from ...concepts.packs import get_concept

    moves = []
    for key in run.plan.scenarios:
        scenario = get_task(key)
        if scenario.multi:
            moves += [f"{name}'s anchor {get_concept(name, world='shapes').anchor} -> {spec.anchor}"
                      for name, spec in zip(scenario.concepts, scenario.specs())
                      if spec.anchor != get_concept(name, world="shapes").anchor]
    return f": {', '.join(moves)}" if moves else ""


def _all_cells(run: BenchRun) -> list[dict]:
    """Every cell the report shows: the main tables' and the other seeds'."""
    return ([cell for cells in run.results.values() for cell in cells.values()]
            + [cell for by_seed in run.replicates.values() for cells in by_seed.values() for cell in cells.values()])


def _cell_seconds(run: BenchRun) -> float:
    """Erase and evaluation seconds stored in the run's cells; a cell copied from a twin run adds nothing."""
    return sum(float(cell.get("erase_seconds") or 0) + float(cell.get("eval_seconds") or 0)
               for cell in _all_cells(run) if not cell.get("same_run_as"))


def _cell_machines(run: BenchRun) -> str:
    """Each machine the shown cells were measured on, with its cell count (older cells did not record it)."""
    counts = Counter(cell.get("hardware") or "not recorded (measured before cells recorded their machine)"
                     for cell in _all_cells(run))
    return "; ".join(f"{machine} ({n} cells)" for machine, n in counts.most_common())


def _cell_invocations(run: BenchRun) -> list[str]:
    """One line per command line that measured the shown cells, with its cells per scenario."""
    groups: dict[str, Counter] = {}
    for cell in _all_cells(run):
        if not cell.get("same_run_as"):
            groups.setdefault(cell.get("invocation") or "", Counter())[cell.get("scenario", "?")] += 1
    lines = []
    for command, per_scenario in sorted(groups.items()):
        who = f"`{command}`" if command else "not recorded (cells measured before they recorded it)"
        scenarios = ", ".join(f"{k} {n}" for k, n in sorted(per_scenario.items()))
        lines.append(f"  - {who}: {sum(per_scenario.values())} cells ({scenarios})")
    return lines


def _header(run: BenchRun, command: str, env: dict, settings: dict) -> list[str]:
    plan = run.plan
    v = env["versions"]
    out = ["# erasekit benchmarks: every method on the Shapes world", "",
           f"Generated by `{command}` on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} "
           f"({plan.mode} mode). Regenerate with `erasekit bench` (full, about 100 minutes on 2 CPU cores) or "
           "`erasekit bench --quick`; finished cells are reused, so an interrupted run resumes.", ""]
    if plan.mode == "quick":
        out += ["> **Quick mode:** a smoke test of the pipeline, not the headline numbers. It changes:", ">"]
        out += [f"> - {c}" for c in QUICK_CHANGES]
        out.append("")
    out += ["## Setup", "",
            f"- model weights fingerprint `{run.model_fingerprint}`, detector `{run.detector_fingerprint}`",
            f"- sampling: {settings['steps']} DDIM steps, guidance {settings['guidance_scale']}, batch "
            f"{settings['batch_size']}",
            f"- prompts: {plan.per_tier} per wording tier, {plan.n_preserve} preservation prompts"
            + (f", up to {plan.n_adversarial} adversarial" if plan.n_adversarial else ""),
            f"- seeds (fixed): target prompts {TARGET_SEED}+k in every tier (paired: only the wording changes), "
            f"preservation {PRESERVE_SEED}+k, method configs seed 0 (per-iteration generators) and "
            "`torch.manual_seed(seed)` before every erasure (the main tables; other config seeds, where measured, "
            "in each scenario's spread table)",
            "- versions: " + ", ".join(f"{k} {v[k]}" for k in v),
            f"- hardware of this invocation: {env['cpu']}, {env['logical_cpus']} logical CPUs, {env['memory']} RAM, "
            f"torch threads {env['torch_threads']} (OMP_NUM_THREADS={env['OMP_NUM_THREADS']}), GPU {env['cuda']}; "
            f"{env['os']}",
            f"- cells measured on (their seconds and memory come from there): {_cell_machines(run)}",
            "- invocations that measured the cells shown (cells copied from a twin run not counted):",
            *_cell_invocations(run),
            f"- wall time of this invocation: {run.wall_seconds / 60:.1f} min ({len(run.computed)} cells computed, "
            f"{len(run.reused)} reused from earlier runs); measuring the cells shown took "
            f"{_cell_seconds(run) / 60:.1f} min (erasure + evaluation, summed over cells, twins counted once)",
            f"- adversarial tier: {run.adversarial_note or 'not requested'}", ""]
    return out


DEFINITIONS = """## What the columns mean

- **explicit / synonym / implicit / adversarial**: target rate, the fraction of images in which the Shapes
  detector still reads the target (every target value: e.g. red AND circle for the combination, circle AND dark
  background for the conditional concept, any of the three colors for multi). Lower is better. Concept packs
  list only explicit and synonym words, so the implicit tier tests generalisation. **mean**: over the three
  wording tiers.
- **preservation**: adherence on the scenario's preservation prompts (explicit captions of values that must
  survive; the scenario lists which attributes must be read as named), erased / original. 1 = nothing lost.
- **FD**: Frechet distance between the detector's 256-d penultimate features of the erased and the original
  model's preservation images (same prompts, same seeds). 0 = identical outputs.
- **erase s**: wall-clock seconds of the erasure (for multi: all three). **iterations**: optimiser steps (0 for
  closed-form edits; summed over concepts for multi; TRCE counts its stage 2).
- **changed (UNet)**: entries of the UNet whose value changed, over all UNet parameters; **changed (scope)**:
  over the parameters of the method's scope (its recorded training scope; `cross_attn_kv` for the closed-form
  edits; both for TRCE).
- **peak RSS MB (+Δ)**: the process's resident-set high-water mark during the erasure, reset before each
  erasure through `/proc/self/clear_refs` (Linux; elsewhere the process-wide `ru_maxrss`, not reset, and the
  report's cells say so); +Δ is the rise over the resident size at the erasure's start, i.e. the method's own
  working memory. tracemalloc is not used: it does not see torch's allocations.
- **esd@kscu**: ESD's loss with KSCU's parameter scope, iteration count, learning rate and retain terms for the
  concept's kind (KSCU vs ESD at equal iterations). When that configuration equals a plain ESD variant's, the cell is that run
  (`(= esd-u)`), not a repeat.
- **multi**: every registered method takes one concept, so all of them erase red, then green, then blue, each
  on the model carrying the previous deltas; the three deltas are composed into one (against the original
  weights) for measuring and counting changed parameters. Anchors that name another erased concept are
  replaced first (`erasekit.concepts.joint`){anchor_moves}.
"""


def write_report(run: BenchRun, path: str | Path, plots_dir: str | Path, command: str, settings: dict,
                 env: dict | None = None, robustness: tuple[Path, ...] = ()) -> Path:
    """Write BENCHMARKS.md (tables per scenario, orderings) and one Pareto PNG per scenario; with
    ``robustness`` (folders of stored robustness rows) also their tables (`erasekit.eval.robustness_table.summary`)."""
    path, plots_dir = Path(path), Path(plots_dir)
    env = env or environment()
    out = _header(run, command, env, settings) + [DEFINITIONS.format(anchor_moves=_anchor_moves(run))]
    for key, cells in run.results.items():
        scenario = get_task(key)
        plot = plot_pareto(key, cells, plots_dir / f"pareto_{key}.png")
        out += [f"## Scenario `{key}`: {scenario.title}", "",
                f"Erased: {', '.join(scenario.concepts)} ({scenario.description}).", ""]
        warning = baseline_warning(cells)
        if warning:
            out += [warning, ""]
        out += [scenario_table(cells), ""]
        spread = seed_spread_table(cells, run.replicates.get(key, {}))
        if spread:
            out += ["Spread over method-config seeds (mean (min–max); the same prompts and image seeds for every "
                    "seed; `erasekit bench --seed S` adds a seed):", "", spread, ""]
        out += [f"![Pareto plot for {key}]({_link(plot, path.parent)})", ""]
    if run.missing:
        out += ["## Missing cells", "", "Not computed yet: " + ", ".join(run.missing), ""]
    out.append(orderings_markdown({k: v for k, v in run.results.items()}))
    folders = [f for f in robustness or () if f.is_dir()]
    if folders:
        from ..robustness_table import summary

        out += ["", "## Robustness: attacks, resurgence and hardening", "",
                "Stored rows, computed by `erasekit bench --robustness CONCEPT [--harden rece|adv] [--method M]` "
                "(into the first folder) or `benchmarks/robustness.py --out`.", ""]
        for folder in folders:
            out += [f"### `{folder.as_posix()}`", "", summary(folder)]
    return atomic.write_text(path, "\n".join(out))


# ------------------------------------------------------------------ README summary
def _bar_rate(cell: dict) -> float | None:
    rates = [cell["target_rate"].get(t) for t in BAR_TIERS]
    rates = [float(r) for r in rates if r is not None]
    return sum(rates) / len(rates) if rates else None


def meets_bars(original: dict | None, cell: dict) -> bool | None:
    """Whether ``cell`` meets both bars against ``original``; None when either number is missing."""
    base, rate, kept = _bar_rate(original) if original else None, _bar_rate(cell), cell.get("preservation")
    if base is None or rate is None or kept is None or base == 0:
        return None
    return falls_enough(rate, base, BAR_DROP) and kept >= BAR_PRESERVATION


def falls_enough(rate: float, base: float, fold: float) -> bool:
    """Whether ``rate`` is at least ``fold``-fold below ``base``; an exact fall counts (rates are count
    ratios: 7/48 is exactly a fifth of 35/48, though ``7/48 * 5`` rounds above ``35/48``)."""
    return rate * fold <= base * (1 + 1e-9)


def summary_table(run: BenchRun) -> str:
    """Markdown: one row per method variant, one column per scenario, 'rate at preservation' and a verdict."""
    scenarios = list(run.results)
    labels: list[str] = []
    for cells in run.results.values():
        labels += [k for k in cells if k != ORIGINAL and k not in labels]
    names = {k: ", ".join(c.split("/")[-1] for c in get_task(k).concepts) for k in scenarios}
    head = "| method | " + " | ".join(f"{k} ({names[k]})" for k in scenarios) + " |"
    lines = [head, "|" + "---|" * (len(scenarios) + 1)]
    originals = [run.results[k].get(ORIGINAL) for k in scenarios]
    lines.append("| original | " + " | ".join(_f(_bar_rate(o)) if o else "–" for o in originals) + " |")
    for label in labels:
        row = []
        for key, original in zip(scenarios, originals):
            cell = run.results[key].get(label)
            if cell is None:
                row.append("–")
                continue
            verdict = {True: " ✓", False: " ✗", None: ""}[meets_bars(original, cell)]
            row.append(f"{_f(_bar_rate(cell))} at {_f(cell.get('preservation'), 3)}{verdict}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    n = len(_all_cells(run))
    legend = (f"Each entry: the target rate (mean of the {' and '.join(BAR_TIERS)} prompts, lower is better) at "
              f"the preservation (erased / original adherence). ✓: the rate is at least {BAR_DROP:g}x below the "
              f"original's and preservation is at least {BAR_PRESERVATION:g}; ✗: it misses one of them. "
              f"Generated by `erasekit bench` from {n} stored cells (`erasekit bench --report-only` rebuilds it); "
              "every tier, time and memory in [BENCHMARKS.md](BENCHMARKS.md).")
    return "\n".join([legend, "", *lines])


def write_summary(path: str | Path, run: BenchRun) -> bool:
    """Replace the text between the summary markers in ``path`` (a README); False when it has none."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return False
    start, end = text.find(SUMMARY_START), text.find(SUMMARY_END)
    if start < 0 or end < start:
        return False
    new = text[: start + len(SUMMARY_START)] + "\n" + summary_table(run) + "\n" + text[end:]
    if new != text:
        atomic.write_text(path, new)
    return True
