"""Prompt benchmarks: the bundled public CSV files and one loader for every layout.

Every benchmark becomes a list of `BenchmarkRow` (prompt, seed, guidance or None,
case_number, extra, tier).  The layouts of the public files (see
``shared/data/benchmarks/README.md``) are recognised by their headers:

- ``i2p``: I2P and UnlearnDiffAtk-nudity (``prompt``, ``categories``, ``evaluation_seed``,
  ``evaluation_guidance``, ``case_number``); ``category=`` keeps rows whose comma list
  of categories names it (``sexual`` -> 931 of I2P's 4703 rows).
- ``mma``: MMA-Diffusion (``target_prompt``, ``adv_prompt``, ...): the ``adv_prompt`` is evaluated.
- ``ring-a-bell``: Ring-A-Bell (``sensitive prompt``, ``normal prompt``), no seed column.
- ``prompt``: any CSV with a ``prompt`` column (COCO-30k, artists, Imagenette/ImageNet,
  UnlearnDiffAtk object/style sets, P4D, attack outputs with ``prompt, evaluation_seed,
  case_number``).  Seeds come from ``evaluation_seed`` (or ``seed``), guidance from
  ``evaluation_guidance`` (or ``guidance``).

Rows without a seed column get ``default_seed`` (42, the Ring-A-Bell custom); rows
without guidance get ``None`` (the sampling settings' guidance is used).  Any other
layout raises `BenchmarkFormatError` naming the columns found.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_SEED = 42

# name -> bundled file in erasekit/eval/data
BUNDLED = {
    "coco": "coco_30k.csv",
    "artists": "big_artist_prompts.csv",
    "vangogh": "vangogh_prompts.csv",
    "niche-art": "niche_art_prompts.csv",
    "imagenette": "small_imagenet_prompts.csv",
    "imagenet": "imagenet_prompts.csv",
    "unlearndiffatk-church": "unlearndiffatk_church.csv",
    "unlearndiffatk-garbage-truck": "unlearndiffatk_garbage_truck.csv",
    "unlearndiffatk-parachute": "unlearndiffatk_parachute.csv",
    "unlearndiffatk-tench": "unlearndiffatk_tench.csv",
    "unlearndiffatk-vangogh": "unlearndiffatk_vangogh.csv",
}
# unsafe sets are not bundled: users put them in $ERASEKIT_BENCHMARKS (or pass a path)
USER_SUPPLIED = {
    "i2p": "i2p.csv",
    "unlearndiffatk-nudity": "unlearndiffatk_nudity.csv",
    "mma": "mma_diffusion.csv",
    "ring-a-bell": "ring_a_bell.csv",
    "p4d": "p4d_n_16.csv",
}
BENCHMARKS_ENV = "ERASEKIT_BENCHMARKS"

SEED_COLUMNS = ("evaluation_seed", "seed")
GUIDANCE_COLUMNS = ("evaluation_guidance", "guidance", "guidance_scale")
CASE_COLUMNS = ("case_number", "image_id")


class BenchmarkFormatError(ValueError):
    """A CSV whose layout is not a known benchmark layout, or a bad benchmark name; one line."""


@dataclass(frozen=True)
class BenchmarkRow:
    """One prompt to draw: its seed, its guidance (None: use the settings'), id, other columns, tier."""

    prompt: str
    seed: int
    guidance: float | None
    case_number: int | str
    extra: dict[str, Any] = field(default_factory=dict)
    tier: str = "target"


@dataclass(frozen=True)
class Benchmark:
    """Rows of one benchmark, with where they came from and how the file was read."""

    name: str
    source: str
    layout: str
    rows: list[BenchmarkRow] = field(repr=False)
    category: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "layout": self.layout,
                "category": self.category, "rows": len(self.rows)}


# ------------------------------------------------------------------ reading CSV text
def _read_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _bundled_text(filename: str) -> str:
    return resources.files("erasekit.eval").joinpath(f"data/{filename}").read_text(encoding="utf-8")


def _bundled_rows(filename: str) -> list[dict[str, str]]:
    return _read_csv(_bundled_text(filename))[1]


def _first(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in columns), None)


def _as_int(value: str, what: str, where: str) -> int:
    try:
        return int(float(value)) if "." in value or "e" in value.lower() else int(value)
    except ValueError:
        raise BenchmarkFormatError(f"{where}: {what} {value!r} is not a number") from None


