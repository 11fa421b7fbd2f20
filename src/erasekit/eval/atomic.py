"""Atomic file writes: write a temp file next to the target, then ``os.replace`` it.

A reader (or a resumed run) therefore sees either the old file or the complete
new one, never a truncated one.  The file gets the mode a plain ``open`` would
give it (0666 less the umask), not the temp file's 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic(path: Path, write: Callable[[str], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _umask_mode())
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return _atomic(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_image(path: str | Path, image) -> Path:
    """Save a PIL image atomically; the format comes from ``path``'s suffix."""
    fmt = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    return _atomic(Path(path), lambda tmp: image.save(tmp, format=fmt))


def save_figure(path: str | Path, figure, **kwargs) -> Path:
    """Save a matplotlib figure atomically (PNG unless the suffix says otherwise)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return _atomic(Path(path), lambda tmp: figure.savefig(tmp, format=fmt, **kwargs))
