"""AdvUnlearn-style hardening: adversarial training of an erasure (after Zhang et al., NeurIPS 2024).

`harden_adv(pipe, delta, concept, config)` starts from the base model with ``delta`` copied in and alternates:

1. **attack** (every ``attack_every`` iterations after ``warmup``): ``attack_tokens`` soft token
   embeddings prepended to a concept prompt (after the start token) are optimised for ``attack_steps``
   steps (Adam at ``attack_lr``; ``fast_at``: signed gradients; ``random``: none, random words of
   ``attack_vocabulary``) so that the CURRENT model, on latents ``z_s`` it generated for the prompt
   (``attack_source="base"``: the BASE model's), predicts what the BASE model predicts for the prompt::

       min_adv || eps_cur(z_s, t, text_cur([adv] + c)) - eps_base(z_s, t, c) ||^2

   ``attack_space="tokens"`` keeps the attack on real words: each step projects the soft tokens to their
   nearest (cosine) tokens of ``attack_vocabulary``, takes the loss there and updates the soft tokens by
   its gradient (straight-through); the defence trains on the round's best projection.

2. **defence** (one optimiser step of the trained module): ``defence_weight`` (1) times ESD's negative-guidance
   loss on the adversarial prompt and on ``replay_batch`` (0) earlier rounds' beside it (``defence_target``
   "anchor": toward eps_base(z, a) for the anchor prompt a; "anchor-guided": ESD's target with a in place of
   ""), plus ``retain_weight`` times the utility-retaining term on ``retain_batch`` retain prompts r::

       L = || eps_cur(z_s, t, text_cur([adv] + c)) - [eps_base(z, "") - g (eps_base(z, c) - eps_base(z, ""))] ||^2
         + w || eps_cur(z_r, t, text_cur(r)) - eps_base(z_r, t, r) ||^2
         + w_e sum_r || text_cur(r) - text_base(r) ||^2 / sum_r || text_base(r) ||^2
         + w_u || eps_cur(z_u, t, text_cur(u)) - [eps_base(z_u, u) - g_u (eps_base(z_u, c) - eps_base(z_u, u))] ||^2
         + w_kv sum_W ||(W - W_base) S^T||^2 / ||W_base S^T||^2

   ``z_r``: partial generations of the trained model (``retain_source="base"``: the base model's);
   ``defence_weight`` 0 keeps the retain terms alone. w_e (``retain_embedding_weight``, ``retain_embedding_batch``
   prompts; text encoder only) and w_kv (``retain_kv_weight``; UNet only) hold relative drifts over all token
   rows of the retain prompts: of their text-encoder output, and of the keys and values the cross-attention
   ``to_k``/``to_v`` weights W in scope give their tokens S. The retain terms' reference ("base" above) is the
   base model, or with ``retain_reference="erased"`` the erased model the run starts from. w_u
   (``unnamed_weight``, g_u ``unnamed_guidance``) steers the unnamed form u ("a red shape" -> "a shape", on
   latents the current model draws for u) away from the concept. w_e, w_u, w_kv are 0 in the release.

``module="text_encoder"`` trains the text encoder's transformer layers and final norm (the release's
``text_encoder_full``; ``text_layers=[0]``: its ``text_encoder_layer0``), ``module="unet"`` the UNet's
``unet_scope``.  "Base" is the model before ``delta`` (conditioning encoded before it is copied in, UNet
swapped in for reference passes); the result is one delta relative to it (``metrics.attack_rounds``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ...concepts.packs import in_context_prompts
from ...concepts.spec import ConceptSpec
from ...models.conditioning import encode_conditions
from ...models.ddim import DDIMSampler
from ...models.delta import WeightDelta, snapshot
from ...models.scopes import ParameterScope, get_scope, list_scopes, register_scope
from ...models.text import token_ids
from ...models.unet_io import initial_latents, predict, require_supported_unet
from ...models.vocabulary import project_to_tokens, resolve_vocabulary
from ...training import FineTuneConfig, Trainer, randint
from ...training.config import run_key
from ...training.trainer import reference_weights
from ..esd import sampled_steps, training_prompts
from ..losses import esd_target
from ..retain import KVMatchLoss, text_kv_names
from .common import composed_delta, copy_in, load_base

TEXT_SCOPE = "text_encoder_full"
if TEXT_SCOPE not in list_scopes():
    register_scope(ParameterScope(
        TEXT_SCOPE, lambda s: s.name.removeprefix("text_model.").startswith(("encoder.", "final_layer_norm.")),
        "a CLIP text encoder's transformer layers and final norm, not its embeddings (AdvUnlearn)"))
PLACEHOLDER_ID = 0  # token id at the adversarial positions; its embedding is replaced


def text_layers_scope(layers: list[int]) -> ParameterScope:
    """The text encoder's transformer layers ``layers`` only (the release's ``text_encoder_layer<digits>``)."""
    layers = sorted(set(layers))
    prefixes = tuple(f"encoder.layers.{i}." for i in layers)
    return ParameterScope("text_encoder_layer" + "".join(map(str, layers)),
                          lambda s: s.name.removeprefix("text_model.").startswith(prefixes),
                          f"a CLIP text encoder's transformer layers {layers}")


class AdvConfig(FineTuneConfig):
    """AdvUnlearn hardening; defaults follow the release's documented run (SD-1.4).

    Text encoder (``text_encoder_full``), Adam lr 1e-5, 1000 iterations, 200 warm-up iterations
    of plain ESD, then a 30-step PGD attack (Adam, lr 1e-3, one prepended token, random start)
    before every iteration; ESD with generation CFG 3, g = 1, 50 DDIM steps; utility-retaining
    regularisation on 5 retain prompts at weight 0.3.

    ``shapes`` preset: the text encoder at lr 1e-4 for 80 iterations (10 warm-up), 8 attack
    steps at lr 0.05 on 3 prepended tokens starting from the previous round's on one latent per
    round, negative guidance 3, 25 DDIM steps, the synonym x template grid, and the concept's
    preserve list among 200 retain prompts at weight 1 -- because the 10M-parameter Shapes model is sampled
    in 25 steps, its 128-d token space needs larger attack steps than SD's 768-d one, and at
    g = 1 the target only reaches the unconditional model, which draws the concept at chance.
    """

    iterations: int = 1000
    lr: float = 1e-5
    module: Literal["text_encoder", "unet"] = "text_encoder"
    unet_scope: str = "cross_attn"
    text_layers: list[int] | None = Field(None, description="text encoder only: train just these transformer "
                                          "layers (0-based; the release's text_encoder_layer0 is [0]); None: all "
                                          "layers and the final norm (text_encoder_full)")
    n_steps: int = 50
    guidance: float = 3.0
    negative_guidance: float = 1.0
    prompts: Literal["bare", "grid", "in-context", "in-context-synonyms"] = Field(
        "bare", description="concept prompts: the concept string (release), synonyms x templates, or (Shapes "
        "concepts) each target word beside every value of the paired attribute in every template; "
        "in-context-synonyms: without the canonical word, which the benchmark's attack cases name")
    n_synonyms: int | None = None
    n_templates: int | None = None
    warmup: int = 200
    attack_every: int = 1
    attack_steps: int = 30
    attack_lr: float = 1e-3
    attack_tokens: int = 1
    attack_init: Literal["random", "latest"] = "random"
    attack_method: Literal["pgd", "fast_at", "random"] = Field(
        "pgd", description="pgd: Adam on the soft tokens (release); fast_at: signed steps; random: no search, "
        "each round's prefix is attack_tokens words drawn uniformly from attack_vocabulary")
    attack_latents: Literal["per_step", "per_round"] = "per_step"
    attack_space: Literal["soft", "tokens"] = "soft"
    attack_source: Literal["current", "base"] = "current"
    defence_target: Literal["esd", "anchor", "anchor-guided"] = "esd"
    defence_weight: float = Field(1.0, ge=0, description="weight of the erasure (defence) loss; 0 with attack_steps 0: "
                                  "a retain-only fine-tune that pulls the retain prompts back to the base model")
    attack_vocabulary: str = "tokenizer"
    retain_weight: float = 0.3
    retain_batch: int = 5
    retain_pool: int = 400
    retain: Literal["general", "concept+general"] = "general"
    retain_source: Literal["current", "base"] = Field("current", description="model that generates the retain "
                                                      "latents: the one being trained (release) or the base model")
    retain_reference: Literal["base", "erased"] = Field(
        "base", description="model the retain terms hold the retain prompts at: the base model before the delta "
                            "(release) or the erased model the hardening starts from (the delta applied)")
    retain_embedding_weight: float = Field(0.0, ge=0, description="w_e: weight of the retain prompts' relative "
                                           "text-embedding drift (text encoder only; 0: the release)")
    retain_embedding_batch: int = Field(32, ge=1, description="retain prompts per step in the embedding term")
    retain_kv_weight: float = Field(0.0, ge=0, description="w_kv: weight of the term holding the retain prompts' "
                                    "cross-attention keys and values at the base model's (UNet only; 0: the release)")

    unnamed_weight: float = Field(0.0, ge=0, description="w_u: weight of the term steering the unnamed prompts "
                                  "(the training prompts with the target left out) away from the concept")
    unnamed_guidance: float = Field(1.0, gt=0, description="g_u: negative guidance of the unnamed-prompt term")
    replay_batch: int = Field(0, ge=0, description="earlier attack rounds' adversarial prompts added to each "
                              "defence step, drawn uniformly from every round so far (0: the release, the latest only)")
    extra_targets: list[str] = Field(default_factory=list, description="more target phrases hardened with the "
                                     "concept's own, in its templates (e.g. combinations of kept words that the "
                                     "base model draws as the concept); the concept's preserve list is unchanged")
    soup: int = Field(1, ge=1, description="runs with seeds seed, seed+1, ... whose hardened weights are averaged "
                      "(`erasekit.methods.harden.soup`; 1: one run, the release)")

    EXTENSIONS: ClassVar[tuple[str, ...]] = ("defence_weight", "unnamed_weight", "unnamed_guidance", "retain_kv_weight",
                                             "extra_targets", "retain_reference", "replay_batch", "soup")
    LATER_OPTIONS: ClassVar[tuple[str, ...]] = ("text_layers",)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "shapes": {"iterations": 80, "lr": 1e-4, "warmup": 10, "attack_steps": 8, "attack_lr": 0.05,
                   "attack_latents": "per_round",
                   "attack_tokens": 3, "attack_init": "latest", "n_steps": 25, "negative_guidance": 3.0,
                   "prompts": "grid", "retain": "concept+general", "retain_weight": 1.0, "retain_pool": 200},
    }

    @property
    def search_steps(self) -> int:
        """Attack steps per round: ``attack_steps``, none with ``attack_method`` "random"."""
        return 0 if self.attack_method == "random" else self.attack_steps


def concept_prompts(concept: ConceptSpec, config: AdvConfig,
                    role: Literal["target", "anchor", "unnamed"] = "target") -> list[str]:
    """The prompts the attack and the defence draw from (``role``: their anchor or unnamed forms, same order).

    "bare" and "grid" as ESD's; "in-context": `in_context_prompts` of the concept's target words,
    "in-context-synonyms" of all but the first (canonical) one.  An anchor prompt puts the target's
    anchor in the target word's place.
    """
    if not config.prompts.startswith("in-context"):
        return training_prompts(concept, config.prompts, config.n_synonyms, config.n_templates, role=role)
    if role == "unnamed":
        raise ValueError(f"prompts {config.prompts!r} has no unnamed form: use prompts 'grid' with unnamed_weight")
    words = concept.targets if config.prompts == "in-context" else concept.targets[1:]
    if not words:
        raise ValueError(f"prompts 'in-context-synonyms' needs a synonym: {concept.name} has one target word")
    prompts = in_context_prompts(concept, [concept.anchor_for(w) for w in words] if role == "anchor" else words)
    if prompts is None:
        raise ValueError(f"prompts {config.prompts!r} needs a Shapes value concept (a shape, colour or style), "
                         f"not {concept.name}")
    return prompts


@contextlib.contextmanager
def prefix_embeddings(text_encoder, values: torch.Tensor) -> Iterator[None]:
    """Inside the block the text encoder reads ``values`` (B or 1, k, D) at token positions 1..k."""
    k = values.shape[1]

    def hook(module, inputs, output):
        out = output.clone()
        out[:, 1:1 + k] = values.to(dtype=out.dtype, device=out.device).expand(out.shape[0], -1, -1)
        return out

    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def prefixed_ids(ids: torch.Tensor, k: int) -> torch.Tensor:
    """``ids`` with ``k`` placeholder tokens inserted after the start token (the tail truncated)."""
    fill = torch.full((ids.shape[0], k), PLACEHOLDER_ID, dtype=ids.dtype)
    return torch.cat([ids[:, :1], fill, ids[:, 1:ids.shape[1] - k]], dim=1)


@contextlib.contextmanager
def _frozen(module: torch.nn.Module) -> Iterator[None]:
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    module.requires_grad_(False)
    try:
        yield
    finally:
        for n, p in module.named_parameters():
            p.requires_grad_(flags[n])


class AdvStep:
    """One AdvUnlearn iteration (attack when due, then the defence loss); see the module docstring."""

    def __init__(self, pipe, concept: ConceptSpec, config: AdvConfig, base_unet: dict[str, torch.Tensor],
                 base: dict[str, Any], retain_kv: Callable[[], torch.Tensor] | None = None,
                 keep_unet: dict[str, torch.Tensor] | None = None):
        self.retain_kv = retain_kv
        self.keep_unet = base_unet if keep_unet is None else keep_unet  # the retain term's reference UNet tensors
        self.pipe, self.unet, self.te, self.config, self.base_unet = pipe, pipe.unet, pipe.text_encoder, config, base_unet
        self.ids, self.retain_ids = base["ids"], base["retain_ids"]
        self.cond, self.uncond, self.retain_cond = base["cond"], base["uncond"], base["retain_cond"]
        self.anchor_cond = base.get("anchor_cond")
        self.unnamed_ids, self.unnamed_cond = base.get("unnamed_ids"), base.get("unnamed_cond")
        self.sampler = DDIMSampler(pipe.scheduler, config.n_steps)
        self.steps = sampled_steps(config.n_steps, (0.0, 1.0))
        self.table = self.te.get_input_embeddings().weight
        self.adv: torch.Tensor | None = None
        self.soft: torch.Tensor | None = None
        words = config.attack_space == "tokens" or config.attack_method == "random"
        self.allowed = (resolve_vocabulary(pipe.tokenizer, config.attack_vocabulary)
                        if words else torch.arange(self.table.shape[0]))
        self.adv_prompt = 0
        self.pool: list[tuple[int, torch.Tensor]] = []  # every round's (prompt index, adversarial embedding)
        self.rounds: list[dict[str, float]] = []

    def encode(self, ids: torch.Tensor, adv: torch.Tensor | None) -> torch.Tensor:
        """Text-encoder output of ``ids`` with ``adv`` (1, k, D) at the k positions after the start token."""
        device = self.table.device
        if adv is None:
            return self.te(ids.to(device))[0]
        with prefix_embeddings(self.te, adv):
            return self.te(prefixed_ids(ids, adv.shape[1]).to(device))[0]

    def _latent(self, idx: torch.Tensor, cond, g: torch.Generator, base: bool = False) -> tuple[torch.Tensor, int]:
        s = self.steps[randint(len(self.steps), g)]
        with torch.no_grad(), (self._base() if base else contextlib.nullcontext()):
            z = self.sampler.denoise(self.unet, initial_latents(self.unet, g, len(idx)), 0, s, cond[idx],
                                     self.uncond, self.config.guidance)
        return z, self.sampler.timestep(s)

    def _base(self):
        return reference_weights(self.unet, self.base_unet) if self.base_unet else torch.no_grad()

    def _keep(self):
        """The retain term's reference model: the base UNet, or with ``retain_reference="erased"`` the erased one."""
        return reference_weights(self.unet, self.keep_unet) if self.keep_unet else torch.no_grad()

    def attack(self, step: int, g: torch.Generator) -> None:
        cfg = self.config
        tokens = cfg.attack_space == "tokens"
        idx = torch.tensor([randint(len(self.ids), g)])
        if cfg.attack_init == "latest" and self.soft is not None and cfg.attack_method != "random":
            adv = self.soft.clone()
        else:
            picks = self.allowed[torch.tensor([randint(len(self.allowed), g) for _ in range(cfg.attack_tokens)])]
            adv = self.table[picks.to(self.table.device)].detach().clone().unsqueeze(0)
        adv.requires_grad_(True)
        opt = torch.optim.Adam([adv], lr=cfg.attack_lr)
        losses, best, best_ids = [], float("inf"), None
        with _frozen(self.te), _frozen(self.unet):
            for a in range(cfg.search_steps):
                if a == 0 or cfg.attack_latents == "per_step":
                    z, t = self._latent(idx, self.cond, g, base=cfg.attack_source == "base")
                    with self._base():
                        target = predict(self.unet, z, t, self.cond[idx])
                values = adv
                if tokens:
                    ids = project_to_tokens(adv, self.table, self.allowed)
                    values = adv + (self.table[ids.to(self.table.device)].detach() - adv).detach()
                loss = F.mse_loss(predict(self.unet, z, t, self.encode(self.ids[idx], values)), target)
                (grad,) = torch.autograd.grad(loss, [adv])
                adv.grad = grad.sign() if cfg.attack_method == "fast_at" else grad
                opt.step()
                losses.append(float(loss.detach()))
                if tokens and losses[-1] < best:
                    best, best_ids = losses[-1], ids
        self.soft, self.adv_prompt = adv.detach(), int(idx)
        self.adv = self.table[best_ids.to(self.table.device)].detach() if best_ids is not None else self.soft
        if cfg.replay_batch:
            self.pool.append((self.adv_prompt, self.adv))
        record = {"step": step, "loss_first": losses[0] if losses else float("nan"),
                  "loss_last": losses[-1] if losses else float("nan")}
        if best_ids is not None:
            record["tokens"] = best_ids.flatten().tolist()
        self.rounds.append(record)

    def __call__(self, step: int, g: torch.Generator) -> torch.Tensor:
        cfg = self.config
        attacking = step >= cfg.warmup and cfg.attack_steps > 0
        if attacking and ((step - cfg.warmup) % cfg.attack_every == 0 or self.adv is None):
            self.attack(step, g)
        loss = self.defence(attacking, g) * cfg.defence_weight if cfg.defence_weight > 0 else 0.0
        if cfg.retain_weight > 0 and self.retain_ids is not None:
            pick = torch.tensor([randint(len(self.retain_ids), g) for _ in range(cfg.retain_batch)])
            rz, rt = self._latent(pick, self.retain_cond, g, base=cfg.retain_source == "base")
            with self._keep():
                keep = predict(self.unet, rz, rt, self.retain_cond[pick])
            loss = loss + cfg.retain_weight * F.mse_loss(predict(self.unet, rz, rt, self.encode(self.retain_ids[pick], None)), keep)
        if cfg.retain_embedding_weight > 0 and self.retain_ids is not None:
            loss = loss + cfg.retain_embedding_weight * self.embedding_drift(g)
        if cfg.unnamed_weight > 0:
            loss = loss + cfg.unnamed_weight * self.unnamed(g)
        if self.retain_kv is not None:
            loss = loss + cfg.retain_kv_weight * self.retain_kv()
        return loss

    def defence(self, attacking: bool, g: torch.Generator) -> torch.Tensor:
        """The erasure loss on the adversarial prompt (or a plain concept prompt before the attack starts)."""
        cfg = self.config
        pairs = [(self.adv_prompt if attacking else randint(len(self.ids), g), self.adv)]
        if attacking and cfg.replay_batch:
            pairs += [self.pool[randint(len(self.pool), g)] for _ in range(cfg.replay_batch)]
        idx = torch.tensor([i for i, _ in pairs])
        z, t = self._latent(idx, self.cond, g)
        with self._base():
            if cfg.defence_target == "anchor":
                target = predict(self.unet, z, t, self.anchor_cond[idx])
            else:  # ESD's target, guided away from c from the empty prompt or (anchor-guided) from the anchor
                ref = (self.anchor_cond[idx].embeds if cfg.defence_target == "anchor-guided"
                       else self.uncond.embeds.expand(len(idx), -1, -1))
                both = predict(self.unet, torch.cat([z, z]), t, torch.cat([self.cond[idx].embeds, ref]))
                eps_c, eps_ref = both.chunk(2)
                target = esd_target(eps_c, eps_ref, cfg.negative_guidance)
        adv = torch.cat([a for _, a in pairs]) if attacking else None
        return F.mse_loss(predict(self.unet, z, t, self.encode(self.ids[idx], adv)), target)

    def unnamed(self, g: torch.Generator) -> torch.Tensor:
        """The unnamed-prompt term: ``u`` pulled toward the base model's ``u`` guided away from ``c``."""
        idx = torch.tensor([randint(len(self.unnamed_ids), g)])
        z, t = self._latent(idx, self.unnamed_cond, g)
        with self._base():
            both = predict(self.unet, torch.cat([z, z]), t,
                           torch.cat([self.cond[idx].embeds, self.unnamed_cond[idx].embeds]))
            eps_c, eps_u = both.chunk(2)
            target = esd_target(eps_c, eps_u, self.config.unnamed_guidance)
        return F.mse_loss(predict(self.unet, z, t, self.encode(self.unnamed_ids[idx], None)), target)

    def embedding_drift(self, g: torch.Generator) -> torch.Tensor:
        """sum ||text_cur(r) - text_base(r)||^2 / sum ||text_base(r)||^2 over a batch of retain prompts."""
        n = len(self.retain_ids)
        pick = torch.tensor([randint(n, g) for _ in range(min(self.config.retain_embedding_batch, n))])
        base = self.retain_cond[pick].embeds
        return (self.encode(self.retain_ids[pick], None) - base).pow(2).sum() / base.pow(2).sum()


