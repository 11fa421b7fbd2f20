"""`erasekit bench` machinery on a tiny pipeline: resume, composition, report text generated from numbers."""

import json

import numpy as np
import pytest
import torch

from erasekit.concepts.packs import get_concept
from erasekit.eval.bench import cells as bench_runner
from erasekit.eval.bench.adversarial import CsvPromptSource
from erasekit.eval.bench.erasing import compose_sequential, method_run
from erasekit.eval.bench.main import BenchPaths, NoStoredCellsError, run_benchmark
from erasekit.eval.bench.memory import PeakRSS
from erasekit.eval.bench.orderings import HOLDS, NOISE, REVERSED, expect_lower, orderings_markdown
from erasekit.eval.bench.modes import BenchPlan
from erasekit.eval.bench.markdown import write_report
from erasekit.eval.bench.cells import BenchRun
from erasekit.eval.probes import preservation_probes, target_probes
from erasekit.eval.tasks import ShapesTask as Scenario
from erasekit.eval.tasks import get_task as get_scenario
from erasekit.eval.detectors.shapes import ShapesConceptDetector
from erasekit.generation import SamplingSettings
from erasekit.methods.base import get_method
from erasekit.models.delta import apply_delta, revert_delta, snapshot

TINY = {"esd-x": {"iterations": 2, "n_steps": 3}}
SETTINGS = SamplingSettings(steps=2, batch_size=16)


pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def reader(detector):
    return ShapesConceptDetector(detector)


def _plan(per_tier=2):
    return BenchPlan("test", ["attribute"], ["uce", "esd-x"], per_tier=per_tier, n_preserve=3, n_adversarial=0,
                     overrides=TINY)


def _run(pipe, reader, folder, plan):
    return run_benchmark(pipe, None, plan, BenchPaths(folder, folder / "BENCHMARKS.md"), "erasekit bench --test",
                         adversarial_csv=folder / "no-attacks", progress=False, reader=reader, settings=SETTINGS)


def _numbers(cell):
    drop = {"erase_seconds", "eval_seconds", "memory"}
    return {k: v for k, v in cell.items() if k not in drop}


# ------------------------------------------------------------------ the run
@pytest.mark.slow
def test_run_writes_cells_report_and_resumes(pipe, reader, tmp_path, monkeypatch):
    run, report = _run(pipe, reader, tmp_path, _plan())
    assert sorted(run.computed) == ["attribute/esd-x", "attribute/original", "attribute/uce"]
    for label in ("original", "uce", "esd-x"):
        cell = json.loads((tmp_path / "cells" / "attribute" / f"{label}.json").read_text())
        assert set(cell["target_rate"]) >= {"explicit", "synonym", "implicit"}
    esd = run.results["attribute"]["esd-x"]
    assert esd["iterations"] == 2 and esd["scopes"] == ["cross_attn_kv"]  # esd-x's Shapes preset
    assert esd["changed"]["changed_outside_scope"] == 0 and 0 < esd["changed"]["scope_fraction"] <= 1
    assert run.results["attribute"]["uce"]["iterations"] == 0
    text = report.read_text()
    assert "| esd-x | 2 |" in text and "## Paper orderings" in text
    # every cell names the machine its seconds come from, and the header counts the cells per machine
    machine = run.results["attribute"]["uce"]["hardware"]
    assert machine and f"{machine} (3 cells)" in text
    assert (tmp_path / "pareto_attribute.png").stat().st_size > 1000

    # A rerun computes nothing: erasing or generating would fail loudly.
    def boom(*a, **k):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(bench_runner, "erase_scenario", boom)
    monkeypatch.setattr(bench_runner, "measure_task", boom)
    again, _ = _run(pipe, reader, tmp_path, _plan())
    assert again.computed == [] and len(again.reused) == 3
    assert {k: _numbers(v) for k, v in again.results["attribute"].items()} == \
        {k: _numbers(v) for k, v in run.results["attribute"].items()}
    monkeypatch.undo()

    # Only the missing cell is recomputed; a changed setting invalidates every cell.
    (tmp_path / "cells" / "attribute" / "uce.json").unlink()
    partial, _ = _run(pipe, reader, tmp_path, _plan())
    assert partial.computed == ["attribute/uce"]
    assert _numbers(partial.results["attribute"]["uce"]) == _numbers(run.results["attribute"]["uce"])
    changed, _ = _run(pipe, reader, tmp_path, _plan(per_tier=3))
    assert len(changed.computed) == 3 and changed.results["attribute"]["uce"]["n_per_tier"]["explicit"] == 3

    # So does a changed concept spec (here its anchor): it changes what every method does.
    real = Scenario.specs
    monkeypatch.setattr(Scenario, "specs", lambda self: [s.model_copy(update={"anchor": "shape"}) for s in real(self)])
    reanchored, _ = _run(pipe, reader, tmp_path, _plan(per_tier=3))
    assert len(reanchored.computed) == 3


