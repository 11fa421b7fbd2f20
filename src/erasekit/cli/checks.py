"""Checks of command-line values made before any work: counts, seeds, guidance, prompts, output paths.

Each check ends the command with one error line (exit code 2) naming the flag, the
value and what to pass instead; `guidance_note` returns the one line to print when
a valid value switches something off.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

from .common import fail

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
MAX_SEED = 2**63 - 1


def at_least(value: Optional[int], minimum: int, flag: str) -> None:
    """``value`` (when given) must be an integer >= ``minimum``."""
    if value is not None and value < minimum:
        fail(f"{flag} must be at least {minimum} (got {value})")


def positive_number(value: Optional[float], flag: str) -> None:
    """``value`` (when given) must be a finite number > 0 (learning rates, thresholds of scale)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        fail(f"{flag} must be a finite number above 0 (got {value})")


def seed_range(seed: Optional[int], flag: str = "--seed", count: int = 1) -> None:
    """Seeds ``seed`` .. ``seed + count - 1`` must lie in 0 .. 2**63-1 (torch generators take int64)."""
    if seed is not None and not (0 <= seed and seed + max(count, 1) - 1 <= MAX_SEED):
        fail(f"{flag} {seed}: seeds must lie in 0 .. {MAX_SEED}" + (f" (this run uses {count} from it)" if count > 1 else ""))


def guidance_value(guidance: Optional[float], flag: str = "--guidance") -> Optional[str]:
    """Refuse a non-finite or below-1 guidance; return a note when it is exactly 1 (no guidance), else None.

    Diffusers pipelines run classifier-free guidance only above 1; below 1 they sample
    exactly as at 1, so such a value would be recorded but not used.
    """
    if guidance is None:
        return None
    if not math.isfinite(guidance):
        fail(f"{flag} must be a finite number (got {guidance})")
    if guidance < 1:
        fail(f"{flag} {guidance}: values below 1 sample as 1 (classifier-free guidance off); pass 1 for that, "
             "or a value above 1")
    if guidance == 1:
        return f"{flag} 1: classifier-free guidance is off (conditional prediction only)"
    return None


def prompts_text(prompts: list[str], flag: str = "--prompt") -> None:
    """Every prompt must be non-empty, valid UTF-8 text."""
    for p in prompts:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            fail(f"{flag} {p.encode('utf-8', 'replace').decode()!r} is not valid UTF-8 text")
        if not p.strip():
            fail(f"{flag}: empty prompt")


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _location_writable(path: Path, flag: str) -> None:
    """``path``'s nearest existing ancestor must be a writable folder."""
    path = Path(os.path.abspath(path))
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        fail(f"{flag} {path}: {anchor} is a file, not a folder; choose another path")
    if not os.access(anchor, os.W_OK | os.X_OK):
        fail(f"{flag} {path}: {anchor} is not writable; choose another path")


def out_file(path: Path, flag: str = "--out", suffixes: tuple[str, ...] = (), overwrite: bool = False,
             overwrite_flag: str | None = "--overwrite") -> None:
    """``path`` is a file to write: not a folder, the right extension, in a writable place, new unless ``overwrite``."""
    if path.is_dir():
        fail(f"{flag} {path} is a folder; give a file path" + (f" ending in {suffixes[0]}" if suffixes else ""))
    if suffixes and path.suffix.lower() not in suffixes:
        fail(f"{flag} {path}: expected a file ending in {', '.join(suffixes)}")
    _location_writable(path, flag)
    if path.exists() and not overwrite:
        how = f"pass {overwrite_flag} to replace it or " if overwrite_flag else ""
        fail(f"{flag} {path} exists; {how}choose another path")


def out_dir(path: Path, flag: str = "--out") -> None:
    """``path`` is a folder to write into: not a file, in a writable place (writable itself when it exists)."""
    if path.exists() and not path.is_dir():
        fail(f"{flag} {path} is a file; give a folder path")
    _location_writable(path, flag)
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        fail(f"{flag} {path} is not writable; choose another folder")


def input_file(path: Optional[Path], flag: str) -> None:
    """``path`` (when given) must be an existing file."""
    if path is None:
        return
    if not path.exists():
        fail(f"{flag} {path}: no such file")
    if not path.is_file():
        fail(f"{flag} {path} is not a file")


def input_dir(path: Optional[Path], flag: str) -> None:
    """``path`` (when given) must be an existing folder."""
    if path is None:
        return
    if not path.exists():
        fail(f"{flag} {path}: no such folder")
    if not path.is_dir():
        fail(f"{flag} {path} is not a folder")


def same_path(a: Optional[Path], b: Optional[Path]) -> bool:
    return a is not None and b is not None and Path(os.path.abspath(a)).resolve() == Path(os.path.abspath(b)).resolve()
