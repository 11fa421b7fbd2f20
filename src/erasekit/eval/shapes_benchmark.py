"""The Shapes-world benchmark as benchmark rows: target tiers plus preservation prompts.

``--benchmark shapes --concept circle``: for each wording tier (explicit, synonym,
implicit) ``n`` prompts from `shapes_erasure.target_prompts` (seeds 0..n-1), and
``n_preserve`` preservation prompts naming other values (fixed seeds from 10000).
Each row's ``extra`` holds the attribute values the prompt names, so the detector
can check adherence.
"""

from __future__ import annotations

from ..world.vocabulary import TIERS, load_vocabulary
from .benchmarks import Benchmark, BenchmarkFormatError, BenchmarkRow
from .shapes_erasure import preservation_prompts, target_prompts

PRESERVATION_TIER = "preservation"


def check_concept(concept: str | None) -> str:
    """The concept as a Shapes-world value, or a one-line error listing the values."""
    vocab = load_vocabulary()
    if concept is None or concept not in vocab.all_values:
        raise BenchmarkFormatError(f"the shapes benchmark needs --concept, one of: {', '.join(vocab.all_values)}"
                                   + (f" (got {concept!r})" if concept else ""))
    return concept


def shapes_target_rows(concept: str, n: int) -> list[BenchmarkRow]:
    """``n`` rows per wording tier naming ``concept``; ``tier`` is the wording tier."""
    check_concept(concept)
    rows = []
    for tier in TIERS:
        for k, (prompt, values, seed) in enumerate(target_prompts(concept, tier, n)):
            rows.append(BenchmarkRow(prompt, seed, None, f"{tier}-{k}", dict(values), tier))
    return rows


def shapes_preservation_rows(concept: str, n: int) -> list[BenchmarkRow]:
    """``n`` explicit prompts naming a shape and a color other than ``concept``."""
    return [BenchmarkRow(prompt, seed, None, f"preservation-{k}", dict(values), PRESERVATION_TIER)
            for k, (prompt, values, seed) in enumerate(preservation_prompts([check_concept(concept)], n))]


def shapes_benchmark(concept: str, n: int) -> Benchmark:
    """The target rows of the Shapes benchmark as a `Benchmark` (preservation rows come separately)."""
    return Benchmark(name="shapes", source="erasekit:shapes_erasure", layout="shapes",
                     rows=shapes_target_rows(concept, n))
