"""Weight saliency for selective fine-tuning (TRuST, SalUn): concept scorers, gradients, masks.

A *scorer* turns one training sample into a scalar "how much of the concept is
there"; its gradient with respect to the trainable weights is the saliency
``g``, and the mask keeps the entries with large ``|g|``::

    m = 1[ |g| >= mean(|g|) + xi * std(|g|) ]        (per tensor, xi = 2; std with correction 0)

or, with ``topk``, the ``topk`` fraction of entries with the largest ``|g|``
(per tensor, or over all tensors together with ``granularity="global"``, which
is how SalUn's released code ranks them).  Entries with ``g == 0`` are never
selected, so a tensor the score does not reach gets an empty mask.

Scorers (the `Registry` `SCORERS`, add one with `register_scorer`):

``forget``
    The forgetting loss itself, ``||eps*(x_t, c_target) - eps(x_t, c_anchor)||^2``
    (mean over elements).  Always available; the fallback of ``auto``.
``detector``
    Shapes world only: the detector's probability that the decoded image shows
    the concept (a product over the concept's attribute values, e.g.
    P(color=red) * P(shape=circle) for the combination "red circle").  The image
    is the VAE decode of the ONE-STEP x0 prediction from the noised latent,
    differentiable end to end: ``x0 = (x_t - sqrt(1-a) eps) / sqrt(a)`` for
    epsilon models, ``x0 = sqrt(a) x_t - sqrt(1-a) v`` for v-prediction,
    ``a = alphas_cumprod[t]`` of the pipeline's scheduler.  The decoded image is
    not clamped (it would zero saturated pixels' gradient), resized to 64 px if needed.
``clip``
    The paper's choice: CLIP score ``100 * cos(E_img(x0_decoded), E_txt(prompt))``
    with CLIP weights loaded from the local Hugging Face cache or a local folder
    (``clip_model``); never downloads.  Missing weights raise a one-line
    `ScorerUnavailableError`.
``auto``
    ``detector`` on the Shapes pipeline (when the concept maps onto detector
    attributes), else ``clip`` when its weights are available locally, else
    ``forget``.

Every scorer receives a `ScoreSample` holding the edited model's output on the
target prompt, WITH its autograd graph, so the gradient reaches the UNet's weights;
modules it only reads through (VAE, detector, CLIP) are frozen for the call.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..concepts.spec import ConceptSpec
from ..models.registry import Registry, UnknownNameError
from ..training.data_parallel import average

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


class ScorerUnavailableError(RuntimeError):
    """A scorer cannot run here (no weights, wrong world); the message is one line."""


# ------------------------------------------------------------------ inputs
@dataclass
class ScoreSample:
    """One saliency sample: noised latent, timestep, prompts and model outputs.

    ``output`` is eps*(z, t, cond) of the model being edited, with grad;
    ``reference`` is the frozen original model's eps(z, t, c_anchor), no grad;
    ``x0``, when set, is a finished latent that image scorers decode directly.
    """

    z: torch.Tensor
    t: int
    cond: Any  # TextCondition of the target prompt (or a plain embedding tensor)
    prompt: str
    output: torch.Tensor | None
    reference: torch.Tensor | None
    x0: torch.Tensor | None = None  # a finished latent to score as is (presence probes); None: from output


Scorer = Callable[[ScoreSample], torch.Tensor]


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Switch ``requires_grad`` off for every parameter of ``modules``; restore the flags on exit."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def predicted_x0(output: torch.Tensor, z: torch.Tensor, t: int | torch.Tensor, scheduler) -> torch.Tensor:
    """One-step x0 estimate from the model output at (z, t), honouring the scheduler's ``prediction_type``."""
    kind = scheduler.config.prediction_type
    a = scheduler.alphas_cumprod[int(t)].to(device=z.device, dtype=torch.float32)
    sa, sb = a.sqrt(), (1 - a).sqrt()
    out, zf = output.float(), z.float()
    if kind == "epsilon":
        x0 = (zf - sb * out) / sa
    elif kind == "v_prediction":
        x0 = sa * zf - sb * out
    elif kind == "sample":
        x0 = out
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}")
    return x0.to(output.dtype)


def sample_x0(s: "ScoreSample", scheduler) -> torch.Tensor:
    """The latent an image scorer decodes: ``s.x0`` when given, else the one-step estimate from ``s.output``."""
    return s.x0 if s.x0 is not None else predicted_x0(s.output, s.z, s.t, scheduler)


