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
layout raises `BenchmarkFormatError` naming the columns found; so do files that are
not UTF-8, malformed CSV (an unterminated quote), a seed outside int64, a guidance
that is not a finite number >= 1, and a file (or category) with no rows.  Rows with
an empty prompt are skipped, with a note.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_SEED = 42
MAX_SEED = 2**63 - 1

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
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "layout": self.layout,
                "category": self.category, "rows": len(self.rows)}


# ------------------------------------------------------------------ reading CSV text
def _read_csv(text: str, source: str = "<csv>") -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""), strict=True)
    try:
        rows = list(reader)
    except csv.Error as err:
        raise BenchmarkFormatError(f"{source} line {reader.line_num}: malformed CSV ({err}; an unterminated "
                                   "quote?)") from None
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


def _as_guidance(value: str | None, where: str) -> float | None:
    """A guidance cell: None when empty, else a finite number of at least 1 (below 1 diffusers samples as at 1)."""
    if value is None or not value.strip():
        return None
    try:
        g = float(value)
    except ValueError:
        raise BenchmarkFormatError(f"{where}: guidance {value!r} is not a number") from None
    if not math.isfinite(g) or g < 1:
        raise BenchmarkFormatError(f"{where}: guidance {value!r} must be a finite number of at least 1")
    return g


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
              default_seed: int = DEFAULT_SEED, tier: str = "target",
              notes: list[str] | None = None) -> tuple[str, list[BenchmarkRow]]:
    """Rows of a benchmark CSV given as text; returns (layout, rows).  ``n`` keeps the first n rows.

    Rows with an empty prompt are skipped; a note saying how many (and which) goes to ``notes``.
    """
    columns, records = _read_csv(text, source)
    layout, prompt_col = _layout(columns)
    if category is not None and "categories" not in columns:
        raise BenchmarkFormatError(f"{source}: a category filter needs a 'categories' column; "
                                   f"columns found: {', '.join(columns)}")
    seed_col, guidance_col = _first(columns, SEED_COLUMNS), _first(columns, GUIDANCE_COLUMNS)
    case_col = _first(columns, CASE_COLUMNS)
    used = {prompt_col, seed_col, guidance_col, case_col}
    rows: list[BenchmarkRow] = []
    empty: list[int] = []
    for i, rec in enumerate(records):
        if category is not None and category not in {c.strip() for c in (rec.get("categories") or "").split(",")}:
            continue
        where = f"{source} row {i + 2}"
        prompt = rec.get(prompt_col) or ""
        if not prompt.strip():
            empty.append(i + 2)
            continue
        seed = _as_int(rec[seed_col], "seed", where) if seed_col and (rec.get(seed_col) or "").strip() else default_seed
        if not 0 <= seed <= MAX_SEED:
            raise BenchmarkFormatError(f"{where}: seed {seed} outside 0 .. {MAX_SEED}")
        case = rec.get(case_col) if case_col else None
        case_number: int | str = i if case in (None, "") else (int(case) if case.lstrip("-").isdigit() else case)
        extra = {k: v for k, v in rec.items() if k and k not in used and not k.startswith("Unnamed")}
        rows.append(BenchmarkRow(prompt, seed, _as_guidance(rec.get(guidance_col), where) if guidance_col else None,
                                 case_number, extra, tier))
        if n is not None and len(rows) >= n:
            break
    if empty and notes is not None:
        notes.append(f"{source}: {len(empty)} row(s) with an empty {prompt_col!r} skipped (line {empty[0]}"
                     + (f" and {len(empty) - 1} more)" if len(empty) > 1 else ")"))
    if not rows:
        which = f" of category {category!r}" if category is not None else ""
        raise BenchmarkFormatError(f"{source}: no rows with a prompt{which}")
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
        source = str(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise BenchmarkFormatError(f"{path}: not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at "
                                       f"{err.start}); save it as UTF-8") from None
        name = key if key in USER_SUPPLIED else path.stem
    notes: list[str] = []
    layout, rows = parse_csv(text, source=source, category=category, n=n, default_seed=default_seed,
                             tier=tier or name, notes=notes)
    return Benchmark(name=name, source=source, layout=layout, rows=rows, category=category, notes=notes)


def coco_prompts(n: int) -> list[str]:
    """The first ``n`` COCO-30k captions (the field's general-prompt set)."""
    rows = _bundled_rows("coco_30k.csv")
    if n > len(rows):
        raise ValueError(f"COCO-30k has {len(rows)} prompts, asked for {n}")
    return [r["prompt"] for r in rows[:n]]