def test_report_only_finds_the_cells_of_a_run_with_an_adversarial_tier(pipe, reader, tmp_path, monkeypatch):
    """The adversarial probes are part of each cell's fingerprint, so a rebuild must find them again."""
    attacks = tmp_path / "attacks"
    attacks.mkdir()
    (attacks / "attribute.csv").write_text("prompt,seed\nzq crimsonish blob,7\n")
    plan = BenchPlan("test", ["attribute"], ["uce"], per_tier=2, n_preserve=3, n_adversarial=1, overrides=TINY)
    paths = BenchPaths(tmp_path, tmp_path / "BENCHMARKS.md")

    def bench(report_only, folder=paths):
        return run_benchmark(pipe, None, plan, folder, "erasekit bench --test", adversarial_csv=attacks,
                             report_only=report_only, progress=False, reader=reader, settings=SETTINGS)

    run, _ = bench(False)
    assert run.results["attribute"]["original"]["target_rate"]["adversarial"] is not None
    monkeypatch.setattr(bench_runner, "measure_task", lambda *a, **k: pytest.fail("report-only measured"))
    rebuilt, report = bench(True)
    assert rebuilt.missing == [] and sorted(rebuilt.reused) == ["attribute/original", "attribute/uce"]
    text = report.read_text()
    assert "| uce | 0 |" in text
    # the header says what the stored cells took to measure, not only this (measuring-free) invocation
    stored = sum(c["eval_seconds"] + c.get("erase_seconds", 0) for c in run.results["attribute"].values())
    assert "0 cells computed, 2 reused" in text and f"cells shown took {stored / 60:.1f} min" in text

    # Nothing stored for this plan: a clear error, and the report already there is left alone.
    empty = BenchPaths(tmp_path / "elsewhere", tmp_path / "BENCHMARKS.md")
    before = report.read_text()
    with pytest.raises(NoStoredCellsError, match="left as it was"):
        bench(True, empty)
    assert report.read_text() == before


@pytest.mark.slow
def test_a_selective_run_reports_every_stored_cell(pipe, reader, tmp_path):
    """`bench --method X` computes X only, and the report still shows the other stored methods."""
    whole = _plan()
    first, _ = _run(pipe, reader, tmp_path, whole.select(methods=["uce"]))
    assert sorted(first.computed) == ["attribute/original", "attribute/uce"]
    paths = BenchPaths(tmp_path, tmp_path / "BENCHMARKS.md")
    run, report = run_benchmark(pipe, None, whole.select(methods=["esd-x"]), paths, "erasekit bench --test",
                                adversarial_csv=tmp_path / "no-attacks", progress=False, reader=reader,
                                settings=SETTINGS, report_plan=whole)
    assert run.computed == ["attribute/esd-x"] and sorted(run.reused) == ["attribute/original", "attribute/uce"]
    text = report.read_text()
    assert "| uce | 0 |" in text and "| esd-x | 2 |" in text and "1 cells computed, 2 reused" in text


