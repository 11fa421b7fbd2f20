"""UnlearnDiffAtk-style white-box prompt attack (after Zhang et al., 2024; own implementation).

For each case (a prompt of the target concept and its seed) the BASE model
(delta reverted) draws the case's image; its final latent ``z0`` is the
concept's image.  The attack then optimises ``n_tokens`` prompt tokens
(prepended, appended, or in place of the concept's words) so that the ERASED
model (delta applied) denoises noisy versions of ``z0`` well: the loss is the
diffusion training loss

    || unet_erased(add_noise(z0, eps, t), t, text(prompt with attack tokens)) - target ||^2

with ``target`` the model's own training target (epsilon, v or x0, from the
scheduler's ``prediction_type``) -- or, with ``target="original"``, the base
model's prediction for the case prompt at the same noisy latent.

Discrete tokens (PEZ-style projection): the free tokens are soft embeddings in
the text encoder's token-embedding space; every step they are projected to the
nearest tokens of the search vocabulary (`tokens.search_vocabulary`), the loss
is computed AT the projected embeddings and its gradient updates the soft ones
(straight-through).  Each new discrete candidate is scored on a fixed probe set
of noisy latents; the best-scoring candidate is the case's output.  All cases
are optimised together in one batch (their losses are summed; Adam's update of
each case's tokens depends on that case's loss only), ``steps`` times.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import ClassVar, Literal

import torch

from ...generation import SamplingSettings
from ...models.delta import WeightDelta
from ...models.text import token_ids
from ...models.unet_io import predict
from ...training import MethodConfig, step_generator
from .budget import Budget, count_calls
from .common import AttackCase, FoundPrompt, generate_latents, model_state
from .tokens import (PromptSlots, SlotPosition, check_single_tokenizer, embedding_matrix, encode_ids,
                     project_to_tokens, resolve_vocabulary, soft_tokens, words_of)

PROBE_STEP = -1  # step index of the probe set's generator (optimisation steps are 0, 1, ...)


class UnlearnDiffConfig(MethodConfig):
    """Settings of the UnlearnDiffAtk-style attack.

    Defaults follow the paper's Stable Diffusion setup (5 prepended tokens, 40
    optimisation steps, lr 0.01, one random timestep per step, the candidate
    judged after every step and the plain prompt first).  The ``shapes`` preset
    (the small CPU world): 3 tokens, 20 steps, lr 0.05, 4 timesteps per step,
    probe set of 8 noisy latents, judged every 4 steps, search vocabulary = the
    Shapes world's caption words.
    """

    n_tokens: int = 5
    position: SlotPosition = "prepend"
    steps: int = 40
    lr: float = 0.01
    timesteps_per_step: int = 1
    t_min: int = 0
    t_max: int = 999
    projection: Literal["cosine", "l2"] = "cosine"
    target: Literal["noise", "original"] = "noise"
    probe_size: int = 4
    check_every: int = 1
    check_original: bool = True
    vocabulary: str = "tokenizer"
    exclude_concept_words: bool = False

    PRESETS: ClassVar[dict[str, dict]] = {
        "shapes": dict(n_tokens=3, steps=20, lr=0.05, timesteps_per_step=4, probe_size=8, check_every=4,
                       vocabulary="shapes-world"),
    }


@contextlib.contextmanager
def frozen(*modules) -> Iterator[None]:
    """No parameter of ``modules`` requires grad inside the block (flags restored on exit)."""
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def training_target(scheduler, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to output at ``add_noise(z0, noise, t)``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(z0, noise, t)
    if kind == "sample":
        return z0
    raise ValueError(f"unsupported prediction_type {kind!r}")


class _NoisyBatch:
    """Seeded (case, t, noise) draws over the cases' latents, and the noisy latents and targets."""

    def __init__(self, scheduler, z0: torch.Tensor, per_case: int, t_min: int, t_max: int, generator):
        n_cases = z0.shape[0]
        self.case = torch.arange(n_cases).repeat_interleave(per_case)
        self.t = torch.randint(t_min, t_max + 1, (len(self.case),), generator=generator)
        self.noise = torch.randn((len(self.case), *z0.shape[1:]), generator=generator).to(z0)
        clean = z0[self.case]
        t = self.t.to(z0.device)
        self.noisy = scheduler.add_noise(clean, self.noise, t)
        self.target = training_target(scheduler, clean, self.noise, t)


