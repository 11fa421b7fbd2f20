"""Whether TRuST's concept neurons of a combination are its parts' neurons: overlap of the neuron masks.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/experiments/trust_combination_neurons.py --seed 0 1

For the combination red circle, and for each of its parts alone (red, circle), TRuST's ``shapes``
preset (config seed ``--seed``, no stopping rule) trains ``--steps`` steps and records every neuron
mask it selects (`erase`'s ``mask_callback``): the output rows of the cross-attention Q/K/V it would
change.  For each seed the table gives the
combination's neurons (union over the steps), its parts' neurons, the share of the combination's
neurons that are also a part's (coverage), and that share for a random set of as many neurons
(the parts' share of all neurons: what coverage would be if the combination's neurons were drawn
without regard to its parts).  Rows go to ``benchmarks/results/experiments/trust/combination-neurons.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PAIRS = {"red-circle": ("red", "circle")}
OUT = Path(__file__).resolve().parents[1] / "results" / "experiments" / "trust" / "combination-neurons"


def neurons(pipe, concept: str, seed: int, steps: int) -> tuple[set[tuple[str, int]], int]:
    """(the neurons TRuST's masks select over the first ``steps`` steps, the scope's neuron count)."""
    import torch

    from erasekit.concepts.packs import get_concept
    from erasekit.methods.base import get_method

    info = get_method("trust")
    config = info.config_cls.for_world("shapes", seed=seed, iterations=steps, stop_ratio=None, progress=False)
    chosen: set[tuple[str, int]] = set()
    sizes: dict[str, int] = {}

    def record(step: int, masks: dict[str, torch.Tensor]) -> None:
        for name, mask in masks.items():
            rows = mask.reshape(mask.shape[0], -1).any(dim=1)
            sizes[name] = rows.numel()
            chosen.update((name, int(i)) for i in rows.nonzero().flatten())

    torch.manual_seed(seed)
    info.erase(pipe, get_concept(concept), config, mask_callback=record)
    return chosen, sum(sizes.values())


def markdown(rows: list[dict]) -> str:
    lines = ["Neurons: output rows of the cross-attention Q/K/V that TRuST's masks select in the first "
             f"{rows[0]['steps']} steps (union); coverage: the share of the combination's neurons that a part's "
             "mask also selects; chance: the parts' share of all neurons.", "",
             "| concept | seed | its neurons | parts | parts' neurons (union) | coverage | chance |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['concept']} | {r['seed']} | {r['neurons']} | {' + '.join(r['parts'])} "
                     f"| {r['parts_neurons']} | {r['coverage']:.2f} | {r['chance']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()

    from erasekit.eval.atomic import write_json
    from erasekit.models.loading import load_pipeline
    from erasekit.world.atomic import write_text

    pipe = load_pipeline("shapes")
    rows = []
    for seed in a.seed:
        for concept, parts in PAIRS.items():
            own, total = neurons(pipe, concept, seed, a.steps)
            union = set().union(*(neurons(pipe, p, seed, a.steps)[0] for p in parts))
            rows.append({"concept": concept, "seed": seed, "steps": a.steps, "parts": list(parts),
                         "neurons": len(own), "parts_neurons": len(union), "neurons_total": total,
                         "coverage": len(own & union) / len(own), "chance": len(union) / total})
            print(json.dumps(rows[-1]), flush=True)
    write_json(OUT.with_suffix(".json"), rows)
    write_text(OUT.with_suffix(".md"), markdown(rows))
    print(f"wrote {OUT}.json and .md")


if __name__ == "__main__":
    main()
