#!/usr/bin/env bash
# Rebuild the shipped Shapes world from scratch: tokenizer, VAE, detector, text encoder + UNet.
# Every stage is seeded and resumes from its last checkpoint (kept outside the repo, under
# $ERASEKIT_TRAIN_DIR, default ~/.cache/erasekit/train). Run one stage at a time: two torch
# processes on 2 cores slow each other down many times over.
#
# Wall time of the shipped run on 2 CPU cores: renders 30k ~2 min, VAE 2500 steps ~17 min
# (docs/shapes-world.md; the text encoder + UNet history is in src/erasekit/world/assets/shapes/README.md).
set -euo pipefail
py=${PYTHON:-.venv/bin/python}
root=${ERASEKIT_TRAIN_DIR:-$HOME/.cache/erasekit/train}/shapes
assets=src/erasekit/world/assets
mkdir -p "$root"
[ -f "$root/tokenizer/vocab.json" ] || scripts/build_tokenizer.sh "$root/tokenizer"
[ -d "$root/vae-final" ] || "$py" -m erasekit.world.train_vae --steps 2500 --lr 2e-3 --root "$root"
"$py" -m erasekit.world.train_detector --root "$root" --out "$assets/shapes_detector"
# The shipped weights had a bumpier history (loss weighting, attention head count, timestep
# sampling, attribute probe and the zero-terminal-SNR schedule changed mid-run; see the
# model card, src/erasekit/world/assets/shapes/README.md); a clean rebuild is one leg with the final recipe (not run end to end here):
"$py" -m erasekit.world.train_t2i --root "$root" --out "$assets/shapes" --steps 11500
