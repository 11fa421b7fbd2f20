#!/usr/bin/env bash
# Convert the CLIP BPE vocabulary shipped inside the open_clip_torch wheel into
# vocab.json + merges.txt for transformers.CLIPTokenizer (no network at run time).
# Usage: scripts/build_tokenizer.sh OUT_DIR
set -euo pipefail
out=${1:?usage: build_tokenizer.sh OUT_DIR}
py=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download --no-deps -q open_clip_torch -d "$tmp"
unzip -q -o "$tmp"/open_clip_torch-*.whl 'open_clip/bpe_simple_vocab_16e6.txt.gz' -d "$tmp"
"$py" -m erasekit.world.tokenizer_build "$tmp/open_clip/bpe_simple_vocab_16e6.txt.gz" "$out"
echo "tokenizer written to $out"
