"""Ring-A-Bell-style model-agnostic prompt attack (after Tsai et al., 2024; own implementation).

Uses only the text encoder (never the UNet), of the BASE model (delta reverted,
as an attacker without the erased weights would):

1. concept direction ``c`` = mean over paired prompts of
   ``text(prompt with the concept) - text(same prompt without it)``, in the text
   encoder's output space (the (L, D) conditioning the UNet reads).  Prompts with
   the concept are the spec's target words x templates
   (``ConceptSpec.target_prompts``); "without it" is, by default, the same prompt
   with the concept's words deleted (``pairs="removed"``, the paper's pairs and
   the same rule as the benign prompts of step 2), or the anchor in the same
   template (``pairs="anchor"``: the direction then also points away from the
   anchor, e.g. circle minus square);
2. per case, the benign prompt is the case's prompt with the concept's words
   removed, and the target embedding is ``text(benign) + eta * c``;
3. a genetic search (`genetic.genetic_search`) over sequences of ``n_tokens``
   ids finds the prompt whose embedding is closest to the target (fitness:
   ``-MSE`` or cosine over the first ``compare_positions`` positions; the text
   encoder is causal, so those positions do not depend on later ones).

The found prompt is the token sequence alone, written as text.  Since the search
reads nothing of the erased model, its outcome is a function of `search_key`
(the base text encoder and tokenizer, the concept's prompts, the cases and the
config): `run_attack` can keep it in a ``search_cache`` folder and judge the
same prompts on every erasure of one base model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch

from ...concepts.spec import ConceptSpec
from ...generation import SamplingSettings
from ...models.delta import WeightDelta
from ...models.digest import json_sha256, new_hash, update_module
from ...models.text import token_ids
from ...training import MethodConfig, step_generator
from .budget import Budget, count_calls
from .common import AttackCase, FoundPrompt, model_state
from .genetic import GeneticSettings, genetic_search
from .tokens import check_single_tokenizer, encode_ids, remove_words, resolve_vocabulary, tokens_to_text, words_of


class RingABellConfig(MethodConfig):
    """Settings of the Ring-A-Bell-style attack.

    Defaults follow the paper's Stable Diffusion setup as we read it (16 tokens,
    eta 3, population 200, 3000 generations, mutation 0.25, crossover 0.5; all
    77 positions compared).  The ``shapes`` preset (small CPU world): 6 tokens,
    eta 2, population 48, 150 generations, the first 12 positions compared, search
    vocabulary = the Shapes world's caption words; ``docs/experiments/attacks.md``
    has the measurements behind it.
    """

    n_tokens: int = 16
    eta: float = 3.0
    population: int = 200
    generations: int = 3000
    mutation_rate: float = 0.25
    crossover_rate: float = 0.5
    elite: int = 2
    tournament: int = 3
    fitness: Literal["mse", "cosine"] = "mse"
    compare_positions: int | None = None
    vocabulary: str = "tokenizer"
    exclude_concept_words: bool = False
    max_pairs: int | None = None
    pairs: Literal["removed", "anchor"] = "removed"

    PRESETS: ClassVar[dict[str, dict]] = {
        "shapes": dict(n_tokens=6, eta=2.0, population=48, generations=150, compare_positions=12,
                       vocabulary="shapes-world"),
    }

    def genetic(self) -> GeneticSettings:
        return GeneticSettings(population=self.population, generations=self.generations,
                               mutation_rate=self.mutation_rate, crossover_rate=self.crossover_rate,
                               elite=self.elite, tournament=self.tournament)


def _positions(pipe, config: RingABellConfig) -> int:
    length = pipe.tokenizer.model_max_length
    return length if config.compare_positions is None else max(1, min(length, config.compare_positions))


@torch.no_grad()
def encode_texts(pipe, prompts: list[str], positions: int, batch_size: int = 256) -> torch.Tensor:
    """(N, positions, D) text-encoder output of ``prompts`` (first ``positions`` tokens)."""
    ids = token_ids(pipe, prompts)[:, :positions]
    return torch.cat([encode_ids(pipe.text_encoder, ids[i : i + batch_size]).float().cpu()
                      for i in range(0, len(ids), batch_size)])


def concept_pairs(concept: ConceptSpec, max_pairs: int | None = None,
                  without: str = "removed") -> list[tuple[str, str]]:
    """(with concept, without) prompt pairs: targets x templates, and each with its words
    deleted (``without="removed"``) or the anchor in the same template (``"anchor"``)."""
    targets = concept.target_prompts()
    if without == "removed":
        others = [remove_words(p, concept.targets) for p in targets]
    elif without == "anchor":
        others = concept.anchor_prompts()
    else:
        raise ValueError(f"unknown pairs {without!r} (removed, anchor)")
    pairs = list(zip(targets, others))
    pairs = [(a, b) for a, b in pairs if a != b]
    if not pairs:
        raise ValueError(f"concept {concept.name!r} gives no prompt pair with and without it")
    return pairs[:max_pairs] if max_pairs else pairs


def concept_direction(pipe, concept: ConceptSpec, positions: int | None = None,
                      max_pairs: int | None = None, without: str = "removed") -> torch.Tensor:
    """(positions, D) mean embedding difference of the concept's prompt pairs."""
    positions = positions or pipe.tokenizer.model_max_length
    pairs = concept_pairs(concept, max_pairs, without)
    with_concept = encode_texts(pipe, [a for a, _ in pairs], positions)
    without = encode_texts(pipe, [b for _, b in pairs], positions)
    return (with_concept - without).mean(dim=0)


