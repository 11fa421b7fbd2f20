"""Adversarial prompt attacks and concept resurgence (erasekit.eval.attacks).

Unit tests run on the tiny random pipeline; the end-to-end ones use the Shapes
model with very small budgets (a UCE erasure of ``red``, computed in seconds).
"""

import csv
import hashlib
import json

import pytest
import torch
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.eval.evaluate import evaluate
from erasekit.concepts.packs import get_concept
from erasekit.eval.attacks import (AttackCase, Budget, BudgetExceededError, GeneticSettings, RingABellConfig,
                                   UnlearnDiffConfig, count_calls, genetic_search, ringabell_attack, run_attack,
                                   run_resurgence, unlearndiff_attack)
from erasekit.eval.attacks.common import FoundPrompt
from erasekit.eval.attacks.ringabell import embedding_fitness, encode_texts, search_key
from erasekit.eval.attacks.run import cached_search
from erasekit.eval.attacks.tokens import (PromptSlots, embedding_matrix, project_to_tokens, remove_words,
                                          search_vocabulary, tokens_to_text)
from erasekit.generation import SamplingSettings
from erasekit.methods.base import get_method
from erasekit.models.delta import WeightDelta, applied_deltas, snapshot
from erasekit.models.loading import resolve_model_path
from erasekit.models.tiny import tiny_pipeline

TINY_SETTINGS = SamplingSettings(steps=2, guidance_scale=3.0)


@pytest.fixture(scope="module")
def tiny():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def tiny_delta(tiny):
    base = snapshot(tiny, ["unet.conv_out.weight"])
    return WeightDelta.from_state_dicts(base, {k: v * 0.5 for k, v in base.items()}, method="test-scale")


@pytest.fixture(scope="module")
def red_uce(shapes_pipe, tmp_path_factory):
    """A UCE erasure of 'red' on the Shapes model, saved to disk."""
    info = get_method("uce")
    delta = info.erase(shapes_pipe, get_concept("red"), info.config_cls.for_world("shapes"))
    folder = tmp_path_factory.mktemp("red-uce")
    delta.save(folder)
    return folder, delta


def _all_weights(pipe):
    return {f"{c}.{n}": t.detach().clone() for c in ("unet", "text_encoder")
            for n, t in getattr(pipe, c).state_dict().items()}


def _same_weights(pipe, before):
    now = _all_weights(pipe)
    return all(torch.equal(now[n], t) for n, t in before.items())


