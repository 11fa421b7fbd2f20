"""Steps and wall-clock seconds until an erasure first meets the bars: TRuST, SalUn and SalUn++.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/experiments/trust_steps_to_bar.py \
        --scenario object style attribute combination conditional --method trust salun salun++ --seed 0
    python benchmarks/experiments/trust_steps_to_bar.py --report     # rewrite the table from the stored rows
    ... --name matched --set lr=0.01 --set trust:mask_every=5      # the presets with overrides, own files

For each scenario, method and seed the method's ``shapes`` preset erases with a training checkpoint
every ``--every`` steps (outside the repository, deleted once read).  The checkpoints are then
measured in step order, each with the scenario's probes (``--per-tier`` prompts per wording tier, and
``--preserve`` preservation prompts where the target rate has fallen far enough to need them) against
the scenario's original benchmark cell, until one meets the bars (the target rate, mean of the wording tiers, at most a fifth of the
original's, and preservation at least 0.9).  That checkpoint's step is the run's *steps to the bar*,
and the wall-clock seconds from the start of the erasure (setup included) to the moment the
checkpoint was written are its *seconds to the bar*.  A method that stops by itself (TRuST's
stopping rule) is measured up to its stopping step, since its weights do not change after it.

Every method gets the same oracle: the first checkpoint that meets the bars, which none of them can
see while training (SalUn and SalUn++ run their fixed budget; TRuST stops on its own presence
measurement, recorded as ``stopped at``).  Rows go to
``benchmarks/results/experiments/trust/steps-to-bar.jsonl`` as each run finishes (a rerun skips the
runs already there), and ``steps-to-bar.md`` is rewritten from all of them.  ``--set [METHOD:]FIELD=VALUE``
overrides a field of every method's preset (or of METHOD's only); such runs go to
``steps-to-bar-<--name>.{jsonl,md}``, each row with the overrides it ran with (``--trajectory`` adds
every measured checkpoint to the table).
``--compare NAME[:METHOD]... --out STEM [--reference NAME:METHOD...]`` writes one table of the steps
to the bar per (setting, method) and scenario/seed pair, read from those settings' rows (``preset``:
the presets' own rows; ``:METHOD`` keeps one method's), to ``<STEM>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from run import jsonl_rows, setting_value  # noqa: E402  (benchmarks/experiments is the script's folder)
from trust_table import meets  # noqa: E402  (the bars)

RESULTS = Path(__file__).resolve().parents[1] / "results"
CELLS = RESULTS / "bench" / "cells"
OUT = RESULTS / "experiments" / "trust"
SCENARIOS = ["object", "style", "attribute", "combination", "conditional"]
METHODS = ["trust", "salun", "salun++"]


def _rank(items: list[str], value: str) -> int:
    """Where ``value`` stands in ``items`` (after all of them when it is not there)."""
    return items.index(value) if value in items else len(items)


def _order(row: dict) -> tuple:
    return _rank(SCENARIOS, row["scenario"]), _rank(METHODS, row["method"]), row["method"], row["seed"]


def _cell(value, fmt: str = "") -> str:
    return "–" if value is None else format(value, fmt)


def _first_hit(row: dict) -> dict | None:
    """The run's first checkpoint that meets the bars (None: none did)."""
    return next((c for c in row["checkpoints"] if c["meets"]), None)


def _overrides_text(stored: str) -> str:
    """A row's overrides (as stored JSON text) as ``field=value, ...`` ("none" when empty)."""
    return ", ".join(f"{k}={v}" for k, v in json.loads(stored).items()) or "none"