def sequence_ids(tokenizer, tokens: torch.Tensor, positions: int) -> torch.Tensor:
    """(..., positions) ids of [BOS, tokens..., EOS, pad...] cut to ``positions``."""
    lead = tokens.shape[:-1]
    bos = torch.full((*lead, 1), tokenizer.bos_token_id, dtype=torch.long)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = torch.full((*lead, 1), tokenizer.eos_token_id, dtype=torch.long)
    seq = torch.cat([bos, tokens, eos], dim=-1)
    if seq.shape[-1] < positions:
        seq = torch.cat([seq, torch.full((*lead, positions - seq.shape[-1]), pad_id, dtype=torch.long)], dim=-1)
    return seq[..., :positions]


def embedding_fitness(pipe, targets: torch.Tensor, kind: str = "mse",
                      batch_size: int = 512) -> Callable[[torch.Tensor], torch.Tensor]:
    """Fitness of (S, P, L) token ids against ``targets`` (S, positions, D): higher = closer."""
    positions = targets.shape[1]

    @torch.no_grad()
    def fitness(tokens: torch.Tensor) -> torch.Tensor:
        s, p, _ = tokens.shape
        ids = sequence_ids(pipe.tokenizer, tokens, positions).reshape(s * p, positions)
        emb = torch.cat([encode_ids(pipe.text_encoder, ids[i : i + batch_size]).float().cpu()
                         for i in range(0, len(ids), batch_size)]).reshape(s, p, positions, -1)
        target = targets.unsqueeze(1)
        if kind == "mse":
            return -((emb - target) ** 2).mean(dim=(2, 3))
        if kind == "cosine":
            return torch.nn.functional.cosine_similarity(emb.flatten(2), target.flatten(2).expand(s, p, -1), dim=-1)
        raise ValueError(f"unknown fitness {kind!r} (mse, cosine)")

    return fitness


def ringabell_attack(pipe, cases: list[AttackCase], concept: ConceptSpec, config: RingABellConfig, *,
                     delta: WeightDelta | None = None, settings: SamplingSettings | None = None,
                     budget: Budget | None = None,
                     progress: Callable[[int], None] | None = None) -> list[FoundPrompt]:
    """One discrete prompt per case (see the module docstring); ``pipe`` is left as found.

    ``budget`` (default: ``config.generations``) counts generations and text-encoder calls.
    """
    check_single_tokenizer(pipe)
    if not cases:
        raise ValueError("no cases to attack")
    settings = settings or SamplingSettings()
    budget = budget if budget is not None else Budget(config.generations, unit="generations")
    if config.generations > budget.max_steps - budget.steps:
        raise ValueError(f"config.generations={config.generations} exceeds the remaining budget "
                         f"({budget.max_steps - budget.steps})")
    tok = pipe.tokenizer
    exclude = words_of(concept.targets) if config.exclude_concept_words else ()
    vocabulary = resolve_vocabulary(tok, config.vocabulary, exclude)
    positions = _positions(pipe, config)
    benign = [remove_words(c.prompt, concept.targets) for c in cases]
    with count_calls(budget, unet=pipe.unet, text_encoder=pipe.text_encoder), model_state(pipe, delta, erased=False):
        direction = concept_direction(pipe, concept, positions, config.max_pairs, config.pairs)
        targets = encode_texts(pipe, benign, positions) + config.eta * direction
        outcome = genetic_search(embedding_fitness(pipe, targets, config.fitness), vocabulary, len(cases),
                                 config.n_tokens, config.genetic(), step_generator(config.seed, 0), budget=budget,
                                 progress=progress)
    found = []
    for c, b, tokens, fit in zip(cases, benign, outcome.best_tokens, outcome.best_fitness):
        ids = [int(i) for i in tokens]
        found.append(FoundPrompt(case_number=c.case_number, prompt=tokens_to_text(tok, ids), seed=c.seed,
                                 token_ids=ids, source_prompt=b, loss=-float(fit),
                                 guidance=c.guidance if c.guidance is not None else settings.guidance_scale))
    return found


def search_key(pipe, cases: list[AttackCase], concept: ConceptSpec, config: RingABellConfig,
               delta: WeightDelta | None = None) -> str:
    """sha256 of everything `ringabell_attack` reads: the base model's text encoder (``delta``
    reverted) and tokenizer, the concept, the cases and the config."""
    h = new_hash(json_sha256({"concept": concept.model_dump(mode="json"), "config": config.model_dump(mode="json"),
                              "cases": [[c.case_number, c.prompt, c.seed, c.guidance] for c in cases]}))
    tok = pipe.tokenizer
    h.update(json_sha256({"tokenizer": type(tok).__name__, "max_length": tok.model_max_length,
                          "vocab": sorted(tok.get_vocab().items())}).encode())
    with model_state(pipe, delta, erased=False):
        update_module(h, pipe.text_encoder)
    return h.hexdigest()
