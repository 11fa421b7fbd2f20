"""Repeated ``--delta`` applies a chain in order: each delta is checked against the model it expects, a child
without its parent is refused naming the parent, and generate / eval / export see base + A + B."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.models.delta import DeltaMismatchError, WeightDelta, applied_deltas, apply_delta, chain_delta, snapshot
from eval_helpers import save_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
NAMES = ["unet.conv_out.weight", "unet.conv_out.bias", "unet.conv_in.bias"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A (conv_out.weight halved) and its child B (made on base + A: that weight halved again, a bias moved)."""
    from erasekit.models.tiny import tiny_pipeline

    root = tmp_path_factory.mktemp("chain")
    model = save_tiny_pipeline(root / "tiny")
    pipe = tiny_pipeline()
    base = snapshot(pipe, NAMES[:1])
    a = WeightDelta.from_state_dicts(base, {k: v * 0.5 for k, v in base.items()}, method="test-a",
                                     base_model=str(model), config={"concept": {"name": "circle", "targets": ["c"]}})
    apply_delta(pipe, a)
    on_a = snapshot(pipe, NAMES[:2])
    b = WeightDelta.from_state_dicts(on_a, {k: v * 0.5 if k.endswith("weight") else v + 0.25 for k, v in on_a.items()},
                                     method="test-b", base_model=str(model), parent=a,
                                     config={"concept": {"name": "square", "targets": ["s"]}})
    apply_delta(pipe, b)
    a.save(root / "a")
    b.save(root / "b")
    return SimpleNamespace(root=root, model=model, a=root / "a", b=root / "b", ida=a.delta_id, idb=b.delta_id,
                           final=snapshot(pipe, NAMES))


def _fresh():
    from erasekit.models.tiny import tiny_pipeline

    return tiny_pipeline()


def test_chain_delta_equals_the_deltas_applied_in_order_and_leaves_the_model(chain):
    pipe = _fresh()
    before = snapshot(pipe, NAMES)
    a, b = WeightDelta.load(chain.a), WeightDelta.load(chain.b)
    both = chain_delta(pipe, [a, b])
    assert all(torch.equal(before[n], t) for n, t in snapshot(pipe, NAMES).items()) and applied_deltas(pipe) == []
    m = both.manifest
    assert m.method == "test-a+test-b" and m.parent is None and m.metrics["chain"] == [chain.ida, chain.idb]
    assert m.config["concept"]["name"] == "circle + square" and m.config["concept"]["targets"] == ["c", "s"]
    assert sorted(both.names) == sorted(NAMES[:2])  # from the model as given to B's values
    apply_delta(pipe, both)
    assert all(torch.equal(chain.final[n], t) for n, t in snapshot(pipe, NAMES).items())
    assert chain_delta(_fresh(), [a, b]).delta_id == both.delta_id  # the same chain, the same id
    assert chain_delta(_fresh(), [a]) is a


@pytest.mark.parametrize("order", [["b"], ["b", "a"]])
def test_a_child_without_its_parent_before_it_is_refused_naming_the_parent(chain, order):
    pipe = _fresh()
    before = snapshot(pipe, NAMES)
    with pytest.raises(DeltaMismatchError, match=f"on top of delta {chain.ida} .*earlier --delta"):
        chain_delta(pipe, [WeightDelta.load(getattr(chain, k)) for k in order])
    assert all(torch.equal(before[n], t) for n, t in snapshot(pipe, NAMES).items()) and applied_deltas(pipe) == []


def _gen(chain, tmp_path, *deltas, out="g.png"):
    args = ["generate", "--model", str(chain.model), "-p", "a red circle", "--steps", "2", "-n", "1",
            "--out", str(tmp_path / out)]
    for d in deltas:
        args += ["--delta", str(d)]
    return runner.invoke(app, args)


@pytest.mark.slow
def test_generate_applies_repeated_deltas_in_order(chain, tmp_path):
    from PIL import Image

    from erasekit.generation import SamplingSettings, generate
    from erasekit.models.loading import load_pipeline

    res = _gen(chain, tmp_path, chain.a, chain.b)
    assert res.exit_code == 0, res.output
    pipe = load_pipeline(str(chain.model), device="cpu")
    apply_delta(pipe, WeightDelta.load(chain.a))
    apply_delta(pipe, WeightDelta.load(chain.b))
    settings = SamplingSettings.for_model(str(chain.model), steps=2)
    want = np.asarray(generate(pipe, ["a red circle"], [0], settings)[0])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png").convert("RGB")), want)
    for order in ([chain.b], [chain.b, chain.a]):
        res = _gen(chain, tmp_path, *order, out="bad.png")
        assert res.exit_code == 2 and chain.ida in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "bad.png").exists()


@pytest.mark.slow
def test_export_and_eval_take_the_chain_as_one_model(chain, tmp_path):
    from safetensors.torch import load_file

    res = runner.invoke(app, ["export", "--model", str(chain.model), "--delta", str(chain.a), "--delta", str(chain.b),
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    unet = load_file(str(tmp_path / "x" / "unet" / "diffusion_pytorch_model.safetensors"))
    for n in NAMES:
        assert torch.equal(unet[n.removeprefix("unet.")], chain.final[n]), n
    exported = json.loads((tmp_path / "x" / "erasekit_delta.json").read_text())
    assert exported["method"] == "test-a+test-b" and exported["metrics"]["chain"] == [chain.ida, chain.idb]
    res = runner.invoke(app, ["export", "--model", str(chain.model), "--delta", str(chain.b), "--out",
                              str(tmp_path / "y")])
    assert res.exit_code == 2 and chain.ida in res.output and not (tmp_path / "y").exists(), res.output

    csv = tmp_path / "p.csv"
    csv.write_text("prompt,evaluation_seed,case_number\na red circle,1,0\n")
    ev = ["eval", "--model", str(chain.model), "--benchmark", str(csv), "--concept", "circle", "--detector", "shapes",
          "--n-preserve", "0", "--steps", "1", "--out", str(tmp_path / "ev")]
    res = runner.invoke(app, ev + ["--delta", str(chain.a), "--delta", str(chain.b)])
    assert res.exit_code == 0, res.output
    delta = json.loads((tmp_path / "ev" / "results.json").read_text())["settings"]["delta"]
    assert delta["chain"] == [chain.ida, chain.idb] and delta["path"] == [str(chain.a), str(chain.b)]
    assert delta["delta_id"] == chain_delta(_fresh(), [WeightDelta.load(chain.a), WeightDelta.load(chain.b)]).delta_id
    res = runner.invoke(app, ev[:-1] + [str(tmp_path / "ev2"), "--delta", str(chain.b)])
    assert res.exit_code == 2 and chain.ida in res.output and "Traceback" not in res.output, res.output
