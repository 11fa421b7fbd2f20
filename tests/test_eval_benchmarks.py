"""Benchmark loaders: the real public files (when shared/ is there), synthetic gated layouts, errors.

I2P and UnlearnDiffAtk-nudity hold unsafe text: these tests never print or assert on prompt text.
"""

import pytest

from erasekit.eval.benchmarks import (BUNDLED, BenchmarkFormatError, BenchmarkRow, coco_prompts, load_benchmark,
                                      parse_csv)
from erasekit.eval.plan import build_plan, shapes_preservation_rows, shapes_target_rows
from eval_helpers import BENCH_DIR

REAL = {
    "i2p.csv": 4703, "unlearndiffatk_nudity.csv": 142, "unlearndiffatk_church.csv": 50,
    "unlearndiffatk_garbage_truck.csv": 50, "unlearndiffatk_parachute.csv": 50, "unlearndiffatk_tench.csv": 50,
    "unlearndiffatk_vangogh.csv": 50, "coco_30k.csv": 30000, "big_artist_prompts.csv": 100,
    "niche_art_prompts.csv": 120, "vangogh_prompts.csv": 50, "small_imagenet_prompts.csv": 100,
    "imagenet_prompts.csv": 1860,
}
needs_shared = pytest.mark.skipif(not BENCH_DIR.is_dir(), reason="shared/data/benchmarks not present")


def _problems(rows) -> dict[str, int]:
    """Counts of malformed rows (never the rows themselves: some prompts are unsafe text)."""
    __tracebackhide__ = True
    return {"not_rows": sum(not isinstance(r, BenchmarkRow) for r in rows),
            "non_str_prompt": sum(not isinstance(r.prompt, str) for r in rows),
            "empty_prompt": sum(not r.prompt.strip() for r in rows),
            "bad_seed": sum(not (isinstance(r.seed, int) and r.seed >= 0) for r in rows),
            "bad_guidance": sum(not (r.guidance is None or isinstance(r.guidance, float)) for r in rows)}


CLEAN = {"not_rows": 0, "non_str_prompt": 0, "empty_prompt": 0, "bad_seed": 0, "bad_guidance": 0}


# Assertions below compare plain numbers and strings computed first, so a failure never shows a row.
@needs_shared
@pytest.mark.parametrize("filename,count", sorted(REAL.items()))
def test_real_files_parse_with_readme_row_counts(filename, count):
    b = load_benchmark(BENCH_DIR / filename)
    n_rows, layout, problems = len(b.rows), b.layout, _problems(b.rows)
    missing_guidance = sum(r.guidance is None for r in b.rows)
    # upstream I2P has one empty prompt (case 2260): it is skipped, and a note says so
    skipped = 1 if filename == "i2p.csv" else 0
    assert n_rows == count - skipped
    assert sum("skipped" in note for note in b.notes) == skipped
    assert problems == CLEAN
    assert layout == ("i2p" if filename in ("i2p.csv", "unlearndiffatk_nudity.csv") else "prompt")
    if "evaluation_guidance" in (BENCH_DIR / filename).read_text(encoding="utf-8").splitlines()[0]:
        assert missing_guidance == 0


@needs_shared
def test_i2p_category_filter_and_per_row_settings():
    b = load_benchmark(BENCH_DIR / "i2p.csv", category="sexual")
    n_rows, category = len(b.rows), b.category
    not_sexual = sum("sexual" not in r.extra["categories"] for r in b.rows)
    assert (n_rows, category, not_sexual) == (931, "sexual", 0)
    full = load_benchmark(BENCH_DIR / "i2p.csv")
    cases = [r.case_number for r in full.rows[:3]]
    seed0, guidance0 = full.rows[0].seed, full.rows[0].guidance
    assert cases == [0, 1, 2] and (seed0, guidance0) == (4261553411, 13.0)
    n10 = len(load_benchmark(BENCH_DIR / "i2p.csv", category="sexual", n=10).rows)
    assert n10 == 10


@needs_shared
def test_user_supplied_names_resolve_through_the_env_folder(monkeypatch):
    monkeypatch.delenv("ERASEKIT_BENCHMARKS", raising=False)
    with pytest.raises(BenchmarkFormatError, match="not bundled"):
        load_benchmark("i2p")
    monkeypatch.setenv("ERASEKIT_BENCHMARKS", str(BENCH_DIR))
    n_rows = len(load_benchmark("unlearndiffatk-nudity").rows)
    assert n_rows == 142


@pytest.mark.parametrize("name,count", [("coco", 30000), ("artists", 100), ("vangogh", 50), ("niche-art", 120),
                                        ("imagenette", 100), ("imagenet", 1860), ("unlearndiffatk-church", 50),
                                        ("unlearndiffatk-garbage-truck", 50), ("unlearndiffatk-parachute", 50),
                                        ("unlearndiffatk-tench", 50), ("unlearndiffatk-vangogh", 50)])
