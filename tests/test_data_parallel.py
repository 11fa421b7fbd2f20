"""Data-parallel fine-tuning under `accelerate launch` (two gloo processes on the CPU)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from test_eval_generation import _env, accelerate_launch

from erasekit.training import list_checkpoints

SCRIPT = Path(__file__).parent / "scripts" / "train_dp_script.py"


def _launch(out: Path, *args: str, processes: int = 0) -> subprocess.CompletedProcess:
    if processes:
        return accelerate_launch(str(SCRIPT), str(out), *args, processes=processes)
    return subprocess.run([sys.executable, str(SCRIPT), str(out), *args], capture_output=True, text=True,
                          env=_env(), timeout=300)


def _run(out: Path, *args: str, processes: int = 0) -> dict:
    proc = _launch(out, *args, processes=processes)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_average_gradients_and_stay_equal(tmp_path):
    one = _run(tmp_path / "one.json")
    # Both processes draw process 0's samples: the mean of two equal gradients is that gradient, so
    # the run must equal the one-process run bit for bit (a sum instead of a mean would not).
    same = _run(tmp_path / "same.json", "same", processes=2)
    # Each process draws its own samples: a different result, and the trainer's end-of-run check
    # that every replica holds the same weights passed (it raises otherwise).  For TRuST that needs
    # the saliency averaged too: per-process masks would update different entries.
    own = _run(tmp_path / "own.json", processes=2)
    assert one["processes"] == 1 and same["processes"] == own["processes"] == 2
    for method in ("esd-x", "trust", "kscu"):
        assert same[method]["checksum"] == one[method]["checksum"], method
        assert own[method]["checksum"] != one[method]["checksum"], method
        assert one[method]["processes_metric"] == 1 and own[method]["processes_metric"] == 2
    # checkpoints: process 0 writes them, with every process's own step state (TRuST's loss sums)
    for name, processes in (("one", 1), ("own", 2)):
        (_, last), *_ = reversed(list_checkpoints(tmp_path / f"{name}.json.trust.ckpt"))
        with safe_open(str(last), framework="pt") as fh:
            assert fh.metadata()["processes"] == str(processes)
            assert any(k.startswith("state@1/") for k in fh.keys()) == (processes == 2)
    # interrupted after step 2, resumed: every process gets its own step state back (KSCU's running
    # trajectory decides what later steps train on) and draws on from its own stream, so the result
    # is the uninterrupted run's
    stopped = _launch(tmp_path / "cut.json", "interrupt", processes=2)
    assert stopped.returncode != 0
    assert "trust interrupted after step 2" in stopped.stdout and "kscu interrupted after step 2" in stopped.stdout
    assert not (tmp_path / "cut.json").exists()
    resumed = _run(tmp_path / "cut.json", "resume", processes=2)
    for method in ("trust", "kscu"):
        assert resumed[method]["checksum"] == own[method]["checksum"], method
    # a checkpoint from two processes does not resume on one: each process drew its own samples
    alone = _launch(tmp_path / "cut.json", "resume")
    assert alone.returncode != 0 and "CheckpointMismatchError" in alone.stderr
    assert "written by a run on 2 data-parallel process(es), this one has 1" in alone.stderr