def _per_case_loss(pred: torch.Tensor, target: torch.Tensor, case: torch.Tensor, n_cases: int) -> torch.Tensor:
    per_sample = ((pred.float() - target.float()) ** 2).mean(dim=tuple(range(1, pred.dim())))
    total = torch.zeros(n_cases, device=pred.device).index_add(0, case.to(pred.device), per_sample)
    return total / torch.bincount(case, minlength=n_cases).to(pred.device)


Judge = Callable[[list[str], list[int], list[float]], list[bool]]


class _Candidates:
    """Per case: discrete candidates scored on the probe set, the best one, and a success if one was seen."""

    def __init__(self, init: torch.Tensor):
        n = init.shape[0]
        self.best_tokens = init.clone()
        self.best_loss = torch.full((n,), float("inf"))
        self.scores: list[dict[tuple[int, ...], float]] = [{} for _ in range(n)]
        self.succeeded: dict[int, list[int] | None] = {}  # case -> tokens (None: the plain case prompt)

    def unscored(self, tokens: torch.Tensor, cases: list[int]) -> list[int]:
        return [i for i in cases if tuple(tokens[i].tolist()) not in self.scores[i]]

    def record(self, i: int, tokens: torch.Tensor, loss: float) -> None:
        self.scores[i][tuple(tokens.tolist())] = loss
        if loss < self.best_loss[i]:
            self.best_loss[i], self.best_tokens[i] = loss, tokens

    def active(self) -> list[int]:
        return [i for i in range(len(self.scores)) if i not in self.succeeded]


