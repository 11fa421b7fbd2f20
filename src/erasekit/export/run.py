"""`export_model`: write an erased model in one of `FORMATS`, with its model card, into one folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.delta import EXPORT_MANIFEST_FILE, WeightDelta
from .model_card import write_model_card
from .output import FORMATS, ExportError, atomic_folder, check_base


@dataclass
class ExportResult:
    """Where the export went, its files (role -> name), and lines worth telling the user."""

    path: Path
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _file_stem(out: Path) -> str:
    return out.name.removesuffix(".safetensors") or "model"


def export_model(pipe: Any, delta: WeightDelta, out: str | Path, fmt: str = "diffusers", *, overwrite: bool = False,
                 rank: int | None = None, dtype: str | None = None, base_model: str | None = None,
                 eval_run: str | Path | None = None) -> ExportResult:
    """Write ``delta`` applied to ``pipe`` (its base model) as ``fmt`` into folder ``out``, atomically.

    - ``diffusers``: the merged pipeline, ``erasekit_delta.json`` and the base
      model's card files;
    - ``lora``: ``pytorch_lora_weights.safetensors`` (``rank`` caps it);
    - ``kohya``: ``<out name>.safetensors`` with kohya keys (``rank`` caps it);
    - ``single-file``: ``<out name>.safetensors``, original layout (``dtype`` casts it).

    Every format also gets ``README.md`` (the model card; ``eval_run`` adds its
    rates) and ``erasekit_delta.json``.  Bad requests raise `ExportError` before
    anything is written; ``pipe`` is left as it was.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if rank is not None and fmt not in ("lora", "kohya"):
        raise ExportError("--rank applies to the lora and kohya formats only")
    if dtype is not None and fmt != "single-file":
        raise ExportError("--dtype applies to the single-file format only")
    if dtype is not None:
        from ..models.loading import parse_dtype

        try:
            parse_dtype(dtype)
        except ValueError as err:
            raise ExportError(str(err)) from None
    out = Path(out)
    result = ExportResult(path=out)
    check_base(pipe, delta)
    if eval_run is not None:
        from .model_card import eval_rows

        eval_rows(eval_run, delta)  # a wrong or unreadable evaluation fails before any work
    factors = None
    if fmt in ("lora", "kohya"):
        from .lora import lora_factors

        factors = lora_factors(pipe, delta, rank)
        ranks = sorted(set(factors.ranks.values()))
        result.notes.append(f"LoRA of {len(factors.factors)} layers, rank {ranks[0]}"
                            + (f"-{ranks[-1]}" if len(ranks) > 1 else "")
                            + f", relative reconstruction error {factors.relative_error:.2e}")
    with atomic_folder(out, overwrite) as tmp:
        if fmt == "diffusers":
            from .diffusers_folder import write_merged

            copied = write_merged(pipe, delta, tmp)
            result.files.update({name: name for name in copied})
        elif fmt == "lora":
            from .lora import write_lora

            result.files["weights"] = write_lora(factors, tmp, delta).name
        elif fmt == "kohya":
            from .kohya import write_kohya

            result.files["weights"] = write_kohya(pipe, factors, tmp / f"{_file_stem(out)}.safetensors", delta).name
        else:
            from .single_file import write_single_file

            result.files["weights"] = write_single_file(pipe, delta, tmp / f"{_file_stem(out)}.safetensors", dtype).name
        if fmt != "diffusers":
            (tmp / EXPORT_MANIFEST_FILE).write_text(delta.manifest.model_dump_json(indent=2), encoding="utf-8")
        write_model_card(tmp, delta, fmt, base_model, result.files, eval_run, result.notes)
    return result
