"""Run one experiment config: erase Shapes concepts with each listed setting and measure the result.

    PYTHONPATH=src python benchmarks/experiments/run.py benchmarks/experiments/anchors/circle-anchor.yaml
    PYTHONPATH=src python benchmarks/experiments/run.py --check benchmarks/experiments/*/*.yaml

A config (YAML) names the concepts, the measurement size and the runs; each run is a method,
a preset (default: the method's ``shapes`` preset), overrides of its config fields and,
optionally, another anchor for the concept::

    about: what the experiment asks, in one sentence
    concepts: [circle]
    per_tier: 32          # prompts per wording tier (explicit, synonym, implicit)
    preserve: 96          # preservation prompts (the other values, named explicitly)
    runs:
      - {method: trce-t}
      - {method: trce-t, anchor: shape}
      - {method: esd-u, preset: shapes-retain, overrides: {iterations: 200}}

Measurement: `erasekit.eval.measure.measure_erasure` with the Shapes model's sampling
settings; preservation is the other values' adherence on the target's attribute, erased /
original.  Results go to ``benchmarks/results/experiments/<topic>/<name>.json`` and ``.md`` (a
table that the experiment's page in ``docs/experiments/`` can quote).  ``--check`` validates
configs (methods, presets, fields, concepts) without loading a model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml
from pydantic import ValidationError

RESULTS = Path("benchmarks/results/experiments")
KEYS = {"about", "concepts", "per_tier", "preserve", "runs"}
RUN_KEYS = {"method", "preset", "overrides", "anchor", "label"}


class ExperimentError(ValueError):
    """A config that cannot run; the message names the file and the problem."""


def load(path: Path) -> dict:
    """The validated config at ``path`` (every run's config is built, so bad fields fail here)."""
    from erasekit.concepts.packs import get_concept
    from erasekit.methods.base import get_method

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ExperimentError(f"{path}: {err}") from None
    if not isinstance(doc, dict) or not doc.get("runs") or not doc.get("concepts"):
        raise ExperimentError(f"{path}: needs 'concepts' and 'runs'")
    if set(doc) - KEYS:
        raise ExperimentError(f"{path}: unknown keys {sorted(set(doc) - KEYS)} (allowed: {sorted(KEYS)})")
    try:
        for concept in doc["concepts"]:
            get_concept(concept, world="shapes")
        for run in doc["runs"]:
            if set(run) - RUN_KEYS:
                raise ExperimentError(f"{path}: unknown run keys {sorted(set(run) - RUN_KEYS)}")
            run["config"] = config_of(run)
            run.setdefault("label", label_of(run))
            get_method(run["method"])
    except ExperimentError:
        raise
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ExperimentError(f"{path}: {problems}") from None
    except (KeyError, ValueError) as err:
        raise ExperimentError(f"{path}: {err}") from None
    return doc


def jsonl_rows(path: Path) -> list[dict]:
    """Every row of a results file, one JSON object per line (none when the file does not exist yet)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def setting_value(text: str):
    """A ``--set`` VALUE: read as JSON (numbers, booleans, null, lists), ``None`` as null, else kept as text."""
    if text == "None":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def overrides_of(ap, items: list[str]) -> dict:
    """``--set FIELD=VALUE`` items as config overrides (VALUE as ``setting_value`` reads it); bad ones exit 2."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set takes FIELD=VALUE, got {item!r}")
        overrides[key] = setting_value(value)
    return overrides


def config_of(run: dict):
    from erasekit.methods.base import get_method

    cls = get_method(run["method"]).config_cls
    overrides = {"progress": False, **(run.get("overrides") or {})} if "progress" in cls.model_fields else \
        dict(run.get("overrides") or {})
    preset = run.get("preset")
    return cls.preset(preset, **overrides) if preset else cls.for_world("shapes", **overrides)


def label_of(run: dict) -> str:
    parts = [run["method"] + (f":{run['preset']}" if run.get("preset") else "")]
    parts += [f"{k}={v}" for k, v in (run.get("overrides") or {}).items()]
    parts += [f"anchor={run['anchor']!r}"] if run.get("anchor") is not None else []
    return " ".join(parts)


def execute(doc: dict, pipe=None) -> list[dict]:
    """Measure the original model once per concept, then every run; rows as dicts."""
    from erasekit.concepts.packs import get_concept
    from erasekit.eval.measure import measure_erasure
    from erasekit.generation import SamplingSettings
    from erasekit.methods.base import get_method
    from erasekit.models.delta import apply_delta, revert_delta
    from erasekit.models.loading import load_pipeline, resolve_model_path

    pipe = pipe or load_pipeline("shapes")
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    per_tier, preserve = int(doc.get("per_tier", 32)), int(doc.get("preserve", 96))
    rows = []
    for name in doc["concepts"]:
        spec = get_concept(name, world="shapes")
        value = spec.name.split("/")[-1]
        base = measure_erasure(pipe, value, per_tier, preserve, settings)
        key = base["attribute"] if base["attribute"] in ("shape", "color") else "both"
        for run in doc["runs"]:
            concept = spec if run.get("anchor") is None else spec.model_copy(update={"anchor": run["anchor"]})
            t0 = time.perf_counter()
            delta = get_method(run["method"]).erase(pipe, concept, run["config"])
            seconds = time.perf_counter() - t0
            apply_delta(pipe, delta)
            try:
                erased = measure_erasure(pipe, value, per_tier, preserve, settings)
            finally:
                revert_delta(pipe, delta)
            kept = erased["preservation_adherence"][key] / max(1e-9, base["preservation_adherence"][key])
            rows.append({"label": run["label"], "concept": name, "original": base["target_rate"],
                         "erased": erased["target_rate"], "preservation": kept, "seconds": seconds,
                         "delta_id": delta.delta_id, "config": run["config"].model_dump()})
    return rows


def markdown(doc: dict, rows: list[dict]) -> str:
    tiers = ("explicit", "synonym", "implicit")
    lines = [f"{doc.get('about', '').strip()}", "", f"{doc.get('per_tier', 32)} prompts per tier, "
             f"{doc.get('preserve', 96)} preservation prompts.", "",
             "| run | concept | " + " | ".join(tiers) + " | preservation | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        rates = " | ".join(f"{r['original'][t]:.2f} -> {r['erased'][t]:.2f}" for t in tiers)
        lines.append(f"| {r['label']} | {r['concept']} | {rates} | {r['preservation']:.2f} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def write(path: Path, doc: dict, rows: list[dict], root: Path = RESULTS, render=None, stem_suffix: str = "") -> Path:
    """Write ``root/<folder>/<config stem><stem_suffix>.json`` (the rows) and ``.md`` (``render``, by default
    `markdown`), each atomically."""
    from erasekit.eval.atomic import write_text

    out = root / path.parent.name / f"{path.stem}{stem_suffix}"
    write_text(out.with_suffix(".json"), json.dumps({"config": str(path), "rows": rows}, indent=1, default=str))
    write_text(out.with_suffix(".md"), (render or markdown)(doc, rows))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="validate the configs only")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        docs = [(p, load(p)) for p in args.configs]  # every config is valid before any work
    except ExperimentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{len(docs)} experiment configs valid")
        return 0
    for path, doc in docs:
        out = write(path, doc, execute(doc), args.results)
        print(f"wrote {out}.json and {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
