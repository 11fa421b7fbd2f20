"""AdvUnlearn-style hardening: the soft prefix is the prompt with words prepended, the attack finds
what restores the concept, training defends against it, and the result composes with its base."""

import json

import pytest
import torch
import torch.nn.functional as F

from erasekit.concepts.spec import ConceptSpec
from erasekit.methods.closed_form import cross_attention_kv_names
from erasekit.methods.harden import AdvConfig, RECEConfig, harden, variant_config
from erasekit.methods.harden.adv import prefix_embeddings, prefixed_ids
from erasekit.models.delta import WeightDelta, apply_delta, fingerprint, revert_delta, snapshot
from erasekit.models.text import token_ids
from erasekit.models.tiny import tiny_pipeline
from erasekit.models.unet_io import predict

pytestmark = pytest.mark.usefixtures("one_thread")

CONCEPT = ConceptSpec(name="church", kind="object", targets=["church", "chapel"], anchor="building",
                      preserve=["a red car", "a dog in a park"])
TINY = dict(iterations=6, warmup=2, attack_steps=3, attack_lr=0.05, attack_tokens=2, n_steps=4, lr=1e-3,
            retain_pool=8, retain_batch=2, progress=False, attack_latents="per_round", attack_init="latest")


@pytest.fixture(scope="module")
def sd1():
    return tiny_pipeline("sd1")


def _retain_step(sd1, cfg, retain, unnamed=None):
    """An AdvStep on "a church" with ``retain`` as its retain prompts (and ``unnamed`` as the prompt's
    unnamed form), and the base conditioning it holds."""
    from erasekit.methods.harden.adv import AdvStep
    from erasekit.models.conditioning import encode_conditions

    base = {"ids": token_ids(sd1, ["a church"]), "cond": encode_conditions(sd1, ["a church"]),
            "uncond": encode_conditions(sd1, [""]), "retain_ids": token_ids(sd1, retain) if retain else None,
            "retain_cond": encode_conditions(sd1, retain) if retain else None,
            "unnamed_ids": token_ids(sd1, unnamed) if unnamed else None,
            "unnamed_cond": encode_conditions(sd1, unnamed) if unnamed else None}
    return AdvStep(sd1, CONCEPT, cfg, {}, base), base


def _record_latents(monkeypatch):
    """Record (retain prompts?, from the base model?) for every latent an AdvStep draws; also the unpatched draw."""
    from erasekit.methods.harden.adv import AdvStep

    calls, original = [], AdvStep._latent

    def record(self, idx, cond, g, base=False):
        calls.append((cond is self.retain_cond, base))
        return original(self, idx, cond, g, base)

    monkeypatch.setattr(AdvStep, "_latent", record)
    return calls, original


def test_soft_prefix_equals_prompt_with_words_prepended(sd1):
    te = sd1.text_encoder
    ids = token_ids(sd1, ["a church"])
    words = token_ids(sd1, ["red dog"])[:, 1:3]  # the two word tokens after the start token
    with torch.no_grad(), prefix_embeddings(te, te.get_input_embeddings()(words)):
        soft = te(prefixed_ids(ids, 2))[0]
        plain = te(token_ids(sd1, ["red dog a church"]))[0]
    assert torch.allclose(soft, plain, atol=1e-6)


@pytest.mark.slow
def test_adv_composes_with_its_base_and_records_the_chain(sd1):
    name = "unet.conv_in.weight"
    base = snapshot(sd1, [name])
    edited = {name: base[name] + 0.01}
    conv_delta = WeightDelta.from_state_dicts(base, edited, method="hand-made")
    watched = [name, *cross_attention_kv_names(sd1.unet)]
    before = {n: fingerprint(t) for n, t in snapshot(sd1, watched).items()}
    te_before = {n: fingerprint(p) for n, p in sd1.text_encoder.named_parameters()}
    composed = harden(sd1, conv_delta, CONCEPT, AdvConfig(**{**TINY, "iterations": 4, "attack_steps": 2}))
    assert {n: fingerprint(t) for n, t in snapshot(sd1, watched).items()} == before  # left as found
    assert {n: fingerprint(p) for n, p in sd1.text_encoder.named_parameters()} == te_before
    assert torch.equal(composed.tensors[name], edited[name])
    trained = [n for n in composed.names if n != name]
    assert trained and all(n.startswith("text_encoder.") and "embeddings" not in n for n in trained)
    m = composed.manifest
    assert m.method == "hand-made+adv"
    assert m.config["chain"] == [{"method": "hand-made", "delta_id": conv_delta.delta_id}, {"method": "harden:adv"}]
    assert [r["step"] for r in m.metrics["attack_rounds"]] == [2, 3]
    assert m.metrics["iterations"] == 4
    apply_delta(sd1, composed)  # on the BASE model
    revert_delta(sd1, composed)
    assert {n: fingerprint(t) for n, t in snapshot(sd1, watched).items()} == before