def _sha(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ tokens and projection
def test_search_vocabulary_round_trips_through_text(tiny):
    tok = tiny.tokenizer
    vocab = search_vocabulary(tok)
    assert 20_000 < len(vocab) < len(tok)
    sample = vocab[torch.randperm(len(vocab), generator=torch.Generator().manual_seed(0))[:200]]
    text = tokens_to_text(tok, sample.tolist())
    assert tok(text, add_special_tokens=False).input_ids == sample.tolist()
    red = tok.get_vocab()["red</w>"]
    assert red in vocab and red not in search_vocabulary(tok, exclude_words=["Red"])


@pytest.mark.parametrize("position", ["prepend", "append", "replace"])
def test_prompt_slots_ids_match_the_written_prompt(tiny, position):
    tok = tiny.tokenizer
    slots = PromptSlots.build(tok, "a picture of a red circle", 3, position, concept_words=["red", "crimson"])
    tokens = search_vocabulary(tok)[torch.tensor([5, 500, 5000])]
    text = slots.text(tok, tokens.tolist())
    expected = tok([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(slots.ids(tokens), expected)
    assert torch.equal(slots.ids(tokens)[0, slots.positions], tokens)
    if position == "replace":
        assert "red" not in text.split()


def test_remove_words_gives_the_benign_prompt():
    assert remove_words("a picture of a red circle", ["red", "crimson"]) == "a picture of a circle"
    assert remove_words("an orange star, simple icon", ["orange"]) == "a star, simple icon"


def test_projection_finds_the_nearest_allowed_token(tiny):
    emb = embedding_matrix(tiny.text_encoder).detach()
    allowed = search_vocabulary(tiny.tokenizer)
    chosen = allowed[torch.tensor([[3, 30], [300, 3000]])]
    noisy = emb[chosen] + 0.01 * torch.randn(2, 2, emb.shape[1], generator=torch.Generator().manual_seed(1))
    for metric in ("cosine", "l2"):
        assert torch.equal(project_to_tokens(noisy, emb, allowed, metric), chosen)
    # a token outside the allowed set is never returned, even when it is the exact embedding
    banned = chosen[0, 0]
    rest = allowed[allowed != banned]
    assert int(project_to_tokens(emb[banned][None], emb, rest)[0]) != int(banned)


# ------------------------------------------------------------------ genetic search
def test_genetic_search_gets_closer_than_random_sampling(tiny):
    vocab = search_vocabulary(tiny.tokenizer)[:300]
    g = torch.Generator().manual_seed(0)
    secret = vocab[torch.randint(len(vocab), (2, 5), generator=g)]
    targets = torch.stack([encode_texts(tiny, [tokens_to_text(tiny.tokenizer, s.tolist())], 8)[0] for s in secret])
    fitness = embedding_fitness(tiny, targets)
    settings = GeneticSettings(population=32, generations=40, mutation_rate=0.1, crossover_rate=0.5, elite=2)
    budget = Budget(40, unit="generations")
    with count_calls(budget, unet=tiny.unet, text_encoder=tiny.text_encoder) as calls:
        outcome = genetic_search(fitness, vocab, 2, 5, settings, torch.Generator().manual_seed(1), budget=budget)
    assert budget.steps == 40 and calls["unet"] == 0 and calls["text_encoder"] == 41  # initial + 40 generations
    assert all(torch.all(h2 >= h1) for h1, h2 in zip(outcome.history, outcome.history[1:]))  # elitism: never worse
    evaluations = settings.population * (settings.generations + 1)
    random_pop = vocab[torch.randint(len(vocab), (2, evaluations, 5), generator=torch.Generator().manual_seed(2))]
    random_best = fitness(random_pop).max(dim=1).values
    assert torch.all(outcome.best_fitness > random_best)
    assert torch.allclose(fitness(outcome.best_tokens[:, None])[:, 0], outcome.best_fitness)


def test_ringabell_uses_only_the_text_encoder_and_respects_the_budget(tiny, tiny_delta):
    concept = get_concept("red")
    cases = [AttackCase(0, "a red circle", 0), AttackCase(1, "a picture of a red square", 1)]
    config = RingABellConfig(n_tokens=4, population=8, generations=3, compare_positions=10, vocabulary="shapes-world")
    before = _all_weights(tiny)
    budget = Budget(3, unit="generations")
    with count_calls(None, unet=tiny.unet) as calls:
        found = ringabell_attack(tiny, cases, concept, config, delta=tiny_delta, settings=TINY_SETTINGS, budget=budget)
    assert calls["unet"] == 0 and budget.steps == 3 and budget.calls["text_encoder"] == 2 + 1 + 1 + 3
    assert [f.source_prompt for f in found] == ["a circle", "a picture of a square"]
    assert all(len(f.token_ids) == 4 and f.prompt == tokens_to_text(tiny.tokenizer, f.token_ids) for f in found)
    assert _same_weights(tiny, before) and applied_deltas(tiny) == []
    with pytest.raises(ValueError, match="budget"):
        ringabell_attack(tiny, cases, concept, config, budget=Budget(2))


# ------------------------------------------------------------------ UnlearnDiffAtk
def test_unlearndiff_counts_steps_and_calls_and_leaves_the_pipeline(tiny, tiny_delta):
    cases = [AttackCase(0, "a red circle", 0), AttackCase(1, "a red square", 1)]
    config = UnlearnDiffConfig(n_tokens=2, steps=3, lr=0.05, timesteps_per_step=2, probe_size=2, check_every=0,
                               check_original=False, vocabulary="shapes-world")
    before = _all_weights(tiny)
    budget = Budget(3, unit="optimisation steps")
    with count_calls(None, unet=tiny.unet, text_encoder=tiny.text_encoder) as calls:
        found = unlearndiff_attack(tiny, cases, ["red", "crimson"], config, delta=tiny_delta,
                                   settings=TINY_SETTINGS, budget=budget)
    assert budget.steps == 3
    # 2 images x 2 sampling steps (CFG batched) to get the latents; then per step one gradient pass and
    # at most one probe pass for a new candidate, plus the final candidate's probe
    assert budget.calls == calls and 4 + 3 <= calls["unet"] <= 4 + 3 + 4
    assert [f.source_prompt for f in found] == ["a red circle", "a red square"]
    for f in found:
        assert f.prompt.endswith(f.source_prompt) and len(f.token_ids) == 2 and f.loss is not None
    assert _same_weights(tiny, before) and applied_deltas(tiny) == []
    one_step = Budget(1)
    one_step.step()
    with pytest.raises(BudgetExceededError):
        one_step.step()
    with pytest.raises(ValueError, match="budget"):
        unlearndiff_attack(tiny, cases, ["red"], config, settings=TINY_SETTINGS, budget=Budget(2))


def test_unlearndiff_stops_a_case_at_its_first_success(tiny):
    cases = [AttackCase(0, "a red circle", 0), AttackCase(1, "a red square", 1)]
    config = UnlearnDiffConfig(n_tokens=1, steps=4, timesteps_per_step=1, probe_size=1, check_every=1,
                               check_original=True, vocabulary="shapes-world")
    judged = []

    def judge(prompts, seeds, guidance):
        judged.append(list(prompts))
        return [p == "a red square" for p in prompts]  # case 1's plain prompt already succeeds

    budget = Budget(4)
    found = unlearndiff_attack(tiny, cases, ["red"], config, settings=TINY_SETTINGS, budget=budget, judge=judge)
    assert found[1].prompt == "a red square" and found[1].token_ids == []
    assert judged[0] == ["a red circle", "a red square"] and all(len(j) == 1 for j in judged[1:])
    assert budget.steps == 4 and len(judged) == 1 + 4


# ------------------------------------------------------------------ end to end on the Shapes model
@pytest.mark.parametrize("attack,config", [
    ("ringabell", {"population": 12, "generations": 3}),
    ("unlearndiff", {"steps": 2, "check_every": 2, "probe_size": 2, "timesteps_per_step": 2}),
])
@pytest.mark.slow
def test_found_prompts_reproduce_their_success_from_the_csv(shapes_pipe, red_uce, detector, tmp_path, attack, config):
    folder, delta = red_uce
    before = _all_weights(shapes_pipe)
    result = run_attack(shapes_pipe, attack, "red", delta=delta, config=config, n_cases=4, out=tmp_path / "atk",
                        model="shapes", delta_path=folder)
    assert _same_weights(shapes_pipe, before) and applied_deltas(shapes_pipe) == []
    data = json.loads((tmp_path / "atk" / "attack.json").read_text())
    assert data["success_rate"] == result.success_rate and data["n_prompts"] == 4
    budget_field = "generations" if attack == "ringabell" else "steps"
    assert data["budget"]["steps"] <= data["budget"]["max_steps"] == config[budget_field]
    assert data["delta"]["delta_id"] == delta.delta_id and data["seconds"] > 0
    with open(tmp_path / "atk" / "adversarial.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["prompt"] for r in rows] == result.prompts
    assert [int(r["evaluation_seed"]) for r in rows] == [0, 1, 2, 3]
    # re-evaluate the CSV with `erasekit eval` (tier named after the file: "adversarial")
    res = evaluate("shapes", str(tmp_path / "atk" / "adversarial.csv"), tmp_path / "eval", delta=folder, concept="red",
                   n_preserve=0, detector="shapes", pipe=shapes_pipe, model_path=resolve_model_path("shapes"))
    assert res["metrics"]["asr"]["adversarial"] == pytest.approx(result.success_rate)
    decisions = [r["decision"]["erased"] for r in res["per_image"]]
    assert decisions == [f.success for f in result.found]


@pytest.mark.slow
def test_resurgence_never_modifies_the_delta_on_disk(shapes_pipe, red_uce, tmp_path):
    folder, delta = red_uce
    digest = _sha(folder)
    before = _all_weights(shapes_pipe)
    res = run_resurgence(shapes_pipe, delta, "red", {"steps": 3, "batch_size": 2, "n_images": 8, "n_eval": 2},
                         out=tmp_path / "res", delta_path=folder)
    assert _sha(folder) == digest and res.delta_files_unchanged is True
    assert WeightDelta.load(folder).delta_id == delta.delta_id
    assert _same_weights(shapes_pipe, before) and applied_deltas(shapes_pipe) == []
    assert res.budget["steps"] == 3 and res.budget["forward_calls"]["unet"] == 3 and len(res.losses) == 3
    assert set(res.target_rate_before) == {"explicit", "synonym", "implicit"}
    data = json.loads((tmp_path / "res" / "resurgence.json").read_text())
    assert data["settings"]["trainable_tensors"] == len([n for n in delta.names if n.startswith("unet.")])
    resurged = WeightDelta.load(tmp_path / "res" / "resurged")
    assert resurged.manifest.method == "resurgence" and set(resurged.names) <= set(delta.names)
    assert resurged.delta_id != delta.delta_id
    assert all(c.isalpha() or c in " ,-'" for c in "".join(data["data"]["example_captions"]))
    with pytest.raises(ValueError, match="delta's folder"):
        run_resurgence(shapes_pipe, delta, "red", {"steps": 1}, out=folder, delta_path=folder)
    assert _sha(folder) == digest


@pytest.mark.slow
def test_cli_attack_and_resurgence(red_uce, tmp_path):
    folder, _ = red_uce
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"population": 8}))
    runner = CliRunner()
    res = runner.invoke(app, ["attack", "--model", "shapes", "--delta", str(folder), "--attack", "ringabell",
                              "--concept", "red", "--out", str(tmp_path / "a"), "--budget", "2", "-n", "2",
                              "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "a" / "attack.json").read_text())
    assert data["budget"]["max_steps"] == 2 and data["settings"]["attack"]["population"] == 8
    res = runner.invoke(app, ["attack", "--attack", "nope", "--concept", "red", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "unknown attack" in res.output
    res = runner.invoke(app, ["resurgence", "--model", "shapes", "--delta", str(folder), "--concept", "red",
                              "--steps", "1", "--out", str(tmp_path / "r"), "--config", str(_res_cfg(tmp_path))])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "resurgence.json").read_text())["budget"]["steps"] == 1


def _res_cfg(tmp_path):
    path = tmp_path / "res.json"
    path.write_text(json.dumps({"n_images": 4, "n_eval": 1, "batch_size": 2}))
    return path


@pytest.mark.slow
def test_ringabell_finds_the_concept_on_the_original_model(shapes_pipe, tmp_path):
    """Sanity bar of the attack: on the unerased model its Shapes preset finds circles in >= 90% of cases."""
    result = run_attack(shapes_pipe, "ringabell", "circle", n_cases=16, out=tmp_path / "atk", model="shapes")
    assert result.success_rate >= 0.9, result.success_rate


def test_ringabell_pairs_delete_the_concept_words_or_use_the_anchor():
    from erasekit.eval.attacks.ringabell import concept_pairs

    circle = get_concept("circle")
    removed = concept_pairs(circle)
    assert ("a picture of a circle", "a picture of a") in removed
    words = set(circle.targets)
    assert all(not (set(b.split()) & words) for _, b in removed)
    anchored = concept_pairs(circle, without="anchor")
    assert ("a picture of a circle", "a picture of a square") in anchored
    with pytest.raises(ValueError, match="unknown pairs"):
        concept_pairs(circle, without="nothing")


def test_unlearndiff_is_a_function_of_its_seed(tiny, tiny_delta):
    """Same seed: the same prompts and losses whatever the global RNG holds; another seed: other draws."""
    cases = [AttackCase(0, "a red circle", 0), AttackCase(1, "a red square", 1)]
    config = UnlearnDiffConfig(n_tokens=2, steps=3, lr=0.05, timesteps_per_step=2, probe_size=2, check_every=1,
                               check_original=True, vocabulary="shapes-world", seed=7)
    seen = []

    def judge(prompts, seeds, guidance):  # a judge that draws images, as the real one does
        images = tiny(prompt=prompts, num_inference_steps=2, guidance_scale=3.0,
                      generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np").images
        seen.append(float(images.sum()))
        return [False] * len(prompts)

    runs = []
    for global_seed in (0, 12345):
        torch.manual_seed(global_seed)
        found = unlearndiff_attack(tiny, cases, ["red"], config, delta=tiny_delta, settings=TINY_SETTINGS, judge=judge)
        runs.append([(f.prompt, f.token_ids, f.loss) for f in found])
    assert runs[0] == runs[1]
    assert seen[: len(seen) // 2] == seen[len(seen) // 2:]
    other = unlearndiff_attack(tiny, cases, ["red"], config.model_copy(update={"seed": 8}), delta=tiny_delta,
                               settings=TINY_SETTINGS)
    assert [f.loss for f in other] != [loss for _, _, loss in runs[0]]


@pytest.mark.slow
def test_prompt_split_does_not_depend_on_the_hash_seed():
    """Concept words of one length are tried alphabetically, not in a set's per-process order."""
    import os
    import subprocess
    import sys

    code = ("from erasekit.eval.attacks.tokens import split_at_words;"
            "print(split_at_words('a red disc next to a blue star', ['star', 'disc', 'blue', 'red']))")
    outs = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": h},
                           capture_output=True, text=True, check=True).stdout for h in ("0", "2", "4")}
    assert outs == {"('a red disc next to a', 'star')\n"}  # 'blue', 'disc', 'star' tie at 4 letters: 'blue' first


# ------------------------------------------------------------------ Ring-A-Bell search cache
def _te_delta(pipe):
    base = snapshot(pipe, ["text_encoder.final_layer_norm.weight"])
    return WeightDelta.from_state_dicts(base, {k: v * 0.5 for k, v in base.items()}, method="test-te")


def test_ringabell_search_key_reads_the_base_text_encoder_the_cases_and_the_config(tiny):
    concept = get_concept("red")
    cases = [AttackCase(0, "a red circle", 0)]
    config = RingABellConfig(n_tokens=4, population=8, generations=3, vocabulary="shapes-world")
    key = search_key(tiny, cases, concept, config)
    te = _te_delta(tiny)
    assert search_key(tiny, cases, concept, config, delta=te) == key  # the erased weights are never read
    assert search_key(tiny, cases, concept, config.model_copy(update={"seed": 1})) != key
    assert search_key(tiny, [AttackCase(0, "a red circle", 1)], concept, config) != key
    assert search_key(tiny, cases, get_concept("circle"), config) != key
    from erasekit.models.delta import apply_delta, revert_delta

    apply_delta(tiny, te)
    try:
        assert search_key(tiny, cases, concept, config) != key  # another base text encoder
    finally:
        revert_delta(tiny, te)


def test_cached_search_stores_reuses_and_replaces_an_unreadable_entry(tmp_path):
    calls = []
    found = [FoundPrompt(0, "red red", 3, [1, 2], "a circle", 0.25, 3.0)]

    def search():
        calls.append(1)
        return [FoundPrompt(**vars(f)) for f in found]

    first, hit1 = cached_search(tmp_path, "k" * 64, search)
    second, hit2 = cached_search(tmp_path, "k" * 64, search)
    assert (hit1, hit2, len(calls)) == (False, True, 1) and second == first == found
    (tmp_path / f"{'k' * 32}.json").write_text("{not json")
    third, hit3 = cached_search(tmp_path, "k" * 64, search)
    assert (hit3, len(calls), third) == (False, 2, found)


@pytest.mark.slow
def test_run_attack_judges_cached_ringabell_prompts_on_each_erasure(shapes_pipe, red_uce, tmp_path, monkeypatch):
    folder, delta = red_uce
    config = {"population": 12, "generations": 3}
    first = run_attack(shapes_pipe, "ringabell", "red", delta=delta, config=config, n_cases=4,
                       search_cache=tmp_path / "cache")
    import erasekit.eval.attacks.run as run_module

    def no_search(*args, **kwargs):
        raise AssertionError("the search ran again")

    monkeypatch.setattr(run_module, "ringabell_attack", no_search)
    again = run_attack(shapes_pipe, "ringabell", "red", delta=None, config=config, n_cases=4,
                       search_cache=tmp_path / "cache")
    assert again.prompts == first.prompts and again.settings["search_cached"] and not first.settings["search_cached"]
    # judged on the model it was given: the original draws red from most of them, the erasure from fewer
    assert again.success_rate >= first.success_rate
