"""erasekit: erase concepts from diffusers text-to-image models and measure the result.

The public API, importable from the top level (loaded on first use, so ``import erasekit``
stays cheap)::

    from erasekit import load_pipeline, get_concept, get_method, apply_delta, revert_delta, evaluate

- `load_pipeline` (``erasekit.models.loading``): "shapes", a diffusers folder, a Hub id or a
  single-file checkpoint;
- `get_concept` (``erasekit.concepts.packs``): a built-in concept ("shapes/circle", "sd/nudity");
- `get_method` (``erasekit.methods.base``): a registered method; ``.erase(pipe, concept, config)``
  returns a `WeightDelta`;
- `apply_delta` / `revert_delta` (``erasekit.models.delta``): put a delta on a pipeline and take it
  off bit for bit;
- `evaluate` (``erasekit.eval.evaluate``): generate, score and report one evaluation.
"""

from __future__ import annotations

import importlib
from importlib import metadata

try:
    __version__ = metadata.version("erasekit")
except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH that was never installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "load_pipeline": "erasekit.models.loading",
    "get_concept": "erasekit.concepts.packs",
    "get_method": "erasekit.methods.base",
    "list_methods": "erasekit.methods.base",
    "apply_delta": "erasekit.models.delta",
    "revert_delta": "erasekit.models.delta",
    "WeightDelta": "erasekit.models.delta",
    "evaluate": "erasekit.eval.evaluate",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'erasekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
