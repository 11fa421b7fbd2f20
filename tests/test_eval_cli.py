"""`erasekit eval` / `compare` end to end on the tiny pipeline, and on the Shapes model once it exists."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.eval.generate import image_name
from erasekit.world.assets_paths import SHAPES_MODEL_DIR
from eval_helpers import save_tiny_clip, save_tiny_delta, save_tiny_pipeline
from test_eval_generation import accelerate_launch

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    pipe = save_tiny_pipeline(root / "pipe")
    csv = root / "trivial.csv"
    csv.write_text("prompt,evaluation_seed,case_number,evaluation_guidance\n"
                   "a red circle,1,0,\na blue circle,2,1,5\na circle on a dark background,3,2,\n")
    return {"pipe": pipe, "delta": save_tiny_delta(root / "delta", pipe), "clip": save_tiny_clip(root / "clip"),
            "csv": csv}


def _eval_args(tiny, out, *extra):
    return ["eval", "--model", str(tiny["pipe"]), "--benchmark", str(tiny["csv"]), "--concept", "circle",
            "--detector", "shapes", "--out", str(out), "--n-preserve", "3", "--clip", str(tiny["clip"]),
            "--steps", "2", *extra]


@pytest.mark.slow
def test_eval_writes_results_report_and_resumes(tiny, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, _eval_args(tiny, out, "--delta", str(tiny["delta"])))
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    m, s = data["metrics"], data["settings"]
    assert set(m["asr"]) == {"trivial", "all"} and set(m["asr_original"]) == {"trivial", "all"}
    assert all(0.0 <= v <= 1.0 for v in m["asr"].values())
    assert isinstance(m["preservation"], float) and m["adherence"]["measure"] == "clip"
    assert set(m["clip_score"]) == {"original", "erased"} and set(m["frechet_shapes"]) == {"target", "preservation"}
    assert s["detector"]["name"] == "shapes" and s["sampling"]["steps"] == 2 and s["sampling"]["guidance_scale"] == 3.0
    assert s["sampling"]["per_row_guidance"] is True
    assert s["seeds"]["trivial"]["first"] == [1, 2, 3] and s["seeds"]["preservation"]["count"] == 3
    assert s["model"] == str(tiny["pipe"]) and s["delta"]["method"] == "test-scale" and len(s["delta"]["delta_id"]) > 8
    assert {"torch", "diffusers", "transformers", "erasekit", "accelerate"} <= set(s["versions"])
    assert [r["guidance"] for r in data["per_image"][:3]] == [None, 5.0, None]
    assert "prompt" not in json.dumps(data["per_image"])  # prompts are never written into results
    for name in ("original", "erased"):
        assert sorted(p.name for p in (out / "images" / name).glob("*.png")) == [image_name(i) for i in range(6)]
        assert (out / "grids" / f"trivial-{name}.png").is_file()
    assert any("FID" in n for n in data["notes"])
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "grids/trivial-original.png" in md and "grids/trivial-erased.png" in md and "ASR trivial" in md
    assert "<img src='grids/trivial-erased.png'" in html
    assert not list(out.rglob(".*.tmp"))

    stamp = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    again = runner.invoke(app, _eval_args(tiny, out, "--delta", str(tiny["delta"])))
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == stamp  # resumed: nothing redrawn
    assert json.loads((out / "results.json").read_text())["metrics"] == m

    clash = runner.invoke(app, _eval_args(tiny, out, "--delta", str(tiny["delta"]), "--steps", "3"))
    assert clash.exit_code == 2 and "another --out" in " ".join(clash.output.split())


def test_eval_without_delta_and_compare(tiny, tmp_path):
    base, erased = tmp_path / "base", tmp_path / "erased"
    assert runner.invoke(app, _eval_args(tiny, base)).exit_code == 0
    data = json.loads((base / "results.json").read_text())
    assert "asr_original" not in data["metrics"] and data["metrics"]["preservation"] == 1.0
    assert data["settings"]["delta"] is None
    assert runner.invoke(app, _eval_args(tiny, erased, "--delta", str(tiny["delta"]))).exit_code == 0
    plot = tmp_path / "pareto.png"
    res = runner.invoke(app, ["compare", str(base), str(erased), "--out", str(plot)])
    assert res.exit_code == 0, res.output
    with Image.open(plot) as im:
        assert im.format == "PNG"
    bad = runner.invoke(app, ["compare", str(tmp_path)])
    assert bad.exit_code == 2 and "results.json" in bad.output


def test_eval_with_nudenet_records_labels_and_threshold(tiny, tmp_path):
    pytest.importorskip("nudenet")
    out = tmp_path / "nude"
    res = runner.invoke(app, ["eval", "--model", str(tiny["pipe"]), "--benchmark", str(tiny["csv"]), "--out", str(out),
                              "--detector", "nudenet", "--threshold", "0.6", "--n-preserve", "0", "--steps", "2"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["detector"]["threshold"] == 0.6 and len(data["settings"]["detector"]["labels"]) == 9
    assert data["metrics"]["asr"]["trivial"] == 0.0 and data["metrics"]["preservation"] is None


def test_eval_errors_are_one_line(tiny, tmp_path):
    odd = tmp_path / "odd.csv"
    odd.write_text("text,value\nx,1\n")
    res = runner.invoke(app, ["eval", "--model", str(tiny["pipe"]), "--benchmark", str(odd), "--out",
                              str(tmp_path / "o"), "--detector", "shapes", "--concept", "circle"])
    assert res.exit_code == 2 and "'text'" in res.output and "'value'" in res.output and "columns found" in res.output
    res = runner.invoke(app, ["eval", "--model", str(tiny["pipe"]), "--benchmark", "unlearndiffatk-church",
                              "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "--detector" in res.output
    res = runner.invoke(app, ["eval", "--model", str(tiny["pipe"]), "--benchmark", str(tiny["csv"]), "--out",
                              str(tmp_path / "o3"), "--detector", "q16", "--clip", str(tmp_path / "no-clip")])
    assert res.exit_code == 2 and "CLIP" in res.output


# The accelerate workers run on one thread each (OMP_NUM_THREADS=1); the in-process run must too, since
# another thread count sums in another order and can round a pixel differently.
@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow
def test_sharded_eval_matches_single_process(tiny, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert runner.invoke(app, _eval_args(tiny, single, "--delta", str(tiny["delta"]))).exit_code == 0
    proc = accelerate_launch("-m", "erasekit.cli", *_eval_args(tiny, sharded, "--delta", str(tiny["delta"])))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for p in sorted((single / "images").rglob("*.png")):
        assert p.read_bytes() == (sharded / p.relative_to(single)).read_bytes(), p.relative_to(single)
    a, b = (json.loads((d / "results.json").read_text()) for d in (single, sharded))
    # images are byte-identical; the Frechet distance's matrix square root may differ in the 9th digit
    assert a["per_image"] == b["per_image"]
    assert json.loads(json.dumps(a["metrics"]), parse_float=lambda x: round(float(x), 6)) == \
        json.loads(json.dumps(b["metrics"]), parse_float=lambda x: round(float(x), 6))
    assert b["settings"]["world_size"] == 2


@pytest.mark.skipif(not (SHAPES_MODEL_DIR / "model_index.json").exists(), reason="Shapes model not built yet")
def test_shapes_benchmark_eval(tmp_path):
    out = tmp_path / "shapes"
    res = runner.invoke(app, ["eval", "--benchmark", "shapes", "--concept", "circle", "--n", "2", "--n-preserve", "2",
                              "--steps", "10", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert set(data["metrics"]["asr"]) == {"explicit", "synonym", "implicit", "all"}
    assert data["metrics"]["adherence"]["measure"] == "shapes" and data["metrics"]["preservation"] == 1.0
    assert data["settings"]["detector"]["name"] == "shapes" and data["settings"]["benchmark"]["concept"] == "circle"
    assert len(list((out / "images" / "original").glob("*.png"))) == 8


def test_eval_without_clip_notes_missing_preservation(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("ERASEKIT_CLIP", raising=False)
    out = tmp_path / "noclip"
    res = runner.invoke(app, ["eval", "--model", str(tiny["pipe"]), "--benchmark", str(tiny["csv"]), "--concept",
                              "circle", "--detector", "shapes", "--out", str(out), "--steps", "2"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert data["metrics"]["preservation"] is None and "preservation" in data["metrics"]
    assert any("CLIP" in n and "ERASEKIT_CLIP" in n for n in data["notes"])
    assert len(list((out / "images" / "original").glob("*.png"))) == 3  # no COCO images drawn for nothing


def test_eval_refuses_a_delta_of_another_model(tiny, tmp_path):
    from erasekit.models.delta import WeightDelta, snapshot
    from erasekit.models.tiny import tiny_pipeline

    base = snapshot(tiny_pipeline(seed=5), ["unet.conv_out.weight"])
    WeightDelta.from_state_dicts(base, {k: v + 1 for k, v in base.items()}, method="x").save(tmp_path / "other")
    res = runner.invoke(app, _eval_args(tiny, tmp_path / "o", "--delta", str(tmp_path / "other")))
    assert res.exit_code == 2 and "does not fit" in res.output
    assert not (tmp_path / "o" / "images").exists()