@pytest.mark.slow
def test_extra_seeds_measure_fine_tunes_again_and_report_their_spread(pipe, reader, tmp_path, monkeypatch):
    """`bench --seed 1`: every fine-tune again with config seed 1 (not the closed form), a spread table, resumable."""
    run, report = _run(pipe, reader, tmp_path, _plan().with_extra_seeds([1, 0]))
    assert sorted(run.computed) == ["attribute/esd-x", "attribute/esd-x@seed1", "attribute/original", "attribute/uce"]
    main, again = run.results["attribute"]["esd-x"], run.replicates["attribute"][1]["esd-x"]
    assert list(run.replicates["attribute"][1]) == ["esd-x"]  # UCE draws nothing: no replicate
    assert main["configs"][0]["seed"] == 0 and again["configs"][0]["seed"] == 1
    assert again["delta_ids"] != main["delta_ids"]  # another seed, another fine-tune
    stored = json.loads((tmp_path / "cells" / "attribute" / "esd-x@seed1.json").read_text())
    assert stored["label"] == "esd-x@seed1" and stored["variant"] == "esd-x"
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| esd-x | 0, 1 |"))
    preservation = [main["preservation"], again["preservation"]]
    mean = sum(preservation) / 2
    assert f"{mean:.2f} ({min(preservation):.2f}–{max(preservation):.2f})" in row
    assert "(4 cells)" in text  # the header counts the replicate's machine too

    # Resumable, and a rebuild without --seed still shows the seeds already stored.
    monkeypatch.setattr(bench_runner, "erase_scenario", lambda *a, **k: pytest.fail("recomputed"))
    rerun, _ = _run(pipe, reader, tmp_path, _plan().with_extra_seeds([1]))
    assert rerun.computed == [] and "attribute/esd-x@seed1" in rerun.reused
    plain, report = _run(pipe, reader, tmp_path, _plan())
    assert plain.computed == [] and plain.replicates["attribute"][1]["esd-x"]["delta_ids"] == again["delta_ids"]
    assert "| esd-x | 0, 1 |" in report.read_text()
    with pytest.raises(ValueError, match=">= 0"):
        _plan().with_extra_seeds([-1])


def test_searched_adversarial_probes_are_stored_and_read_back(pipe, reader, tmp_path):
    """A searching source runs once per scenario; a rerun or report rebuild reads its probes back."""
    from erasekit.eval.bench.cells import run_bench
    from erasekit.eval.probes import Probe
    from erasekit.eval.bench.store import CellStore

    class CountingSearch:
        name = "counting search"

        def __init__(self):
            self.calls, self.budget = 0, 1

        def cache_key(self, scenario, n):
            return {"source": self.name, "budget": self.budget, "scenario": scenario.key, "n": n}

        def probes(self, pipe, scenario, n):
            self.calls += 1
            return [Probe("zq crimsonish blob", dict(scenario.targets[0]), 7, "adversarial", 0)], "1 prompt found"

    plan = BenchPlan("test", ["attribute"], ["uce"], per_tier=2, n_preserve=3, n_adversarial=1)
    store, source = CellStore(tmp_path), CountingSearch()

    def bench(compute):
        return run_bench(pipe, plan, store, SETTINGS, reader, adversarial=source, progress=False, compute=compute)

    run = bench(True)
    assert source.calls == 1 and run.results["attribute"]["uce"]["target_rate"]["adversarial"] is not None
    rebuilt = bench(False)
    assert source.calls == 1 and rebuilt.missing == [] and len(rebuilt.reused) == 2
    assert (tmp_path / "cells" / "attribute" / "adversarial_probes.json").is_file()
    source.budget = 2  # other search settings: searched again, not read back
    bench(False)
    assert source.calls == 2


def test_sequential_erasure_composes_into_one_delta(pipe):
    uce = get_method("uce")
    concepts = [get_concept(c, world="shapes") for c in ("red", "green", "blue")]
    names = [f"unet.{n}" for n, _ in pipe.unet.named_parameters()]
    before = snapshot(pipe, names)
    composed, steps = compose_sequential(pipe, lambda c: uce.erase(pipe, c, uce.config_cls.for_world("shapes")),
                                         concepts, "uce")
    assert len(steps) == 3 and steps[1].manifest.parent == steps[0].delta_id
    assert all(torch.equal(before[n], t) for n, t in snapshot(pipe, names).items())  # pipe left original
    for d in steps:  # the chain, applied by hand ...
        apply_delta(pipe, d)
    chained = snapshot(pipe, composed.names)
    for d in reversed(steps):
        revert_delta(pipe, d)
    assert all(torch.equal(chained[n], composed.tensors[n]) for n in composed.names)  # ... equals the composition
    assert not torch.equal(steps[0].tensors[composed.names[0]], composed.tensors[composed.names[0]])


def test_esd_at_kscu_budget_matches_kscu_and_reuses_identical_esd_runs():
    red, striped = get_concept("red", world="shapes"), get_concept("striped", world="shapes")
    circle = get_concept("circle", world="shapes")
    run = method_run("esd@kscu", circle, "shapes", {})
    kscu = method_run("kscu", circle, "shapes", {}).config
    assert run.config.iterations == kscu.resolved("object")[0] and run.config.scope == "non_cross_attn"
    assert run.same_run_as == "esd-u"  # the shapes presets give ESD-u exactly this config
    # an attribute takes KSCU's per-kind settings (K/V scope, lr, K/V retain), not esd-x's preset values
    colour = method_run("esd@kscu", red, "shapes", {}).config
    attribute = get_method("kscu").config_cls.for_world("shapes").for_kind("attribute")
    assert (colour.scope, colour.lr, colour.preserve_kv_weight) == (attribute.scope, attribute.lr,
                                                                    attribute.preserve_kv_weight)
    assert colour.preserve_kv_weight != method_run("esd-x", red, "shapes", {}).config.preserve_kv_weight
    style = method_run("esd@kscu", striped, "shapes", {})
    assert style.config.iterations == kscu.resolved("style")[0] != 150 and style.config.scope == "cross_attn"
    assert style.same_run_as is None
    quick = BenchPlan.quick()
    assert method_run("esd@kscu", red, "shapes", quick.overrides).config.iterations == 30


