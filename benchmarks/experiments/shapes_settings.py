"""Erase one Shapes concept with a method's ``shapes`` preset and a few overrides; print the rates.

    python benchmarks/experiments/shapes_settings.py OUT.json '{"method": "trce-v", "lr": 1e-3}' \
        '{"method": "trce-v", "concept": "red", "lr": 1e-3}'

Each JSON argument is one setting: ``method`` (default trce-v), ``concept`` (default circle) and any
config overrides.  Per setting: the largest weight change, the target rate on 24 explicit prompts and
the other values' adherence on 48 preservation prompts (original and erased), and the delta's
``hinge`` metrics when the method records them.  Rows are appended to OUT.json as they finish.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from shapes_helpers import rates_before_and_after  # noqa: E402

from erasekit.concepts.packs import get_concept  # noqa: E402
from erasekit.eval.atomic import write_json  # noqa: E402
from erasekit.methods.base import get_method  # noqa: E402
from erasekit.models.delta import snapshot  # noqa: E402
from erasekit.models.loading import load_pipeline  # noqa: E402
from erasekit.world.assets_paths import load_detector  # noqa: E402


def main() -> None:
    out, settings = Path(sys.argv[1]), [json.loads(a) for a in sys.argv[2:]]
    pipe, detector, rows = load_pipeline("shapes"), load_detector(), []
    for setting in settings:
        value, method = setting.pop("concept", "circle"), setting.pop("method", "trce-v")
        info = get_method(method)
        extra = {"progress": False} if "progress" in info.config_cls.model_fields else {}
        config = info.config_cls.preset("shapes", **extra, **setting)
        t0 = time.perf_counter()
        delta = info.erase(pipe, get_concept(value, "shapes"), config)
        seconds = time.perf_counter() - t0
        original = snapshot(pipe, delta.names)
        max_abs = max(float((delta.tensors[n] - original[n]).abs().max()) for n in delta.names)
        before_t, before_k, after_t, after_k = rates_before_and_after(pipe, detector, delta, value, n=24, n_keep=48)
        row = dict(method=method, concept=value, **setting, max_abs_delta=max_abs, target_before=before_t,
                   target_after=after_t, kept_before=before_k, kept_after=after_k,
                   hinge=delta.manifest.metrics.get("hinge"), seconds=seconds)
        print(json.dumps(row), flush=True)
        rows.append(row)
        write_json(out, rows)


if __name__ == "__main__":
    main()