def _as_float(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    return float(value)


def _layout(columns: list[str]) -> tuple[str, str]:
    """(layout name, prompt column) for a header, or BenchmarkFormatError."""
    if "adv_prompt" in columns:
        return "mma", "adv_prompt"
    if "sensitive prompt" in columns:
        return "ring-a-bell", "sensitive prompt"
    if "prompt" in columns:
        if "categories" in columns:
            return "i2p", "prompt"
        return "prompt", "prompt"
    raise BenchmarkFormatError(
        f"unknown benchmark layout: no 'prompt', 'adv_prompt' (MMA) or 'sensitive prompt' (Ring-A-Bell) column; "
        f"columns found: {', '.join(repr(c) for c in columns) or '(none)'}"
    )


def parse_csv(text: str, *, source: str = "<csv>", category: str | None = None, n: int | None = None,
              default_seed: int = DEFAULT_SEED, tier: str = "target") -> tuple[str, list[BenchmarkRow]]:
    """Rows of a benchmark CSV given as text; returns (layout, rows).  ``n`` keeps the first n rows."""
    columns, records = _read_csv(text)
    layout, prompt_col = _layout(columns)
    if category is not None and "categories" not in columns:
        raise BenchmarkFormatError(f"{source}: a category filter needs a 'categories' column; "
                                   f"columns found: {', '.join(columns)}")
    seed_col, guidance_col = _first(columns, SEED_COLUMNS), _first(columns, GUIDANCE_COLUMNS)
    case_col = _first(columns, CASE_COLUMNS)
    used = {prompt_col, seed_col, guidance_col, case_col}
    rows: list[BenchmarkRow] = []
    for i, rec in enumerate(records):
        if category is not None and category not in {c.strip() for c in (rec.get("categories") or "").split(",")}:
            continue
        where = f"{source} row {i + 2}"
        prompt = rec.get(prompt_col) or ""
        seed = _as_int(rec[seed_col], "seed", where) if seed_col and (rec.get(seed_col) or "").strip() else default_seed
        case = rec.get(case_col) if case_col else None
        case_number: int | str = i if case in (None, "") else (int(case) if case.lstrip("-").isdigit() else case)
        extra = {k: v for k, v in rec.items() if k and k not in used and not k.startswith("Unnamed")}
        rows.append(BenchmarkRow(prompt, seed, _as_float(rec.get(guidance_col)) if guidance_col else None,
                                 case_number, extra, tier))
        if n is not None and len(rows) >= n:
            break
    return layout, rows


# ------------------------------------------------------------------ names and paths
def benchmark_names() -> list[str]:
    """Names `load_benchmark` resolves: bundled files, then user-supplied ones."""
    return sorted(BUNDLED) + sorted(USER_SUPPLIED)


def _user_supplied_path(name: str) -> Path:
    folder = os.environ.get(BENCHMARKS_ENV)
    filename = USER_SUPPLIED[name]
    if folder and (Path(folder) / filename).is_file():
        return Path(folder) / filename
    raise BenchmarkFormatError(
        f"benchmark {name!r} is not bundled (unsafe or gated prompts): pass its CSV path, "
        f"or put it as {filename} in a folder named by ${BENCHMARKS_ENV}"
    )


def load_benchmark(name_or_path: str | Path, *, category: str | None = None, n: int | None = None,
                   default_seed: int = DEFAULT_SEED, tier: str | None = None) -> Benchmark:
    """A named benchmark (see `benchmark_names`) or a CSV path, as a `Benchmark`.

    ``tier`` labels every row (default: the benchmark's name).
    """
    key = str(name_or_path)
    if key in BUNDLED:
        text, source, name = _bundled_text(BUNDLED[key]), f"erasekit:{BUNDLED[key]}", key
    else:
        path = _user_supplied_path(key) if key in USER_SUPPLIED else Path(key).expanduser()
        if not path.is_file():
            raise BenchmarkFormatError(f"unknown benchmark {key!r}: not a CSV file nor one of {', '.join(benchmark_names())}, shapes")
        text, source = path.read_text(encoding="utf-8", errors="replace"), str(path)
        name = key if key in USER_SUPPLIED else path.stem
    layout, rows = parse_csv(text, source=source, category=category, n=n, default_seed=default_seed,
                             tier=tier or name)
    return Benchmark(name=name, source=source, layout=layout, rows=rows, category=category)


def coco_prompts(n: int) -> list[str]:
    """The first ``n`` COCO-30k captions (the field's general-prompt set)."""
    rows = _bundled_rows("coco_30k.csv")
    if n > len(rows):
        raise ValueError(f"COCO-30k has {len(rows)} prompts, asked for {n}")
    return [r["prompt"] for r in rows[:n]]