# ------------------------------------------------------------------ scenarios and hooks
def test_scenario_prompts_are_paired_and_word_the_tier():
    combo = get_scenario("combination")
    explicit, implicit = target_probes(combo, "explicit", 4), target_probes(combo, "implicit", 4)
    assert [p.seed for p in explicit] == [p.seed for p in implicit]
    assert all("red" in p.prompt and "circle" in p.prompt for p in explicit)
    assert all("red" not in p.prompt and "circle" not in p.prompt for p in implicit)
    keep = preservation_probes(combo, 10)
    assert all(p.expected != {"color": "red", "shape": "circle"} for p in keep)
    multi = target_probes(get_scenario("multi"), "explicit", 6)
    assert [p.expected["color"] for p in multi[:3]] == ["red", "green", "blue"]


def test_csv_adversarial_source(tmp_path):
    (tmp_path / "attribute.csv").write_text("prompt,seed\nzq crimsonish blob,7\nanother one,\n")
    probes, note = CsvPromptSource(tmp_path).probes(None, get_scenario("attribute"), 5)
    assert [(p.prompt, p.seed) for p in probes] == [("zq crimsonish blob", 7), ("another one", 20_001)]
    assert probes[0].expected == {"color": "red"} and "2 prompts" in note
    assert CsvPromptSource(tmp_path).probes(None, get_scenario("style"), 5)[0] is None


def test_peak_rss_sees_an_allocation():
    import mmap

    # fresh anonymous pages (a numpy array may reuse resident heap memory freed by earlier tests)
    with PeakRSS() as m:
        block = mmap.mmap(-1, 40_000_000)  # 40 MB
        for i in range(0, len(block), 4096):
            block[i] = 1
    block.close()
    r = m.result()
    assert r["peak_rss_mb"] > 0
    if r["increase_mb"] is not None:
        assert r["increase_mb"] >= 30


# ------------------------------------------------------------------ report text from numbers
def _cell(rate_implicit=0.5, mean=0.5, adherence=0.9, fd=1.0, unet=0.01, scope=0.1, iterations=10, n=100,
          seconds=1.0):
    return {"target_rate": {"explicit": mean, "synonym": mean, "implicit": rate_implicit, "adversarial": None},
            "target_rate_mean": mean, "n_per_tier": {"explicit": n, "synonym": n, "implicit": n},
            "preservation_adherence": {"checked": adherence}, "n_preserve": n, "preservation": adherence / 0.9,
            "frechet_distance": fd, "iterations": iterations, "erase_seconds": seconds, "scopes": ["cross_attn_qkv"],
            "changed": {"unet_fraction": unet, "scope_fraction": scope}, "memory": {}, "same_run_as": None}


def test_orderings_text_follows_the_numbers():
    holds = {"attribute": {"trce": _cell(0.05), "trce-t": _cell(0.30), "trce-v": _cell(0.70),
                           "kscu": _cell(mean=0.10, fd=0.5), "esd@kscu": _cell(mean=0.60, fd=2.0),
                           "trust": _cell(unet=0.001, adherence=0.90, seconds=5.0),
                           "salun": _cell(unet=0.02, adherence=0.60, seconds=9.0)}}
    text = orderings_markdown(holds)
    assert "TRCE(T+V) 0.05, TRCE(T) 0.30, TRCE(V) 0.70" in text
    assert "Ordering T+V < T < V: **holds**" in text
    assert "KSCU 0.10 vs ESD 0.60: KSCU erases more — **holds**" in text
    assert "TRuST changes fewer — **holds**" in text and "TRuST preserves more — **holds**" in text
    assert "TRuST 5.0 s vs SalUn 9.0 s: TRuST faster — **holds**" in text
    assert "| TRCE: T+V < T < V on the implicit tier | 1 | 0 | 0 | 1 |" in text

    flipped = {"style": {"trce": _cell(0.70), "trce-t": _cell(0.30), "trce-v": _cell(0.05),
                         "kscu": _cell(mean=0.60, fd=2.0), "esd@kscu": _cell(mean=0.58, fd=0.5),
                         "trust": _cell(unet=0.05, seconds=3.0), "salun": _cell(unet=0.02)}}
    text = orderings_markdown(flipped)
    assert "Ordering T+V < T < V: **reversed**" in text
    assert "KSCU erases more — **within noise**" in text and "KSCU closer to the original — **reversed**" in text
    assert "TRuST changes fewer — **reversed**" in text and "TRuST faster — **reversed**" in text
    assert "not measured" not in text
    assert "not measured" in orderings_markdown({"object": {"uce": _cell()}})


