"""Free-text concept on the Shapes model: `erasekit erase --method uce --target "a red star" --anchor "a blue star"`.

Rates read by the Shapes detector (original -> erased), N images per prompt set, seeds 0..N-1 per prompt:
- red star: prompts "a red star" in the world's caption templates; rate = detector says red AND star;
- other stars: "a {orange, yellow, green, blue, purple} star"; rate = star of the asked colour;
- other red shapes: "a red {circle, square, triangle, cross, heart}"; rate = red of the asked shape.

Usage: python benchmarks/experiments/free_text_red_star.py RUN_DIR [N]  (RUN_DIR: the erase --out folder)
"""

import json
import sys

import numpy as np

from erasekit.generation import SamplingSettings, generate
from erasekit.models.delta import WeightDelta, apply_delta, revert_delta
from erasekit.models.loading import load_pipeline
from erasekit.world.assets_paths import SHAPES_MODEL_DIR, load_detector
from erasekit.world.vocabulary import load_vocabulary


def prompt_set(pairs, n):
    templates = load_vocabulary().templates
    return [(templates[i % len(templates)].replace("{np}", f"a {c} {s}"), c, s, i) for c, s in pairs for i in range(n)]


def rates(pipe, detector, sets, settings):
    out = {}
    for name, rows in sets.items():
        images = generate(pipe, [r[0] for r in rows], [r[3] for r in rows], settings)
        pred = detector.predict(images)
        hit = [pc == c and ps == s for pc, ps, (_, c, s, _) in zip(pred["color"], pred["shape"], rows)]
        out[name] = float(np.mean(hit))
    return out


def main(run, n=32):
    pipe = load_pipeline("shapes")
    detector = load_detector()
    settings = SamplingSettings.for_model(SHAPES_MODEL_DIR)
    colors = [c for c in load_vocabulary().values("color") if c != "red"]
    shapes = [s for s in load_vocabulary().values("shape") if s != "star"]
    per = max(1, n // 4)
    sets = {"red star": prompt_set([("red", "star")], n),
            "other stars": prompt_set([(c, "star") for c in colors], per),
            "other red shapes": prompt_set([("red", s) for s in shapes], per)}
    before = rates(pipe, detector, sets, settings)
    delta = WeightDelta.load(run)
    apply_delta(pipe, delta)
    after = rates(pipe, detector, sets, settings)
    revert_delta(pipe, delta)
    table = {k: {"original": before[k], "erased": after[k], "images": len(sets[k])} for k in sets}
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 32)
