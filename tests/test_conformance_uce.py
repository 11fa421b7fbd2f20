"""UCE conforms to the paper's closed form with each release's rows and weights, on the tiny SD-1 pipeline.

The reference is written here from the equation (UCE, Eq. 7, with the releases' regulariser lam):

    W' = (sum_i v_i c_i^T + eta sum_j W c_j c_j^T + lam W)(sum_i c_i c_i^T + eta sum_j c_j c_j^T + lam I)^-1,
    v_i = W c_i^anchor,

with plain sums and the rows each release selects (positions from the token ids' attention mask):

- 2023 (the SD preset): from the last word token (mask sum - 2) to the end of the 77 positions, source
  and anchor paired from their last word tokens and cut to the shorter run; the empty prompt's 77 rows
  and every preserved prompt's 77 rows preserved with eta = max(0.1, 1 / (1 + #preserve)); lam 0.5;
- 2025: the last word token of each prompt only; eta 1; lam 0.5.
"""

import pytest
import torch

from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.uce import UCEConfig, erase
from test_conformance_trce import conditioned_sd1

pytestmark = pytest.mark.usefixtures("one_thread")

CONCEPT = ConceptSpec(name="van gogh", kind="style", targets=["Van Gogh", "Vincent van Gogh", "starry night painter"],
                      anchor="art", templates=["a painting by {}"],
                      preserve=["Claude Monet", "a painting by Rembrandt", "Pablo Picasso"])


@pytest.fixture(scope="module")
def pipe():
    return conditioned_sd1()


def _encode(pipe, prompts):
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        emb = pipe.text_encoder(tok.input_ids)[0].double()
    return emb, tok.attention_mask.sum(1) - 2  # the releases' last word token


def _rows_2023(pipe, sources, anchors):
    emb_s, f_s = _encode(pipe, sources)
    emb_a, f_a = _encode(pipe, anchors)
    pairs = []
    for i in range(len(sources)):
        far = max(int(f_s[i]), int(f_a[i]))
        old = emb_s[i, int(f_s[i]) : 77 - max(0, far - int(f_s[i]))]
        new = emb_a[i, int(f_a[i]) : 77 - max(0, far - int(f_a[i]))]
        pairs += list(zip(old, new))
    kept, _ = _encode(pipe, [""] + CONCEPT.preserve)
    return pairs, list(kept.reshape(-1, kept.shape[-1]))


def _rows_2025(pipe, sources, anchors):
    emb_s, f_s = _encode(pipe, sources)
    emb_a, f_a = _encode(pipe, anchors)
    emb_p, f_p = _encode(pipe, CONCEPT.preserve)
    pairs = [(emb_s[i, int(f_s[i])], emb_a[i, int(f_a[i])]) for i in range(len(sources))]
    return pairs, [emb_p[j, int(f_p[j])] for j in range(len(CONCEPT.preserve))]


def _reference(pipe, pairs, kept, eta, lam):
    out = {}
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn2"):
            for proj in ("to_k", "to_v"):
                W = getattr(module, proj).weight.detach().double()
                left, right = lam * W, lam * torch.eye(W.shape[1], dtype=W.dtype)
                for c, c_anchor in pairs:
                    left = left + torch.outer(W @ c_anchor, c)
                    right = right + torch.outer(c, c)
                for c in kept:
                    left = left + eta * torch.outer(W @ c, c)
                    right = right + eta * torch.outer(c, c)
                out[f"unet.{name}.{proj}.weight"] = (W, left @ torch.linalg.inv(right))
    return out


def _relative_error(delta, reference):
    assert set(delta.names) == set(reference)
    return max(float(((delta.tensors[n].double() - W) - (ref - W)).norm() / (ref - W).norm())
               for n, (W, ref) in reference.items())


def test_sd_preset_is_the_2023_release():
    cfg = UCEConfig.preset("sd")
    assert cfg.rows == "release-2023" and cfg.lam == 0.5 and cfg.n_templates == 0
    assert cfg.effective_eta(3) == 0.25


def test_sd_preset_edit_equals_the_equation_with_the_2023_rows(pipe):
    sources = list(CONCEPT.targets)
    pairs, kept = _rows_2023(pipe, sources, ["art"] * len(sources))
    delta = erase(pipe, CONCEPT, UCEConfig.preset("sd"))
    assert _relative_error(delta, _reference(pipe, pairs, kept, eta=max(0.1, 1 / 4), lam=0.5)) < 1e-4


def test_release_2025_rows_equal_the_equation_with_its_rows(pipe):
    sources = list(CONCEPT.targets)
    pairs, kept = _rows_2025(pipe, sources, ["art"] * len(sources))
    delta = erase(pipe, CONCEPT, UCEConfig.preset("sd", rows="release-2025"))
    reference = _reference(pipe, pairs, kept, eta=1.0, lam=0.5)
    assert _relative_error(delta, reference) < 1e-4
    # the three row selections are three different edits
    other = erase(pipe, CONCEPT, UCEConfig.preset("sd"))
    ours = erase(pipe, CONCEPT, UCEConfig.preset("sd", rows="erasekit"))
    assert _relative_error(other, reference) > 1e-2 and _relative_error(ours, reference) > 1e-2
