"""Careless and hostile inputs to the CLI: each ends in one clear line (exit 2) or is accepted correctly.

Every case asserts the exit code, that the output holds exactly one ``error:`` line (for a
refusal) naming the problem and no traceback, and that no file already on disk changed
(hashes of every file under the module's input folder and the test's folder, before and
after).  Accepted cases check what they must do (a note said once, a stale image redrawn).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.models.delta import MANIFEST_FILE, TENSORS_FILE, WeightDelta
from eval_helpers import save_tiny_delta, save_tiny_pipeline

# 152 CLI runs (about 2.5 min here): the acceptance suite runs in `make test`, not in the `make test-fast` loop
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
runner = CliRunner()
BIG = str(2**63)


# ------------------------------------------------------------------ inputs on disk
def _forge(src: Path, dst: Path, mutate) -> Path:
    """A copy of the delta in ``src`` changed by ``mutate(tensors, manifest)``, both files kept consistent."""
    from safetensors.torch import save_file

    d = WeightDelta.load(src)
    tensors = {n: t.clone() for n, t in d.tensors.items()}
    manifest = json.loads((src / MANIFEST_FILE).read_text())
    mutate(tensors, manifest)
    dst.mkdir(parents=True)
    save_file(tensors, str(dst / TENSORS_FILE), metadata={"format": "erasekit-delta", "delta_id": manifest["delta_id"]})
    (dst / MANIFEST_FILE).write_text(json.dumps(manifest))
    return dst


def _poison(tensors, manifest):
    """NaN in the first tensor; its hash and the delta id recomputed, as a careful forger would."""
    from erasekit.models.delta import TensorRecord, _delta_id, fingerprint

    first = manifest["tensors"][0]["name"]
    tensors[first].view(-1)[0] = float("nan")
    manifest["tensors"][0]["new_sha256"] = fingerprint(tensors[first])
    manifest["delta_id"] = _delta_id([TensorRecord(**r) for r in manifest["tensors"]], manifest.get("parent"))


def _add_tensor(tensors, manifest):
    """An extra tensor in both files, the delta id left as it was."""
    from erasekit.models.delta import fingerprint

    extra = torch.zeros(4)
    tensors["unet.conv_in.bias"] = extra
    manifest["tensors"].append({"name": "unet.conv_in.bias", "shape": [4], "dtype": "float32",
                                "base_sha256": "0" * 64, "new_sha256": fingerprint(extra)})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs shared by every case (never written to by a case)."""
    from PIL import Image

    from erasekit.concepts.packs import get_concept
    from erasekit.methods.base import get_method
    from erasekit.models.loading import load_pipeline

    root = tmp_path_factory.mktemp("hostile")
    w = SimpleNamespace(root=root)
    w.tiny = save_tiny_pipeline(root / "tiny")
    w.tiny_delta = save_tiny_delta(root / "tiny-delta", w.tiny)
    w.tiny_nan = _forge(w.tiny_delta, root / "tiny-nan", _poison)
    w.tiny_extra = _forge(w.tiny_delta, root / "tiny-extra", _add_tensor)
    w.tiny_child = _child_delta(w)
    uce = get_method("uce")
    w.shapes_delta = root / "shapes-delta"
    uce.erase(load_pipeline("shapes"), get_concept("circle"), uce.config_cls.preset("shapes")).save(w.shapes_delta)
    w.shapes_nan = _forge(w.shapes_delta, root / "shapes-nan", _poison)
    w.file = root / "file.txt"
    w.file.write_text("not a folder\n")
    w.folder = root / "folder"
    (w.folder / "keep.txt").parent.mkdir()
    (w.folder / "keep.txt").write_text("keep\n")
    w.grid = root / "grid.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(w.grid)

    def put(name: str, data: str | bytes) -> Path:
        path = root / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    w.put = put
    w.yaml_bad = put("bad.yaml", "name: [unclosed\ntargets: circle\n")
    w.yaml_latin1 = put("latin1.yaml", b"name: caf\xe9\nkind: object\ntargets: [caf\xe9]\n")
    w.yaml_list = put("list.yaml", "- a\n- b\n")
    w.yaml_python = put("python.yaml", "name: !!python/object/apply:os.system ['true']\n")
    w.yaml_extra = put("extra.yaml", "name: x\nkind: object\ntargets: [circle]\nanchor: square\nflavour: sweet\n")
    w.yaml_no_targets = put("notargets.yaml", "name: x\nkind: object\ntargets: []\n")
    w.yaml_template = put("template.yaml", "name: x\nkind: object\ntargets: [circle]\ntemplates: ['a photo']\n")
    w.yaml_anchor = put("anchor.yaml", "name: x\nkind: object\ntargets: [circle, round shape]\nanchor: Round Shape\n")
    w.json_bad = put("bad.json", '{"name": "x", ')
    w.cfg_unknown = put("unknown.yaml", "no_such_option: 3\n")
    w.cfg_zero = put("zero.yaml", "iterations: 0\n")
    w.cfg_neg_lr = put("neglr.yaml", "lr: -0.001\n")
    w.cfg_nan_lr = put("nanlr.yaml", "lr: .nan\n")
    w.cfg_huge_lr = put("hugelr.yaml", "lr: 1.0e+20\niterations: 3\n")
    w.cfg_empty = put("empty.yaml", "")
    head = "prompt,evaluation_seed,case_number,evaluation_guidance\n"
    w.csv = put("ok.csv", head + "a red circle,1,0,\na blue circle,2,1,5\n")
    w.csv_latin1 = put("latin1.csv", head.encode() + b"caf\xe9 circle,1,0,\n")
    w.csv_quote = put("quote.csv", head + '"a red circle,1,0,\na blue circle,2,1,\n')
    w.csv_header = put("header.csv", head)
    w.csv_empty_file = put("empty.csv", "")
    w.csv_all_empty = put("allempty.csv", head + ",1,0,\n  ,2,1,\n")
    w.csv_some_empty = put("someempty.csv", head + "a red circle,1,0,\n,2,1,\n")
    w.csv_nan_g = put("nang.csv", head + "a red circle,1,0,nan\n")
    w.csv_low_g = put("lowg.csv", head + "a red circle,1,0,0.5\n")
    w.csv_big_seed = put("bigseed.csv", head + f"a red circle,{2**64},0,\n")
    w.csv_bad_seed = put("badseed.csv", head + "a red circle,abc,0,\n")
    w.csv_layout = put("layout.csv", "text,value\nx,1\n")
    w.csv_cats = put("cats.csv", "prompt,categories,evaluation_seed\na red circle,violence,1\n")
    w.csv_long = put("long.csv", head + " ".join(["a red circle"] * 40) + ",1,0,\n")
    w.ckpt = put("model.ckpt", b"\x80\x02not really a pickle")
    w.garbage_st = put("garbage.safetensors", b"garbage" * 20)
    w.truncated_st = put("truncated.safetensors", (w.tiny_delta / TENSORS_FILE).read_bytes()[:100])
    w.no_results = root / "no-results"
    w.no_results.mkdir()
    w.bad_results = root / "bad-results"
    w.bad_results.mkdir()
    (w.bad_results / "results.json").write_text("{garbage")
    return w


