"""Build the real CLIP BPE tokenizer files offline.

The CLIP byte-pair-encoding vocabulary ships as ``bpe_simple_vocab_16e6.txt.gz``
inside the ``open_clip_torch`` wheel.  This module converts that file once into
the ``vocab.json`` + ``merges.txt`` pair that ``transformers.CLIPTokenizer``
reads, so ``CLIPTokenizer.from_pretrained(folder)`` works with no network.

The vocabulary is: 256 byte-level unicode characters, the same 256 with the
end-of-word marker ``</w>``, the 48,894 merges joined, then ``<|startoftext|>``
and ``<|endoftext|>``: 49,408 entries, start id 49406, end id 49407.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # 48,894 merges used by CLIP


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable unicode map used by GPT-2 and CLIP BPE."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def convert_bpe(bpe_gz: Path, out_dir: Path) -> None:
    """Write vocab.json, merges.txt and the tokenizer configs into ``out_dir``."""
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != 49408:
        raise ValueError(f"expected 49408 CLIP tokens, built {len(vocab)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges_txt = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (out_dir / "merges.txt").write_text(merges_txt, encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    import sys

    convert_bpe(Path(sys.argv[1]), Path(sys.argv[2]))
