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


def _launch(*runs: str, processes: int = 0) -> subprocess.CompletedProcess:
    """One launch of the script running ``runs`` ("OUT" or "OUT:MODE") in order, in the same process(es)."""
    if processes:
        return accelerate_launch(str(SCRIPT), *runs, processes=processes)
    return subprocess.run([sys.executable, str(SCRIPT), *runs], capture_output=True, text=True,
                          env=_env(), timeout=300)


def _result(out: Path) -> dict:
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_average_gradients_and_stay_equal(tmp_path):
    # Both processes draw process 0's samples ("same"): the mean of two equal gradients is that gradient,
    # so the run must equal the one-process run bit for bit (a sum instead of a mean would not).
    # Each process draws its own samples ("own"): a different result, and the trainer's end-of-run check
    # that every replica holds the same weights passed (it raises otherwise).  For TRuST that needs
    # the saliency averaged too: per-process masks would update different entries.
    # Then a run interrupted after step 2 ("cut"): it writes nothing.
    two = _launch(f"{tmp_path / 'same.json'}:same", str(tmp_path / "own.json"), f"{tmp_path / 'cut.json'}:interrupt",
                  processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    for method in ("trust", "kscu"):
        assert f"cut.json: {method} interrupted after step 2" in two.stdout
    assert not (tmp_path / "cut.json").exists()
    # resumed: every process gets its own step state back (KSCU's running trajectory decides what later
    # steps train on) and draws on from its own stream, so the result is the uninterrupted run's
    resumed = _launch(f"{tmp_path / 'cut.json'}:resume", processes=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # one process: the reference run, then the two-process checkpoint, which does not resume on one
    # process (each process drew its own samples)
    alone = _launch(str(tmp_path / "one.json"), f"{tmp_path / 'cut.json'}:resume")
    assert alone.returncode != 0 and "CheckpointMismatchError" in alone.stderr
    assert "written by a run on 2 data-parallel process(es), this one has 1" in alone.stderr

    one, same, own, cut = (_result(tmp_path / f"{name}.json") for name in ("one", "same", "own", "cut"))
    assert one["processes"] == 1 and same["processes"] == own["processes"] == 2
    for method in ("esd-x", "trust", "kscu"):
        assert same[method]["checksum"] == one[method]["checksum"], method
        assert own[method]["checksum"] != one[method]["checksum"], method
        assert one[method]["processes_metric"] == 1 and own[method]["processes_metric"] == 2
    for method in ("trust", "kscu"):
        assert cut[method]["checksum"] == own[method]["checksum"], method
    # checkpoints: process 0 writes them, with every process's own step state (TRuST's loss sums)
    for name, processes in (("one", 1), ("own", 2)):
        (_, last), *_ = reversed(list_checkpoints(tmp_path / f"{name}.json.trust.ckpt"))
        with safe_open(str(last), framework="pt") as fh:
            assert fh.metadata()["processes"] == str(processes)
            assert any(k.startswith("state@1/") for k in fh.keys()) == (processes == 2)
