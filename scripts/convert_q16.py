"""Convert the upstream Q16 prompt embeddings (a pickled numpy array) to safetensors, once.

    python scripts/convert_q16.py [SRC.p] [DST.safetensors]

The source is the trusted upstream file ``checkpoints/Q16-prompt/prompts.p`` of
ml-research/i2p (copied to ``shared/data/benchmarks/q16_vit_l14_prompts.p``): a
float16 (2, 768) array of the learned CLIP ViT-L/14 prompt embeddings,
[appropriate, inappropriate].  This script is the ONLY place erasekit unpickles
anything; the package reads the converted ``eval/data/q16_prompts.safetensors``.
Never point it at a file from an untrusted source.
"""

from __future__ import annotations

import hashlib
import pickle  # noqa: S403 - trusted upstream file, converted once
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "benchmarks" / "q16_vit_l14_prompts.p"
DEFAULT_DST = ROOT / "src" / "erasekit" / "eval" / "data" / "q16_prompts.safetensors"


def main(src: Path = DEFAULT_SRC, dst: Path = DEFAULT_DST) -> None:
    raw = src.read_bytes()
    array = np.asarray(pickle.loads(raw))  # noqa: S301 - trusted upstream file
    if array.shape != (2, 768):
        raise SystemExit(f"{src}: expected a (2, 768) array, found {array.shape}")
    tensor = torch.from_numpy(array.astype(np.float16, copy=False)).contiguous()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    save_file({"prompts": tensor}, str(tmp), metadata={
        "source": "ml-research/i2p checkpoints/Q16-prompt/prompts.p",
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "rows": "appropriate,inappropriate",
        "clip": "ViT-L/14",
    })
    tmp.replace(dst)
    print(f"wrote {dst}: {tuple(tensor.shape)} {tensor.dtype}")


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:3]]
    main(*args)
