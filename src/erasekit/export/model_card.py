"""The ``README.md`` model card written with every export (huggingface_hub's `ModelCard`).

The card's YAML header carries the Hub metadata (base model when it is a Hub
id, library, tags); its body states the base model, the method, the erased
concept (targets, anchor, kind), the method's config, the erasekit version,
the output format with how to load it, and, when an evaluation folder is
given, its rates (original vs erased per tier, with 95% intervals where the
results carry them, and preservation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..models.delta import WeightDelta
from .output import ExportError

CARD_FILE = "README.md"

USAGE = {
    "diffusers": "```python\nfrom diffusers import DiffusionPipeline\npipe = DiffusionPipeline.from_pretrained(\"{path}\")\n```",
    "lora": "```python\npipe.load_lora_weights(\"{path}\", adapter_name=\"erased\")  # on the base model\n"
            "pipe.set_adapters([\"erased\"], adapter_weights=[0.5])  # partial strength, if wanted\n```",
    "kohya": "Copy `{file}` into AUTOMATIC1111's `models/Lora` (prompt `<lora:{stem}:1>`) or ComfyUI's `models/loras` "
             "(LoraLoader node) and use it on the base model.",
    "single-file": "Copy `{file}` into AUTOMATIC1111's `models/Stable-diffusion` or ComfyUI's `models/checkpoints`; "
                   "in diffusers: `StableDiffusionPipeline.from_single_file(\"{file}\", config=<the base model's folder>)`.",
}


def erasekit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("erasekit")
    except PackageNotFoundError:
        return "unknown"


def _hub_id(model: str | None) -> str | None:
    """``model`` when it reads as a Hub repository id (owner/name, not a local path)."""
    if not model or Path(model).expanduser().exists() or model.count("/") != 1 or model.startswith((".", "/")):
        return None
    return model


def eval_rows(run: str | Path, delta: WeightDelta) -> list[tuple[str, str, str]]:
    """(metric, original, erased) rows from an evaluation folder's ``results.json`` of this delta."""
    from ..eval.compare import ResultsError, load_summary
    from ..eval.report import RESULTS

    try:
        summary = load_summary(run)
    except ResultsError as err:
        raise ExportError(str(err)) from None
    path = Path(run) / RESULTS if Path(run).is_dir() else Path(run)
    data = json.loads(path.read_text())
    evaluated = (data.get("settings", {}).get("delta") or {}).get("delta_id")
    if evaluated != delta.delta_id:
        raise ExportError(f"{run} evaluates delta {evaluated}, not the exported delta {delta.delta_id}")
    metrics = data.get("metrics", {})

    def fmt(v, ci=None):
        if v is None:
            return "n/a"
        return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    ci, ci_original = metrics.get("asr_ci95") or {}, metrics.get("asr_original_ci95") or {}
    rows = [(f"target rate, {tier}", fmt((summary.asr_original or {}).get(tier), ci_original.get(tier)),
             fmt(value, ci.get(tier))) for tier, value in summary.asr.items()]
    rows.append(("preservation (erased / original)", "", fmt(summary.preservation)))
    return [(f"{name} (detector {summary.detector})" if i == 0 else name, a, b) for i, (name, a, b) in enumerate(rows)]


def card_text(delta: WeightDelta, fmt: str, base_model: str | None, files: dict[str, str] | None = None,
              eval_run: str | Path | None = None, notes: list[str] | None = None) -> str:
    """The model card's markdown (YAML header + body) for an export of ``delta`` in format ``fmt``."""
    from huggingface_hub import ModelCardData

    m = delta.manifest
    concept: dict[str, Any] = m.config.get("concept") if isinstance(m.config.get("concept"), dict) else {}
    tags = ["erasekit", "concept-erasure", "text-to-image", "stable-diffusion"]
    if fmt in ("lora", "kohya"):
        tags.append("lora")
    data = ModelCardData(library_name="diffusers", base_model=_hub_id(base_model or m.base_model), tags=tags)
    name = concept.get("name") or "a concept"
    files = files or {}
    file = files.get("weights", "")
    lines = [f"# {name} erased with {m.method}", "",
             f"This model is {base_model or m.base_model or 'its base model'} with the concept **{name}** erased by "
             f"erasekit's `{m.method}` method, exported as **{fmt}**.", "",
             "## Erasure", "",
             f"- base model: `{base_model or m.base_model}`",
             f"- method: `{m.method}`",
             f"- delta id: `{m.delta_id}` ({len(m.tensors)} tensors changed)"]
    if concept:
        lines += [f"- concept: `{name}` ({concept.get('kind', '?')}); targets: "
                  + ", ".join(f"\"{t}\"" for t in concept.get("targets", [])),
                  f"- anchor: \"{concept.get('anchor', '')}\""]
        preserve = concept.get("preserve") or []
        if preserve:
            more = f" ... ({len(preserve)} prompts in all)" if len(preserve) > 8 else ""
            lines.append("- preserved: " + ", ".join(f"\"{p}\"" for p in preserve[:8]) + more)
    lines += [f"- seed: {m.seed}", f"- erasekit version: {erasekit_version()}", ""]
    if eval_run is not None:
        lines += ["## Evaluation", "", "| metric | original | erased |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in eval_rows(eval_run, delta)]
        lines.append("")
    lines += ["## Use", "", USAGE[fmt].format(path="<this folder or Hub repository>", file=file, stem=Path(file).stem), ""]
    for note in notes or []:
        lines += [f"> {note}", ""]
    config = {k: v for k, v in m.config.items() if k != "concept"}
    lines += ["## Config", "", "```json", json.dumps(config, indent=2, sort_keys=True, default=str), "```", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def write_model_card(folder: str | Path, delta: WeightDelta, fmt: str, base_model: str | None,
                     files: dict[str, str] | None = None, eval_run: str | Path | None = None,
                     notes: list[str] | None = None) -> Path:
    """Write ``README.md`` into ``folder`` through `huggingface_hub.ModelCard`; returns its path."""
    from huggingface_hub import ModelCard

    card = ModelCard(card_text(delta, fmt, base_model, files, eval_run, notes))
    path = Path(folder) / CARD_FILE
    card.save(str(path))
    return path