# ------------------------------------------------------------------ the cases
@dataclass
class Case:
    id: str
    args: Callable  # (world, tmp) -> list[str]
    code: int = 2
    says: str = ""  # in the error line (code 2) or in the output (code 0)
    setup: Callable | None = None  # (world, tmp) -> None, before the "before" snapshot
    check: Callable | None = None  # (world, tmp, result) -> None, extra assertions
    changes: set[str] = field(default_factory=set)  # files (relative to tmp) allowed to change
    root_only: bool = False


def gen(*extra):
    return lambda w, t: ["generate", "--model", str(w.tiny), "-p", "a red circle", "--steps", "1", "-n", "1",
                         "--out", str(t / "g.png"), *extra]


def gen_out(out):
    return lambda w, t: ["generate", "--model", str(w.tiny), "-p", "a red circle", "--steps", "1", "-n", "1",
                         "--out", str(out(w, t))]


def erase(*extra, out=lambda w, t: t / "run"):
    return lambda w, t: ["erase", "--method", "uce", "--concept", "circle", "--out", str(out(w, t)),
                         *[x(w, t) if callable(x) else x for x in extra]]


def ev(*extra, csv=lambda w: w.csv, out=lambda w, t: t / "ev"):
    return lambda w, t: ["eval", "--model", str(w.tiny), "--benchmark", str(csv(w)), "--concept", "circle",
                         "--detector", "shapes", "--n-preserve", "0", "--steps", "1", "--out", str(out(w, t)),
                         *[x(w, t) if callable(x) else x for x in extra]]


def _eval_once(w, t):
    res = runner.invoke(app, ev()(w, t))
    assert res.exit_code == 0, res.output


def _copy_model_and_eval(w, t):
    shutil.copytree(w.tiny, t / "model")
    res = runner.invoke(app, ev(out=lambda w, t: t / "ev")(w, t)[:2] + [str(t / "model")] + ev()(w, t)[3:])
    assert res.exit_code == 0, res.output
    t.joinpath("before.png").write_bytes((t / "ev" / "images" / "original" / "000000.png").read_bytes())
    from erasekit.models.tiny import tiny_pipeline

    tiny_pipeline(seed=1).save_pretrained(str(t / "model"))  # the folder's weights change, its name does not


