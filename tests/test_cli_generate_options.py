"""`erasekit generate --negative-prompt/--height/--width/--device auto`."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from erasekit.cli import app
from erasekit.cli.generate import WithNegativePrompt, resolve_device

runner = CliRunner()


def _grid(tmp_path, name, *extra):
    out = tmp_path / f"{name}.png"
    res = runner.invoke(app, ["generate", "-p", "a red circle", "-n", "2", "--steps", "4", "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return np.asarray(Image.open(out), dtype=np.int16)


def test_height_and_width_set_the_image_size(tmp_path):
    assert _grid(tmp_path, "wide", "--height", "32", "--width", "64").shape == (32, 2 * 64, 3)
    assert _grid(tmp_path, "square", "--height", "32").shape == (32, 2 * 32, 3)  # width follows height


def test_negative_prompt_reaches_the_pipeline(tmp_path, shapes_pipe):
    plain = _grid(tmp_path, "plain")
    negative = _grid(tmp_path, "negative", "--negative-prompt", "red")
    assert np.abs(plain - negative).max() > 10
    assert np.array_equal(negative, _grid(tmp_path, "again", "--negative-prompt", "red"))
    calls = []
    wrapped = WithNegativePrompt(lambda **kw: calls.append(kw), "blurry")
    wrapped(["a", "b"], guidance_scale=3.0)
    assert calls == [{"prompt": ["a", "b"], "negative_prompt": ["blurry", "blurry"], "guidance_scale": 3.0}]


def test_bad_size_and_auto_device(tmp_path):
    res = runner.invoke(app, ["generate", "-p", "x", "--height", "30", "--out", str(tmp_path / "g.png")])
    assert res.exit_code == 2 and "multiple of 8" in res.output
    import torch

    mps = torch.backends.mps.is_available()
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    assert resolve_device("cpu") == "cpu"