def unlearndiff_attack(pipe, cases: list[AttackCase], concept_words: list[str], config: UnlearnDiffConfig, *,
                       delta: WeightDelta | None = None, settings: SamplingSettings | None = None,
                       budget: Budget | None = None, judge: Judge | None = None,
                       progress: Callable[[int], None] | None = None) -> list[FoundPrompt]:
    """Discrete attack prompts, one per case (see the module docstring); ``pipe`` is left as found.

    ``delta`` is the erasure under attack (None: attack the model as it is).
    ``budget`` (default: ``config.steps``) counts the optimisation steps and the
    UNet / text-encoder forward calls (the judge's generations included).
    ``judge(prompts, seeds, guidance) -> successes`` draws and classifies images on
    the model as it is during the attack (the erased one); with it, as in the
    paper's evaluation loop, a case whose plain prompt already succeeds is not
    attacked (``check_original``), and every ``check_every`` steps the current
    candidates are judged and a case stops at its first success.
    """
    check_single_tokenizer(pipe)
    if not cases:
        raise ValueError("no cases to attack")
    settings = settings or SamplingSettings()
    budget = budget if budget is not None else Budget(config.steps, unit="optimisation steps")
    if config.steps > budget.max_steps - budget.steps:
        raise ValueError(f"config.steps={config.steps} exceeds the remaining budget ({budget.max_steps - budget.steps})")
    if not 0 <= config.t_min <= config.t_max < pipe.scheduler.config.num_train_timesteps:
        raise ValueError(f"need 0 <= t_min <= t_max < {pipe.scheduler.config.num_train_timesteps}")
    tok, te, unet, scheduler = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.scheduler
    device = unet.device
    allowed = resolve_vocabulary(tok, config.vocabulary, words_of(concept_words) if config.exclude_concept_words else ())
    slots = [PromptSlots.build(tok, c.prompt, config.n_tokens, config.position, concept_words) for c in cases]
    mask = torch.stack([s.mask() for s in slots])
    n_cases = len(cases)
    guidance = [c.guidance if c.guidance is not None else settings.guidance_scale for c in cases]

    with count_calls(budget, unet=unet, text_encoder=te), frozen(unet, te):
        with model_state(pipe, delta, erased=False):
            z0 = generate_latents(pipe, [c.prompt for c in cases], [c.seed for c in cases], settings, guidance)
            z0 = z0.to(device=device, dtype=unet.dtype)
            probe = _NoisyBatch(scheduler, z0, config.probe_size, config.t_min, config.t_max,
                                step_generator(config.seed, PROBE_STEP))
            draws = [_NoisyBatch(scheduler, z0, config.timesteps_per_step, config.t_min, config.t_max,
                                 step_generator(config.seed, s)) for s in range(config.steps)]
            if config.target == "original":
                with torch.no_grad():
                    base_cond = encode_ids(te, token_ids(pipe, [c.prompt for c in cases]))
                    for batch in [probe, *draws]:
                        batch.target = predict(unet, batch.noisy, batch.t.to(device), base_cond[batch.case])

        with model_state(pipe, delta, erased=True):
            embeddings = embedding_matrix(te)
            init = allowed[torch.randint(len(allowed), (n_cases, config.n_tokens),
                                         generator=step_generator(config.seed, -2))]
            soft = embeddings[init.to(embeddings.device)].detach().clone().float().requires_grad_(True)
            optimizer = torch.optim.Adam([soft], lr=config.lr)
            candidates = _Candidates(init)

            def encode(tokens: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
                ids = torch.cat([s.ids(t) for s, t in zip(slots, tokens)])
                with soft_tokens(te, mask, values):
                    return encode_ids(te, ids)

            def denoising_loss(batch: _NoisyBatch, cond: torch.Tensor, cases_: list[int]) -> torch.Tensor:
                keep = torch.isin(batch.case, torch.tensor(cases_, dtype=torch.long))
                case = batch.case[keep]
                pred = predict(unet, batch.noisy[keep], batch.t[keep].to(device), cond[case])
                return _per_case_loss(pred, batch.target[keep], case, n_cases)

            @torch.no_grad()
            def score(tokens: torch.Tensor) -> None:
                new = candidates.unscored(tokens, candidates.active())
                if new:
                    loss = denoising_loss(probe, encode(tokens, embeddings[tokens.to(embeddings.device)]), new).cpu()
                    for i in new:
                        candidates.record(i, tokens[i], float(loss[i]))

            def check(tokens: torch.Tensor | None) -> None:
                todo = candidates.active()
                if judge is None or not todo:
                    return
                if tokens is not None:
                    score(tokens)
                prompts = [cases[i].prompt if tokens is None else slots[i].text(tok, tokens[i].tolist()) for i in todo]
                for i, ok in zip(todo, judge(prompts, [cases[i].seed for i in todo], [guidance[i] for i in todo])):
                    if ok:
                        candidates.succeeded[i] = None if tokens is None else tokens[i].tolist()

            if config.check_original:
                check(None)
            for step in range(config.steps):
                active = candidates.active()
                if not active:
                    break
                budget.step()
                tokens = project_to_tokens(soft, embeddings, allowed, config.projection)
                score(tokens)
                hard = embeddings[tokens.to(embeddings.device)].detach().float()
                values = soft + (hard - soft).detach()  # value of the projection, gradient into the soft tokens
                loss = denoising_loss(draws[step], encode(tokens, values), active).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if config.check_every and (step + 1) % config.check_every == 0:
                    check(project_to_tokens(soft, embeddings, allowed, config.projection))
                if progress is not None:
                    progress(1)
            score(project_to_tokens(soft, embeddings, allowed, config.projection))

    found = []
    for i, c in enumerate(cases):
        if i in candidates.succeeded and candidates.succeeded[i] is None:
            prompt, ids, loss = c.prompt, [], None
        else:
            ids = candidates.succeeded.get(i) or [int(t) for t in candidates.best_tokens[i]]
            prompt = slots[i].text(tok, ids)
            loss = candidates.scores[i].get(tuple(ids))
        found.append(FoundPrompt(case_number=c.case_number, prompt=prompt, seed=c.seed, token_ids=ids,
                                 source_prompt=c.prompt, loss=loss, guidance=guidance[i]))
    return found