def _redrawn_with_new_weights(w, t, res):
    now = (t / "ev" / "images" / "original" / "000000.png").read_bytes()
    assert now != (t / "before.png").read_bytes()


def _damage(size):
    def setup(w, t):
        _eval_once(w, t)
        png = t / "ev" / "images" / "original" / "000001.png"
        png.write_bytes(png.read_bytes()[:size])
    return setup


def _png_complete(w, t, res):
    from PIL import Image

    with Image.open(t / "ev" / "images" / "original" / "000001.png") as im:
        im.load()


def _put_delta(w, t):
    shutil.copytree(w.shapes_delta, t / "run")


def _replaced(w, t, res):
    assert WeightDelta.load(t / "run").manifest.method == "esd-x"


def _child_delta(w) -> Path:
    """A delta made on the tiny model + w.tiny_delta (its parent)."""
    from erasekit.models.delta import apply_delta, snapshot
    from erasekit.models.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    parent = WeightDelta.load(w.tiny_delta)
    apply_delta(pipe, parent)
    on_parent = snapshot(pipe, ["unet.conv_out.weight"])
    WeightDelta.from_state_dicts(on_parent, {k: v * 0.5 for k, v in on_parent.items()}, method="test-child",
                                 base_model=str(w.tiny), parent=parent).save(w.root / "tiny-child")
    return w.root / "tiny-child"


def _checkpointed_run(w, t):
    """An esd-x run of 2 iterations with its checkpoints in t/ck (the default lr)."""
    (t / "ck.yaml").write_text(f"iterations: 2\ncheckpoint_dir: {t / 'ck'}\ncheckpoint_every: 1\n")
    res = runner.invoke(app, ["erase", "--method", "esd-x", "--concept", "circle", "--out", str(t / "run"),
                              "--config", str(t / "ck.yaml")])
    assert res.exit_code == 0, res.output
    (t / "lr.yaml").write_text((t / "ck.yaml").read_text() + "lr: 2.0e-5\n")


def _resume(value):
    def args(w, t):
        (t / "resume.yaml").write_text((t / "lr.yaml").read_text() + f"resume: {value}\n")
        return ["erase", "--method", "esd-x", "--concept", "circle", "--out", str(t / "run2"), "--config",
                str(t / "resume.yaml")]
    return args


def _one_row_per_tier(w, t, res):
    data = json.loads((t / "ev" / "results.json").read_text())
    assert data["settings"]["benchmark"]["rows_per_tier"] == {"explicit": 1, "synonym": 1, "implicit": 1}


