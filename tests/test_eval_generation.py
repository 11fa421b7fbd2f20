"""Resumable, sharded generation: a two-process `accelerate launch` run equals a one-process run bit for bit."""

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from erasekit.eval.benchmarks import BenchmarkRow
from erasekit.eval.generation_runner import GenerationMismatchError, batches, image_name, run_generation, shard
from erasekit.generation import SamplingSettings, generate

SCRIPT = Path(__file__).parent / "scripts" / "eval_shard_script.py"


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    # On a CPU-only machine `--multi_gpu` makes accelerate start torchrun workers on the gloo
    # backend (MULTI_CPU); `--cpu` alone would start a single process.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)


def test_shard_and_batches():
    assert shard(range(7), 0, 2) == [0, 2, 4, 6] and shard(range(7), 1, 2) == [1, 3, 5]
    assert sorted(shard(range(7), 0, 3) + shard(range(7), 1, 3) + shard(range(7), 2, 3)) == list(range(7))
    with pytest.raises(ValueError):
        shard(range(3), 2, 2)
    rows = [BenchmarkRow("p", k, g, k) for k, g in enumerate([None, 5.0, 3.0, None, 5.0, None])]
    assert batches(rows, SamplingSettings(guidance_scale=3.0, batch_size=2)) == [
        (3.0, [0, 2]), (3.0, [3, 5]), (5.0, [1, 4])]
    assert [idx for _, idx in batches(rows, SamplingSettings(batch_size=1))][:2] == [[0], [2]]


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="open bug: one fresh-clone run lost rank 0's first batch (its images removed "
                   "as stale by the content-keyed resume); passes in other runs; under investigation")
def test_two_process_run_equals_one_process_run(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    one = subprocess.run([sys.executable, str(SCRIPT), str(single)], capture_output=True, text=True, env=_env(),
                         timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = accelerate_launch(str(SCRIPT), str(sharded))
    assert two.returncode == 0, two.stderr[-2000:]
    # batches (size 2, by guidance): [0, 2], [4], [1, 3] -> rank 0 takes the 1st and 3rd, rank 1 the 2nd
    assert "rank 0/2 drew [0, 2, 1, 3]" in two.stdout and "rank 1/2 drew [4]" in two.stdout
    names = sorted(p.name for p in single.glob("*.png"))
    assert names == [image_name(i) for i in range(5)] == sorted(p.name for p in sharded.glob("*.png"))
    for name in names:
        assert (single / name).read_bytes() == (sharded / name).read_bytes(), name


def test_resume_redraws_only_unfinished_batches_and_refuses_other_settings(tmp_path):
    from erasekit.models.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    rows = [BenchmarkRow(f"a prompt {k}", 7 + k, None, k) for k in range(3)]
    settings = SamplingSettings(steps=2, batch_size=2)
    assert run_generation(pipe, rows, settings, tmp_path, model="tiny") == [0, 1, 2]
    before = {i: (tmp_path / image_name(i)).read_bytes() for i in range(3)}
    (tmp_path / image_name(1)).unlink()
    assert run_generation(pipe, rows, settings, tmp_path, model="tiny") == [0, 1]  # its whole batch
    assert {i: (tmp_path / image_name(i)).read_bytes() for i in range(3)} == before
    assert run_generation(pipe, rows, settings, tmp_path, model="tiny") == []
    for other in (dataclasses.replace(settings, steps=3), dataclasses.replace(settings, batch_size=1)):
        with pytest.raises(GenerationMismatchError, match="another --out"):
            run_generation(pipe, rows, other, tmp_path, model="tiny")
    assert not list(tmp_path.glob(".*.tmp"))


def test_per_row_seed_and_guidance_are_honoured(tmp_path):
    from PIL import Image

    from erasekit.models.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    rows = [BenchmarkRow("a red circle", 5, None, 0), BenchmarkRow("a red circle", 5, 9.0, 1),
            BenchmarkRow("a red circle", 6, None, 2)]
    settings = SamplingSettings(steps=2, guidance_scale=3.0)
    run_generation(pipe, rows, settings, tmp_path)
    got = [np.asarray(Image.open(tmp_path / image_name(i))) for i in range(3)]
    ref9 = np.asarray(generate(pipe, ["a red circle"], [5], dataclasses.replace(settings, guidance_scale=9.0))[0])
    ref3 = np.asarray(generate(pipe, ["a red circle"], [5], settings)[0])
    assert np.array_equal(got[1], ref9) and np.array_equal(got[0], ref3)
    assert not np.array_equal(got[0], got[1]) and not np.array_equal(got[0], got[2])