@pytest.mark.slow
@pytest.mark.parametrize("source", ["current", "base"])
def test_attack_lowers_its_loss_and_unet_mode_trains_only_its_scope(sd1, source):
    cfg = AdvConfig(**{**TINY, "module": "unet", "unet_scope": "cross_attn_kv", "attack_steps": 8, "iterations": 5,
                       "warmup": 0, "attack_source": source})
    hardened = harden(sd1, None, CONCEPT, cfg)
    assert set(hardened.names) <= set(cross_attention_kv_names(sd1.unet)) and hardened.names
    rounds = hardened.manifest.metrics["attack_rounds"]
    assert len(rounds) == 5
    # on fixed latents per round, 8 Adam steps of the soft prefix bring the base prediction closer
    assert sum(r["loss_last"] for r in rounds) < sum(r["loss_first"] for r in rounds)


def test_text_layers_train_only_the_named_transformer_layers_of_the_text_encoder(sd1):
    hardened = harden(sd1, None, CONCEPT, AdvConfig(**{**TINY, "iterations": 3, "warmup": 1, "text_layers": [0]}))
    assert hardened.names and all(n.startswith("text_encoder.") and ".encoder.layers.0." in n
                                for n in hardened.names)
    assert any(float(t.abs().max()) > 0 for t in hardened.tensors.values())  # layer 0 moved
    assert hardened.manifest.metrics["scope"] == "text_encoder_layer0"
    full = {n for n, _ in sd1.text_encoder.named_parameters() if "encoder.layers." in n}
    assert len(hardened.names) < len(full)


def test_text_layers_are_checked_and_left_out_of_the_fingerprint_at_their_default(sd1):
    n = sd1.text_encoder.config.num_hidden_layers
    with pytest.raises(ValueError, match=f"layers 0..{n - 1}"):
        harden(sd1, None, CONCEPT, AdvConfig(**{**TINY, "text_layers": [n]}))
    with pytest.raises(ValueError, match="module='text_encoder'"):
        harden(sd1, None, CONCEPT, AdvConfig(**{**TINY, "module": "unet", "text_layers": [0]}))
    assert "text_layers" not in AdvConfig.preset("shapes").fingerprint()
    assert AdvConfig.preset("shapes", text_layers=[0]).fingerprint()["text_layers"] == [0]