CASES = [
    # generate: counts, seeds, guidance, prompts
    Case("gen-n-0", gen("-n", "0"), says="-n must be at least 1"),
    Case("gen-n-negative", gen("-n", "-3"), says="-n must be at least 1"),
    Case("gen-steps-0", gen("--steps", "0"), says="--steps must be at least 1"),
    Case("gen-steps-negative", gen("--steps", "-5"), says="--steps must be at least 1"),
    Case("gen-seed-beyond-int64", gen("--seed", BIG), says="seeds must lie"),
    Case("gen-seed-negative", gen("--seed", "-1"), says="seeds must lie"),
    Case("gen-seed-overflows-with-n", gen("--seed", str(2**63 - 1), "-n", "2"), says="seeds must lie"),
    Case("gen-guidance-nan", gen("--guidance", "nan"), says="finite"),
    Case("gen-guidance-inf", gen("--guidance", "inf"), says="finite"),
    Case("gen-guidance-below-1", gen("--guidance", "0.5"), says="below 1"),
    Case("gen-guidance-negative", gen("--guidance", "-3"), says="below 1"),
    Case("gen-empty-prompt", lambda w, t: ["generate", "-p", "", "--out", str(t / "g.png")], says="empty prompt"),
    Case("gen-blank-prompt", lambda w, t: ["generate", "-p", "   ", "--out", str(t / "g.png")], says="empty prompt"),
    Case("gen-prompt-not-utf8", lambda w, t: ["generate", "-p", "caf\udce9", "--out", str(t / "g.png")], says="UTF-8"),
    # generate: --out
    Case("gen-out-under-a-file", gen_out(lambda w, t: w.file / "g.png"), says="is a file"),
    Case("gen-out-is-a-folder", gen_out(lambda w, t: w.folder), says="is a folder"),
    Case("gen-out-not-an-image", gen_out(lambda w, t: t / "grid.txt"), says="expected a file ending"),
    Case("gen-out-no-extension", gen_out(lambda w, t: t / "grid"), says="expected a file ending"),
    Case("gen-out-exists", gen_out(lambda w, t: w.grid), says="--overwrite"),
    Case("gen-out-overwrite", lambda w, t: gen_out(lambda w, t: t / "grid.png")(w, t) + ["--overwrite"], code=0,
         setup=lambda w, t: shutil.copy(w.grid, t / "grid.png"), changes={"grid.png"}),
    # generate: models and deltas
    Case("gen-delta-missing", gen("--delta", "/no/such/delta"), says="no such folder"),
    Case("gen-delta-nan", lambda w, t: gen("--delta", str(w.tiny_nan))(w, t), says="NaN/inf"),
    Case("gen-delta-extra-tensor", lambda w, t: gen("--delta", str(w.tiny_extra))(w, t), says="hash to delta"),
    Case("gen-delta-not-a-delta", lambda w, t: gen("--delta", str(w.folder))(w, t), says="missing manifest.json"),
    Case("gen-delta-other-model", lambda w, t: ["generate", "-p", "a circle", "-n", "1", "--steps", "1",
                                               "--delta", str(w.tiny_delta), "--out", str(t / "g.png")],
         says="does not fit"),
    Case("gen-model-missing-folder", lambda w, t: ["generate", "-p", "x", "--model", str(t / "nope" / "x"),
                                                  "--out", str(t / "g.png")], says="not a local folder"),
    Case("gen-model-folder-not-a-pipeline", lambda w, t: ["generate", "-p", "x", "--model", str(w.folder),
                                                         "--out", str(t / "g.png")], says="model_index.json"),
    Case("gen-model-pickle", lambda w, t: ["generate", "-p", "x", "--model", str(w.ckpt), "--out", str(t / "g.png")],
         says="pickled"),
    Case("gen-model-garbage-safetensors", lambda w, t: ["generate", "-p", "x", "--model", str(w.garbage_st),
                                                       "--out", str(t / "g.png")], says="garbage.safetensors"),
    Case("gen-model-truncated-safetensors", lambda w, t: ["generate", "-p", "x", "--model", str(w.truncated_st),
                                                         "--out", str(t / "g.png")], says="truncated.safetensors"),
    Case("gen-guidance-1-said-once", gen("--guidance", "1"), code=0, says="guidance is off"),
    Case("gen-long-prompt-said-once", lambda w, t: ["generate", "--model", str(w.tiny), "-p", "a red circle " * 40,
                                                   "--steps", "1", "-n", "1", "--out", str(t / "g.png")],
         code=0, says="truncated"),
    # erase: --out, --from, --overwrite
    Case("erase-out-holds-a-delta", erase(out=lambda w, t: w.shapes_delta), says="already holds a delta"),
    Case("erase-out-is-from", erase("--from", lambda w, t: str(w.shapes_delta), out=lambda w, t: w.shapes_delta),
         says="is the --from folder"),
    Case("erase-out-is-from-overwrite", erase("--from", lambda w, t: str(w.shapes_delta), "--overwrite",
                                              out=lambda w, t: w.shapes_delta), says="is the --from folder"),
    Case("erase-out-is-a-file", erase(out=lambda w, t: w.file), says="is a file"),
    Case("erase-out-under-a-file", erase(out=lambda w, t: w.file / "run"), says="is a file"),
    Case("erase-overwrite-replaces", lambda w, t: ["erase", "--method", "esd-x", "--concept", "circle", "--out",
                                                  str(t / "run"), "--overwrite", "--config", str(t / "one.yaml")],
         code=0, setup=lambda w, t: (_put_delta(w, t), (t / "one.yaml").write_text("iterations: 1\n")),
         check=_replaced, changes={"run/delta.safetensors", "run/manifest.json"}),
    Case("erase-from-missing", erase("--from", "/no/such/delta"), says="no such folder"),
    Case("erase-from-nan", erase("--from", lambda w, t: str(w.shapes_nan)), says="NaN/inf"),
    # erase: the NaN guard and resuming under another lr
    Case("erase-diverges-one-line", lambda w, t: ["erase", "--method", "esd-x", "--concept", "circle", "--out",
                                                 str(t / "run"), "--config", str(w.cfg_huge_lr)],
         says="non-finite", check=lambda w, t, r: not (t / "run" / "delta.safetensors").exists() or pytest.fail("kept")),
    Case("erase-resume-other-lr-refused", _resume("true"), setup=_checkpointed_run, says="new-lr"),
    Case("erase-resume-new-lr-accepted", _resume("new-lr"), code=0, setup=_checkpointed_run, says="wrote",
         check=lambda w, t, r: WeightDelta.load(t / "run2").manifest.metrics["lr_history"][-1][1] == 2e-5
         or pytest.fail("lr history")),
    # erase: the concept
    Case("erase-anchor-is-target", erase("--anchor", "circle"), says="itself a target"),
    Case("erase-anchor-is-target-case", erase("--anchor", "CIRCLE"), says="itself a target"),
    Case("concept-anchor-is-synonym", lambda w, t: erase()(w, t)[:3] + ["--concept", str(w.yaml_anchor)]
         + erase()(w, t)[5:], says="itself a target"),
    Case("concept-missing-file", lambda w, t: ["erase", "--method", "uce", "--concept", "nope.yaml", "--out",
                                              str(t / "run")], says="does not exist"),
    Case("concept-malformed-yaml", lambda w, t: ["erase", "--method", "uce", "--concept", str(w.yaml_bad), "--out",
                                                str(t / "run")], says="malformed YAML"),
    Case("concept-not-utf8", lambda w, t: ["erase", "--method", "uce", "--concept", str(w.yaml_latin1), "--out",
                                          str(t / "run")], says="UTF-8"),
    Case("concept-list", lambda w, t: ["erase", "--method", "uce", "--concept", str(w.yaml_list), "--out",
                                      str(t / "run")], says="mapping"),
    Case("concept-python-tag", lambda w, t: ["erase", "--method", "uce", "--concept", str(w.yaml_python), "--out",
                                            str(t / "run")], says="python/object"),
    Case("concept-unknown-field", lambda w, t: ["erase", "--method", "uce", "--concept", str(w.yaml_extra), "--out",
                                               str(t / "run")], says="flavour"),
    Case("concept-no-targets", lambda w, t: ["erase", "--method", "uce", "--concept", str(w.yaml_no_targets),
                                            "--out", str(t / "run")], says="targets"),
    Case("concept-template-without-slot", lambda w, t: ["erase", "--method", "uce", "--concept", str(w.yaml_template),
                                                       "--out", str(t / "run")], says="slot"),
    Case("concept-malformed-json", lambda w, t: ["erase", "--method", "uce", "--concept", str(w.json_bad), "--out",
                                                str(t / "run")], says="malformed JSON"),
    Case("concept-unknown-name", lambda w, t: ["erase", "--method", "uce", "--concept", "no-such-concept", "--out",
                                              str(t / "run")], says="no-such-concept"),
    # erase: config, method, seed, family
    Case("config-missing", erase("--config", "/no/such.yaml"), says="no such file"),
    Case("config-malformed", erase("--config", lambda w, t: str(w.yaml_bad)), says="malformed YAML"),
    Case("config-not-utf8", erase("--config", lambda w, t: str(w.yaml_latin1)), says="UTF-8"),
    Case("config-list", erase("--config", lambda w, t: str(w.yaml_list)), says="mapping"),
    Case("config-python-tag", erase("--config", lambda w, t: str(w.yaml_python)), says="python/object"),
    Case("config-unknown-key", erase("--config", lambda w, t: str(w.cfg_unknown)), says="no_such_option"),
    Case("config-iterations-0", lambda w, t: ["erase", "--method", "esd-x", "--concept", "circle", "--out",
                                             str(t / "run"), "--config", str(w.cfg_zero)], says="iterations"),
    Case("config-lr-negative", lambda w, t: ["erase", "--method", "esd-x", "--concept", "circle", "--out",
                                            str(t / "run"), "--config", str(w.cfg_neg_lr)], says="lr"),
    Case("config-lr-nan", lambda w, t: ["erase", "--method", "esd-x", "--concept", "circle", "--out",
                                       str(t / "run"), "--config", str(w.cfg_nan_lr)], says="lr"),
    Case("erase-unknown-method", lambda w, t: ["erase", "--method", "nope", "--concept", "circle", "--out",
                                              str(t / "run")], says="nope"),
    Case("erase-unknown-preset", erase("--preset", "nope"), says="no preset"),
    Case("erase-seed-beyond-int64", erase("--seed", str(2**64)), says="seeds must lie"),
    Case("erase-seed-negative", erase("--seed", "-1"), says="seeds must lie"),
    Case("erase-unknown-family", erase("--family", "sd9"), says="--family"),
    Case("erase-dry-run-over-a-delta-accepted", erase("--dry-run", out=lambda w, t: w.shapes_delta), code=0,
         says="GiB"),
    Case("erase-config-is-a-folder", erase("--config", lambda w, t: str(w.folder)), says="not a file"),
    Case("erase-empty-config-accepted", erase("--config", lambda w, t: str(w.cfg_empty)), code=0, says="wrote"),
    # eval: counts, guidance, --out
    Case("eval-n-0", ev("-n", "0"), says="-n must be at least 1"),
    Case("eval-n-negative", ev("-n", "-1"), says="-n must be at least 1"),
    Case("eval-n-preserve-negative", ev("--n-preserve", "-1"), says="--n-preserve must be at least 0"),
    Case("eval-batch-size-0", ev("--batch-size", "0"), says="--batch-size must be at least 1"),
    Case("eval-steps-0", ev("--steps", "0"), says="--steps must be at least 1"),
    Case("eval-steps-negative", ev("--steps", "-2"), says="--steps must be at least 1"),
    Case("eval-guidance-nan", ev("--guidance", "nan"), says="finite"),
    Case("eval-guidance-0", ev("--guidance", "0"), says="below 1"),
    Case("eval-threshold-nan", ev("--threshold", "nan"), says="--threshold"),
    Case("eval-threshold-above-1", ev("--threshold", "1.5"), says="--threshold"),
    Case("eval-out-is-a-file", ev(out=lambda w, t: w.file), says="is a file"),
    Case("eval-out-under-a-file", ev(out=lambda w, t: w.file / "ev"), says="is a file"),
    Case("eval-shapes-n-1-is-1", lambda w, t: ["eval", "--benchmark", "shapes", "--concept", "circle", "-n", "1",
                                              "--n-preserve", "0", "--steps", "1", "--out", str(t / "ev")],
         code=0, check=_one_row_per_tier),
    # generate / eval / export: a chain of deltas (--delta repeated)
    Case("gen-delta-chain-accepted", lambda w, t: gen("--delta", str(w.tiny_delta), "--delta", str(w.tiny_child))(w, t),
         code=0, says="wrote"),
    Case("gen-delta-child-alone", lambda w, t: gen("--delta", str(w.tiny_child))(w, t),
         says="earlier --delta"),
    Case("gen-delta-chain-reversed", lambda w, t: gen("--delta", str(w.tiny_child), "--delta", str(w.tiny_delta))(w, t),
         says="earlier --delta"),
    Case("eval-delta-child-alone", lambda w, t: ev("--delta", str(w.tiny_child))(w, t),
         says="earlier --delta"),
    Case("export-delta-child-alone", lambda w, t: ["export", "--model", str(w.tiny), "--delta", str(w.tiny_child),
                                                  "--out", str(t / "x")], says="computed on top of delta"),
    # eval: deltas
    Case("eval-delta-nan", ev("--delta", lambda w, t: str(w.tiny_nan)), says="NaN/inf",
         check=lambda w, t, r: not (t / "ev").exists() or pytest.fail("output written")),
    Case("eval-delta-extra-tensor", ev("--delta", lambda w, t: str(w.tiny_extra)), says="hash to delta"),
    Case("eval-delta-missing", ev("--delta", "/no/such/delta"), says="no such folder"),
    Case("eval-delta-other-model", ev("--delta", lambda w, t: str(w.shapes_delta)), says="does not fit"),
    # eval: benchmark files
    Case("eval-benchmark-missing", ev(csv=lambda w: "/no/such.csv"), says="unknown benchmark"),
    Case("csv-not-utf8", ev(csv=lambda w: w.csv_latin1), says="UTF-8"),
    Case("csv-unterminated-quote", ev(csv=lambda w: w.csv_quote), says="malformed CSV"),
    Case("csv-header-only", ev(csv=lambda w: w.csv_header), says="no rows"),
    Case("csv-empty-file", ev(csv=lambda w: w.csv_empty_file), says="columns found"),
    Case("csv-all-prompts-empty", ev(csv=lambda w: w.csv_all_empty), says="no rows"),
    Case("csv-some-prompts-empty", ev(csv=lambda w: w.csv_some_empty), code=0, says="skipped"),
    Case("csv-guidance-nan", ev(csv=lambda w: w.csv_nan_g), says="guidance"),
    Case("csv-guidance-below-1", ev(csv=lambda w: w.csv_low_g), says="guidance"),
    Case("csv-seed-beyond-int64", ev(csv=lambda w: w.csv_big_seed), says="seed"),
    Case("csv-seed-not-a-number", ev(csv=lambda w: w.csv_bad_seed), says="not a number"),
    Case("csv-unknown-layout", ev(csv=lambda w: w.csv_layout), says="columns found"),
    Case("csv-category-without-column", ev("--category", "sexual"), says="categories"),
    Case("csv-category-without-rows", ev("--category", "sexual", csv=lambda w: w.csv_cats),
         says="no rows with a prompt of category"),
    Case("csv-long-prompt-said-once", ev(csv=lambda w: w.csv_long), code=0, says="truncated"),
    Case("shapes-category-refused", lambda w, t: ["eval", "--benchmark", "shapes", "--concept", "circle",
                                                 "--category", "sexual", "--out", str(t / "ev")],
         says="no categories"),
    Case("eval-unknown-detector", lambda w, t: ev()(w, t)[:8] + ["nope"] + ev()(w, t)[9:], says="nope"),
    Case("eval-clip-missing", ev("--clip", "/no/such/clip", "--n-preserve", "2"), says="CLIP"),
    Case("eval-benchmark-not-bundled", lambda w, t: ev()(w, t)[:4] + ["ring-a-bell"] + ev()(w, t)[5:],
         says="not bundled"),
    Case("eval-delta-truncated", lambda w, t: ev("--delta", str(t / "d"))(w, t), says="unreadable",
         setup=lambda w, t: (shutil.copytree(w.tiny_delta, t / "d"),
                             (t / "d" / TENSORS_FILE).write_bytes((w.tiny_delta / TENSORS_FILE).read_bytes()[:64]))),
    Case("eval-adversarial-missing", ev("--adversarial", "/no/such.csv"), says="no such file"),
    # eval: resume keyed on content
    Case("resume-other-steps-refused", ev("--steps", "2"), setup=_eval_once, says="another --out"),
    Case("resume-weights-changed-redraws", lambda w, t: ev()(w, t)[:2] + [str(t / "model")] + ev()(w, t)[3:],
         code=0, setup=_copy_model_and_eval, says="stale images", check=_redrawn_with_new_weights,
         changes={"ev/images/original/000000.png", "ev/images/original/000001.png",
                  "ev/images/original/generation.json", "ev/results.json", "ev/report.md", "ev/report.html",
                  "ev/grids/ok-original.png", "model/unet/diffusion_pytorch_model.safetensors"}),
    Case("resume-truncated-png-redrawn", ev(), code=0, setup=_damage(40), check=_png_complete,
         changes={"ev/images/original/000001.png", "ev/results.json", "ev/report.md", "ev/report.html",
                  "ev/grids/ok-original.png"}),
    Case("resume-empty-png-redrawn", ev(), code=0, setup=_damage(0), check=_png_complete,
         changes={"ev/images/original/000001.png", "ev/results.json", "ev/report.md", "ev/report.html",
                  "ev/grids/ok-original.png"}),
    Case("resume-record-garbled", ev(), says="unreadable",
         setup=lambda w, t: (_eval_once(w, t), (t / "ev" / "images" / "original" / "generation.json").write_text("{"))),
    # compare, adherence, demo
    Case("compare-out-exists", lambda w, t: ["compare", str(w.no_results), "--out", str(w.grid)], says="exists"),
    Case("compare-out-not-a-figure", lambda w, t: ["compare", str(w.no_results), "--out", str(t / "p.txt")],
         says="expected a file ending"),
    Case("compare-no-results", lambda w, t: ["compare", str(w.no_results), "--out", str(t / "p.png")],
         says="results.json"),
    Case("compare-garbled-results", lambda w, t: ["compare", str(w.bad_results), "--out", str(t / "p.png")],
         says="results.json"),
    Case("adherence-per-tier-0", lambda w, t: ["adherence", "--per-tier", "0"], says="--per-tier must be at least 1"),
    Case("adherence-out-not-json", lambda w, t: ["adherence", "--out", str(w.csv)],
         says="expected a file ending"),
    Case("adherence-out-json-exists", lambda w, t: ["adherence", "--out", str(w.put("table.json", "{}"))],
         says="exists"),
    Case("adherence-guidance-nan", lambda w, t: ["adherence", "--guidance", "nan"], says="finite"),
    Case("demo-n-0", lambda w, t: ["demo", "-n", "0", "--out", str(t / "demo")], says="-n must be at least 1"),
    Case("demo-per-tier-0", lambda w, t: ["demo", "--per-tier", "0", "--out", str(t / "demo")],
         says="--per-tier must be at least 1"),
    Case("demo-out-is-a-file", lambda w, t: ["demo", "--out", str(w.file)], says="is a file"),
    Case("demo-unknown-method", lambda w, t: ["demo", "--method", "nope", "--out", str(t / "demo")], says="nope"),
    # attack, resurgence, bench
    Case("attack-unknown", lambda w, t: ["attack", "--attack", "nope", "--concept", "circle", "--out", str(t / "a")],
         says="unknown attack"),
    Case("attack-n-0", lambda w, t: ["attack", "--attack", "ringabell", "--concept", "circle", "-n", "0", "--out",
                                    str(t / "a")], says="-n must be at least 1"),
    Case("attack-budget-0", lambda w, t: ["attack", "--attack", "ringabell", "--concept", "circle", "--budget", "0",
                                         "--out", str(t / "a")], says="--budget must be at least 1"),
    Case("attack-out-is-a-file", lambda w, t: ["attack", "--attack", "ringabell", "--concept", "circle", "--out",
                                              str(w.file)], says="is a file"),
    Case("attack-config-malformed", lambda w, t: ["attack", "--attack", "ringabell", "--concept", "circle",
                                                 "--config", str(w.yaml_bad), "--out", str(t / "a")],
         says="malformed YAML"),
    Case("attack-prompts-missing", lambda w, t: ["attack", "--attack", "ringabell", "--concept", "circle",
                                                "--prompts", "/no/such.csv", "--out", str(t / "a")],
         says="no such file"),
    Case("resurgence-out-is-delta", lambda w, t: ["resurgence", "--delta", str(w.shapes_delta), "--concept",
                                                 "circle", "--out", str(w.shapes_delta)], says="--delta folder"),
    Case("resurgence-lr-negative", lambda w, t: ["resurgence", "--delta", str(w.shapes_delta), "--concept",
                                                "circle", "--lr", "-1", "--out", str(t / "r")], says="--lr"),
    Case("resurgence-lr-nan", lambda w, t: ["resurgence", "--delta", str(w.shapes_delta), "--concept", "circle",
                                           "--lr", "nan", "--out", str(t / "r")], says="--lr"),
    Case("resurgence-steps-0", lambda w, t: ["resurgence", "--delta", str(w.shapes_delta), "--concept", "circle",
                                            "--steps", "0", "--out", str(t / "r")], says="--steps must be at least 1"),
    Case("resurgence-data-missing", lambda w, t: ["resurgence", "--delta", str(w.shapes_delta), "--concept",
                                                 "circle", "--data", "/no/such", "--out", str(t / "r")],
         says="no such folder"),
    Case("attack-guidance-below-1", lambda w, t: ["attack", "--attack", "ringabell", "--concept", "circle",
                                                 "--guidance", "0", "--out", str(t / "a")], says="below 1"),
    Case("resurgence-delta-missing", lambda w, t: ["resurgence", "--delta", "/no/such", "--concept", "circle",
                                                  "--out", str(t / "r")], says="no such folder"),
    Case("resurgence-delta-nan", lambda w, t: ["resurgence", "--delta", str(w.shapes_nan), "--concept", "circle",
                                              "--steps", "1", "--out", str(t / "r")], says="NaN/inf"),
    Case("bench-seed-negative", lambda w, t: ["bench", "--quick", "--seed", "-1"], says="seeds must lie"),
    Case("bench-report-not-markdown", lambda w, t: ["bench", "--quick", "--report", str(t / "r.txt")],
         says="expected a file ending"),
    Case("bench-results-is-a-file", lambda w, t: ["bench", "--quick", "--results", str(w.file)], says="is a file"),
    # export goes through WeightDelta.load
    Case("export-delta-nan", lambda w, t: ["export", "--model", str(w.tiny), "--delta", str(w.tiny_nan), "--out",
                                          str(t / "x")], says="NaN/inf"),
    Case("export-delta-extra-tensor", lambda w, t: ["export", "--model", str(w.tiny), "--delta", str(w.tiny_extra),
                                                   "--out", str(t / "x")], says="hash to delta"),
]


