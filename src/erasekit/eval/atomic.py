"""Atomic file writes for the evaluation code: `erasekit.world.atomic`, the one implementation, under its old name."""

from __future__ import annotations

from ..world.atomic import atomic_path, save_figure, save_image, save_safetensors, write_bytes, write_json, write_text

__all__ = ["atomic_path", "save_figure", "save_image", "save_safetensors", "write_bytes", "write_json", "write_text"]
