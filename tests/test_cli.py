import subprocess
import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from erasekit.cli import app

runner = CliRunner()


def test_generate_writes_grid(tmp_path):
    out = tmp_path / "grid.png"
    res = runner.invoke(app, ["generate", "--prompt", "a red circle", "-n", "4", "--seed", "0",
                              "--steps", "10", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert Image.open(out).size == (4 * 64, 64)


@pytest.mark.slow
def test_missing_model_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "erasekit.cli", "generate", "--model", "nobody/no-such-model", "--prompt", "x"],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip() and not ln.startswith("[transformers]")]
    assert len(lines) <= 2, proc.stderr  # rich may wrap the one message
    assert "Traceback" not in proc.stderr
    assert "local" in proc.stderr


def test_folder_without_pipeline_is_rejected(tmp_path):
    res = runner.invoke(app, ["generate", "--model", str(tmp_path), "--prompt", "x"])
    assert res.exit_code == 2