def markdown(rows: list[dict]) -> str:
    """The per-run table, then the means over the scenario/seed pairs every method reached."""
    out = ["Steps and wall-clock seconds (one thread, erasure setup included) until the first training "
           "checkpoint that meets the bars (target rate at most a fifth of the original's, preservation >= 0.9); "
           f"checkpoints every {rows[0]['every'] if rows else '-'} steps, each measured with "
           f"{rows[0]['per_tier'] if rows else '-'} prompts per tier and "
           f"{rows[0]['preserve'] if rows else '-'} preservation prompts. '–': no checkpoint within the run met "
           "them (its last measured checkpoint's rate and preservation are shown); preservation '–': not measured, "
           "the rate had not fallen fivefold.", ""]
    settings = sorted({(r["method"], json.dumps(r.get("overrides") or {}, sort_keys=True)) for r in rows},
                      key=lambda mo: (_rank(METHODS, mo[0]), mo))
    if any(o != "{}" for _, o in settings):
        out += ["Overrides of the `shapes` presets: " + "; ".join(
            f"{m}: {_overrides_text(o)}" for m, o in settings)
            + ".", ""]
    out += [
           "| scenario | method | seed | steps to the bar | seconds to the bar | rate / original | preservation "
           "| steps run (stopped at) | run seconds | run seconds per step |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    rows = sorted(rows, key=_order)
    for r in rows:
        hit = _first_hit(r)
        last = hit or r["checkpoints"][-1]
        stopped = f" ({r['stopped_at']})" if r.get("stopped_at") is not None else ""
        out.append(f"| {r['scenario']} | {r['method']} | {r['seed']} | {_cell(hit and hit['step'])} | "
                   f"{_cell(hit and hit['seconds'], '.1f')} | {last['rate']:.2f} / {r['original_rate']:.2f} | "
                   f"{_cell(last['preservation'], '.2f')} | {r['steps_run']}{stopped} | {r['run_seconds']:.1f} | "
                   f"{r['run_seconds'] / max(1, r['steps_run']):.3f} |")
    methods = sorted({r["method"] for r in rows}, key=lambda m: (_rank(METHODS, m), m))
    reached: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        hit = _first_hit(r)
        if hit is not None:
            reached.setdefault((r["scenario"], r["seed"]), {})[r["method"]] = hit
    common = [k for k, v in reached.items() if set(v) == set(methods)]
    out += ["", f"Reached by every method ({', '.join(methods)}): "
            + (", ".join(f"{s} seed {d}" for s, d in sorted(common)) or "none") + ".", ""]
    out += ["| method | runs that reached the bars | mean steps to the bar (pairs every method reached) "
            "| mean seconds to the bar (same pairs) |", "|---|---|---|---|"]
    for m in methods:
        runs = [r for r in rows if r["method"] == m]
        n = sum(1 for k in reached.values() if m in k)
        steps = [reached[k][m]["step"] for k in common]
        secs = [reached[k][m]["seconds"] for k in common]
        out.append(f"| {m} | {n} of {len(runs)} | {_cell(statistics.mean(steps) if steps else None, '.1f')} | "
                   f"{_cell(statistics.mean(secs) if secs else None, '.1f')} |")
    return "\n".join(out) + "\n"


def trajectory(rows: list[dict]) -> str:
    """Every measured checkpoint of every run: its step, target rate, fall and preservation."""
    out = ["Every measured checkpoint, in step order, until the first that meets the bars (preservation '–': "
           "not measured, the rate had not fallen fivefold).", "",
           "| scenario | method | seed | step | rate / original | fall (x) | preservation | meets the bars |",
           "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=_order):
        for c in r["checkpoints"]:
            fall = r["original_rate"] / c["rate"] if c["rate"] > 0 else float("inf")
            out.append(f"| {r['scenario']} | {r['method']} | {r['seed']} | {c['step']} | "
                       f"{c['rate']:.2f} / {r['original_rate']:.2f} | {fall:.1f} | {_cell(c['preservation'], '.2f')} | "
                       f"{'yes' if c['meets'] else 'no'} |")
    return "\n".join(out) + "\n"


def _versus(hits: list[tuple[dict, dict]]) -> str:
    """Mean steps and seconds to the bar of a line beside a reference's, over (line, reference) hits."""
    if not hits:
        return "–"
    steps = [statistics.mean(h[i]["step"] for h in hits) for i in (0, 1)]
    seconds = [statistics.mean(h[i]["seconds"] for h in hits) for i in (0, 1)]
    return f"{steps[0]:.1f} / {steps[1]:.1f} steps, {seconds[0]:.1f} / {seconds[1]:.1f} s ({len(hits)})"


def comparison(settings: dict[str, list[dict]], references: list[tuple[str, str]] = ()) -> str:
    """Steps to the bar of every (setting, method) on every scenario/seed pair, and their means.

    The mean is taken over the pairs that every (setting, method) reached, so each line averages the
    same scenarios.  Each reference ``(setting, method)`` adds a column: the line's mean steps and
    seconds to the bar beside the reference's, over the pairs both reached."""
    lines = {}
    for name, rows in settings.items():
        for r in sorted(rows, key=_order):
            lines.setdefault((name, r["method"]), {})[(r["scenario"], r["seed"])] = r
    unknown = [ref for ref in references if ref not in lines]
    if unknown:
        raise ValueError(f"no rows for the references {unknown}")
    pairs = sorted({k for runs in lines.values() for k in runs}, key=lambda k: (_rank(SCENARIOS, k[0]), k))
    reached = {line: {k for k, r in runs.items() if _first_hit(r)} for line, runs in lines.items()}
    common = [k for k in pairs if all(k in got for got in reached.values())]
    out = ["Steps to the first checkpoint that meets the bars, per setting (its overrides of the `shapes` "
           "presets) and method; '–': not met within the run, blank: not run. The mean is over the "
           "scenario/seed pairs that every line reached: "
           + (", ".join(f"{s} seed {d}" for s, d in common) or "none") + ".", "",
           "| setting | method | overrides | " + " | ".join(f"{s} s{d}" for s, d in pairs)
           + " | runs that met the bars | mean steps (common pairs) |"
           + "".join(f" steps / seconds vs {n} {m} (pairs both reached) |" for n, m in references),
           "|---|---|---|" + "---|" * len(pairs) + "---|---|" + "---|" * len(references)]
    for (name, method), runs in lines.items():
        overrides = sorted({json.dumps(r.get("overrides") or {}, sort_keys=True) for r in runs.values()})
        shown = "; ".join(_overrides_text(o) for o in overrides)
        cells = []
        for k in pairs:
            hit = _first_hit(runs[k]) if k in runs else None
            cells.append("" if k not in runs else _cell(hit and hit["step"]))
        steps = [_first_hit(runs[k])["step"] for k in common]
        versus = ["–" if ref == (name, method) else
                  _versus([(_first_hit(runs[k]), _first_hit(lines[ref][k]))
                           for k in sorted(reached[(name, method)] & reached[ref])]) for ref in references]
        out.append(f"| {name} | {method} | {shown} | " + " | ".join(cells)
                   + f" | {len(reached[(name, method)])} of {len(runs)} | "
                   f"{_cell(statistics.mean(steps) if steps else None, '.1f')} |"
                   + "".join(f" {v} |" for v in versus))
    return "\n".join(out) + "\n"


def files(name: str | None) -> tuple[Path, Path]:
    """The rows file and the table of a setting (None: the presets as they are)."""
    stem = "steps-to-bar" + (f"-{name}" if name else "")
    return OUT / f"{stem}.jsonl", OUT / f"{stem}.md"


def method_overrides(items: list[str], methods: list[str]) -> dict[str, dict]:
    """``[METHOD:]FIELD=VALUE`` items as per-method overrides (VALUE as ``run.setting_value`` reads it)."""
    out: dict[str, dict] = {m: {} for m in methods}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set takes [METHOD:]FIELD=VALUE, got {item!r}")
        method, _, field = field.rpartition(":")
        if method and method not in out:
            raise SystemExit(f"error: --set {item!r} names {method!r}, which is not among --method {methods}")
        for m in [method] if method else methods:
            out[m][field] = setting_value(value)
    return out


def _checkpoint_params(path: Path) -> dict:
    """The trained tensors a training checkpoint holds, by UNet parameter name."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k[len("param/"):]: f.get_tensor(k) for k in f.keys() if k.startswith("param/")}


def _check_last_checkpoint(pipe, delta, path: Path, params: dict) -> None:
    """The last checkpoint holds the weights the delta gives (so checkpoints are the run's weights)."""
    import torch

    from erasekit.models.delta import apply_delta, revert_delta

    apply_delta(pipe, delta)
    try:
        for n, t in _checkpoint_params(path).items():
            if not torch.equal(t, params[n].detach().cpu()):
                raise SystemExit(f"error: {path} does not hold the erasure's {n}")
    finally:
        revert_delta(pipe, delta)


def measure_run(pipe, settings, reader, key: str, method: str, seed: int, a, overrides: dict) -> dict:
    """Erase with checkpoints, then measure them in order until one meets the bars."""
    import torch

    from erasekit.eval.bench.erasing import method_run
    from erasekit.eval.measure import measure_target_rates, task_preservation_readings
    from erasekit.eval.scoring import adherence
    from erasekit.eval.tasks import get_task
    from erasekit.methods.base import get_method
    from erasekit.training.checkpoints import list_checkpoints
    from erasekit.world.vocabulary import TIERS

    scenario = get_task(key)
    original = json.loads((CELLS / key / "original.json").read_text())
    concept = scenario.specs()[0]
    folder = Path(tempfile.mkdtemp(prefix=f"steps-to-bar-{key}-{method}-{seed}-"))
    try:
        settings_of_run = {**overrides, "seed": seed, "checkpoint_dir": str(folder), "checkpoint_every": a.every,
                           "keep_checkpoints": 100000, "progress": False}
        run = method_run(method, concept, "shapes", {method: settings_of_run})
        torch.manual_seed(seed)
        start = time.time()
        delta = get_method(method).erase(pipe, concept, run.config)
        run_seconds = time.time() - start
        metrics = delta.manifest.metrics
        stopped = metrics.get("stopped_at")
        params = dict(pipe.unet.named_parameters())
        found = list_checkpoints(folder)
        _check_last_checkpoint(pipe, delta, found[-1][1], params)
        saved = {}
        rows = []
        try:
            for step, path in found:
                if stopped is not None and step > stopped and rows:
                    break  # the weights no longer change
                seconds = path.stat().st_mtime - start
                with torch.no_grad():
                    for n, t in _checkpoint_params(path).items():
                        saved.setdefault(n, params[n].detach().clone())
                        params[n].copy_(t)
                rates = measure_target_rates(pipe, scenario, a.per_tier, settings, reader)
                rate, kept = statistics.mean(rates[t] for t in TIERS), None
                if meets(rate, original["target_rate_mean"], 1.0):  # preservation decides: measure it
                    pairs = task_preservation_readings(pipe, scenario, a.preserve, settings, reader)
                    adherent = adherence([r for _, r in pairs], [p.expected for p, _ in pairs], scenario.checked)
                    kept = adherent["checked"] / original["preservation_adherence"]["checked"]
                ok = kept is not None and meets(rate, original["target_rate_mean"], kept)
                rows.append({"step": step, "seconds": seconds, "rate": rate, "preservation": kept, "meets": ok})
                print(f"  {key} {method} seed {seed} step {step}: rate {rate:.2f} kept {_cell(kept, '.2f')}"
                      f"{' MEETS' if ok else ''}", flush=True)
                if ok:
                    break
        finally:
            with torch.no_grad():
                for n, t in saved.items():
                    params[n].copy_(t)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"scenario": key, "method": method, "seed": seed, "original_rate": original["target_rate_mean"],
            "checkpoints": rows, "steps_run": metrics.get("iterations"), "stopped_at": stopped,
            "run_seconds": run_seconds, "every": a.every, "per_tier": a.per_tier, "preserve": a.preserve,
            "overrides": overrides, "delta_id": delta.delta_id, "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", nargs="+", default=SCENARIOS)
    ap.add_argument("--method", nargs="+", default=METHODS)
    ap.add_argument("--seed", nargs="+", type=int, default=[0])
    ap.add_argument("--every", type=int, default=10, help="steps between checkpoints")
    ap.add_argument("--per-tier", type=int, default=16)
    ap.add_argument("--preserve", type=int, default=32)
    ap.add_argument("--set", action="append", default=[], metavar="[METHOD:]FIELD=VALUE",
                    help="override a preset field of every method (or of METHOD only); needs --name")
    ap.add_argument("--name", default=None, help="stem suffix of this setting's rows and table")
    ap.add_argument("--report", action="store_true", help="only rewrite the table from the stored rows")
    ap.add_argument("--trajectory", action="store_true", help="append every measured checkpoint to the table")
    ap.add_argument("--compare", nargs="+", metavar="NAME[:METHOD]", help="settings whose rows one table "
                    "compares ('preset': the presets' own rows; ':METHOD' keeps one method's); needs --out")
    ap.add_argument("--out", default=None, help="stem of the --compare table, in the results folder")
    ap.add_argument("--reference", nargs="*", default=[], metavar="SETTING:METHOD",
                    help="--compare lines each line is also set against, over the pairs both reached")
    a = ap.parse_args()
    if a.compare:
        from erasekit.world.atomic import write_text

        if not a.out:
            ap.error("--compare needs --out")
        stored = {}
        for item in a.compare:  # NAME or NAME:METHOD (that setting's rows of one method)
            name, _, only = item.partition(":")
            rows = jsonl_rows(files(None if name == "preset" else name)[0])
            stored[name] = [r for r in rows if not only or r["method"] == only]
        missing = [n for n, rows in stored.items() if not rows]
        if missing:
            ap.error(f"no stored rows for {missing}")
        references = [tuple(r.split(":", 1)) for r in a.reference]
        if any(len(r) != 2 for r in references):
            ap.error(f"--reference takes SETTING:METHOD, got {a.reference}")
        try:
            table = comparison(stored, references)
        except ValueError as e:
            ap.error(str(e))
        write_text(OUT / f"{a.out}.md", table)
        print(f"wrote {OUT / f'{a.out}.md'}")
        return
    if a.set and not a.name:
        ap.error("--set needs --name (the presets' own rows stay in steps-to-bar.jsonl)")
    overrides = method_overrides(a.set, a.method)
    rows_file, table = files(a.name)

    from erasekit.world.atomic import write_text

    def render(rows: list[dict]) -> str:
        return markdown(rows) + ("\n" + trajectory(rows) if a.trajectory else "")

    if a.report:
        write_text(table, render(jsonl_rows(rows_file)))
        print(f"wrote {table}")
        return

    from erasekit.eval.detectors.shapes import ShapesConceptDetector
    from erasekit.generation import SamplingSettings
    from erasekit.models.loading import load_pipeline, resolve_model_path

    pipe = load_pipeline("shapes")
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    reader = ShapesConceptDetector()
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in a.seed:
        for key in a.scenario:
            for method in a.method:
                done = {(r["scenario"], r["method"], r["seed"], r["every"], r["per_tier"], r["preserve"],
                         json.dumps(r.get("overrides") or {}, sort_keys=True)) for r in jsonl_rows(rows_file)}
                if (key, method, seed, a.every, a.per_tier, a.preserve,
                        json.dumps(overrides[method], sort_keys=True)) in done:
                    continue
                row = measure_run(pipe, settings, reader, key, method, seed, a, overrides[method])
                with rows_file.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                write_text(table, render(jsonl_rows(rows_file)))
                print(next(line for line in markdown([row]).splitlines() if line.startswith(f"| {key} |")), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