def _hashes(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, world, tmp_path):
    if case.setup is not None:
        case.setup(world, tmp_path)
    before = _hashes(world.root, tmp_path)
    res = runner.invoke(app, case.args(world, tmp_path))
    out = res.output
    assert "Traceback" not in out and (res.exception is None or isinstance(res.exception, SystemExit)), \
        f"{res.exception!r}\n{out}"
    assert res.exit_code == case.code, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    if case.code == 2:
        assert len(errors) == 1, out
        assert case.says.lower() in errors[0].lower(), out
    else:
        assert not errors, out
        assert case.says in out, out
        notes = [ln for ln in out.splitlines() if ln.startswith("note:") and case.says in ln]
        assert len(notes) <= 1, out  # said once
    after = _hashes(world.root, tmp_path)
    allowed = {str(tmp_path / c) for c in case.changes}
    changed = {p for p in before if before[p] != after.get(p) and p not in allowed}
    assert not changed, f"changed on disk: {sorted(changed)}"
    if case.check is not None:
        case.check(world, tmp_path, res)


# ------------------------------------------------------------------ outputs
def test_atomic_writes_respect_the_umask(tmp_path):
    import os

    from erasekit.eval import atomic

    old = os.umask(0o027)
    try:
        path = atomic.write_text(tmp_path / "r.md", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640  # 0666 less the umask, not mkstemp's 0600


def test_report_markdown_escapes_strings_from_the_manifest_and_benchmark():
    from erasekit.eval.report import render_markdown

    evil = "x](http://evil.example) <script>alert(1)</script> | col\n# heading"
    results = {
        "metrics": {"asr": {evil: 0.5}},
        "settings": {"model": evil, "delta": {"method": evil, "delta_id": "abc"},
                     "benchmark": {"benchmarks": [{"name": evil}], "concept": evil},
                     "detector": {"name": "shapes"}, "sampling": {"steps": 1, "guidance_scale": 3.0}},
        "notes": [evil],
    }
    md = render_markdown(results, {evil: {"original": "grids/x-original.png"}})
    assert "<script>" not in md and "](http://evil.example)" not in md
    import re

    assert "\n# heading" not in md and not re.search(r"(?<!\\)\| col", md)  # no new heading, no extra table cell
    assert "grids/x-original.png" in md
