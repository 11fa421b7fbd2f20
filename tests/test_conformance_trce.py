"""TRCE stage 1 conforms to the paper's Eq. 5 with the release's rows and weights, on the tiny SD-1 pipeline.

The reference is written here from the equation, not by calling the library's solver:

    W' = (1/n sum_i W e_i^s (e_i^m)^T + eta/q sum_j W e_j^k (e_j^k)^T)
         (1/n sum_i e_i^m (e_i^m)^T + eta/q sum_j e_j^k (e_j^k)^T)^-1

for every cross-attention ``to_k``/``to_v`` weight W, with e the text-encoder output at each
prompt's first [EoT] (the release's token weights [SoT, first EoT, last EoT, keyword] = [0, 1, 0, 0]),
sums over the source prompts and over the preserved prompts each normalised by their count (the
release divides its sums by the number of prompts and its COCO statistics by 3e4), no ridge term
(the release passes 0.0).  The release finds the first [EoT] by counting words and applies its
preservation scale twice; both are options (``eot="word-count"``, ``eta_applied="twice"``).
"""

import pytest
import torch

from erasekit.concepts.packs import get_concept
from erasekit.eval.benchmarks import coco_prompts
from erasekit.methods.trce.textual import TRCETextualConfig, erase_textual

pytestmark = pytest.mark.usefixtures("one_thread")

EOS = 49407


def conditioned_sd1():
    """The tiny SD-1 pipeline with a trained-looking final LayerNorm (random gain and bias).

    At initialisation (gain 1, bias 0) every text embedding is orthogonal to the all-ones vector, so
    the edit's moment matrices are singular in that direction (condition number ~6e15) and W' is
    undetermined there; real CLIP's LayerNorm has a learnt bias.  With one, the system is well posed.
    """
    from erasekit.models.tiny import tiny_pipeline

    pipe = tiny_pipeline("sd1")
    g = torch.Generator().manual_seed(0)
    norm = pipe.text_encoder.final_layer_norm
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(norm.weight.shape, generator=g))
        norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=g))
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return conditioned_sd1()


def _encode(pipe, prompts):
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        emb = pipe.text_encoder(ids)[0].double()
    return ids, emb


def _first_eot_rows(pipe, prompts, eot):
    ids, emb = _encode(pipe, prompts)
    rows = []
    for i, p in enumerate(prompts):
        pos = int((ids[i] == EOS).nonzero()[0]) if eot == "token-id" else len(p.split()) + 1
        rows.append(emb[i, pos])
    return torch.stack(rows)


def _reference_edit(pipe, concept, n_general, eta, eot):
    sources = [t.format(s) for s in concept.targets[:20] for t in concept.templates[:15]]
    anchors = [t.format(concept.anchor_for(s)) for s in concept.targets[:20] for t in concept.templates[:15]]
    assert sources == concept.target_prompts(20, 15) and anchors == concept.anchor_prompts(20, 15)
    e_m, e_s = _first_eot_rows(pipe, sources, eot), _first_eot_rows(pipe, anchors, eot)
    e_k = _first_eot_rows(pipe, coco_prompts(n_general) + list(concept.preserve), eot)
    n, q = len(sources), e_k.shape[0]
    out = {}
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn2"):
            for proj in ("to_k", "to_v"):
                W = getattr(module, proj).weight.detach().double()
                left = sum(W @ torch.outer(e_s[i], e_m[i]) for i in range(n)) / n \
                    + eta * sum(W @ torch.outer(e_k[j], e_k[j]) for j in range(q)) / q
                right = sum(torch.outer(e_m[i], e_m[i]) for i in range(n)) / n \
                    + eta * sum(torch.outer(e_k[j], e_k[j]) for j in range(q)) / q
                out[f"unet.{name}.{proj}.weight"] = (W, left @ torch.linalg.inv(right))
    return out


def _relative_error(pipe, delta, reference):
    assert set(delta.names) == set(reference)
    worst = 0.0
    for name, (W, ref) in reference.items():
        edit_ref = ref - W
        edit = delta.tensors[name].double() - W
        worst = max(worst, float((edit - edit_ref).norm() / edit_ref.norm()))
    return worst


def test_sd_preset_is_the_paper_equation_with_the_released_rows(pipe):
    concept = get_concept("sd/nudity")
    cfg = TRCETextualConfig.preset("sd")
    assert cfg.lam == 0.0 and cfg.eta == 0.01 and cfg.eot == "token-id" and cfg.n_general == 1000
    delta = erase_textual(pipe, concept, cfg)
    assert _relative_error(pipe, delta, _reference_edit(pipe, concept, 1000, 0.01, "token-id")) < 1e-4


def test_release_options_word_count_eot_and_twice_applied_scale(pipe):
    concept = get_concept("sd/nudity")
    cfg = TRCETextualConfig.preset("sd", eot="word-count", eta_applied="twice", n_general=200)
    delta = erase_textual(pipe, concept, cfg)
    reference = _reference_edit(pipe, concept, 200, 0.01 ** 2, "word-count")
    assert _relative_error(pipe, delta, reference) < 1e-4
    # ...and they are different edits: word counts miss the [EoT] of prompts with multi-token words.
    paper = erase_textual(pipe, concept, TRCETextualConfig.preset("sd", n_general=200))
    assert _relative_error(pipe, paper, reference) > 1e-2


def test_word_count_and_token_id_positions_differ_on_split_words(pipe):
    from erasekit.methods.preservation import eot_positions

    prompts = ["a photo of nudity", "exposed genitals in a photo", "a snapshot of self-harm"]
    ids, _ = _encode(pipe, prompts)
    by_ids = eot_positions(pipe, prompts, "token-id").tolist()
    assert by_ids == [int((ids[i] == EOS).nonzero()[0]) for i in range(3)]
    assert eot_positions(pipe, prompts, "word-count").tolist() == [5, 6, 5]
    assert by_ids[2] > 5  # "self-harm" is three tokens: the word count lands on one of them


def test_scopes_are_the_releases(pipe):
    """Stage 1 edits every cross-attention to_k/to_v weight; stage 2 trains every parameter named
    'attn1', or 'attn2' and 'to_q' (the release's selection by name)."""
    from erasekit.models.scopes import get_scope

    names = [n for n, _ in pipe.unet.named_parameters()]
    kv = {n for n in names if "attn2" in n and (".to_k." in n or ".to_v." in n)}
    visual = {n for n in names if "attn1" in n or ("attn2" in n and "to_q" in n)}
    assert set(get_scope("cross_attn_kv").select(pipe.unet)) == kv and len(kv) == 8
    assert set(get_scope("visual").select(pipe.unet)) == visual
    params = dict(pipe.unet.named_parameters())
    assert (len(visual), sum(params[n].numel() for n in visual)) == (24, 36000)