def test_bundled_names(name, count):
    b = load_benchmark(name)
    assert len(b.rows) == count and b.name == name and b.source.endswith(BUNDLED[name])
    assert _problems(b.rows) == CLEAN
    assert all(r.tier == name for r in b.rows)


def test_coco_sample_size_and_extra_columns():
    b = load_benchmark("coco", n=3000)
    assert len(b.rows) == 3000
    assert [r.prompt for r in b.rows[:5]] == coco_prompts(5)
    assert "source" in b.rows[0].extra and b.rows[0].case_number == int(b.rows[0].case_number)
    art = load_benchmark("artists").rows[0]
    assert art.extra["artist"] and art.guidance is None


def test_mma_layout_evaluates_adv_prompt(tmp_path):
    path = tmp_path / "mma.csv"
    path.write_text("target_prompt,adv_prompt,sanitized_adv_prompt,success_against_sanitization_defense,clean_prompt\n"
                    "t0,adv zero,san0,True,clean0\n"
                    "t1,\"adv, one\",san1,False,clean1\n")
    b = load_benchmark(path)
    assert b.layout == "mma"
    assert [r.prompt for r in b.rows] == ["adv zero", "adv, one"]
    assert [r.seed for r in b.rows] == [42, 42] and [r.case_number for r in b.rows] == [0, 1]
    assert b.rows[1].extra["clean_prompt"] == "clean1" and b.rows[0].extra["target_prompt"] == "t0"


def test_ring_a_bell_layout_defaults_to_seed_42(tmp_path):
    path = tmp_path / "ring.csv"
    path.write_text("sensitive prompt,normal prompt\nsens a,norm a\nsens b,norm b\nsens c,norm c\n")
    b = load_benchmark(path)
    assert b.layout == "ring-a-bell" and len(b.rows) == 3
    assert all(r.seed == 42 and r.guidance is None for r in b.rows)
    assert b.rows[2].prompt == "sens c" and b.rows[2].extra == {"normal prompt": "norm c"}


def test_p4d_and_attack_output_layouts(tmp_path):
    path = tmp_path / "p4d.csv"
    path.write_text("prompt,evaluation_seed,case_number,safe_prompt\nx one,123,7,s\nx two,456,9,s\n")
    b = load_benchmark(path, tier="adversarial")
    assert [(r.prompt, r.seed, r.case_number, r.tier) for r in b.rows] == [("x one", 123, 7, "adversarial"),
                                                                           ("x two", 456, 9, "adversarial")]
    layout, rows = parse_csv("prompt\nonly a prompt\n")
    assert layout == "prompt" and rows[0].seed == 42 and rows[0].case_number == 0


def test_unknown_layout_lists_columns(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("text,seed_value\nhello,1\n")
    with pytest.raises(BenchmarkFormatError) as info:
        load_benchmark(path)
    assert "'text'" in str(info.value) and "'seed_value'" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(BenchmarkFormatError, match="categories"):
        load_benchmark("coco", category="sexual")
    with pytest.raises(BenchmarkFormatError, match="unknown benchmark"):
        load_benchmark(tmp_path / "missing.csv")


def test_shapes_benchmark_rows_and_plan():
    rows = shapes_target_rows("circle", 4)
    assert [r.tier for r in rows] == ["explicit"] * 4 + ["synonym"] * 4 + ["implicit"] * 4
    assert all(r.extra["shape"] == "circle" for r in rows) and [r.seed for r in rows[:4]] == [0, 1, 2, 3]
    pres = shapes_preservation_rows("circle", 5)
    assert len(pres) == 5 and all(r.extra["shape"] != "circle" and r.tier == "preservation" for r in pres)
    plan = build_plan("shapes", concept="circle", n=4, n_preserve=5, adversarial=[])
    assert plan.tiers == ["explicit", "synonym", "implicit"] and len(plan.rows) == 17 and plan.measure == "shapes"
    with pytest.raises(BenchmarkFormatError, match="circle"):
        build_plan("shapes", concept=None)


def test_plan_with_adversarial_tier_and_coco_preservation(tmp_path):
    adv = tmp_path / "attack.csv"
    adv.write_text("prompt,evaluation_seed,case_number\nadv a,5,0\nadv b,6,1\n")
    plan = build_plan("unlearndiffatk-church", n=3, n_preserve=2, adversarial=[adv])
    assert plan.tiers == ["unlearndiffatk-church", "adversarial"]
    assert len(plan.targets) == 5 and len(plan.preservation) == 2 and plan.measure == "clip"
    assert plan.rows[-1].tier == "preservation"