def test_noise_band_verdicts():
    assert expect_lower(0.10, 0.50, 32, 32) == HOLDS
    assert expect_lower(0.50, 0.10, 32, 32) == REVERSED
    assert expect_lower(0.40, 0.45, 32, 32) == NOISE
    assert expect_lower(0.0, 0.0, 32, 32) == NOISE


def test_report_writes_tables_and_plots_from_given_cells(tmp_path):
    plan = BenchPlan("full", ["attribute", "combination"], ["uce", "trust"], per_tier=100, n_preserve=100,
                     n_adversarial=0)
    original = _cell(rate_implicit=0.97, mean=0.97)
    run = BenchRun(plan, results={
        "attribute": {"original": original, "uce": _cell(0.25, mean=0.31, fd=0.125), "trust": _cell(0.8, mean=0.8)},
        "combination": {"original": _cell(0.1, mean=0.1) | {"target_rate": {"explicit": 0.1, "synonym": 0.1,
                                                                          "implicit": 0.1}},
                        "uce": _cell()}},
        adversarial_note="skipped: test", model_fingerprint="abc", detector_fingerprint="def")
    path = write_report(run, tmp_path / "BENCHMARKS.md", tmp_path / "plots", "erasekit bench", vars(SETTINGS))
    text = path.read_text()
    assert "| uce | 10 | 0.31 | 0.31 | 0.25 | – | 0.31 | 1.00 | 0.125 |" in text
    assert "adversarial tier: skipped: test" in text and "`erasekit bench`" in text
    assert "only 0.10 of the explicit prompts" in text  # generated caveat for a weak baseline
    assert "only 0.97" not in text
    assert "replaced first (`erasekit.concepts.joint`)." in text  # no multi-concept scenario: nothing moved
    for key in ("attribute", "combination"):
        assert (tmp_path / "plots" / f"pareto_{key}.png").stat().st_size > 1000
        assert f"](plots/pareto_{key}.png)" in text


def test_cli_rejects_an_unknown_scenario_before_loading_anything():
    from typer.testing import CliRunner

    from erasekit.cli import app

    result = CliRunner().invoke(app, ["bench", "--quick", "--scenario", "nope"])
    assert result.exit_code == 2
    assert "unknown scenario nope" in result.output


def test_config_fingerprint_leaves_out_extensions_at_their_defaults():
    """Bench cells are keyed by `fingerprint()`: an option added later, still off, does not make them stale."""
    from erasekit.methods.esd import ESDConfig
    from erasekit.methods.trust import TRuSTConfig as TrustConfig

    shapes = ESDConfig.preset("shapes")
    assert shapes.fingerprint()["lr"] == 1e-4
    assert not {"preserve_weight", "preserve_pool_size", "preserve_latents"} & set(shapes.fingerprint())
    assert ESDConfig.preset("shapes", preserve_weight=10.0).fingerprint()["preserve_weight"] == 10.0
    assert shapes.fingerprint() != ESDConfig.preset("shapes", preserve_latents="partial").fingerprint()
    assert "mask_contrast" not in TrustConfig().fingerprint()
    assert TrustConfig(mask_contrast=1.0).fingerprint()["mask_contrast"] == 1.0


def test_features_of_a_replaced_original_are_dropped(tmp_path):
    from erasekit.eval.bench.store import CellStore

    store = CellStore(tmp_path)
    store.save_features("object", "old", np.zeros((2, 3)))
    store.save_features("style", "other", np.zeros((2, 3)))
    store.save_features("object", "new", np.ones((2, 3)))
    assert store.load_features("object", "old") is None and store.load_features("object", "new").sum() == 6
    assert store.load_features("style", "other") is not None  # other scenarios untouched
