"""`erasekit ls`, `erasekit env` and the top-level API: what they list is what is registered."""

import importlib.metadata
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import erasekit
from erasekit.cli import app
from erasekit.concepts.packs import list_concepts
from erasekit.eval.attacks.run import attack_names
from erasekit.eval.detectors import list_detectors
from erasekit.methods.base import get_method, list_methods
from erasekit.models.scopes import list_scopes

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _rows(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines() if line and not line.startswith(" ")}


def test_ls_methods_lists_every_method_with_its_presets_and_an_existing_doc_page():
    code, out = _run("ls", "methods")
    assert code == 0
    rows = _rows(out)
    assert sorted(rows) == list_methods()
    for name, row in rows.items():
        presets = ["sd", *get_method(name).config_cls.PRESETS]
        assert f"presets: {', '.join(presets)}" in row
        assert get_method(name).summary in row
        page = f"docs/methods/{name}.md"
        assert page in row and (ROOT / page).is_file()
    assert "closed-form" in rows["uce"] and "closed-form" in rows["trce-t"] and "fine-tune" in rows["esd-x"]


def test_ls_presets_prints_the_values_each_preset_sets():
    code, out = _run("ls", "presets", "esd-u")
    assert code == 0
    retain = get_method("esd-u").config_cls.PRESETS["shapes-retain"]
    line = next(x for x in out.splitlines() if x.strip().startswith("shapes-retain:"))
    for key, value in retain.items():
        assert f"{key}={value!r}" in line if isinstance(value, str) else f"{key}={value}" in line
    code, out = _run("ls", "presets")
    assert code == 0 and all(f"{m} (" in out for m in list_methods())


def test_ls_concepts_scopes_detectors_attacks_match_their_registries():
    code, out = _run("ls", "concepts", "shapes")
    assert code == 0 and sorted(_rows(out)) == sorted(list_concepts("shapes"))
    assert "shapes/red " in out and "attribute" in _rows(out)["shapes/red"] and "anchor: 'green'" in out
    code, out = _run("ls", "concepts")
    assert code == 0 and sorted(_rows(out)) == sorted(list_concepts())
    for what, names in (("scopes", list_scopes()), ("detectors", list_detectors()), ("attacks", attack_names())):
        code, out = _run("ls", what)
        assert code == 0 and sorted(_rows(out)) == sorted(names), what
    assert "to_k/to_v" in _rows(_run("ls", "scopes")[1])["cross_attn_kv"]
    assert "NudeNet" in _rows(_run("ls", "detectors")[1])["nudenet"]


def test_ls_scenarios_lists_the_task_files_in_table_order():
    from erasekit.eval.tasks import task_files, task_keys

    code, out = _run("ls", "scenarios")
    assert code == 0 and list(_rows(out)) == task_keys()
    assert sorted(task_keys()) == sorted(f.name.removesuffix(".yaml") for f in task_files())
    assert "red, green, blue" in _rows(out)["multi"] and "tasks/shapes/multi.yaml" in _rows(out)["multi"]


@pytest.mark.parametrize("args, message", [
    (("ls", "presets", "esdx"), "did you mean esd-x"),
    (("ls", "concepts", "nope"), "unknown pack 'nope'"),
    (("ls", "scopes", "extra"), "takes no name"),
])
def test_ls_bad_input_is_a_one_line_error_with_exit_code_2(args, message):
    code, out = _run(*args)
    assert code == 2 and message in out


def test_ls_rejects_an_unknown_kind():
    code, _ = _run("ls", "widgets")
    assert code == 2


def test_env_reports_versions_devices_and_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    code, out = _run("env")
    assert code == 0
    values = dict(line.split(": ", 1) for line in out.splitlines())
    for package in ("torch", "diffusers", "transformers", "accelerate", "erasekit"):
        assert values[package] == importlib.metadata.version(package)
    assert values["python"].startswith(".".join(map(str, __import__("sys").version_info[:3])))
    assert values["torch threads"].startswith(f"{torch.get_num_threads()} ")
    assert values["cpu count"] == str(os.cpu_count())
    assert values["OMP_NUM_THREADS"] == "3"
    assert values["cuda devices"].startswith(str(torch.cuda.device_count() if torch.cuda.is_available() else 0))
    assert Path(values["erasekit location"]) == Path(erasekit.__file__).resolve().parent


def test_top_level_api_is_the_library_s_own_objects():
    from erasekit.concepts.packs import get_concept
    from erasekit.eval.evaluate import evaluate
    from erasekit.models.delta import apply_delta, revert_delta
    from erasekit.models.loading import load_pipeline

    assert erasekit.load_pipeline is load_pipeline and erasekit.get_concept is get_concept
    assert erasekit.get_method is get_method and erasekit.evaluate is evaluate
    assert erasekit.apply_delta is apply_delta and erasekit.revert_delta is revert_delta
    assert erasekit.__version__ == importlib.metadata.version("erasekit")
    assert set(erasekit.__all__) >= {"load_pipeline", "get_concept", "get_method", "apply_delta", "revert_delta",
                                     "evaluate", "__version__"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        erasekit.nope  # noqa: B018
