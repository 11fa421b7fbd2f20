"""Write tests/data/shapes_probes.json: a sha256 of every Shapes probe prompt set the generator makes.

Sets: each bench scenario's target probes per wording tier and its preservation probes (96 each), each
Shapes value's task (`value_task`) likewise, and the world model's adherence probes per tier (128).
tests/test_shapes_tasks.py asserts the generator still makes exactly these prompts; rerun this script
only when a change to the prompts is meant (and say so in the commit message).

    python tests/scripts/record_shapes_probes.py [--check]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from erasekit.eval.probes import adherence_probes, preservation_probes, target_probes
from erasekit.eval.tasks import load_tasks, value_task
from erasekit.world.vocabulary import TIERS, load_vocabulary

OUT = Path(__file__).resolve().parents[1] / "data" / "shapes_probes.json"


def _entry(items: list) -> dict:
    text = json.dumps(items, sort_keys=True)
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "n": len(items), "first": items[:2]}


def _full(probes) -> list:
    return [[p.prompt, p.expected, p.seed, p.tier, p.target] for p in probes]


def _short(probes) -> list:
    return [[p.prompt, p.expected, p.seed] for p in probes]


def current() -> dict[str, dict]:
    out = {}
    for key, task in load_tasks().items():
        for tier in TIERS:
            out[f"scenario/{key}/{tier}"] = _entry(_full(target_probes(task, tier, 96)))
        out[f"scenario/{key}/preservation"] = _entry(_full(preservation_probes(task, 96)))
    for value in load_vocabulary().all_values:
        task = value_task(value)
        for tier in TIERS:
            out[f"value/{value}/{tier}"] = _entry(_short(target_probes(task, tier, 96)))
        out[f"value/{value}/preservation"] = _entry(_short(preservation_probes(task, 96)))
    for tier in TIERS:
        out[f"adherence/{tier}"] = _entry(_short(adherence_probes(tier, 128)))
    return out


def main(argv: list[str]) -> int:
    if "--check" in argv:
        return 0 if json.loads(OUT.read_text()) == current() else 1
    OUT.write_text(json.dumps(current(), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