def _trained_scope(pipe, config: AdvConfig) -> ParameterScope:
    """The scope ``config`` trains: ``unet_scope``, the whole text encoder, or its ``text_layers``."""
    if config.module == "unet":
        if config.text_layers is not None:
            raise ValueError("text_layers picks text-encoder layers: it needs module='text_encoder'")
        return get_scope(config.unet_scope)
    if config.text_layers is None:
        return get_scope(TEXT_SCOPE)
    n = pipe.text_encoder.config.num_hidden_layers
    if not config.text_layers or any(not 0 <= i < n for i in config.text_layers):
        raise ValueError(f"text_layers must name layers 0..{n - 1} of this text encoder, got {config.text_layers}")
    return text_layers_scope(config.text_layers)


def _retain_prompts(pipe, concept: ConceptSpec, config: AdvConfig) -> list[str]:
    from ...concepts.general import general_prompts

    own = list(concept.preserve) if config.retain == "concept+general" else []
    return own + general_prompts(pipe, config.retain_pool, exclude_words=list(concept.targets))


def _retain_kv(trainer: Trainer, config: AdvConfig, keep_unet: dict[str, torch.Tensor],
               base: dict[str, Any]) -> Callable[[], torch.Tensor] | None:
    """The w_kv term as a call (None when off): the retain prompts' keys and values drift from those the
    reference UNet tensors ``keep_unet`` give them."""
    if config.retain_kv_weight <= 0:
        return None
    tokens = base["retain_cond"].embeds
    names = text_kv_names(trainer.params, tokens.shape[-1])
    if not names:
        raise ValueError(f"retain_kv_weight needs cross-attention to_k/to_v weights in unet_scope; "
                         f"{config.unet_scope!r} has none")
    loss = KVMatchLoss(keep_unet, names, tokens.reshape(-1, tokens.shape[-1]))
    return lambda: loss(trainer.params)


