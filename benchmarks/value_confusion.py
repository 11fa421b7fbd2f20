"""What an erasure does to the values it must keep, value by value.

For each row of a config (``benchmarks/experiments/confusion/NAME.json``: a ``value`` or a benchmark
``task`` key, the seed and the rows, each a method with its ``shapes`` preset and overrides and
optionally an ``anchor`` replacing the concept's, or ``original``), erase on the Shapes model and measure:

- the target rate per wording tier (``per_tier`` prompts each) and the preservation adherence
  (``n_preserve`` prompts, every checked attribute read as named; `erasekit.eval.measure.measure_task`);
- on the same preservation prompts, how many are kept and what the rest are drawn as: per other value
  of the erased value's attribute (`erasekit.eval.measure.value_confusion`), or per kept value set of
  the task (`erasekit.eval.measure.task_confusion`);
- for TRuST rows, the stopping rule's last presence on its probe images and where it stopped.

Each row is written atomically to ``benchmarks/results/experiments/confusion/NAME/<row>.json`` and
reused while its method and overrides are unchanged; ``--page`` regenerates
`docs/experiments/confusion.md` from every stored config.

    python benchmarks/value_confusion.py benchmarks/experiments/confusion/red.json
    python benchmarks/value_confusion.py --page
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CONFIGS = Path("benchmarks/experiments/confusion")
RESULTS = Path("benchmarks/results/experiments/confusion")
PAGE = Path("docs/experiments/confusion.md")


def load_config(path: Path) -> dict:
    config = json.loads(path.read_text())
    if ("value" in config) == ("task" in config):
        raise ValueError(f"{path}: give exactly one of 'value' (a Shapes value) and 'task' (a benchmark task key)")
    names = [r["name"] for r in config["rows"]]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: row names must be unique ({names})")
    return config


def resolved_config(config: dict, row: dict):
    """The method config a row runs with (its ``shapes`` preset, the seed, the row's overrides); None: original."""
    if not row.get("method"):
        return None
    from erasekit.eval.bench.erasing import method_run

    method = row["method"]
    overrides = {method: {"seed": config.get("seed", 0), **row.get("overrides", {})}}
    return method_run(method, erased_concept(config, row), "shapes", overrides).config


def subject(config: dict) -> str:
    """What a config erases, as its page names it: the value or ``task KEY``."""
    return config["value"] if "value" in config else f"task {config['task']}"


def erased_concept(config: dict, row: dict | None = None):
    """The concept spec a config erases: the Shapes value's, or the task's (its first concept), with
    the row's ``anchor`` in place of the concept's own where the row names one."""
    from erasekit.concepts.packs import get_concept
    from erasekit.eval.tasks import get_task

    concept = get_concept(f"shapes/{config['value']}") if "value" in config else get_task(config["task"]).specs()[0]
    if row and row.get("anchor"):
        concept = concept.model_copy(update={"anchor": row["anchor"], "target_anchors": {}})
    return concept


def measure(pipe, reader, config: dict, settings) -> tuple[dict, dict]:
    """(target rate per tier and preservation adherence, confusion) of the pipeline's current weights."""
    from erasekit.eval.measure import measure_task, task_confusion_of, value_confusion_of
    from erasekit.eval.tasks import get_task, value_task
    from erasekit.world.vocabulary import TIERS

    per_tier, n = config["per_tier"], config["n_preserve"]
    task = value_task(config["value"]) if "value" in config else get_task(config["task"])
    pairs: list = []  # the preservation probes with their readings, drawn once for both tables
    numbers, _ = measure_task(pipe, task, per_tier, n, settings, reader, features=False, keep_readings=pairs)
    kept = numbers["preservation_adherence"]
    erasure = {"target": config.get("value", task.key), "target_rate": {t: numbers["target_rate"][t] for t in TIERS},
               "preservation_adherence": {**kept, "both": kept["checked"]}}
    confusion = value_confusion_of(config["value"], pairs) if "value" in config else task_confusion_of(task, pairs)
    return erasure, confusion


def row_key(config: dict, row: dict) -> dict:
    """What a stored row must match to be reused: the value, the counts and the resolved method config."""
    resolved = resolved_config(config, row)
    erased = {"value": config["value"]} if "value" in config else {"task": config["task"]}
    return {**erased, "method": row.get("method"), "per_tier": config["per_tier"],
            "n_preserve": config["n_preserve"], **({"anchor": row["anchor"]} if row.get("anchor") else {}),
            "config": None if resolved is None else resolved.model_dump(mode="json")}


def measure_row(pipe, reader, config: dict, row: dict) -> dict:
    import torch

    from erasekit.generation import SamplingSettings
    from erasekit.methods.base import get_method
    from erasekit.models.delta import apply_delta, revert_delta
    from erasekit.models.loading import resolve_model_path

    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    out = {"key": row_key(config, row), "name": row["name"]}
    delta = None
    if row.get("method"):
        concept = erased_concept(config, row)
        torch.manual_seed(config.get("seed", 0))
        start = time.process_time()
        delta = get_method(row["method"]).erase(pipe, concept, resolved_config(config, row))
        metrics = delta.manifest.metrics
        out.update(cpu_seconds=time.process_time() - start, delta_id=delta.delta_id,
                   iterations=metrics.get("iterations"), stopped_at=metrics.get("stopped_at"),
                   presence=metrics.get("presence_checks"))
        apply_delta(pipe, delta)
    try:
        out["erasure"], out["confusion"] = measure(pipe, reader, config, settings)
    finally:
        if delta is not None:
            revert_delta(pipe, delta)
    return out


def run_config(path: Path, only: list[str] | None) -> None:
    from erasekit.eval.atomic import write_text
    from erasekit.eval.detectors.shapes import ShapesConceptDetector
    from erasekit.models.loading import load_pipeline

    config = load_config(path)
    folder = RESULTS / path.stem
    pipe, reader = load_pipeline("shapes"), ShapesConceptDetector()
    for row in config["rows"]:
        if only and row["name"] not in only:
            continue
        target = folder / f"{row['name']}.json"
        if target.is_file() and json.loads(target.read_text())["key"] == row_key(config, row):
            print(f"{row['name']}: stored", flush=True)
            continue
        got = measure_row(pipe, reader, config, row)
        write_text(target, json.dumps(got, indent=1) + "\n")
        print(f"{row['name']}: " + table_row(config, got), flush=True)


def _misread(cell: dict, value: str) -> str:
    others = [f"{v} {c}" for v, c in cell["read"].items() if v != value]
    return f" ({', '.join(others)})" if others else ""


def table_row(config: dict, got: dict) -> str:
    e = got["erasure"]
    rates = "/".join(f"{e['target_rate'][t]:.2f}" for t in ("explicit", "synonym", "implicit"))
    cells = [f"{c['kept']}/{c['n']}{_misread(c, v)}" for v, c in got["confusion"]["values"].items()]
    presence = got.get("presence")
    stop = "-"
    if presence:
        stop = f"{presence[-1][1]:.2f} at {presence[-1][0]}" + (" (stopped)" if got.get("stopped_at") is not None else "")
    row = next(r for r in config["rows"] if r["name"] == got["name"])
    settings = {**({"anchor": row["anchor"]} if row.get("anchor") else {}), **row.get("overrides", {})}
    overrides = ", ".join(f"{k}={v}" for k, v in settings.items()) or "-"
    steps = got.get("iterations")
    return (f"| {got['name']} | {row.get('method') or '-'} | {overrides} | {rates} | "
            f"{e['preservation_adherence']['both']:.2f} | " + " | ".join(cells)
            + f" | {'-' if steps is None else steps} | {stop} |")


def page() -> str:
    lines = ["# What an erasure does to the values it must keep", "",
             f"Generated by `python benchmarks/value_confusion.py --page` from the rows of the configs in `{CONFIGS}` "
             "(`python benchmarks/value_confusion.py CONFIG`).", "",
             "Columns: target rate on explicit / synonym / implicit prompts; kept = preservation prompts with "
             "every named attribute read as named (both attributes), over all of them; then, for each other value "
             "of the erased value's attribute, its preservation prompts kept / drawn, with what the rest were "
             "drawn as (for a task: per kept value set of its checked attributes, named in `ATTRIBUTES` order, "
             "shape first); steps = fine-tuning iterations run; presence = the TRuST stopping rule's last measurement "
             "on its probe images (mean detector probability of the concept; the rule stops at a tenth of its "
             "value before training) and the iteration it was taken at."]
    for path in sorted(CONFIGS.glob("*.json")):
        config = load_config(path)
        folder = RESULTS / path.stem
        stored = {r["name"]: json.loads((folder / f"{r['name']}.json").read_text())
                  for r in config["rows"] if (folder / f"{r['name']}.json").is_file()}
        if not stored:
            continue
        values = list(next(iter(stored.values()))["confusion"]["values"])
        lines += ["", f"## {subject(config)}, seed {config.get('seed', 0)} (`{path}`)", "", config["about"], "",
                  f"{config['per_tier']} prompts per tier, {config['n_preserve']} preservation prompts.", "",
                  "| row | method | overrides | target e/s/i | kept | " + " | ".join(values) + " | steps | presence |",
                  "|---|---|---|---|---|" + "---|" * len(values) + "---|---|"]
        lines += [table_row(config, stored[r["name"]]) for r in config["rows"] if r["name"] in stored]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, nargs="?")
    ap.add_argument("--rows", nargs="+", help="only these rows of the config")
    ap.add_argument("--page", action="store_true", help=f"regenerate {PAGE} from the stored rows")
    a = ap.parse_args()
    if a.config is None and not a.page:
        ap.error("give a CONFIG, --page, or both")
    if a.config is not None:
        run_config(a.config, a.rows)
    if a.page:
        from erasekit.eval.atomic import write_text

        write_text(PAGE, page())
        print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