def decode(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode of (scaled) latents to images in about [-1, 1], differentiable in ``latents``."""
    cfg = vae.config
    x = latents / cfg.scaling_factor
    shift = getattr(cfg, "shift_factor", None)
    if shift is not None:
        x = x + shift
    with frozen(vae):
        return vae.decode(x.to(vae.dtype), return_dict=False)[0]


# ------------------------------------------------------------------ scorers
def forget_scorer(pipe, concept: ConceptSpec, **_: Any) -> Scorer:
    """The forgetting loss ||eps*(x_t, c_target) - eps(x_t, c_anchor)||^2 (mean)."""

    def score(s: ScoreSample) -> torch.Tensor:
        return F.mse_loss(s.output, s.reference)

    return score


def detector_terms(concept: ConceptSpec) -> list[tuple[str, str]]:
    """(attribute, value) pairs of a Shapes concept: 'red circle' -> [('color','red'), ('shape','circle')].

    A concept given as free text maps when its target is one attribute word or a phrase of one
    word per attribute ("red star"); otherwise `ScorerUnavailableError`."""
    from ..world.vocabulary import ATTRIBUTES, TIERS, load_vocabulary

    vocab = load_vocabulary()

    def resolve(word: str) -> tuple[str, str] | None:
        w = word.strip().lower()
        for a in ATTRIBUTES:
            for v in vocab.values(a):
                if w == v or any(w == x.lower() for tier in TIERS for x in vocab.words(a, v, tier)):
                    return a, v
        return None

    if concept.combination is not None:
        words = list(concept.combination)
    elif concept.condition is not None:
        words = [concept.condition.concept, concept.condition.context]
    else:
        words = [concept.name.rsplit("/", 1)[-1]]
    terms = [resolve(w) for w in words]
    if any(t is None for t in terms) and concept.combination is None and concept.condition is None:
        terms = [resolve(concept.canonical)]
        if terms[0] is None:  # a phrase of one word per attribute: "red star", "a striped circle"
            parts = [resolve(w) for w in concept.canonical.split() if w.lower() not in ("a", "an", "the")]
            if parts and len({t[0] for t in parts if t is not None}) == len(parts):
                terms = parts
    if not terms or any(t is None for t in terms):
        raise ScorerUnavailableError(
            f"detector scorer: concept {concept.name!r} does not map onto Shapes detector attributes")
    return terms  # type: ignore[return-value]


def detector_scorer(pipe, concept: ConceptSpec, detector: nn.Module | None = None, **_: Any) -> Scorer:
    """P(concept) from the Shapes detector on the decoded one-step x0 prediction."""
    from ..world.vocabulary import VALUES

    terms = detector_terms(concept)
    if detector is None:
        from ..world.assets_paths import load_detector

        try:
            detector = load_detector()
        except FileNotFoundError as err:
            raise ScorerUnavailableError(f"detector scorer: {str(err).splitlines()[0]}") from None
    det = copy.deepcopy(detector).to(pipe.unet.device).float().eval()
    det.requires_grad_(False)
    index = [(a, VALUES[a].index(v)) for a, v in terms]

    def score(s: ScoreSample) -> torch.Tensor:
        img = decode(pipe.vae, sample_x0(s, pipe.scheduler)).float()
        if img.shape[-2:] != (64, 64):
            img = F.interpolate(img, size=(64, 64), mode="bilinear", align_corners=False)
        logits = det(img)
        p = torch.ones(img.shape[0], device=img.device)
        for a, i in index:
            p = p * logits[a].softmax(dim=1)[:, i]
        return p.mean()

    return score


def clip_scorer(pipe, concept: ConceptSpec, clip_model: str | None = DEFAULT_CLIP, **_: Any) -> Scorer:
    """CLIP score (100 x cosine) between the decoded one-step x0 prediction and the target prompt."""
    if not clip_model:
        raise ScorerUnavailableError("clip scorer: no clip_model set; set one (a local folder or a cached hub id) "
                                     "or use scorer='forget'")
    try:
        from transformers import CLIPModel, CLIPTokenizer

        model = CLIPModel.from_pretrained(clip_model, local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(clip_model, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any loading failure means "not available here"
        reason = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise ScorerUnavailableError(
            f"clip scorer: CLIP weights {clip_model!r} are not available locally ({reason}); "
            "put them in the Hugging Face cache or point clip_model at a local folder, or use scorer='forget'"
        ) from None
    device = pipe.unet.device
    model = model.to(device).eval().requires_grad_(False)
    size = model.config.vision_config.image_size
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    text_cache: dict[str, torch.Tensor] = {}

    def features(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def text(prompt: str) -> torch.Tensor:
        if prompt not in text_cache:
            ids = tokenizer([prompt], padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                            return_tensors="pt").input_ids.to(device)
            with torch.no_grad():
                e = features(model.get_text_features(input_ids=ids)).float()
            text_cache[prompt] = e / e.norm(dim=-1, keepdim=True)
        return text_cache[prompt]

    def score(s: ScoreSample) -> torch.Tensor:
        img = decode(pipe.vae, sample_x0(s, pipe.scheduler)).float()
        img = F.interpolate((img + 1) / 2, size=(size, size), mode="bilinear", align_corners=False)
        e = features(model.get_image_features(pixel_values=((img - mean) / std).to(model.dtype))).float()
        e = e / e.norm(dim=-1, keepdim=True)
        return 100 * (e * text(s.prompt)).sum(dim=-1).mean()

    return score


ScorerFactory = Callable[..., Scorer]


class UnknownScorerError(UnknownNameError, ValueError):
    """No saliency scorer has this name."""


SCORERS: Registry[ScorerFactory] = Registry("saliency scorer", UnknownScorerError, also=("auto",))
for _name, _factory in {"forget": forget_scorer, "detector": detector_scorer, "clip": clip_scorer}.items():
    SCORERS.add(_name, _factory)


def register_scorer(name: str, factory: ScorerFactory, overwrite: bool = False) -> None:
    """Add a scorer: ``factory(pipe, concept, **options) -> (ScoreSample -> scalar tensor)``."""
    SCORERS.add(name, factory, overwrite=overwrite)


def make_scorer(name: str, pipe, concept: ConceptSpec, **options: Any) -> tuple[str, Scorer]:
    """(resolved name, scorer); ``auto`` tries detector (Shapes world), then clip, then forget."""
    if name == "auto":
        from ..models.loading import is_shapes_world

        candidates = (["detector"] if is_shapes_world(pipe) else []) + ["clip"]
        for cand in candidates:
            try:
                return cand, SCORERS.get(cand)(pipe, concept, **options)
            except ScorerUnavailableError as err:
                log.info("saliency scorer %s unavailable (%s)", cand, err)
        log.info("saliency scorer: falling back to the forgetting loss")
        return "forget", forget_scorer(pipe, concept)
    return name, SCORERS.get(name)(pipe, concept, **options)


# ------------------------------------------------------------------ saliency and masks
def saliency(score: torch.Tensor, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """d score / d param for every param (zeros where the score does not reach); leaves ``.grad`` alone.

    Under data-parallel training the gradient is averaged over processes, so every replica ranks
    the same entries (`erasekit.training.data_parallel.average`).
    """
    names = list(params)
    grads = torch.autograd.grad(score, [params[n] for n in names], allow_unused=True)
    out = {n: (torch.zeros_like(params[n]) if g is None else g.detach()) for n, g in zip(names, grads)}
    average(out)
    return out


def top_k_masks(values: Mapping[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Bool masks of the ``k`` entries of largest magnitude over all of ``values`` taken together.

    Ties at the k-th magnitude take the lowest positions, in the order of ``values`` and then of each
    tensor's flattened entries, so exactly ``k`` entries are kept.  The k-th largest magnitude is found
    by bisection on the float32 bit patterns with the sign bit cleared (their integer order is the
    magnitude order), one tensor at a time: besides the masks, the memory is one temporary of the
    largest tensor's size, instead of a copy of the magnitudes, a concatenation, or a sort's values
    and int64 indices.  This is what lets a global top half of a whole UNet's saliency fit beside
    its gradients.
    """
    def bits(v: torch.Tensor) -> torch.Tensor:
        return v.detach().float().contiguous().view(torch.int32) & 0x7FFFFFFF

    if k <= 0 or not any(v.numel() for v in values.values()):
        return {n: torch.zeros_like(v, dtype=torch.bool) for n, v in values.items()}
    lo, hi = 0, int(torch.stack([bits(v).max() for v in values.values() if v.numel()]).max())
    while lo < hi:  # the largest t with at least k entries >= t lies in [lo, hi]
        mid = (lo + hi + 1) // 2
        if int(sum((bits(v) >= mid).sum() for v in values.values())) >= k:  # one device sync per halving
            lo = mid
        else:
            hi = mid - 1
    out = {n: bits(v).view(v.shape) > lo for n, v in values.items()}
    need = k - sum(int(m.sum()) for m in out.values())
    for n, v in values.items():
        if need <= 0:
            break
        ties = (bits(v) == lo).reshape(-1).nonzero().squeeze(1)[:need]
        out[n].view(-1)[ties] = True
        need -= len(ties)
    return out


def top_k_mask(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` entries of largest magnitude of one tensor (`top_k_masks` of it alone)."""
    return top_k_masks({"": flat}, k)[""]


def _threshold_mask(a: torch.Tensor, xi: float, topk: float | None) -> torch.Tensor:
    flat = a.reshape(-1).float()
    if topk is not None:
        k = min(flat.numel(), int(round(topk * flat.numel())))
        return (top_k_mask(flat.abs(), k) & (flat > 0)).reshape(a.shape)
    thr = flat.mean() + xi * flat.std(correction=0)
    return ((flat >= thr) & (flat > 0)).reshape(a.shape)


def saliency_masks(grads: Mapping[str, torch.Tensor], xi: float = 2.0, topk: float | None = None,
                   granularity: Literal["tensor", "global"] = "tensor") -> dict[str, torch.Tensor]:
    """Boolean masks ``|g| >= mean + xi std`` (or the top ``topk`` fraction), per tensor or over all."""
    if topk is not None and not 0 < topk <= 1:
        raise ValueError(f"topk must be a fraction in (0, 1], got {topk}")
    if granularity == "tensor":
        return {n: _threshold_mask(g.abs(), xi, topk) for n, g in grads.items()}
    if granularity != "global":
        raise ValueError(f"granularity must be 'tensor' or 'global', got {granularity!r}")
    if topk is not None:  # the top fraction of every entry, without concatenating them
        total = sum(g.numel() for g in grads.values())
        keep = top_k_masks(grads, min(total, int(round(topk * total))))
        return {n: keep[n] & (grads[n].abs().float() > 0) for n in grads}
    names = list(grads)
    flat = torch.cat([grads[n].abs().reshape(-1).float() for n in names])
    keep = _threshold_mask(flat, xi, topk)
    out, i = {}, 0
    for n in names:
        k = grads[n].numel()
        out[n] = keep[i : i + k].reshape(grads[n].shape)
        i += k
    return out


def mask_size(masks: Iterable[torch.Tensor]) -> int:
    return int(sum(int(m.sum()) for m in masks))


# ------------------------------------------------------------------ neurons (output rows)
def neuron_scores(grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Saliency per neuron: ``sum_j |g[r, j]|`` for every output row ``r`` of each weight (a 1-D tensor: per entry)."""
    return {n: g.abs().float().reshape(g.shape[0], -1).sum(dim=1) for n, g in grads.items()}


def neuron_masks(scores: Mapping[str, torch.Tensor], xi: float = 2.0, topk: float | None = None,
                 previous: Mapping[str, torch.Tensor] | None = None,
                 xi_keep: float | None = None) -> dict[str, torch.Tensor]:
    """Boolean row masks per tensor: ``score >= mean + xi std`` over its rows (or the top ``topk`` fraction).

    Hysteresis: with ``previous`` row masks and ``xi_keep``, a row already selected
    stays while its score is ``>= mean + xi_keep std``, so the mask changes only
    where a neuron crosses the outer band.  Rows with a zero score are never kept.
    """
    out = {}
    for n, s in scores.items():
        keep = _threshold_mask(s, xi, topk)
        if previous is not None and xi_keep is not None and n in previous:
            stay = (s >= s.mean() + xi_keep * s.std(correction=0)) & (s > 0)
            keep = keep | (previous[n].to(keep.device) & stay)
        out[n] = keep
    return out


def rows_to_entries(rows: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Entry masks of the shapes in ``like`` that select whole output rows."""
    return {n: rows[n].reshape((-1,) + (1,) * (like[n].dim() - 1)).expand_as(like[n]).clone() for n in rows}


def jaccard(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """|a & b| / |a | b| over every tensor of two boolean mask dicts (1.0 when both are empty)."""
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union if union else 1.0