def harden_adv(pipe, delta: WeightDelta | None, concept: ConceptSpec, config: AdvConfig) -> WeightDelta:
    """The composed delta of ``delta`` (None: the base model) then AdvUnlearn hardening of ``concept``.

    ``pipe`` must hold the base model (``delta`` not applied); it is left as it was found.
    """
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise NotImplementedError("adv hardening encodes adversarial prompts with one CLIP text encoder (SD-1.x/2.x), not SDXL")
    require_supported_unet(pipe.unet, "adv")
    if config.defence_weight == 0 and not (config.retain_weight or config.retain_embedding_weight or config.unnamed_weight
                                           or config.retain_kv_weight):
        raise ValueError("defence_weight 0 leaves no loss: set retain_weight (or retain_embedding_weight, "
                         "unnamed_weight, retain_kv_weight) above 0")
    if config.retain_embedding_weight > 0 and config.module != "text_encoder":
        raise ValueError("retain_embedding_weight holds the text encoder's output: it needs module='text_encoder'")
    if config.retain_kv_weight > 0 and config.module != "unet":
        raise ValueError("retain_kv_weight holds the UNet's cross-attention keys and values: it needs module='unet'")
    t0 = time.perf_counter()
    recorded = concept
    if config.extra_targets:
        concept = concept.model_copy(update={"targets": [*concept.targets, *config.extra_targets]})
    trained_module = pipe.text_encoder if config.module == "text_encoder" else pipe.unet
    prefix = "text_encoder." if config.module == "text_encoder" else "unet."
    scope = _trained_scope(pipe, config)
    trained = list(scope.select(trained_module, prefix=prefix))
    names = sorted(set(trained) | set(delta.names if delta is not None else []))
    originals = snapshot(pipe, names)
    base_unet = {n[len("unet."):]: t for n, t in originals.items() if n.startswith("unet.")}
    prompts = concept_prompts(concept, config)
    retain = (_retain_prompts(pipe, concept, config)
              if config.retain_weight > 0 or config.retain_embedding_weight > 0 or config.retain_kv_weight > 0 else [])
    anchors = concept_prompts(concept, config, "anchor") if config.defence_target != "esd" else None
    unnamed = concept_prompts(concept, config, "unnamed") if config.unnamed_weight > 0 else []
    base = {"ids": token_ids(pipe, prompts), "cond": encode_conditions(pipe, prompts),
            "unnamed_ids": token_ids(pipe, unnamed) if unnamed else None,
            "unnamed_cond": encode_conditions(pipe, unnamed) if unnamed else None,
            "anchor_cond": encode_conditions(pipe, anchors) if anchors else None,
            "uncond": encode_conditions(pipe, [""]),
            "retain_ids": token_ids(pipe, retain) if retain else None,
            # with retain_reference "erased" they are encoded below, by the erased model's text encoder
            "retain_cond": encode_conditions(pipe, retain) if retain and config.retain_reference == "base" else None}
    load_base(pipe, delta)
    other = pipe.unet if config.module == "text_encoder" else pipe.text_encoder
    try:
        if config.retain_reference == "erased" and retain:
            base["retain_cond"] = encode_conditions(pipe, retain)
        with _frozen(other):
            trainer = Trainer.from_config(trained_module, scope, config, config.iterations,
                                          run_key=run_key("harden:adv", config, concept,
                                                          base=delta.delta_id if delta is not None else None),
                                          description="harden:adv")
            keep_unet = base_unet
            if config.retain_reference == "erased":  # the trained UNet tensors as they start; the rest stay erased
                keep_unet = dict(trainer.originals) if config.module == "unet" else {}
            step_fn = AdvStep(pipe, concept, config, base_unet, base, _retain_kv(trainer, config, keep_unet, base),
                              keep_unet)
            result = trainer.run(step_fn)
        metrics = {**result.metrics(), "scope": scope.name, "module": config.module, "attack_rounds": step_fn.rounds,
                   "attack_iterations": len(step_fn.rounds) * config.search_steps,
                   "training_prompts": len(prompts), "retain_prompts": len(retain)}
        delta_out = composed_delta(pipe, originals, delta, "adv", recorded, config, metrics, t0)
    finally:
        copy_in(pipe, originals)
    return delta_out
