"""Every export writes a model card (huggingface_hub ModelCard) with the base model, method, concept,
config, erasekit version and, with --eval, the evaluation's rates; --push-to-hub goes through HfApi
(a stub here: no hub is reachable)."""

import json

import pytest
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.concepts.packs import get_concept
from erasekit.methods.base import get_method
from erasekit.models.tiny import tiny_pipeline

# tiny pipelines run fastest on one thread (two crawl on a busy machine)
pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(base model folder, run folder of a UCE 'circle' delta on it)."""
    root = tmp_path_factory.mktemp("card")
    pipe = tiny_pipeline("sd1")
    pipe.save_pretrained(str(root / "base"))
    info = get_method("uce")
    info.erase(pipe, get_concept("circle"), info.config_cls.preset("sd")).save(root / "run")
    return root / "base", root / "run"


def _export(base, run, out, *extra):
    return runner.invoke(app, ["export", "--delta", str(run), "--model", str(base), "--out", str(out), *extra])


@pytest.mark.parametrize("fmt", ["diffusers", "lora", "kohya", "single-file"])
def test_every_format_gets_a_model_card(tiny_run, tmp_path, fmt):
    from erasekit.export.model_card import erasekit_version

    base, run = tiny_run
    res = _export(base, run, tmp_path / "out", "--format", fmt)
    assert res.exit_code == 0, res.output
    card = ModelCard.load(str(tmp_path / "out" / "README.md"))
    assert card.data.library_name == "diffusers" and "erasekit" in card.data.tags
    assert ("lora" in card.data.tags) == (fmt in ("lora", "kohya"))
    manifest = json.loads((run / "manifest.json").read_text())
    for fact in (str(base), "`uce`", "circle", manifest["delta_id"], f"erasekit version: {erasekit_version()}",
                 f"exported as **{fmt}**", '"eta"'):
        assert fact in card.text, fact
    assert json.loads((tmp_path / "out" / "erasekit_delta.json").read_text())["delta_id"] == manifest["delta_id"]


def _results(delta_id):
    return {"settings": {"model": "base", "delta": {"method": "uce", "delta_id": delta_id},
                         "detector": {"name": "shapes-detector"}},
            "metrics": {"asr": {"explicit": 0.031, "all": 0.05}, "asr_original": {"explicit": 0.97, "all": 0.9},
                        "asr_ci95": {"explicit": [0.0056, 0.1574], "all": [0.02, 0.12]}, "preservation": 0.94}}


def test_eval_results_go_into_the_card(tiny_run, tmp_path):
    base, run = tiny_run
    delta_id = json.loads((run / "manifest.json").read_text())["delta_id"]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(_results(delta_id)))
    res = _export(base, run, tmp_path / "out", "--format", "lora", "--eval", str(tmp_path / "eval"))
    assert res.exit_code == 0, res.output
    text = (tmp_path / "out" / "README.md").read_text()
    assert "| target rate, explicit (detector shapes-detector) | 0.970 | 0.031 [0.006, 0.157] |" in text
    assert "| preservation (erased / original) |  | 0.940 |" in text


def test_eval_of_another_delta_is_refused_before_writing(tiny_run, tmp_path):
    base, run = tiny_run
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(_results("0123456789abcdef")))
    res = _export(base, run, tmp_path / "out", "--eval", str(tmp_path / "eval"))
    assert res.exit_code == 2 and "not the exported delta" in res.output
    assert not (tmp_path / "out").exists()


class StubApi:
    """Records what HfApi would have been asked (and what the folder held at upload time)."""

    calls: list = []
    fail_with: Exception | None = None

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        if StubApi.fail_with is not None:
            raise StubApi.fail_with
        StubApi.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
        from pathlib import Path

        files = sorted(p.name for p in Path(folder_path).iterdir())
        StubApi.calls.append(("upload_folder", repo_id, repo_type, files))


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(tiny_run, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", StubApi)
    StubApi.calls, StubApi.fail_with = [], None
    base, run = tiny_run
    out = tmp_path / "no-circle"
    res = _export(base, run, out, "--format", "kohya", "--push-to-hub", "me/no-circle", "--private")
    assert res.exit_code == 0, res.output
    assert StubApi.calls == [("create_repo", "me/no-circle", "model", True, True),
                             ("upload_folder", "me/no-circle", "model",
                              ["README.md", "erasekit_delta.json", "no-circle.safetensors"])]
    assert "https://huggingface.co/me/no-circle" in res.output


def test_hub_failure_is_one_line_and_keeps_the_export(tiny_run, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", StubApi)
    StubApi.calls, StubApi.fail_with = [], OSError("401 Client Error: Unauthorized\nmore detail")
    base, run = tiny_run
    res = _export(base, run, tmp_path / "out", "--format", "lora", "--push-to-hub", "me/x")
    StubApi.fail_with = None
    assert res.exit_code == 2 and "401 Client Error: Unauthorized" in res.output and "more detail" not in res.output
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    res = _export(base, run, tmp_path / "out2", "--format", "lora", "--push-to-hub", "not-a-repo-id")
    assert res.exit_code == 2 and "owner/name" in res.output
    assert not (tmp_path / "out2").exists()  # checked before any work