@pytest.mark.slow
def test_token_space_attack_trains_against_real_words_of_its_vocabulary(sd1, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("red dog park car blue", encoding="utf-8")
    allowed = {int(i) for i in token_ids(sd1, ["red dog park car blue"])[0, 1:6]}
    cfg = AdvConfig(**{**TINY, "module": "unet", "unet_scope": "cross_attn_kv", "iterations": 4, "warmup": 0,
                       "attack_space": "tokens", "attack_vocabulary": str(words)})
    rounds = harden(sd1, None, CONCEPT, cfg).manifest.metrics["attack_rounds"]
    assert len(rounds) == 4
    assert all(len(r["tokens"]) == TINY["attack_tokens"] and set(r["tokens"]) <= allowed for r in rounds)


def test_anchor_prompts_pair_each_training_prompt_with_its_anchor():
    from erasekit.methods.esd import training_prompts

    grid, anchors = training_prompts(CONCEPT, "grid", None, None), training_prompts(CONCEPT, "grid", None, None, role="anchor")
    assert len(grid) == len(anchors) > 1
    assert all(a == g.replace("church", "building").replace("chapel", "building") for g, a in zip(grid, anchors))
    assert training_prompts(CONCEPT, "bare", None, None, role="anchor") == ["building"]
    assert training_prompts(CONCEPT, "bare", None, None, role="unnamed") == [""]


def _defence_loss(sd1, **overrides):
    """One defence step (no attack) on the concept's grid prompts: (its loss, the base conditioning of the prompt it
    drew, its anchor and the empty prompt, and the trained prediction, latent and step), the step's seed replayed."""
    from erasekit.methods.harden.adv import AdvStep
    from erasekit.models.conditioning import encode_conditions
    from erasekit.training import randint

    cfg = AdvConfig(**{**TINY, "attack_steps": 0, "prompts": "grid", "retain_weight": 0.0, **overrides})
    prompts, anchors = CONCEPT.target_prompts(), CONCEPT.anchor_prompts()
    base = {"ids": token_ids(sd1, prompts), "cond": encode_conditions(sd1, prompts), "uncond": encode_conditions(sd1, [""]),
            "anchor_cond": encode_conditions(sd1, anchors), "retain_ids": None, "retain_cond": None}
    step = AdvStep(sd1, CONCEPT, cfg, {}, base)
    with torch.no_grad():
        loss = float(step(0, torch.Generator().manual_seed(3)))
        g = torch.Generator().manual_seed(3)
        idx = torch.tensor([randint(len(prompts), g)])
        z, t = step._latent(idx, base["cond"], g)
        trained = predict(sd1.unet, z, t, sd1.text_encoder(base["ids"][idx])[0])
    return loss, {"cond": base["cond"][idx], "anchor_cond": base["anchor_cond"][idx], "uncond": base["uncond"]}, trained, z, t


def test_anchor_defence_loss_is_the_distance_to_the_base_prediction_for_the_anchor(sd1):
    loss, base, trained, z, t = _defence_loss(sd1, defence_target="anchor")
    with torch.no_grad():
        want = F.mse_loss(trained, predict(sd1.unet, z, t, base["anchor_cond"]))
    assert loss == pytest.approx(float(want), rel=1e-5)


def test_anchor_guided_defence_loss_is_esds_target_with_the_anchor_in_place_of_the_empty_prompt(sd1):
    loss, base, trained, z, t = _defence_loss(sd1, defence_target="anchor-guided", negative_guidance=2.0)
    with torch.no_grad():
        eps_c, eps_a, eps_u = (predict(sd1.unet, z, t, base[k]) for k in ("cond", "anchor_cond", "uncond"))
        want = F.mse_loss(trained, eps_a - 2.0 * (eps_c - eps_a))
        esd = F.mse_loss(trained, eps_u - 2.0 * (eps_c - eps_u))
    assert loss == pytest.approx(float(want), rel=1e-4) and float(want) != pytest.approx(float(esd), rel=1e-2)


def test_presets_and_variant_lookup():
    sd, shapes = AdvConfig.preset("sd"), AdvConfig.preset("shapes")
    assert (sd.module, sd.iterations, sd.lr, sd.warmup, sd.attack_steps, sd.attack_lr, sd.attack_tokens,
            sd.retain_weight, sd.retain_batch) == ("text_encoder", 1000, 1e-5, 200, 30, 1e-3, 1, 0.3, 5)
    assert shapes.module == "text_encoder" and shapes.iterations < sd.iterations
    assert variant_config("adv") is AdvConfig and variant_config("rece") is RECEConfig
    with pytest.raises(ValueError, match="unknown hardening variant"):
        variant_config("x")


def test_sdxl_is_refused_with_a_reason():
    from types import SimpleNamespace

    with pytest.raises(NotImplementedError, match="SDXL"):
        harden(SimpleNamespace(text_encoder_2=torch.nn.Linear(1, 1)), None, CONCEPT, AdvConfig(**TINY))


@pytest.mark.slow
def test_cli_erase_then_harden_adv_and_erase_with_harden(tmp_path):
    from typer.testing import CliRunner

    from erasekit.cli import app

    runner = CliRunner()
    base = tmp_path / "uce"
    assert runner.invoke(app, ["erase", "--method", "uce", "--concept", "circle", "--out", str(base)]).exit_code == 0
    before = (base / "delta.safetensors").read_bytes()
    cfg = tmp_path / "adv.json"
    cfg.write_text(json.dumps({k: v for k, v in TINY.items() if k not in ("retain_pool", "retain_batch")}))
    res = runner.invoke(app, ["harden", "--variant", "adv", "--delta", str(base), "--concept", "circle",
                              "--config", str(cfg), "--out", str(tmp_path / "h")])
    assert res.exit_code == 0, res.output
    composed = WeightDelta.load(tmp_path / "h")
    assert composed.manifest.method == "uce+adv"
    assert composed.manifest.config["harden"]["negative_guidance"] == 3.0  # the Shapes preset under the overrides
    assert any(n.startswith("text_encoder.") for n in composed.names)
    assert (base / "delta.safetensors").read_bytes() == before

    res = runner.invoke(app, ["erase", "--method", "uce", "--concept", "circle", "--harden", "rece",
                              "--out", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    one = WeightDelta.load(tmp_path / "one")
    assert one.manifest.method == "uce+rece" and one.manifest.config["chain"][0]["method"] == "uce"
    res = runner.invoke(app, ["erase", "--method", "uce", "--concept", "circle", "--harden", "x",
                              "--out", str(tmp_path / "two")])
    assert res.exit_code == 2 and "unknown hardening variant" in res.output
    assert not (tmp_path / "two" / "manifest.json").exists()


def test_embedding_retain_term_is_the_relative_drift_of_the_retain_prompts(sd1):
    from erasekit.training import randint

    cfg = AdvConfig(**{**TINY, "retain_embedding_weight": 1.0, "retain_embedding_batch": 4})
    step, base = _retain_step(sd1, cfg, ["a red car", "a dog in a park", "a bowl of fruit"])
    with torch.no_grad():
        assert float(step.embedding_drift(torch.Generator().manual_seed(0))) == pytest.approx(0.0, abs=1e-12)
        norm = sd1.text_encoder.final_layer_norm.weight
        saved = norm.clone()
        norm.mul_(1.5)
        try:
            drift = float(step.embedding_drift(torch.Generator().manual_seed(0)))
            g = torch.Generator().manual_seed(0)
            pick = torch.tensor([randint(3, g) for _ in range(3)])
            now, before = sd1.text_encoder(base["retain_ids"][pick])[0], base["retain_cond"].embeds[pick]
        finally:
            norm.copy_(saved)
    assert drift == pytest.approx(float((now - before).pow(2).sum() / before.pow(2).sum()), rel=1e-5) and drift > 0


@pytest.mark.slow
def test_embedding_retain_term_holds_the_retain_prompts_text_embeddings(sd1):
    from erasekit.models.text import encode_prompts

    kept = list(CONCEPT.preserve)
    before = encode_prompts(sd1, kept)
    drifts = {}
    for w in (0.0, 100.0):
        cfg = AdvConfig(**{**TINY, "iterations": 8, "lr": 3e-3, "retain": "concept+general", "retain_weight": 0.0,
                           "retain_embedding_weight": w, "retain_embedding_batch": 8})
        delta = harden(sd1, None, CONCEPT, cfg)
        apply_delta(sd1, delta)
        try:
            drifts[w] = float((encode_prompts(sd1, kept) - before).pow(2).sum() / before.pow(2).sum())
        finally:
            revert_delta(sd1, delta)
    assert drifts[0.0] > 0 and drifts[100.0] < 0.5 * drifts[0.0]


def test_embedding_retain_term_needs_the_text_encoder(sd1):
    with pytest.raises(ValueError, match="text_encoder"):
        harden(sd1, None, CONCEPT, AdvConfig(**{**TINY, "module": "unet", "retain_embedding_weight": 1.0}))


@pytest.mark.parametrize("source", ["current", "base"])
def test_retain_latents_come_from_the_chosen_model(sd1, source, monkeypatch):
    step, _ = _retain_step(sd1, AdvConfig(**{**TINY, "attack_steps": 0, "retain_source": source}),
                           ["a red car", "a dog in a park"])
    calls, _ = _record_latents(monkeypatch)
    with torch.no_grad():
        step(0, torch.Generator().manual_seed(0))
    assert calls == [(False, False), (True, source == "base")]


def test_retain_only_step_is_the_retain_term_alone(sd1, monkeypatch):
    import torch.nn.functional as F

    from erasekit.models.unet_io import predict
    from erasekit.training import randint

    retain = ["a red car", "a dog in a park", "a bowl of fruit"]
    cfg = AdvConfig(**{**TINY, "attack_steps": 0, "defence_weight": 0.0, "retain_weight": 2.0})
    step, base = _retain_step(sd1, cfg, retain)
    calls, original = _record_latents(monkeypatch)
    with torch.no_grad():
        loss = float(step(0, torch.Generator().manual_seed(5)))
        g = torch.Generator().manual_seed(5)
        pick = torch.tensor([randint(len(retain), g) for _ in range(cfg.retain_batch)])
        rz, rt = original(step, pick, base["retain_cond"], g)
        want = 2.0 * F.mse_loss(predict(sd1.unet, rz, rt, sd1.text_encoder(base["retain_ids"][pick])[0]),
                                predict(sd1.unet, rz, rt, base["retain_cond"][pick]))
    assert calls and all(retain for retain, _ in calls)  # no concept latent is drawn: the erasure term is off
    assert loss == pytest.approx(float(want), rel=1e-5)


@pytest.mark.slow
def test_retain_only_unet_fine_tune_pulls_the_retain_prompts_back_to_the_base_model(sd1):
    from erasekit.models.conditioning import encode_conditions
    from erasekit.models.unet_io import predict

    names = [n for n in cross_attention_kv_names(sd1.unet) if n.endswith("to_v.weight")]
    base_w = snapshot(sd1, names)
    g = torch.Generator().manual_seed(0)
    damaged = WeightDelta.from_state_dicts(base_w, {n: t + 0.05 * torch.randn(t.shape, generator=g) for n, t in base_w.items()},
                                           method="hand-made")
    kept = list(CONCEPT.preserve)
    z = torch.randn(len(kept), sd1.unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = encode_conditions(sd1, kept)

    def gap(delta):
        with torch.no_grad():
            want = predict(sd1.unet, z, 500, cond)
            apply_delta(sd1, delta)
            try:
                return float((predict(sd1.unet, z, 500, cond) - want).pow(2).mean())
            finally:
                revert_delta(sd1, delta)

    cfg = AdvConfig(**{**TINY, "module": "unet", "unet_scope": "cross_attn_kv", "attack_steps": 0, "defence_weight": 0.0,
                       "retain": "concept+general", "retain_weight": 1.0, "retain_batch": 2, "iterations": 12, "lr": 3e-3})
    repaired = harden(sd1, damaged, CONCEPT, cfg)
    assert repaired.manifest.metrics["attack_rounds"] == []
    assert gap(repaired) < 0.5 * gap(damaged)


def test_a_retain_only_fine_tune_needs_a_retain_term(sd1):
    with pytest.raises(ValueError, match="no loss"):
        harden(sd1, None, CONCEPT, AdvConfig(**{**TINY, "defence_weight": 0.0, "retain_weight": 0.0}))


def test_the_defence_weight_is_left_out_of_the_fingerprint_at_its_default():
    assert "defence_weight" not in AdvConfig.preset("shapes").fingerprint()
    assert AdvConfig.preset("shapes", defence_weight=0.0).fingerprint()["defence_weight"] == 0.0


def test_unnamed_term_pulls_the_unnamed_prompt_toward_its_base_prediction_guided_away_from_the_concept(sd1):
    import torch.nn.functional as F

    from erasekit.models.unet_io import predict
    from erasekit.training import randint

    cfg = AdvConfig(**{**TINY, "attack_steps": 0, "defence_weight": 0.0, "retain_weight": 0.0,
                       "unnamed_weight": 2.0, "unnamed_guidance": 1.5})
    step, base = _retain_step(sd1, cfg, None, unnamed=["a"])
    with torch.no_grad():
        loss = float(step(0, torch.Generator().manual_seed(5)))
        g = torch.Generator().manual_seed(5)
        idx = torch.tensor([randint(1, g)])
        z, t = step._latent(idx, base["unnamed_cond"], g)
        eps_c, eps_u = predict(sd1.unet, z, t, base["cond"][idx]), predict(sd1.unet, z, t, base["unnamed_cond"][idx])
        want = 2.0 * F.mse_loss(predict(sd1.unet, z, t, sd1.text_encoder(base["unnamed_ids"][idx])[0]),
                                eps_u - 1.5 * (eps_c - eps_u))
    assert loss == pytest.approx(float(want), rel=1e-4)
    assert loss > 0


def test_the_unnamed_term_is_a_loss_of_its_own_and_left_out_of_the_fingerprint_at_its_default():
    shapes = AdvConfig.preset("shapes")
    assert "unnamed_weight" not in shapes.fingerprint() and "unnamed_guidance" not in shapes.fingerprint()
    assert AdvConfig.preset("shapes", unnamed_weight=1.0).fingerprint()["unnamed_weight"] == 1.0


def _kv_drift(sd1, names, prompts):
    """sum over ``names`` of ||(W - W_base) S^T||^2 with S every token of ``prompts`` (W_base: ``names``' current weights)."""
    from erasekit.methods.retain import KVMatchLoss
    from erasekit.models.conditioning import encode_conditions

    tokens = encode_conditions(sd1, prompts).embeds
    params = dict(sd1.unet.named_parameters())
    loss = KVMatchLoss({n: params[n].detach().clone() for n in names}, names, tokens.reshape(-1, tokens.shape[-1]))
    return lambda delta: _with(sd1, delta, lambda: float(loss(params)))


def _with(sd1, delta, read):
    apply_delta(sd1, delta)
    try:
        with torch.no_grad():
            return read()
    finally:
        revert_delta(sd1, delta)


def test_kv_retain_term_pulls_the_retain_prompts_keys_and_values_back_to_the_base_model(sd1):
    names = cross_attention_kv_names(sd1.unet)
    base_w = snapshot(sd1, names)
    g = torch.Generator().manual_seed(0)
    damaged = WeightDelta.from_state_dicts(base_w, {n: t + 0.05 * torch.randn(t.shape, generator=g)
                                                    for n, t in base_w.items()}, method="hand-made")
    drift = _kv_drift(sd1, [n.removeprefix("unet.") for n in names], list(CONCEPT.preserve))
    cfg = AdvConfig(**{**TINY, "module": "unet", "unet_scope": "cross_attn_kv", "attack_steps": 0, "defence_weight": 0.0,
                       "retain": "concept+general", "retain_weight": 0.0, "retain_kv_weight": 1.0, "iterations": 12,
                       "lr": 3e-3})
    repaired = harden(sd1, damaged, CONCEPT, cfg)
    assert drift(repaired) < 0.5 * drift(damaged)
    assert repaired.manifest.config["harden"]["retain_kv_weight"] == 1.0


def test_retain_terms_held_at_the_erased_model_keep_what_the_delta_moved(sd1):
    """With ``retain_reference="erased"`` the retain terms' reference is the model the run starts from: the
    K/V and noise-space retain terms are zero there, so a retain-only run leaves the delta's K/V as they were,
    where the base reference pulls them back."""
    names = cross_attention_kv_names(sd1.unet)
    base_w = snapshot(sd1, names)
    g = torch.Generator().manual_seed(0)
    moved = WeightDelta.from_state_dicts(base_w, {n: t + 0.05 * torch.randn(t.shape, generator=g)
                                                  for n, t in base_w.items()}, method="hand-made")
    settings = {**TINY, "module": "unet", "unet_scope": "cross_attn_kv", "attack_steps": 0, "defence_weight": 0.0,
                "retain": "concept+general", "retain_weight": 1.0, "retain_kv_weight": 1.0, "iterations": 6,
                "lr": 3e-3}
    kept = harden(sd1, moved, CONCEPT, AdvConfig(**settings, retain_reference="erased"))
    pulled = harden(sd1, moved, CONCEPT, AdvConfig(**settings))
    off = [float((kept.tensors[n] - moved.tensors[n]).abs().max()) for n in names]
    back = [float((pulled.tensors[n] - moved.tensors[n]).abs().max()) for n in names]
    assert max(off) < 1e-6 < min(back)
    assert kept.manifest.config["harden"]["retain_reference"] == "erased"
    assert "retain_reference" not in AdvConfig.preset("shapes").fingerprint()


def test_kv_retain_term_needs_the_unet_and_is_left_out_of_the_fingerprint_at_its_default(sd1):
    with pytest.raises(ValueError, match="needs module='unet'") as err:
        harden(sd1, None, CONCEPT, AdvConfig(**{**TINY, "retain_kv_weight": 1.0}))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="to_k/to_v"):
        harden(sd1, None, CONCEPT, AdvConfig(**{**TINY, "module": "unet", "unet_scope": "non_cross_attn",
                                                "retain_kv_weight": 1.0}))
    assert "retain_kv_weight" not in AdvConfig.preset("shapes").fingerprint()


def test_extra_targets_join_the_training_prompts_and_the_recorded_concept_stays_the_concept(sd1, monkeypatch):
    """``extra_targets`` are trained in the concept's templates beside its own targets; the manifest records the
    concept as given, and the field stays out of the fingerprint at its default (existing delta ids unchanged)."""
    from erasekit.methods.harden import adv

    seen = {}
    original = adv.AdvStep.__init__

    def spy(self, pipe, concept, config, *args, **kwargs):
        seen["targets"] = list(concept.targets)
        seen["prompts"] = adv.training_prompts(concept, config.prompts, config.n_synonyms, config.n_templates)
        return original(self, pipe, concept, config, *args, **kwargs)

    monkeypatch.setattr(adv.AdvStep, "__init__", spy)
    cfg = AdvConfig(**{**TINY, "iterations": 2, "warmup": 1, "prompts": "grid", "extra_targets": ["stone tower"]})
    hardened = harden(sd1, None, CONCEPT, cfg)
    assert seen["targets"] == ["church", "chapel", "stone tower"]
    assert any("stone tower" in p for p in seen["prompts"])
    assert hardened.manifest.metrics["training_prompts"] == len(seen["prompts"])
    assert hardened.manifest.config["concept"]["targets"] == ["church", "chapel"]
    assert "extra_targets" not in AdvConfig(**TINY).fingerprint() and "extra_targets" in cfg.fingerprint()


def test_replayed_rounds_join_the_defence_loss_as_a_mean_over_the_adversarial_prompts(sd1, monkeypatch):
    """With ``replay_batch`` k the defence loss on fixed latents is the mean of its loss on the latest round's
    adversarial prompt and on k prompts drawn from the rounds so far; every round joins the pool."""
    from erasekit.methods.harden.adv import AdvStep

    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(AdvStep, "_latent", lambda self, idx, cond, g, base=False: (z.expand(len(idx), -1, -1, -1), 500))
    d = sd1.text_encoder.get_input_embeddings().weight.shape[1]
    latest, earlier = torch.randn(1, 2, d), torch.randn(1, 2, d)
    cfg = AdvConfig(**{**TINY, "module": "unet"})
    step, _ = _retain_step(sd1, cfg, None)
    losses = {}
    with torch.no_grad():
        for name, adv in (("latest", latest), ("earlier", earlier)):
            step.adv = adv
            losses[name] = float(step.defence(True, torch.Generator().manual_seed(1)))
        replay, _ = _retain_step(sd1, AdvConfig(**{**cfg.model_dump(), "replay_batch": 2}), None)
        replay.adv, replay.pool = latest, [(0, earlier)]
        mixed = float(replay.defence(True, torch.Generator().manual_seed(1)))
    assert mixed == pytest.approx((losses["latest"] + 2 * losses["earlier"]) / 3, rel=1e-4)
    assert losses["latest"] != pytest.approx(losses["earlier"], rel=1e-3)
    replay.attack(0, torch.Generator().manual_seed(2))
    replay.attack(1, torch.Generator().manual_seed(3))
    assert len(replay.pool) == 3 and torch.equal(replay.pool[-1][1], replay.adv)
    assert "replay_batch" not in cfg.fingerprint() and AdvConfig(**TINY, replay_batch=1).fingerprint()["replay_batch"] == 1


def test_in_context_prompts_name_the_concept_beside_every_value_of_the_paired_attribute(sd1):
    """``prompts`` "in-context": every target word beside every colour (a shape concept) in every template;
    "in-context-synonyms" leaves out the canonical word, which the benchmark's attack cases name; anchors
    put the anchor in the target word's place, prompt for prompt; the run trains on that set."""
    from erasekit.concepts.packs import get_concept
    from erasekit.methods.harden.adv import concept_prompts
    from erasekit.world.vocabulary import load_vocabulary

    circle, vocab = get_concept("circle", "shapes"), load_vocabulary()
    n_colours, n_templates = len(vocab.values("color")), len(vocab.templates)
    full = concept_prompts(circle, AdvConfig(prompts="in-context"))
    held_out = concept_prompts(circle, AdvConfig(prompts="in-context-synonyms"))
    anchors = concept_prompts(circle, AdvConfig(prompts="in-context-synonyms"), "anchor")
    assert len(full) == len(circle.targets) * n_colours * n_templates and "clip art of a red circle" in full
    assert len(held_out) == (len(circle.targets) - 1) * n_colours * n_templates
    assert not any("circle" in p.split() for p in held_out) and "an image showing a green disc" in held_out
    for word in circle.targets[1:]:
        assert all(a == p.replace(word, circle.anchor) for p, a in zip(held_out, anchors) if word in p.split())
    with pytest.raises(ValueError, match="no unnamed form"):
        concept_prompts(circle, AdvConfig(prompts="in-context"), "unnamed")
    with pytest.raises(ValueError, match="needs a Shapes value concept"):
        concept_prompts(CONCEPT, AdvConfig(prompts="in-context"))
    cfg = AdvConfig(**{**TINY, "iterations": 2, "warmup": 1, "prompts": "in-context-synonyms"})
    assert harden(sd1, None, circle, cfg).manifest.metrics["training_prompts"] == len(held_out)


def test_random_attack_trains_against_random_words_of_its_vocabulary_without_a_search(sd1, monkeypatch):
    """``attack_method`` "random": each round's prefix is ``attack_tokens`` token embeddings of words from
    ``attack_vocabulary``, drawn anew every round, and no attack step runs."""
    from erasekit.methods.harden import adv
    from erasekit.models.vocabulary import resolve_vocabulary

    prefixes, original = [], adv.AdvStep.attack

    def spy(self, step, g):
        original(self, step, g)
        prefixes.append(self.adv.clone())

    monkeypatch.setattr(adv.AdvStep, "attack", spy)
    cfg = AdvConfig(**{**TINY, "attack_method": "random"})
    hardened = harden(sd1, None, CONCEPT, cfg)
    table = sd1.text_encoder.get_input_embeddings().weight.detach()
    allowed = resolve_vocabulary(sd1.tokenizer, cfg.attack_vocabulary)
    assert len(prefixes) == cfg.iterations - cfg.warmup
    for prefix in prefixes:
        assert prefix.shape == (1, cfg.attack_tokens, table.shape[1])
        for row in prefix[0]:  # each prefix token is a vocabulary word's embedding (the text encoder's table)
            assert torch.isclose(table[allowed], row).all(dim=1).any()
    assert not all(torch.equal(prefixes[0], p) for p in prefixes[1:])
    assert hardened.manifest.metrics["attack_iterations"] == 0


def test_a_soup_is_the_mean_of_the_runs_with_consecutive_seeds_and_records_them(sd1):
    cfg = AdvConfig(**{**TINY, "module": "unet", "unet_scope": "cross_attn_kv", "iterations": 3, "warmup": 1, "seed": 4})
    runs = [harden(sd1, None, CONCEPT, cfg.model_copy(update={"seed": s})) for s in (4, 5)]
    soup = harden(sd1, None, CONCEPT, cfg.model_copy(update={"soup": 2}))
    assert runs[0].delta_id != runs[1].delta_id  # the seeds draw differently
    assert soup.names == runs[0].names == runs[1].names
    for n in soup.names:
        torch.testing.assert_close(soup.tensors[n], (runs[0].tensors[n] + runs[1].tensors[n]) / 2)
    m = soup.manifest
    assert m.metrics["soup_members"] == [r.delta_id for r in runs]
    assert m.metrics["iterations"] == 6 and m.metrics["member_iterations"] == 3
    assert m.config["harden"]["soup"] == 2 and "soup" not in runs[0].manifest.config["harden"]  # 1 is left out
    assert m.config["chain"] == [{"method": "harden:adv"}]
